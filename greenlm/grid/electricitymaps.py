"""Electricity Maps' API: one client for its endpoints (the token from an environment variable, every failure
one line), and the latest-intensity signal for a zone, polled in the background; until it first answers, and
whenever it fails, the last good figure (or the fallback) stands, and the failure is said once. The deferral's
forecaster (`greenlm.defer.forecast.ElectricityMapsForecaster`) reads the forecast endpoint through the same
client."""

from __future__ import annotations

import logging
import math
import os
import threading

import httpx

from greenlm.energy.carbon import GridIntensity
from greenlm.errors import GreenlmError
from greenlm.grid.poller import Poller
from greenlm.grid.reading import MAX_INTENSITY_G_PER_KWH, GridReading

log = logging.getLogger(__name__)

ELECTRICITY_MAPS_API = "https://api.electricitymap.org/v3"
ELECTRICITY_MAPS_URL = ELECTRICITY_MAPS_API + "/carbon-intensity/latest"
ELECTRICITY_MAPS_TOKEN_ENV = "ELECTRICITYMAPS_TOKEN"


def check_intensity(value: float, who: str) -> float:
    """`value` as a plausible intensity in g/kWh, else one line naming `who` answered it."""
    if not (math.isfinite(value) and 0 <= value <= MAX_INTENSITY_G_PER_KWH):
        raise GreenlmError(f"{who} answered an impossible intensity {value}")
    return value


class ElectricityMapsApi:
    """GETs to one Electricity Maps endpoint for `zone`, with the `auth-token` header from `token_env`.
    `asked_by` names the setting that chose the provider, and `csv_hint` the offline alternative, for the
    one line said when the token is missing."""

    def __init__(
        self, zone: str, url: str, *, token_env: str, timeout_s: float, asked_by: str, csv_hint: str
    ):
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise GreenlmError(
                f"{asked_by} needs an API token in ${token_env}: export it, or replay a CSV with {csv_hint}"
            )
        self.zone, self.url, self.timeout_s, self._token = zone, url, float(timeout_s), token
        self.who = f"Electricity Maps ({zone})"

    def get(self) -> dict:
        """The endpoint's JSON answer (raises GreenlmError on any failure)."""
        try:
            response = httpx.get(
                self.url,
                params={"zone": self.zone},
                headers={"auth-token": self._token},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise GreenlmError(f"{self.who} at {self.url} did not answer: {exc}") from None
        if response.status_code != 200:
            raise GreenlmError(f"{self.who} answered {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise GreenlmError(
                f"{self.who} answered something other than JSON: {response.text[:200]}"
            ) from None


class ElectricityMaps(Poller):
    """Electricity Maps' latest carbon intensity for `zone`, polled every `poll_s` in a background thread
    (`auth-token` header from `token_env`). `url` may point elsewhere (a proxy, or a test's local server)."""

    kind = "electricitymaps"

    def __init__(
        self,
        zone: str,
        *,
        fallback: GridIntensity,
        url: str = ELECTRICITY_MAPS_URL,
        token_env: str = ELECTRICITY_MAPS_TOKEN_ENV,
        poll_s: float = 300.0,
        timeout_s: float = 10.0,
    ):
        self.api = ElectricityMapsApi(
            zone, url, token_env=token_env, timeout_s=timeout_s,
            asked_by="grid provider electricitymaps", csv_hint="grid: {csv: FILE}",
        )  # fmt: skip
        super().__init__()
        self.zone, self.url, self.poll_s, self.timeout_s = zone, url, float(poll_s), float(timeout_s)
        self._reading = GridReading(
            fallback.intensity_g_per_kwh, f"{fallback.source} (until Electricity Maps answers)", stale=True
        )
        self._lock = threading.Lock()
        self._failing = False
        self.polls = 0
        self.failures = 0

    def fetch(self) -> GridReading:
        """One request to the provider (raises GreenlmError on any failure)."""
        data = self.api.get()
        try:
            value = float(data["carbonIntensity"])
        except (KeyError, TypeError, ValueError):
            raise GreenlmError(f"{self.api.who}'s answer has no carbonIntensity: {str(data)[:200]}") from None
        check_intensity(value, self.api.who)
        return GridReading(value, f"Electricity Maps {self.zone} (live)", data.get("datetime"))

    def poll_once(self) -> None:
        self.polls += 1
        try:
            reading = self.fetch()
        except GreenlmError as exc:
            self.failures += 1
            if not self._failing:
                log.warning("grid intensity: %s; keeping the last figure", exc)
            self._failing = True
            with self._lock:
                self._reading = GridReading(
                    self._reading.intensity_g_per_kwh,
                    self._reading.source,
                    self._reading.trace_time,
                    stale=True,
                )
            return
        if self._failing:
            log.warning("grid intensity: Electricity Maps answers again")
        self._failing = False
        with self._lock:
            self._reading = reading

    def now(self) -> GridReading:
        with self._lock:
            return self._reading

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "zone": self.zone,
            "url": self.url,
            "poll_s": self.poll_s,
            "polls": self.polls,
            "failures": self.failures,
        }
