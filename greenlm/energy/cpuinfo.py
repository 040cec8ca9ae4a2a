"""Which CPU this is, how many cores a package has, and its TDP from codecarbon's table.

codecarbon is only a data source here: its CSV is located with find_spec and read directly, because
importing codecarbon takes seconds and pulls in half of PyPI.
"""

from __future__ import annotations

import csv
import importlib.util
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psutil

PROC_CPUINFO = "/proc/cpuinfo"


@dataclass(frozen=True)
class CpuInfo:
    brand: str  # as the OS reports it, e.g. "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    cores_per_package: int | None  # physical cores in one package (socket); None when unknown
    packages: int  # sockets


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
    brand, cores, packages = parse_cpuinfo(_read_proc_cpuinfo())
    if not brand and sys.platform == "darwin":
        brand = _mac_brand()
    if not brand:
        brand = platform.processor() or platform.machine() or "unknown"
    if cores is None:
        physical = psutil.cpu_count(logical=False)
        if physical:
            cores = max(1, physical // packages)
    return CpuInfo(brand=brand, cores_per_package=cores, packages=packages)


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
