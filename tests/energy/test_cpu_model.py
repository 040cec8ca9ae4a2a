import json
import math

import psutil
import pytest

from greenlm.energy import Reading, cpu_model, cpuinfo
from greenlm.energy.cpu_model import DEFAULT_WATTS_PER_CORE, CpuModelMeter
from greenlm.energy.cpuinfo import lookup_tdp, normalize_cpu_name, parse_cpuinfo
from greenlm.errors import GreenlmError


def _cpuinfo_text(brand: str, cores: int, packages: int = 1) -> str:
    blocks = []
    for pkg in range(packages):
        for core in range(cores):
            cpu = pkg * cores + core
            blocks.append(
                f"processor\t: {cpu}\nmodel name\t: {brand}\nphysical id\t: {pkg}\ncpu cores\t: {cores}\n"
            )
    return "\n".join(blocks)


@pytest.fixture
def fake_cpu(monkeypatch):
    def install(brand: str, cores: int, packages: int = 1) -> None:
        monkeypatch.setattr(cpuinfo, "_read_proc_cpuinfo", lambda: _cpuinfo_text(brand, cores, packages))

    return install


def _busy(seconds: float) -> None:
    end = psutil.Process().cpu_times().user + seconds
    while psutil.Process().cpu_times().user < end:
        sum(i * i for i in range(2000))


def test_busy_loop_energy_is_cpu_seconds_times_watts():
    meter = CpuModelMeter(watts_per_core=10.0)
    process = psutil.Process()
    before = process.cpu_times()
    with meter.window() as w:
        _busy(0.2)
    after = process.cpu_times()
    cpu_s = (after.user + after.system) - (before.user + before.system)
    m = w.measurement
    assert m.meter == "cpu-model" and m.energy_source == "estimated"
    assert m.energy_j["cpu"] >= 10.0 * 0.2 * 0.95
    assert m.energy_j["cpu"] == pytest.approx(10.0 * cpu_s, abs=10.0 * 0.03)  # 10 ms clock ticks
    assert m.energy_j["memory"] > 0
    assert m.total_j == m.energy_j["cpu"] + m.energy_j["memory"]


def test_measure_formula_on_exact_readings():
    meter = CpuModelMeter(watts_per_core=5.0, memory_w_per_gb=0.5)
    start = Reading(10.0, {"cpu_s": 1.0, "rss_bytes": float(2**30)})
    end = Reading(12.0, {"cpu_s": 4.0, "rss_bytes": float(3 * 2**30)})
    m = meter.measure(start, end)
    assert m.energy_j == {"cpu": 15.0, "memory": pytest.approx(2.0 * 0.5 * 2.0)}
    assert m.duration_s == 2.0


def test_cpu_time_going_backwards_counts_nothing():
    meter = CpuModelMeter(watts_per_core=5.0, memory_w_per_gb=0.0)
    m = meter.measure(
        Reading(0.0, {"cpu_s": 4.0, "rss_bytes": 0.0}), Reading(1.0, {"cpu_s": 3.0, "rss_bytes": 0.0})
    )
    assert m.total_j == 0.0


def test_override_is_respected_and_described():
    meter = CpuModelMeter(watts_per_core=12.5)
    d = meter.describe()
    json.dumps(d)
    assert d["watts_per_core"] == 12.5 and d["watts_source"] == "user override"
    assert d["memory_w_per_gb"] == 0.375


def test_known_cpu_uses_codecarbon_tdp_per_core(fake_cpu):
    fake_cpu("AMD EPYC 7502 32-Core Processor", cores=32, packages=2)
    meter = CpuModelMeter()
    assert meter.watts_per_core == pytest.approx(180.0 / 32)
    assert meter.watts_source == "codecarbon cpu_power.csv: AMD EPYC 7502 TDP 180 W / 32 cores"
    assert meter.describe()["cpu"] == "AMD EPYC 7502 32-Core Processor"


def test_unknown_cpu_uses_default(fake_cpu):
    fake_cpu("Intel(R) Xeon(R) Processor", cores=2)
    meter = CpuModelMeter()
    assert meter.watts_per_core == DEFAULT_WATTS_PER_CORE
    assert meter.watts_source == "default (unknown CPU)"


def test_no_codecarbon_table_uses_default(fake_cpu, monkeypatch):
    fake_cpu("AMD EPYC 7502 32-Core Processor", cores=32)
    monkeypatch.setattr(cpu_model, "codecarbon_cpu_table_path", lambda: None)
    meter = CpuModelMeter()
    assert meter.watts_per_core == DEFAULT_WATTS_PER_CORE
    assert meter.watts_source == "default (codecarbon cpu_power.csv not found)"


@pytest.mark.parametrize("bad", [0.0, -3.0, math.nan, math.inf])
def test_bad_watts_are_rejected(bad):
    with pytest.raises(GreenlmError, match="watts_per_core"):
        CpuModelMeter(watts_per_core=bad)
    with pytest.raises(GreenlmError, match="memory_w_per_gb"):
        CpuModelMeter(memory_w_per_gb=-abs(bad) or -1.0)


@pytest.mark.parametrize(
    ("brand", "normalized"),
    [
        ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "Intel Xeon Gold 6248"),
        ("Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz", "Intel Xeon E5-2620 v4"),
        ("13th Gen Intel(R) Core(TM) i9-13900K", "Intel Core i9-13900K"),
        ("AMD Ryzen 7 5800H with Radeon Graphics", "AMD Ryzen 7 5800H"),
        ("Intel(R) Xeon(R) Processor", "Intel Xeon"),
    ],
)
def test_normalize_cpu_name(brand, normalized):
    assert normalize_cpu_name(brand) == normalized


@pytest.mark.parametrize(
    ("brand", "tdp_w"),
    [
        ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", 150.0),
        ("Intel(R) Xeon(R) CPU E5-2620 v4 @ 2.10GHz", 85.0),
        ("Intel(R) Core(TM) i7-10700K CPU @ 3.80GHz", 125.0),
        ("AMD Ryzen 9 5950X 16-Core Processor", 105.0),
        ("Intel(R) Xeon(R) Processor", None),
        ("Intel(R) Xeon(R) CPU @ 2.20GHz", None),
        ("Intel(R) Xeon(R) CPU E5-2620 v9 @ 2.10GHz", None),  # never borrows another version's TDP
    ],
)
def test_lookup_tdp(brand, tdp_w):
    entry = lookup_tdp(brand)
    assert (entry.tdp_w if entry else None) == tdp_w


def test_parse_cpuinfo_counts_packages_and_cores():
    assert parse_cpuinfo(_cpuinfo_text("X", cores=4, packages=2)) == ("X", 4, 2)
    assert parse_cpuinfo("") == ("", None, 1)
