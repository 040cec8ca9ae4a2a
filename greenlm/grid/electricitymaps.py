"""Electricity Maps' latest-intensity API for a zone, polled in the background with the token from an
environment variable; until it first answers, and whenever it fails, the last good figure (or the fallback)
stands, and the failure is said once."""

from __future__ import annotations

import logging
import math
import os
import threading

import httpx

from greenlm.energy.carbon import GridIntensity
from greenlm.errors import GreenlmError
from greenlm.grid.reading import MAX_INTENSITY_G_PER_KWH, GridReading

log = logging.getLogger(__name__)

ELECTRICITY_MAPS_URL = "https://api.electricitymap.org/v3/carbon-intensity/latest"
ELECTRICITY_MAPS_TOKEN_ENV = "ELECTRICITYMAPS_TOKEN"


class ElectricityMaps:
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
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise GreenlmError(
                f"grid provider electricitymaps needs an API token in ${token_env}: export it, or replay a CSV "
                "with grid: {csv: FILE}"
            )
        self.zone, self.url, self.poll_s, self.timeout_s = zone, url, float(poll_s), float(timeout_s)
        self._token = token
        self._reading = GridReading(
            fallback.intensity_g_per_kwh, f"{fallback.source} (until Electricity Maps answers)", stale=True
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.polls = 0
        self.failures = 0

    def fetch(self) -> GridReading:
        """One request to the provider (raises GreenlmError on any failure)."""
        try:
            response = httpx.get(
                self.url,
                params={"zone": self.zone},
                headers={"auth-token": self._token},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise GreenlmError(f"Electricity Maps at {self.url} did not answer: {exc}") from None
        if response.status_code != 200:
            raise GreenlmError(
                f"Electricity Maps answered {response.status_code} for zone {self.zone}: {response.text[:200]}"
            )
        try:
            data = response.json()
            value = float(data["carbonIntensity"])
        except (ValueError, KeyError, TypeError):
            raise GreenlmError(
                f"Electricity Maps' answer has no carbonIntensity: {response.text[:200]}"
            ) from None
        if not (math.isfinite(value) and 0 <= value <= MAX_INTENSITY_G_PER_KWH):
            raise GreenlmError(f"Electricity Maps answered an impossible intensity {value}")
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

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.poll_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="greenlm-grid", daemon=True)
            self._thread.start()

    def now(self) -> GridReading:
        with self._lock:
            return self._reading

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "zone": self.zone,
            "url": self.url,
            "poll_s": self.poll_s,
            "polls": self.polls,
            "failures": self.failures,
        }
