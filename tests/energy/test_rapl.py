import json
import time

import pytest

from greenlm.energy import Reading, rapl
from greenlm.energy.rapl import RaplMeter
from greenlm.errors import MeterUnavailable


def _meter(powercap, **kw) -> RaplMeter:
    kw.setdefault("wrap_guard_s", None)
    return RaplMeter(str(powercap.root), **kw)


def test_single_package(powercap):
    powercap.zone("intel-rapl:0", "package-0", energy_uj=1_000_000)
    meter = _meter(powercap)
    start = meter.begin_window()
    powercap.add("intel-rapl:0", 2_500_000)
    m = meter.end_window(start)
    assert m.meter == "rapl" and m.energy_source == "measured"
    assert m.energy_j == {"package-0": 2.5}
    assert m.detail_j == {}
    assert m.total_j == 2.5


def test_two_packages_with_dram_core_uncore_and_psys(powercap):
    zones = {
        "intel-rapl:0": "package-0",
        "intel-rapl:0:0": "core",
        "intel-rapl:0:1": "uncore",
        "intel-rapl:0:2": "dram",
        "intel-rapl:1": "package-1",
        "intel-rapl:1:0": "core",
        "intel-rapl:1:1": "dram",
        "intel-rapl:2": "psys",
    }
    for zone, name in zones.items():
        powercap.zone(zone, name, energy_uj=5_000_000)
    # A second interface to package 0's counter: must not be counted twice.
    (powercap.root / "intel-rapl-mmio:0").mkdir()
    meter = _meter(powercap)
    deltas_uj = {
        "intel-rapl:0": 40_000_000,
        "intel-rapl:0:0": 30_000_000,
        "intel-rapl:0:1": 5_000_000,
        "intel-rapl:0:2": 6_000_000,
        "intel-rapl:1": 20_000_000,
        "intel-rapl:1:0": 12_000_000,
        "intel-rapl:1:1": 4_000_000,
        "intel-rapl:2": 75_000_000,
    }
    with meter.window() as w:
        for zone, delta in deltas_uj.items():
            powercap.add(zone, delta)
    m = w.measurement
    assert m.energy_j == {"package-0": 40.0, "dram-0": 6.0, "package-1": 20.0, "dram-1": 4.0}
    assert m.detail_j == {"core-0": 30.0, "uncore-0": 5.0, "core-1": 12.0, "psys": 75.0}
    assert m.total_j == pytest.approx(70.0)  # packages + dram; core/uncore/psys not added
    d = meter.describe()
    json.dumps(d)
    assert d["domains"]["dram-1"] == {
        "zone": "intel-rapl:1:1",
        "additive": True,
        "max_energy_range_uj": 262_143_328_850,
    }
    assert d["domains"]["psys"]["additive"] is False


def test_amd_layout_package_and_core_only(powercap):
    # AMD Zen through intel_rapl_msr: same naming, no dram zone.
    powercap.zone("intel-rapl:0", "package-0", energy_uj=10, max_range_uj=65_532_610_987)
    powercap.zone("intel-rapl:0:0", "core", energy_uj=10, max_range_uj=65_532_610_987)
    meter = _meter(powercap)
    start = meter.read()
    powercap.add("intel-rapl:0", 9_000_000)
    powercap.add("intel-rapl:0:0", 7_000_000)
    m = meter.measure(start, meter.read())
    assert m.energy_j == {"package-0": 9.0}
    assert m.detail_j == {"core-0": 7.0}


def test_multi_die_names_follow_their_package(powercap):
    powercap.zone("intel-rapl:0", "package-0-die-0")
    powercap.zone("intel-rapl:1", "package-0-die-1")
    powercap.zone("intel-rapl:1:0", "dram")
    assert [z.domain for z in _meter(powercap).zones] == [
        "package-0-die-0",
        "package-0-die-1",
        "dram-0-die-1",
    ]


def test_duplicate_zone_names_are_skipped_not_double_counted(powercap):
    powercap.zone("intel-rapl:0", "package-0")
    powercap.zone("intel-rapl:1", "package-0")
    meter = _meter(powercap)
    assert [z.zone for z in meter.zones] == ["intel-rapl:0"]
    assert "duplicate" in meter.skipped["intel-rapl:1"]


def test_wrap_around_between_edges(powercap):
    # Counter runs 0..1000 then wraps to 0: period 1001 uJ.
    powercap.zone("intel-rapl:0", "package-0", energy_uj=900, max_range_uj=1000)
    meter = _meter(powercap)
    start = meter.read()
    powercap.set("intel-rapl:0", 100)
    m = meter.end_window(start)
    assert m.energy_j["package-0"] == pytest.approx(201e-6)  # 100 to the top, 1 to wrap to 0, 100 more


def test_wrap_around_on_raw_readings(powercap):
    powercap.zone("intel-rapl:0", "package-0", max_range_uj=1000)
    meter = _meter(powercap)
    m = meter.measure(Reading(0.0, {"package-0": 990.0}), Reading(1.0, {"package-0": 5.0}))
    assert m.energy_j["package-0"] == pytest.approx(16e-6)
    same = meter.measure(Reading(0.0, {"package-0": 5.0}), Reading(1.0, {"package-0": 5.0}))
    assert same.total_j == 0.0


def test_several_wraps_seen_by_reads_inside_the_window(powercap):
    powercap.zone("intel-rapl:0", "package-0", energy_uj=900, max_range_uj=1000)
    meter = _meter(powercap)
    start = meter.read()
    for raw in (100, 900, 100):  # each step is seen by some read (a nested window, or the guard)
        powercap.set("intel-rapl:0", raw)
        meter.read()
    m = meter.end_window(start)
    assert m.energy_j["package-0"] == pytest.approx((201 + 800 + 201) * 1e-6)


def test_wrap_guard_thread_sees_wraps_inside_a_long_window(powercap):
    powercap.zone("intel-rapl:0", "package-0", energy_uj=900, max_range_uj=1000)
    meter = RaplMeter(str(powercap.root), wrap_guard_s=0.005)
    try:
        start = meter.begin_window()
        for raw in (100, 900, 100):
            powercap.set("intel-rapl:0", raw)
            time.sleep(0.08)
        m = meter.end_window(start)
        assert m.energy_j["package-0"] == pytest.approx(1202e-6)
        assert meter._guard is not None and meter._guard.is_alive()
    finally:
        meter.close()
    assert not meter._guard.is_alive()
    meter.close()  # idempotent


def test_auto_wrap_guard_interval_from_counter_range(powercap):
    powercap.zone("intel-rapl:0", "package-0", max_range_uj=65_532_610_987)  # AMD: 65.5 kJ
    meter = RaplMeter(str(powercap.root))
    assert meter.wrap_guard_s == pytest.approx(65_532.610987 / 1000 / 2)
    meter.close()


def test_energy_is_never_negative_when_counters_stand_still(powercap):
    powercap.zone("intel-rapl:0", "package-0", energy_uj=123)
    meter = _meter(powercap)
    m = meter.end_window(meter.begin_window())
    assert m.energy_j == {"package-0": 0.0}


def test_permission_denied_explains_the_fix(powercap, monkeypatch):
    powercap.zone("intel-rapl:0", "package-0")
    real = rapl._read_text

    def deny(path):
        if str(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(rapl, "_read_text", deny)
    with pytest.raises(MeterUnavailable) as err:
        _meter(powercap)
    msg = str(err.value)
    assert "permission denied" in msg and "CVE-2020-8694" in msg
    assert f"sudo chmod o+r {powercap.root}/intel-rapl:*/energy_uj" in msg
    assert "\n" not in msg


def test_permission_lost_after_start_is_meter_unavailable(powercap, monkeypatch):
    powercap.zone("intel-rapl:0", "package-0")
    meter = _meter(powercap)

    def deny(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rapl, "_read_text", deny)
    with pytest.raises(MeterUnavailable, match="chmod"):
        meter.read()


def test_missing_root(tmp_path):
    with pytest.raises(MeterUnavailable, match="no .*intel-rapl:\\* zones: not an Intel/AMD host"):
        RaplMeter(str(tmp_path / "nope"))


def test_root_without_zones(powercap):
    (powercap.root / "intel-rapl").mkdir()  # the control-type dir alone carries no counters
    with pytest.raises(MeterUnavailable, match="VM/container that hides them"):
        _meter(powercap)


def test_only_psys_readable_is_unavailable(powercap):
    powercap.zone("intel-rapl:1", "psys")
    with pytest.raises(MeterUnavailable, match="no readable package counter"):
        _meter(powercap)


def test_reading_from_another_meter_is_rejected(powercap):
    powercap.zone("intel-rapl:0", "package-0")
    meter = _meter(powercap)
    with pytest.raises(ValueError, match="not taken by this RAPL meter"):
        meter.measure(Reading(0.0, {}), Reading(1.0, {}))


def test_an_unclosed_meter_is_collected_and_its_guard_ends(powercap):
    import gc

    powercap.zone("intel-rapl:0", "package-0")
    meter = RaplMeter(str(powercap.root), wrap_guard_s=0.005)
    meter.read()
    guard = meter._guard
    del meter
    gc.collect()
    guard.join(timeout=1)
    assert not guard.is_alive()
