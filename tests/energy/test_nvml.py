import json
import time

import pytest

from greenlm.energy.nvml import NvmlMeter
from greenlm.errors import MeterUnavailable
from tests.energy.fakes import FakeGpu


def test_energy_counter_read_at_edges(install_pynvml):
    gpus = [FakeGpu(energy_mj=1_000), FakeGpu(energy_mj=50_000)]
    nvml = install_pynvml(gpus)
    meter = NvmlMeter()
    start = meter.begin_window()
    gpus[0].energy_mj += 5_500
    gpus[1].energy_mj += 250
    m = meter.end_window(start)
    assert m.meter == "nvml" and m.energy_source == "measured"
    assert m.energy_j == {"gpu-0": 5.5, "gpu-1": 0.25}
    assert nvml.calls["power"] == 0  # no sampling when a counter exists
    assert meter._sampler is None
    d = meter.describe()
    json.dumps(d)
    assert d["domains"]["gpu-0"]["name"] == "NVIDIA H100 80GB HBM3"
    assert d["domains"]["gpu-0"]["method"].startswith("counter")
    meter.close()
    meter.close()
    assert nvml.calls["shutdown"] == 1


def test_device_indices_select_gpus(install_pynvml):
    install_pynvml([FakeGpu(), FakeGpu(), FakeGpu()])
    meter = NvmlMeter(device_indices=[2])
    assert [g.domain for g in meter.gpus] == ["gpu-2"]
    meter.close()
    with pytest.raises(MeterUnavailable, match="GPU index 3 not found: NVML sees 3 GPU"):
        NvmlMeter(device_indices=[3])


def test_counter_reset_counts_nothing_not_negative(install_pynvml):
    gpus = [FakeGpu(energy_mj=9_000)]
    install_pynvml(gpus)
    meter = NvmlMeter()
    start = meter.read()
    gpus[0].energy_mj = 10  # GPU reset
    assert meter.end_window(start).energy_j == {"gpu-0": 0.0}
    meter.close()


def test_sampled_power_constant(install_pynvml):
    install_pynvml([FakeGpu(energy_mj=None, power_w=150.0)])
    meter = NvmlMeter(sample_interval_s=0.01)
    try:
        with meter.window() as w:
            time.sleep(0.25)
        m = w.measurement
        assert m.energy_j["gpu-0"] == pytest.approx(150.0 * m.duration_s, rel=0.02)
        assert "sampled" in meter.describe()["domains"]["gpu-0"]["method"]
        assert "Not Supported" in meter.describe()["domains"]["gpu-0"]["method"]
    finally:
        meter.close()
    assert not meter._sampler.is_alive()


def test_sampled_power_step_is_integrated_between_the_edges(install_pynvml):
    # 100 W, then 300 W from t_step on. Two edge samples alone would give the mean of the edges
    # (200 W x duration); only the sampler thread sees when the step happened.
    t_step = time.perf_counter() + 0.1
    install_pynvml(
        [FakeGpu(energy_mj=None, power_w=lambda: 100.0 if time.perf_counter() < t_step else 300.0)]
    )
    meter = NvmlMeter(sample_interval_s=0.005)
    try:
        start = meter.read()
        time.sleep(0.4)
        end = meter.read()
        m = meter.measure(start, end)
        expected_j = 100.0 * (t_step - start.time_s) + 300.0 * (end.time_s - t_step)
        assert m.energy_j["gpu-0"] == pytest.approx(expected_j, rel=0.05)
        assert abs(m.energy_j["gpu-0"] - 200.0 * m.duration_s) > 10.0
    finally:
        meter.close()


def test_no_driver_is_meter_unavailable(install_pynvml):
    install_pynvml([], init_error=12)
    with pytest.raises(MeterUnavailable, match=r"NVML could not start \(NVML Shared Library Not Found\)"):
        NvmlMeter()


def test_no_gpu_is_meter_unavailable_and_shuts_nvml_down(install_pynvml):
    nvml = install_pynvml([])
    with pytest.raises(MeterUnavailable, match="NVML sees no GPU"):
        NvmlMeter()
    assert nvml.calls["shutdown"] == 1


def test_pynvml_missing_is_meter_unavailable(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    with pytest.raises(MeterUnavailable, match="pip install nvidia-ml-py"):
        NvmlMeter()
