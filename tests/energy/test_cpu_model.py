import json
import math
import os
import subprocess
import sys
import time

import psutil
import pytest

from greenlm.energy import Reading, cpu_model, cpuinfo
from greenlm.energy.cpu_model import (
    DEFAULT_WATTS_PER_CORE,
    DYNAMIC_DOMAIN,
    IDLE_TO_FULL_RATIO,
    STATIC_DOMAIN,
    CpuModelMeter,
)
from greenlm.energy.cpuinfo import lookup_tdp, normalize_cpu_name, parse_cpuinfo
from greenlm.errors import GreenlmError


def _cpuinfo_text(brand: str, cores: int, packages: int = 1, *, vm: bool = False) -> str:
    flags = "fpu vme de pse tsc msr ht" + (" hypervisor" if vm else "")
    blocks = []
    for pkg in range(packages):
        for core in range(cores):
            cpu = pkg * cores + core
            blocks.append(
                f"processor\t: {cpu}\nmodel name\t: {brand}\nphysical id\t: {pkg}\ncpu cores\t: {cores}\n"
                f"flags\t\t: {flags}\n"
            )
    return "\n".join(blocks)


@pytest.fixture
def fake_cpu(monkeypatch):
    def install(brand: str, cores: int, packages: int = 1, *, vm: bool = False) -> None:
        text = _cpuinfo_text(brand, cores, packages, vm=vm)
        monkeypatch.setattr(cpuinfo, "_read_proc_cpuinfo", lambda: text)

    return install


@pytest.fixture
def fake_topology(monkeypatch, tmp_path):
    """A sysfs cpu tree with the given SMT sibling groups, and an affinity mask over some of its CPUs."""

    def install(sibling_groups: list[list[int]], allowed: list[int]) -> None:
        root = tmp_path / "sys-cpu"
        for group in sibling_groups:
            for cpu in group:
                topo = root / f"cpu{cpu}" / "topology"
                topo.mkdir(parents=True)
                (topo / "thread_siblings_list").write_text(",".join(map(str, group)) + "\n")
        siblings = cpuinfo.smt_siblings(str(root))
        monkeypatch.setattr(cpu_model, "smt_siblings", lambda: siblings)
        monkeypatch.setattr(cpu_model, "allowed_cpus", lambda pid=0: list(allowed))

    return install


def _busy(seconds: float) -> None:
    end = psutil.Process().cpu_times().user + seconds
    while psutil.Process().cpu_times().user < end:
        sum(i * i for i in range(2000))


def _reading(time_s: float, cpu_s: float, *, cores: float = 2.0, fraction: float = 1.0, rss_gb: float = 0.0):
    values = {
        "cpu_s": cpu_s,
        "rss_bytes": rss_gb * 2**30,
        "core_equivalents": cores,
        "core_fraction": fraction,
    }
    return Reading(time_s, values)


def test_busy_loop_energy_is_static_for_the_window_plus_dynamic_for_cpu_time():
    meter = CpuModelMeter(watts_per_core=10.0, idle_watts_per_core=2.0)
    share = meter.share()
    process = psutil.Process()
    before = process.cpu_times()
    with meter.window() as w:
        _busy(0.2)
    after = process.cpu_times()
    cpu_s = (after.user + after.system) - (before.user + before.system)
    m = w.measurement
    assert m.meter == "cpu-model" and m.energy_source == "estimated"
    static, dynamic = m.detail_j[STATIC_DOMAIN], m.detail_j[DYNAMIC_DOMAIN]
    assert static == pytest.approx(2.0 * share.core_equivalents * m.duration_s)
    # 10 ms clock ticks on the CPU time
    assert dynamic == pytest.approx(8.0 * cpu_s * share.core_fraction, abs=8.0 * 0.03)
    assert dynamic >= 8.0 * 0.2 * share.core_fraction * 0.95
    assert m.energy_j["cpu"] == pytest.approx(static + dynamic)
    assert m.energy_j["memory"] > 0
    assert m.total_j == m.energy_j["cpu"] + m.energy_j["memory"]


def test_measure_formula_on_exact_readings():
    meter = CpuModelMeter(watts_per_core=5.0, idle_watts_per_core=1.0, memory_w_per_gb=0.5)
    start = _reading(10.0, 1.0, cores=2.0, rss_gb=1.0)
    end = _reading(12.0, 4.0, cores=2.0, rss_gb=3.0)
    m = meter.measure(start, end)
    # static 1 W x 2 cores x 2 s; dynamic (5 - 1) W x 3 busy core-s
    assert m.detail_j == {STATIC_DOMAIN: pytest.approx(4.0), DYNAMIC_DOMAIN: pytest.approx(12.0)}
    assert m.energy_j == {"cpu": pytest.approx(16.0), "memory": pytest.approx(2.0 * 0.5 * 2.0)}
    assert m.duration_s == 2.0


def test_a_slower_run_with_the_same_cpu_time_costs_more():
    """Finding 1 of issue 12: 1 thread for twice as long must not cost the same as 2 threads for half."""
    meter = CpuModelMeter(watts_per_core=7.5, idle_watts_per_core=1.5, memory_w_per_gb=0.0)
    one_thread = meter.measure(_reading(0.0, 0.0), _reading(2.0, 2.0))  # 2 s wall, 2 busy core-s
    two_threads = meter.measure(_reading(0.0, 0.0), _reading(1.0, 2.0))  # 1 s wall, 2 busy core-s
    assert one_thread.detail_j[DYNAMIC_DOMAIN] == two_threads.detail_j[DYNAMIC_DOMAIN]
    assert one_thread.total_j - two_threads.total_j == pytest.approx(1.5 * 2 * 1.0)  # 2 cores idle 1 s more


def test_smt_siblings_count_as_their_fraction_of_a_core(fake_topology):
    # Two cores with two hardware threads each (0,2 and 1,3); the process may use three of the four threads.
    fake_topology([[0, 2], [1, 3]], allowed=[0, 1, 2])
    meter = CpuModelMeter(watts_per_core=6.0, idle_watts_per_core=2.0, memory_w_per_gb=0.0)
    share = meter.share()
    assert share.logical_cpus == 3 and share.core_equivalents == pytest.approx(1.5)
    assert share.core_fraction == pytest.approx(0.5)
    with meter.window() as w:
        pass
    assert w.measurement.detail_j[STATIC_DOMAIN] == pytest.approx(2.0 * 1.5 * w.measurement.duration_s)
    static = meter.describe()["static"]
    assert static["allotted_cpus"] == 3 and static["allotted_cores"] == pytest.approx(1.5)
    # 4 busy CPU-seconds on hyperthreads are 2 busy core-seconds
    m = meter.measure(
        _reading(0.0, 0.0, cores=1.5, fraction=0.5), _reading(1.0, 4.0, cores=1.5, fraction=0.5)
    )
    assert m.detail_j[DYNAMIC_DOMAIN] == pytest.approx(4.0 * 2.0)


def test_static_power_follows_the_affinity_mask(fake_topology):
    fake_topology([[0], [1], [2], [3]], allowed=[2])
    meter = CpuModelMeter(watts_per_core=6.0, idle_watts_per_core=2.0)
    assert meter.share().core_equivalents == 1.0
    assert meter.describe()["static"]["power_w"] == pytest.approx(2.0)


def test_missing_sysfs_falls_back_to_psutil_ratio(tmp_path):
    siblings, source = cpuinfo.smt_siblings(str(tmp_path / "absent"))
    assert source == "psutil logical / physical CPU counts"
    assert siblings and all(n >= 1 for n in siblings.values())


def test_parse_cpu_list():
    assert cpuinfo.parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]


def test_overrides_are_respected_and_described():
    meter = CpuModelMeter(watts_per_core=12.5, idle_watts_per_core=3.0)
    d = meter.describe()
    json.dumps(d)
    assert d["watts_per_core"] == 12.5 and d["watts_source"] == "user override (--watts-per-core)"
    assert d["static"]["idle_watts_per_core"] == 3.0
    assert d["static"]["source"] == "user override (--idle-watts-per-core)"
    assert d["dynamic"]["watts_per_busy_core"] == 9.5
    assert d["memory_w_per_gb"] == 0.375


def test_idle_defaults_to_the_sourced_ratio_of_full_power():
    meter = CpuModelMeter(watts_per_core=10.0)
    assert meter.idle_watts_per_core == pytest.approx(10.0 * 0.74 / 3.5)
    assert IDLE_TO_FULL_RATIO == pytest.approx(0.2114, abs=1e-4)
    source = meter.describe()["static"]["source"]
    assert "Cloud Carbon Footprint" in source and "SPECpower_ssj2008" in source and "assumed" in source


def test_idle_above_full_power_is_refused():
    with pytest.raises(GreenlmError, match="idle watts per core .* exceed"):
        CpuModelMeter(watts_per_core=5.0, idle_watts_per_core=6.0)
    assert CpuModelMeter(watts_per_core=5.0, idle_watts_per_core=0.0).idle_watts_per_core == 0.0


def test_known_cpu_on_bare_metal_uses_tdp_per_physical_core(fake_cpu):
    fake_cpu("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", cores=20, packages=2)
    meter = CpuModelMeter()
    assert meter.watts_per_core == pytest.approx(150.0 / 20)
    assert meter.watts_source.startswith("codecarbon cpu_power.csv: Intel Xeon Gold 6248 TDP 150 W / 20")
    assert "bare metal" in meter.watts_source
    assert meter.describe()["cpu"] == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"


def test_vm_guest_core_count_is_never_the_parts(fake_cpu):
    """Finding 2 of issue 12: a 2-vCPU guest of a 20-core part must not be charged TDP/2 per core."""
    fake_cpu("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", cores=2, vm=True)
    meter = CpuModelMeter()
    assert meter.watts_per_core == DEFAULT_WATTS_PER_CORE
    assert "Intel Xeon Gold 6248 TDP 150 W is known" in meter.watts_source
    assert "VM" in meter.watts_source
    d = meter.describe()
    assert d["virtual_machine"] is True and d["cores_per_package"] is None


def test_vm_with_a_core_count_in_the_brand_uses_it(fake_cpu):
    fake_cpu("AMD EPYC 7502 32-Core Processor", cores=2, vm=True)
    meter = CpuModelMeter()
    assert meter.watts_per_core == pytest.approx(180.0 / 32)
    assert "AMD EPYC 7502 TDP 180 W / 32 physical cores (the brand string)" in meter.watts_source


def test_unknown_cpu_uses_default(fake_cpu):
    fake_cpu("Intel(R) Xeon(R) Processor", cores=2)
    meter = CpuModelMeter()
    assert meter.watts_per_core == DEFAULT_WATTS_PER_CORE
    assert "not in cpu_power.csv" in meter.watts_source


def test_no_codecarbon_table_uses_default(fake_cpu, monkeypatch):
    fake_cpu("AMD EPYC 7502 32-Core Processor", cores=32)
    monkeypatch.setattr(cpu_model, "codecarbon_cpu_table_path", lambda: None)
    meter = CpuModelMeter()
    assert meter.watts_per_core == DEFAULT_WATTS_PER_CORE
    assert "codecarbon cpu_power.csv not found" in meter.watts_source


@pytest.mark.parametrize("bad", [0.0, -3.0, math.nan, math.inf])
def test_bad_watts_are_rejected(bad):
    with pytest.raises(GreenlmError, match="watts_per_core"):
        CpuModelMeter(watts_per_core=bad)
    with pytest.raises(GreenlmError, match="idle_watts_per_core"):
        CpuModelMeter(idle_watts_per_core=-abs(bad) or -1.0)
    with pytest.raises(GreenlmError, match="memory_w_per_gb"):
        CpuModelMeter(memory_w_per_gb=-abs(bad) or -1.0)


_CHILD = """
import os, sys, time
t0 = os.times()
while os.times().user - t0.user < 0.3:
    sum(i * i for i in range(2000))
print("done", flush=True)
sys.stdin.read()  # stay alive (unreaped) until the parent closes stdin
"""


@pytest.mark.parametrize("include_children", [False, True])
def test_live_child_processes_count_only_when_asked(include_children):
    meter = CpuModelMeter(watts_per_core=10.0, idle_watts_per_core=0.0, include_children=include_children)
    start = meter.begin_window()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "done"
        m = meter.end_window(start)  # the child is alive: only a process-tree meter sees its CPU time
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    child_j = 10.0 * 0.3 * meter.share().core_fraction
    if include_children:
        assert m.detail_j[DYNAMIC_DOMAIN] >= child_j * 0.9
        assert "live descendants" in meter.describe()["scope"]
    else:
        assert m.detail_j[DYNAMIC_DOMAIN] < child_j * 0.5  # this process only read a pipe meanwhile
    # once reaped, the child's time is in this process's children_* and every meter counts it
    reaped = meter.end_window(start)
    assert reaped.detail_j[DYNAMIC_DOMAIN] >= child_j * 0.9


def test_another_process_can_be_metered():
    meter = CpuModelMeter(pid=os.getpid())
    with meter.window() as w:
        _busy(0.05)
    assert w.measurement.detail_j[DYNAMIC_DOMAIN] > 0
    with pytest.raises(GreenlmError, match="cannot meter process"):
        CpuModelMeter(pid=2**22 + 12345)


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


def test_vm_and_brand_core_detection():
    assert cpuinfo.is_virtual(_cpuinfo_text("X", 2, vm=True))
    assert not cpuinfo.is_virtual(_cpuinfo_text("X", 2))
    assert cpuinfo.brand_cores("AMD Ryzen 9 5950X 16-Core Processor") == 16
    assert cpuinfo.brand_cores("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz") is None


def test_own_process_fast_reading_agrees_with_psutil_and_resolves_milliseconds():
    meter = CpuModelMeter(watts_per_core=5.0)
    try:
        assert meter._own  # this process: read from its CPU clock and /proc/self/statm
        process = psutil.Process()
        reading = meter.read()
        times, rss = process.cpu_times(), process.memory_info().rss
        # psutil counts in clock ticks (10 ms): the fast path must agree to within a few ticks
        psutil_cpu_s = times.user + times.system + times.children_user + times.children_system
        assert abs(reading.values["cpu_s"] - psutil_cpu_s) < 0.05
        assert abs(reading.values["rss_bytes"] - rss) < 16 * 2**20
        start = meter.read()
        end_s = time.process_time() + 0.003
        while time.process_time() < end_s:  # 3 ms of work: below one clock tick, seen by the CPU clock
            pass
        assert meter.measure(start, meter.read()).detail_j["cpu-dynamic"] > 0
    finally:
        meter.close()
        meter.close()  # idempotent
