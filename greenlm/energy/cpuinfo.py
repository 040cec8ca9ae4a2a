"""Which CPU this is, how many physical cores the real part has, which cores this process may use, and
the part's TDP from codecarbon's table.

codecarbon is only a data source here: its CSV is located with find_spec and read directly, because
importing codecarbon takes seconds and pulls in half of PyPI. Its table has names and TDPs, no core counts.

Core count of the real part, in order of trust:
  1. the brand string, when it names one ("AMD EPYC 7502 32-Core Processor"), in a VM or not;
  2. /proc/cpuinfo `cpu cores` on bare metal (it describes the physical package there);
  3. none inside a VM (the `hypervisor` CPU flag): the guest's `cpu cores` is its vCPU slice, not the part,
     so dividing the part's TDP by it would charge a 2-vCPU guest of a 32-core part TDP/2 per core.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psutil

PROC_CPUINFO = "/proc/cpuinfo"


SYSFS_CPU = "/sys/devices/system/cpu"


@dataclass(frozen=True)
class CpuInfo:
    brand: str  # as the OS reports it, e.g. "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    # Physical cores of one package of the real part (socket); None when unknown (always so in a VM whose
    # brand string names no core count).
    cores_per_package: int | None
    packages: int  # sockets (as this OS sees them)
    virtual: bool = False  # running under a hypervisor: the CPU topology seen here is the guest's
    cores_source: str = ""  # where cores_per_package came from, or why it is unknown


@dataclass(frozen=True)
class TdpEntry:
    name: str  # the row's Name in cpu_power.csv
    tdp_w: float


def _read_proc_cpuinfo() -> str:
    try:
        with open(PROC_CPUINFO, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _mac_brand() -> str:
    try:
        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=2
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def is_virtual(text: str) -> bool:
    """The x86 `hypervisor` CPU flag: set by every mainstream hypervisor (KVM, Xen, Hyper-V, VMware)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return "hypervisor" in value.split()
    return False


_BRAND_CORES = re.compile(r"\b(\d+)-Core\b", re.IGNORECASE)


def brand_cores(brand: str) -> int | None:
    """The core count a brand string names ("AMD EPYC 7502 32-Core Processor" -> 32), else None."""
    match = _BRAND_CORES.search(brand)
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def parse_cpuinfo(text: str) -> tuple[str, int | None, int]:
    """(brand, physical cores per package, packages) from /proc/cpuinfo text; blanks when absent."""
    brand = ""
    cores: int | None = None
    package_ids: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "model name" and not brand:
            brand = value
        elif key == "cpu cores" and cores is None and value.isdigit():
            cores = int(value)
        elif key == "physical id":
            package_ids.add(value)
    return brand, cores, max(1, len(package_ids))


def read_cpu_info() -> CpuInfo:
    text = _read_proc_cpuinfo()
    brand, cores, packages = parse_cpuinfo(text)
    virtual = is_virtual(text)
    if not brand and sys.platform == "darwin":
        brand = _mac_brand()
    if not brand:
        brand = platform.processor() or platform.machine() or "unknown"
    named = brand_cores(brand)
    if named is not None:
        return CpuInfo(brand, named, packages, virtual, "the brand string")
    if virtual:
        return CpuInfo(
            brand,
            None,
            packages,
            virtual,
            "unknown: a VM (hypervisor flag) shows its vCPUs, not the part's cores",
        )
    if cores is not None:
        return CpuInfo(brand, cores, packages, virtual, "/proc/cpuinfo 'cpu cores' (bare metal)")
    physical = psutil.cpu_count(logical=False)
    if physical:
        return CpuInfo(
            brand, max(1, physical // packages), packages, virtual, "psutil physical cores (bare metal)"
        )
    return CpuInfo(brand, None, packages, virtual, "unknown: the OS reports no physical core count")


@dataclass(frozen=True)
class CoreShare:
    """The cores a process may run on, in physical cores: an SMT sibling is 1/siblings of its core."""

    logical_cpus: int  # CPUs in the affinity mask
    core_equivalents: float  # sum over those CPUs of 1 / (hardware threads of its core)
    source: str  # how the SMT siblings were counted

    @property
    def core_fraction(self) -> float:
        """Physical cores per logical CPU of this mask: converts busy CPU-seconds to core-seconds."""
        return self.core_equivalents / self.logical_cpus


def allowed_cpus(pid: int = 0) -> list[int]:
    """The CPUs `pid` (0: this process) may run on: its affinity, else every CPU."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except (AttributeError, OSError):  # not Linux, or the process is gone
        return list(range(psutil.cpu_count(logical=True) or 1))


def parse_cpu_list(text: str) -> list[int]:
    """Linux cpulist format ("0-3,8,10-11") -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def smt_siblings(sysfs_root: str = SYSFS_CPU) -> tuple[dict[int, int], str]:
    """{cpu: hardware threads on its core} from sysfs thread_siblings_list, and where the counts came from.

    Without sysfs (not Linux), every CPU gets psutil's logical / physical ratio.
    """
    root = Path(sysfs_root)
    counts: dict[int, int] = {}
    if root.is_dir():
        for entry in root.glob("cpu[0-9]*"):
            try:
                siblings = parse_cpu_list((entry / "topology" / "thread_siblings_list").read_text())
                counts[int(entry.name[3:])] = max(1, len(siblings))
            except (OSError, ValueError):
                continue
    if counts:
        return counts, f"{sysfs_root}/cpu*/topology/thread_siblings_list"
    logical = psutil.cpu_count(logical=True) or 1
    physical = psutil.cpu_count(logical=False) or logical
    ratio = max(1, round(logical / physical))
    return {cpu: ratio for cpu in range(logical)}, "psutil logical / physical CPU counts"


def core_share(cpus: list[int], siblings: dict[int, int], source: str) -> CoreShare:
    # A CPU the sibling map does not know (hot-plugged since) counts as a whole core: never undercount.
    equivalents = sum(1.0 / siblings.get(cpu, 1) for cpu in cpus)
    return CoreShare(logical_cpus=max(1, len(cpus)), core_equivalents=max(equivalents, 1e-9), source=source)


_NOISE = [
    re.compile(r"\((?:R|TM)\)", re.IGNORECASE),  # Intel(R) Core(TM)
    re.compile(r"@.*$"),  # clock suffix "@ 2.50GHz"
    re.compile(r"\b\d+(?:st|nd|rd|th) Gen\b", re.IGNORECASE),  # "13th Gen Intel ..."
    re.compile(r"\b\d+-Core Processor\b", re.IGNORECASE),  # AMD "32-Core Processor"
    re.compile(r"\bwith Radeon\b.*$", re.IGNORECASE),  # AMD APUs
    re.compile(r"\b(?:CPU|Processor)\b", re.IGNORECASE),
]


def normalize_cpu_name(brand: str) -> str:
    """Brand string -> cpu_power.csv style.

    "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz" -> "Intel Xeon Gold 6248"
    """
    name = brand
    for pattern in _NOISE:
        name = pattern.sub(" ", name)
    return " ".join(name.split())


def codecarbon_cpu_table_path() -> Path | None:
    spec = importlib.util.find_spec("codecarbon")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "hardware" / "cpu_power.csv"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=4)
def load_tdp_table(path: Path) -> dict[str, TdpEntry]:
    """Lower-cased name -> entry; unparsable rows are skipped (the table is community-maintained)."""
    table: dict[str, TdpEntry] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                entry = TdpEntry(name=row["Name"].strip(), tdp_w=float(row["TDP"]))
            except (KeyError, TypeError, ValueError):
                continue
            if entry.tdp_w > 0:
                table.setdefault(" ".join(entry.name.lower().split()), entry)
    return table


def _strip_vendor(name: str) -> str:
    return re.sub(r"^(?:intel|amd)\s+", "", name)


def lookup_tdp(brand: str, table_path: Path | None = None) -> TdpEntry | None:
    """The table row for this brand string, or None.

    Exact match on the normalised name first, then with the vendor word dropped on both sides, then
    the longest table name the brand starts with when what follows has no digits (so "Xeon E5-2620 v5"
    never borrows the v1's TDP, while trailing words like "Mobile" are tolerated).
    """
    path = table_path if table_path is not None else codecarbon_cpu_table_path()
    if path is None:
        return None
    table = load_tdp_table(path)
    wanted = normalize_cpu_name(brand).lower()
    if not wanted:
        return None
    if wanted in table:
        return table[wanted]
    bare = _strip_vendor(wanted)
    by_bare = {_strip_vendor(k): v for k, v in table.items()}
    if bare in by_bare:
        return by_bare[bare]
    best: TdpEntry | None = None
    best_len = 0
    for key, entry in table.items():
        if len(key) > best_len and wanted.startswith(key + " ") and any(c.isdigit() for c in key):
            rest = wanted[len(key) :]
            if not any(c.isdigit() for c in rest):
                best, best_len = entry, len(key)
    return best
