"""The servers behind the gateway: where each is, its key, the model it serves, whether it is up.

An upstream's API key is read from an environment variable (`--upstream-key-env NAME`, or `key_env` in the
policy file's ladder) when the gateway starts; the key itself is never logged, echoed or stored. Health checks
(a thread) GET its /health, or /v1/models when it has no /health (llama-cpp-python's server), every
`health_interval_s` while nothing is in flight there: a failing upstream is taken out of routing until a check
passes again. A request that cannot reach it (refused, timed out before the first byte) or whose stream breaks
or stalls takes it out at once.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass

import httpx

from greenlm.errors import GreenlmError
from greenlm.gateway.energy_metric import url_check
from greenlm.serve.attribution import PhaseCosts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream as the user named it, with the figures the routing policies read (None: unknown)."""

    name: str
    url: str  # base URL, without /v1
    key_env: str | None = None
    energy_metric: str | None = None
    pid: int | None = None
    kld: float | None = None
    decode_j_per_token: float | None = None
    decode_tokens_per_s: float | None = None
    source: str = ""  # where the figures came from

    @property
    def host(self) -> str:
        return url_check(self.url, "upstream").hostname

    @property
    def port(self) -> int:
        parts = url_check(self.url, "upstream")
        return parts.port or (443 if parts.scheme == "https" else 80)


def base_url(url: str, flag: str = "--upstream") -> str:
    """An upstream's base URL: checked, without a trailing /v1 or slash."""
    parts = url_check(url, flag)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


def read_key(env: str | None, upstream: str) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if value is None or not value.strip():
        raise GreenlmError(
            f"upstream {upstream}: the environment variable {env} (its API key) is not set or empty: export it"
        )
    return value.strip()


class Upstream:
    def __init__(self, spec: UpstreamSpec, key: str | None, index: int):
        self.spec = spec
        self.name = spec.name
        self.url = spec.url
        self.index = index  # its place in the ladder, cheapest first
        self._key = key
        self.model_id: str | None = None
        self.greenlm = False  # greenlm serve (its model card's owner): it publishes the weights of its split
        self.health_path = "/health"
        self.up = False
        self.checked = False  # the first check's result is announced by the gateway, not logged
        self.reason = "not checked yet"
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.group = None  # its MeterGroup, set by the gateway

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def mark(self, up: bool, reason: str = "") -> None:
        if up != self.up and self.checked:
            if up:
                log.warning("upstream %s (%s) is up", self.name, self.url)
            else:
                log.warning("upstream %s (%s) is down: %s", self.name, self.url, reason)
        self.up, self.reason = up, ("" if up else reason)
        self.checked = True

    def probe(self, client: httpx.Client) -> None:
        """Ask it what it serves and how to check its health; mark it up or down (with why)."""
        try:
            models = client.get(self.url + "/v1/models", headers=self.headers())
        except httpx.HTTPError as exc:
            self.mark(False, _why(exc))
            return
        if models.status_code in (401, 403):
            raise GreenlmError(
                f"upstream {self.name} ({self.url}) refuses the gateway's requests (HTTP {models.status_code}): give "
                "its API key with --upstream-key-env NAME (the variable holding it)"
            )
        if models.status_code == 200:
            try:
                data = models.json().get("data") or []
                self.model_id = str(data[0]["id"]) if data else self.model_id
                self.greenlm = bool(data) and data[0].get("owned_by") == "greenlm"
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # no model list in the usual shape: requests keep the model the client named
        try:
            health = client.get(self.url + "/health", headers=self.headers())
        except httpx.HTTPError as exc:
            self.mark(False, _why(exc))
            return
        if health.status_code in (404, 405):  # no /health route: its model list says it answers
            self.health_path = "/v1/models"
            self.mark(models.status_code == 200, f"/v1/models answered HTTP {models.status_code}")
        else:
            self.health_path = "/health"
            self.mark(health.status_code == 200, f"/health answered HTTP {health.status_code}")

    def check(self, client: httpx.Client) -> None:
        """One health check; a server coming back is asked again what it serves (it may have restarted). An up
        upstream with requests in flight is not probed: those requests are its check (their time-outs take it
        out), and a probe can break them (llama-cpp-python's server interrupts its running request for any
        request that takes the model's lock, its /v1/models included, and answers only after it)."""
        if self.up and self.in_flight > 0:
            return
        was_up = self.up
        try:
            response = client.get(self.url + self.health_path, headers=self.headers())
        except httpx.HTTPError as exc:
            self.mark(False, _why(exc))
            return
        if response.status_code != 200:
            self.mark(False, f"{self.health_path} answered HTTP {response.status_code}")
            return
        if not was_up:
            self.probe(client)
        else:
            self.mark(True)

    def phase_costs(self, client: httpx.Client, timeout_s: float) -> PhaseCosts | None:
        """greenlm serve's own J/token of prefill and decode, the weights its step split uses now (its
        /energy's phase_costs); None for another server, or when it does not say."""
        if not (self.greenlm and self.up):
            return None
        try:
            response = client.get(self.url + "/energy", headers=self.headers(), timeout=timeout_s)
            costs = response.json().get("phase_costs") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(costs, dict):
            return None
        values = [costs.get("prefill_j_per_token"), costs.get("decode_j_per_token")]
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in values
        ):
            return None
        return PhaseCosts(float(values[0]), float(values[1]))

    def describe(self) -> dict:
        s = self.spec
        return {
            "name": self.name,
            "url": self.url,
            "model": self.model_id,
            "greenlm": self.greenlm,
            "up": self.up,
            "reason": self.reason or None,
            "key_env": s.key_env,  # the variable's name only, never the key
            "energy_metric": s.energy_metric,
            "kld": s.kld,
            "decode_j_per_token": s.decode_j_per_token,
            "decode_tokens_per_s": s.decode_tokens_per_s,
            "source": s.source,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
        }


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc or 'refused'})"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


class HealthChecks:
    """A thread that checks every upstream every `interval_s`."""

    def __init__(self, upstreams: list[Upstream], interval_s: float, timeout_s: float):
        self.upstreams, self.interval_s = upstreams, interval_s
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe_all(self) -> None:
        for u in self.upstreams:
            u.probe(self.client)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="greenlm-health", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for u in self.upstreams:
                try:
                    u.check(self.client)
                except GreenlmError as exc:  # a key refused after a restart: down, said once
                    u.mark(False, str(exc))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.client.close()
