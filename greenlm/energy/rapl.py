"""CPU package and DRAM energy from RAPL counters in the Linux powercap sysfs tree.

Layout (the same on Intel and on AMD Zen, whose RAPL the intel_rapl_msr driver also exposes):

    intel-rapl:0      package-0   includes its core and uncore subzones, NOT its dram subzone
    intel-rapl:0:0    core        -> detail_j "core-0"
    intel-rapl:0:1    uncore      -> detail_j "uncore-0"
    intel-rapl:0:2    dram        -> energy_j "dram-0" (additive)
    intel-rapl:1      psys        -> detail_j "psys" (whole SoC, overlaps everything: never summed)

intel-rapl-mmio:* zones are a second window onto the same package counters and are ignored.

Each energy_uj counter counts up to max_energy_range_uj and then wraps to 0, so its period is
max_energy_range_uj + 1 uJ. (The hardware period is max_energy_range_uj plus one hardware energy unit,
15-61 uJ, which sysfs does not expose; the difference is below one count of the counter.)
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, window_duration_s
from greenlm.energy.cpuinfo import read_cpu_info
from greenlm.energy.ticker import start_ticker
from greenlm.errors import MeterUnavailable

log = logging.getLogger(__name__)

POWERCAP_ROOT = "/sys/class/powercap"
_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
# A package will not sustain this; reading at least twice per wrap period at this power sees every wrap.
_WRAP_GUARD_POWER_W = 1000.0


@dataclass(frozen=True)
class RaplZone:
    zone: str  # sysfs directory name, e.g. "intel-rapl:0:2"
    domain: str  # "package-0", "dram-0", "core-0", "psys"
    additive: bool  # summed into the total (packages and dram) or informative only
    energy_path: str
    max_energy_range_uj: int

    @property
    def period_uj(self) -> int:
        return self.max_energy_range_uj + 1


def _read_text(path: str | Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _permission_message(root: str, path: str | Path) -> str:
    return (
        f"cannot read {path}: permission denied (RAPL energy counters are root-only since Linux 5.10, "
        f"CVE-2020-8694); run as root, or `sudo chmod o+r {root}/intel-rapl:*/energy_uj "
        f"{root}/intel-rapl:*:*/energy_uj` (until reboot; a udev rule makes it permanent), "
        "or use the cpu-model meter"
    )


def _read_uj(root: str, path: str | Path) -> int:
    try:
        return int(_read_text(path).strip())
    except PermissionError:
        raise MeterUnavailable(_permission_message(root, path)) from None


def _zone_dirs(root: str) -> list[tuple[tuple[int, ...], Path]]:
    root_path = Path(root)
    if not root_path.is_dir():
        return []
    found = []
    for entry in root_path.iterdir():
        match = _ZONE_DIR.match(entry.name)
        if match:
            ids = tuple(int(g) for g in match.groups() if g is not None)
            found.append((ids, entry))
    return sorted(found)  # parents sort before their subzones


def _domain_for(name: str, ids: tuple[int, ...], parents: dict[int, str]) -> tuple[str, bool]:
    if len(ids) == 1:
        if name.startswith("package"):
            return name, True  # "package-0", or "package-0-die-1" on multi-die parts
        if name == "dram":
            return f"dram-{ids[0]}", True
        return name, False  # psys and anything unknown: never risk double counting
    parent = parents.get(ids[0], f"package-{ids[0]}")
    suffix = parent.removeprefix("package-") if parent.startswith("package-") else str(ids[0])
    return f"{name}-{suffix}", name == "dram"


def discover_zones(root: str = POWERCAP_ROOT) -> tuple[list[RaplZone], dict[str, str]]:
    """(readable zones, {zone dir: why skipped}). Raises MeterUnavailable when nothing is usable."""
    dirs = _zone_dirs(root)
    if not dirs:
        raise MeterUnavailable(
            f"no {root}/intel-rapl:* zones: not an Intel/AMD host with powercap, "
            "or a VM/container that hides them"
        )
    zones: list[RaplZone] = []
    skipped: dict[str, str] = {}
    parents: dict[int, str] = {}
    seen: dict[str, str] = {}
    for ids, path in dirs:
        try:
            name = _read_text(path / "name").strip()
        except OSError as e:
            skipped[path.name] = f"unreadable name: {e}"
            continue
        domain, additive = _domain_for(name, ids, parents)
        if len(ids) == 1:
            parents[ids[0]] = domain
        if domain in seen:
            # Two zones with one name are two interfaces to one counter; summing both would double it.
            skipped[path.name] = f"duplicate of {seen[domain]} ({domain})"
            continue
        energy_path = path / "energy_uj"
        try:
            max_range = int(_read_text(path / "max_energy_range_uj").strip())
            _read_uj(root, energy_path)  # PermissionError -> MeterUnavailable with the fix
        except (OSError, ValueError) as e:
            skipped[path.name] = f"unreadable counter: {e}"
            continue
        if max_range <= 0:
            skipped[path.name] = f"max_energy_range_uj is {max_range}"
            continue
        seen[domain] = path.name
        zones.append(RaplZone(path.name, domain, additive, str(energy_path), max_range))
    if not any(z.additive for z in zones):
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no package zone"
        raise MeterUnavailable(f"RAPL zones under {root} have no readable package counter ({reasons})")
    return zones, skipped


class RaplMeter(Meter):
    """Reads energy_uj at window edges.

    Readings hold unwrapped counters: every read() compares each counter with the previous read of
    this meter and adds one period when it went down. A counter can wrap in a few minutes (AMD: about
    65 kJ, 4 min at 280 W), so a window with no read inside it could miss a second wrap; a daemon
    thread (wrap_guard_s) reads the counters often enough to see every wrap. It takes no part in the
    energy figures, which still come from the two edge reads.
    """

    name = "rapl"
    energy_source: EnergySource = "measured"

    def __init__(
        self,
        root: str = POWERCAP_ROOT,
        *,
        wrap_guard_s: float | Literal["auto"] | None = "auto",
    ) -> None:
        self.root = str(root)
        self.zones, self.skipped = discover_zones(self.root)
        if wrap_guard_s == "auto":
            range_j = min(z.max_energy_range_uj for z in self.zones) / 1e6
            wrap_guard_s = max(1.0, min(60.0, range_j / _WRAP_GUARD_POWER_W / 2))
        self.wrap_guard_s = wrap_guard_s
        self._lock = threading.Lock()
        self._last_raw: dict[str, int] = {}
        self._offset_uj: dict[str, int] = {z.domain: 0 for z in self.zones}
        self._stop = threading.Event()
        self._guard: threading.Thread | None = None
        self._closed = False

    def read(self) -> Reading:
        with self._lock:
            t0 = time.perf_counter()
            raw = {z.domain: _read_uj(self.root, z.energy_path) for z in self.zones}
            t1 = time.perf_counter()
            values: dict[str, float] = {}
            for z in self.zones:
                last = self._last_raw.get(z.domain)
                if last is not None and raw[z.domain] < last:
                    self._offset_uj[z.domain] += z.period_uj
                self._last_raw[z.domain] = raw[z.domain]
                values[z.domain] = float(raw[z.domain] + self._offset_uj[z.domain])
        self._start_guard()
        return Reading(time_s=(t0 + t1) / 2, values=values)

    def measure(self, start: Reading, end: Reading) -> Measurement:
        duration_s = window_duration_s(start, end)
        energy_j: dict[str, float] = {}
        detail_j: dict[str, float] = {}
        for z in self.zones:
            try:
                delta_uj = end.values[z.domain] - start.values[z.domain]
            except KeyError:
                raise ValueError(f"reading has no {z.domain}: it was not taken by this RAPL meter") from None
            if delta_uj < 0:
                delta_uj += z.period_uj  # raw counters across one wrap
            joules = max(0.0, delta_uj) / 1e6
            (energy_j if z.additive else detail_j)[z.domain] = joules
        return Measurement(self.name, self.energy_source, duration_s, energy_j, detail_j)

    def _start_guard(self) -> None:
        if self._guard is not None or self._closed or not self.wrap_guard_s:
            return
        with self._lock:
            if self._guard is not None:
                return
            self._guard = start_ticker(
                self, RaplMeter._guard_tick, float(self.wrap_guard_s), self._stop, "greenlm-rapl-wrap-guard"
            )

    def _guard_tick(self) -> bool:
        try:
            self.read()
        except (OSError, MeterUnavailable, ValueError) as e:
            log.debug("RAPL wrap guard stopped: %s", e)
            return False
        return True

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "cpu": read_cpu_info().brand,
            "root": self.root,
            "domains": {
                z.domain: {
                    "zone": z.zone,
                    "additive": z.additive,
                    "max_energy_range_uj": z.max_energy_range_uj,
                }
                for z in self.zones
            },
            "skipped_zones": dict(self.skipped),
            "wrap_guard_s": self.wrap_guard_s,
            "note": "package includes core/uncore; dram is separate; psys overlaps all and is not summed",
        }

    def close(self) -> None:
        self._closed = True
        self._stop.set()
        guard = self._guard
        if guard is not None and guard is not threading.current_thread():
            guard.join(timeout=5)
