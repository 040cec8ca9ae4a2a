"""An upstream on another host, metered by a Prometheus energy counter scraped over HTTP.

    --energy-metric URL#METRIC[{label="value",...}][;unit=mJ][;source=measured]

e.g. `http://gpu-box:9400/metrics#DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (NVIDIA's DCGM exporter: mJ since the
driver loaded, a hardware counter), `http://box:9500/metrics#greenlm:energy_joules_total` (`greenlm
meter-agent`: J, its labels say which meter and whether measured), Kepler's `kepler_*_joules_total` (J).
The unit comes from the suffix, else from the metric's name (the table below; `_joules` names are J by
Prometheus's naming rule), else the spec is refused. Every series of the metric that matches the label filter
is summed (one per GPU, say).

Each scrape is a meter reading. Counters only grow, so a series that went down was reset (the exporter or the
GPU driver restarted): its new value counts from zero. A series seen for the first time is a baseline. The
readings are running totals of those increases (`AccumulatingMeter`), so windows between any two readings are
plain differences. The exporter must refresh its counter at least as often as the gateway scrapes (DCGM's
exporter collects every 30 s unless started with `-c 1000`), or most windows read zero and the split follows
the exporter's clock instead of the requests.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from greenlm.energy.base import EnergySource, Measurement
from greenlm.errors import GreenlmError
from greenlm.gateway.meters import AccumulatingMeter

UNITS_J = {"J": 1.0, "mJ": 1e-3, "uJ": 1e-6, "kJ": 1e3, "Wh": 3600.0, "kWh": 3.6e6}
GREENLM_METRIC = "greenlm:energy_joules_total"
# metric name -> (unit, energy source, meter name)
KNOWN_METRICS: dict[str, tuple[str, EnergySource, str]] = {
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("mJ", "measured", "dcgm"),  # NVML's energy counter, via DCGM
    GREENLM_METRIC: ("J", "estimated", "greenlm"),  # meter-agent's: meter and source from the series' labels
    "greenlm:meter_energy_joules_total": ("J", "estimated", "greenlm"),  # greenlm serve's own meter, likewise
}
_KEPLER_MEASURED = re.compile(
    r"^kepler_node_(package|core|dram|uncore)_joules_total$"
)  # RAPL, read by Kepler
_SPEC = re.compile(r"^(?P<metric>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*')
EXAMPLE = "http://gpu-box:9400/metrics#DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"


@dataclass(frozen=True)
class MetricSpec:
    url: str
    metric: str
    labels: dict[str, str] = field(default_factory=dict)
    unit: str = "J"
    source: EnergySource | None = None  # None: from the series' energy_source labels (greenlm's metric)
    meter: str = "prometheus"
    text: str = ""

    @property
    def j_per_unit(self) -> float:
        return UNITS_J[self.unit]

    def describe(self) -> str:
        where = self.url + "#" + self.metric + (f"{self.labels}" if self.labels else "")
        return f"{where} in {self.unit}"


def parse_metric_spec(text: str) -> MetricSpec:
    """`URL#METRIC[{labels}][;unit=U][;source=S]`, or one line saying what is wrong and what to write."""
    raw = text.strip() if isinstance(text, str) else ""
    hint = f"write URL#METRIC, e.g. {EXAMPLE}"
    if "#" not in raw:
        raise GreenlmError(f"--energy-metric '{text}' names no metric: {hint}")
    url, _, rest = raw.partition("#")
    parts = url_check(url, "--energy-metric")
    metric_part, *options = rest.split(";")
    m = _SPEC.match(metric_part.strip())
    if not m:
        raise GreenlmError(
            f"--energy-metric: '{metric_part}' is not a metric name with an optional {{label=\"v\"}} filter: {hint}"
        )
    metric = m.group("metric")
    labels = _labels(m.group("labels") or "", text)
    settings: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in ("unit", "source"):
            raise GreenlmError(
                f"--energy-metric: ';{option}' is not understood: write ';unit=mJ' or ';source=measured'"
            )
        settings[key] = value
    unit, source, meter = _known(metric)
    if "unit" in settings:
        unit = settings["unit"]
        if unit not in UNITS_J:
            raise GreenlmError(
                f"--energy-metric: unit '{unit}' is unknown: write one of {', '.join(UNITS_J)}"
            )
    if unit is None:
        raise GreenlmError(
            f"--energy-metric: the unit of {metric} is unknown: add ';unit=J' (or {', '.join(u for u in UNITS_J if u != 'J')})"
        )
    if "source" in settings:
        if settings["source"] not in ("measured", "estimated"):
            raise GreenlmError(
                "--energy-metric: write ';source=measured' (a hardware counter) or ';source=estimated'"
            )
        source = settings["source"]
    return MetricSpec(parts.geturl(), metric, labels, unit, source, meter, raw)


def url_problem(url: str) -> tuple[str, str] | None:
    """(what is wrong, what to write) with an http(s) URL; None when it is fine."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL", "e.g. http://127.0.0.1:8080"
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return "has a bad port", "a number from 1 to 65535"
    return None


def url_check(url: str, flag: str):
    """The parsed http(s) URL, or one line saying what is wrong."""
    problem = url_problem(url)
    if problem is not None:
        raise GreenlmError(f"{flag} '{url}' {problem[0]}: write {problem[1]}")
    return urlsplit(url.strip())


def _labels(text: str, spec: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(str.strip, _split_labels(text)):
        m = _LABEL.fullmatch(item)
        if not m:
            raise GreenlmError(f"--energy-metric '{spec}': the label filter '{item}' is not name=\"value\"")
        labels[m.group(1)] = m.group(2).replace('\\"', '"')
    return labels


def _split_labels(text: str) -> list[str]:
    items, current, quoted, escaped = [], "", False, False
    for ch in text:
        if ch == "," and not quoted:
            items.append(current)
            current = ""
            continue
        current += ch
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
    items.append(current)
    return items


def _known(metric: str) -> tuple[str | None, EnergySource | None, str]:
    """(unit, energy source, meter name) from the metric's name; unit None when its name does not say."""
    if metric in KNOWN_METRICS:
        unit, source, meter = KNOWN_METRICS[metric]
        return unit, (None if meter == "greenlm" else source), meter
    if metric.startswith("kepler_") and metric.endswith("_joules_total"):
        return "J", ("measured" if _KEPLER_MEASURED.match(metric) else "estimated"), "kepler"
    name = metric.lower()
    for words, unit in (("millijoule", "mJ"), ("microjoule", "uJ"), ("kilojoule", "kJ"), ("joule", "J")):
        if words in name:
            return unit, "estimated", "prometheus"
    return None, "estimated", "prometheus"


def _series_key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


class PrometheusCounterMeter(AccumulatingMeter):
    """A remote energy counter, one scrape per read. Reads raise GreenlmError when the endpoint does not
    answer or no longer has the metric (the caller keeps the window open and tries again)."""

    def __init__(self, spec: MetricSpec, *, timeout_s: float = 5.0, headers: dict[str, str] | None = None):
        super().__init__()
        self.spec = spec
        self.name = spec.meter
        self.energy_source = spec.source or "measured"
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers or {})
        self._previous: dict[tuple, float] = {}  # last value of every series seen (kept when one vanishes)
        self.series = 0
        try:
            values, labels = self._scrape()
        except BaseException:
            self._client.close()
            raise
        self._previous.update(values)
        self._set_origin(labels)

    def _set_origin(self, labels: list[dict[str, str]]) -> None:
        """greenlm's counters say their meter and source in labels: the meter takes them (any unlabelled
        series, or a mix, makes the sum an estimate)."""
        if self.spec.meter != "greenlm":
            return
        sources = {lab.get("energy_source") for lab in labels}
        if self.spec.source is None:
            self.energy_source = "measured" if sources == {"measured"} else "estimated"
        meters = sorted({lab["meter"] for lab in labels if lab.get("meter")})
        self.name = "+".join(meters) if meters else "greenlm"

    @property
    def note(self) -> str:
        return (
            f"meter: {self.name} ({self.energy_source}) from the Prometheus counter {self.spec.describe()}, "
            f"{self.series} series summed"
        )

    def _scrape(self) -> tuple[dict[tuple, float], list[dict[str, str]]]:
        spec = self.spec
        try:
            response = self._client.get(spec.url)
        except httpx.HTTPError as exc:
            raise GreenlmError(f"energy metric {spec.url}: no answer ({type(exc).__name__}: {exc})") from None
        if response.status_code != 200:
            raise GreenlmError(f"energy metric {spec.url}: HTTP {response.status_code}")
        values: dict[tuple, float] = {}
        labels: list[dict[str, str]] = []
        try:
            families = list(text_string_to_metric_families(response.text))
        except ValueError as exc:
            raise GreenlmError(f"energy metric {spec.url}: not Prometheus text ({exc})") from None
        for family in families:
            for sample in family.samples:
                if sample.name not in (spec.metric, spec.metric + "_total"):
                    continue
                if any(sample.labels.get(k) != v for k, v in spec.labels.items()):
                    continue
                values[_series_key(sample.labels)] = float(sample.value)
                labels.append(dict(sample.labels))
        if not values:
            where = f" with labels {spec.labels}" if spec.labels else ""
            raise GreenlmError(f"energy metric {spec.url} has no series {spec.metric}{where}: check the name")
        self.series = len(values)
        return values, labels

    def _delta(self) -> tuple[float, Measurement | None]:
        before = time.perf_counter()
        values, _labels = self._scrape()
        after = time.perf_counter()
        added = 0.0
        for key, value in values.items():
            old = self._previous.get(key)
            if old is None:
                continue  # a new series: its count so far is not ours (a baseline)
            added += value - old if value >= old else value  # went down: reset, counts again from zero
        self._previous.update(values)
        joules = max(0.0, added * self.spec.j_per_unit)
        spent = Measurement(
            meter=self.name,
            energy_source=self.energy_source,
            duration_s=0.0,
            energy_j={"counter": joules},
        )
        return (before + after) / 2, spent  # the exporter answered somewhere in between: the middle

    def describe(self) -> dict:
        return {
            "meter": self.name,
            "energy_source": self.energy_source,
            "url": self.spec.url,
            "metric": self.spec.metric,
            "labels": self.spec.labels,
            "unit": self.spec.unit,
            "series": self.series,
        }

    def close(self) -> None:
        self._client.close()
