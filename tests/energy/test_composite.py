import json

import pytest

from greenlm.energy import Measurement, get_meter
from greenlm.energy.composite import CompositeMeter
from tests.energy.fakes import CounterMeter, FakeGpu


def test_composite_sums_members_and_keeps_names():
    cpu, gpu = CounterMeter("rapl", ["package-0", "dram-0"]), CounterMeter("nvml", ["gpu-0"])
    meter = CompositeMeter([cpu, gpu])
    assert meter.name == "rapl+nvml" and meter.energy_source == "measured"
    with meter.window() as outer:
        cpu.counter_j["package-0"] += 10.0
        with meter.window() as inner:
            cpu.counter_j["dram-0"] += 2.0
            gpu.counter_j["gpu-0"] += 30.0
    assert outer.measurement.energy_j == {"package-0": 10.0, "dram-0": 2.0, "gpu-0": 30.0}
    assert outer.measurement.total_j == 42.0
    assert inner.measurement.total_j == 32.0
    assert outer.measurement.meter == "rapl+nvml"


def test_colliding_domains_are_prefixed_and_estimates_taint_the_sum():
    a, b = CounterMeter("a", ["cpu", "x"]), CounterMeter("b", ["cpu"], source="estimated")
    meter = CompositeMeter([a, b])
    assert meter.energy_source == "estimated"
    start = meter.read()
    a.counter_j["cpu"] += 1.0
    a.counter_j["x"] += 4.0
    b.counter_j["cpu"] += 2.0
    m = meter.end_window(start)
    assert m.energy_j == {"a:cpu": 1.0, "x": 4.0, "b:cpu": 2.0}
    assert m.energy_source == "estimated"
    # every domain says which member measured it and how, under its merged name
    assert m.origin == {"a:cpu": ("a", "measured"), "x": ("a", "measured"), "b:cpu": ("b", "estimated")}
    assert m.domains()["b:cpu"] == {
        "energy_j": 2.0,
        "additive": True,
        "meter": "b",
        "energy_source": "estimated",
    }
    round_trip = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert round_trip == m
    assert m.minus(m).origin == m.origin


def test_close_closes_every_member():
    members = [CounterMeter("a", ["x"]), CounterMeter("b", ["y"])]
    CompositeMeter(members).close()
    assert [m.closed for m in members] == [1, 1]


def test_rapl_plus_nvml_from_fakes(powercap, install_pynvml):
    powercap.zone("intel-rapl:0", "package-0", energy_uj=0)
    gpus = [FakeGpu(energy_mj=0)]
    install_pynvml(gpus)
    meter = get_meter("rapl+nvml", rapl_root=str(powercap.root))
    try:
        with meter.window() as w:
            powercap.add("intel-rapl:0", 3_000_000)
            gpus[0].energy_mj += 7_000
        assert w.measurement.energy_j == {"package-0": 3.0, "gpu-0": 7.0}
        assert w.measurement.total_j == pytest.approx(10.0)
        assert [p["meter"] for p in meter.describe()["parts"]] == ["rapl", "nvml"]
    finally:
        meter.close()
