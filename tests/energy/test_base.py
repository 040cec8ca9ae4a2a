import json
import math

import pytest

from greenlm.energy import Measurement, Reading
from tests.energy.fakes import CounterMeter


def test_measurement_totals_and_dict_round_trip():
    m = Measurement("rapl", "measured", 2.0, {"package-0": 30.0, "dram-0": 10.0}, {"core-0": 25.0})
    assert m.total_j == 40.0  # detail_j is inside package-0, not added again
    assert m.avg_power_w == 20.0
    d = m.to_dict()
    assert d["total_j"] == 40.0 and d["avg_power_w"] == 20.0 and d["detail_j"] == {"core-0": 25.0}
    assert Measurement.from_dict(json.loads(json.dumps(d))) == m


def test_zero_duration_has_zero_power():
    assert Measurement("nvml", "measured", 0.0, {"gpu-0": 1.0}).avg_power_w == 0.0


@pytest.mark.parametrize("bad", [-1e-9, math.nan, math.inf])
def test_measurement_rejects_negative_or_non_finite_energy(bad):
    with pytest.raises(ValueError, match="energy_j"):
        Measurement("rapl", "measured", 1.0, {"package-0": bad})
    with pytest.raises(ValueError, match="detail_j"):
        Measurement("rapl", "measured", 1.0, {"package-0": 1.0}, {"core-0": bad})


def test_measurement_rejects_bad_source_and_duration():
    with pytest.raises(ValueError):
        Measurement("rapl", "guessed", 1.0, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Measurement("rapl", "measured", -1.0, {})


def test_minus_gives_decode_energy_and_floors_noise_at_zero():
    generate = Measurement("rapl", "measured", 3.0, {"package-0": 50.0, "dram-0": 5.0}, {"core-0": 40.0})
    prefill = Measurement("rapl", "measured", 1.0, {"package-0": 20.0, "dram-0": 5.000001}, {"core-0": 15.0})
    decode = generate.minus(prefill)
    assert decode.energy_j == {"package-0": 30.0, "dram-0": 0.0}
    assert decode.detail_j == {"core-0": 25.0}
    assert decode.duration_s == 2.0
    with pytest.raises(ValueError, match="cannot subtract"):
        generate.minus(Measurement("nvml", "measured", 1.0, {"gpu-0": 1.0}))


def test_windows_nest_and_overlap():
    meter = CounterMeter("fake", ["a"])
    with meter.window() as outer:
        meter.counter_j["a"] += 1.0
        with meter.window() as inner:
            meter.counter_j["a"] += 2.0
        overlap = meter.begin_window()
        meter.counter_j["a"] += 4.0
    meter.counter_j["a"] += 8.0
    tail = meter.end_window(overlap)
    assert inner.measurement.energy_j == {"a": 2.0}
    assert outer.measurement.energy_j == {"a": 7.0}
    assert tail.energy_j == {"a": 12.0}
    assert outer.measurement.duration_s >= inner.measurement.duration_s


def test_window_is_measured_even_when_the_block_raises():
    meter = CounterMeter("fake", ["a"])
    with pytest.raises(RuntimeError):
        with meter.window() as w:
            meter.counter_j["a"] += 3.0
            raise RuntimeError("boom")
    assert w.measurement is not None and w.measurement.total_j == 3.0


def test_swapped_readings_are_an_error():
    meter = CounterMeter("fake", ["a"])
    with pytest.raises(ValueError, match="before start"):
        meter.measure(Reading(2.0, {"a": 0.0}), Reading(1.0, {"a": 0.0}))


def test_meter_is_a_context_manager_that_closes():
    with CounterMeter("fake", ["a"]) as meter:
        pass
    assert meter.closed == 1
