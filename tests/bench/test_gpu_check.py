"""bench/gpu_check.py: one line and exit 2 where it cannot run; its power check and record with patched NVML."""

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import gpu_check
import pytest
from tables import gpu_check_markdown

from greenlm.energy.nvml import NvmlMeter
from tests.energy.fakes import FakeGpu

ROOT = Path(__file__).resolve().parents[2]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_no_gpu_exits_2_with_one_line_and_writes_nothing(install_pynvml, tmp_path, capsys):
    install_pynvml([], init_error=12)  # no driver
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith(
        "gpu_check: no NVIDIA GPU here (NVML: NVML Shared Library Not Found)"
    )
    assert captured.out == "" and not out.exists()


def test_nvml_with_no_gpu_exits_2(install_pynvml, tmp_path, capsys):
    install_pynvml([])
    assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "NVML sees none" in one_line(capsys.readouterr().err)


def test_no_pynvml_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert gpu_check.main([]) == 2
    assert "pip install nvidia-ml-py" in one_line(capsys.readouterr().err)


def _real_gpu() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no library, no driver: this host has no GPU
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.skipif(_real_gpu(), reason="this host has an NVIDIA GPU: the script would run the whole check")
def test_the_script_on_a_machine_without_a_gpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert one_line(proc.stderr).startswith("gpu_check: no NVIDIA GPU here")
    assert proc.stdout == "" and not out.exists()


def test_a_cpu_only_torch_exits_2_with_the_install_line(install_pynvml, monkeypatch, capsys):
    import torch

    install_pynvml([FakeGpu()])
    monkeypatch.setattr(torch.version, "cuda", None)
    assert gpu_check.main([]) == 2
    line = one_line(capsys.readouterr().err)
    assert "is a CPU build (no CUDA)" in line and "pip install torch --index-url" in line


def test_a_cuda_torch_that_sees_no_gpu_is_told_apart():
    torch = types.SimpleNamespace(
        __version__="2.6.0+cu124",
        version=types.SimpleNamespace(cuda="12.4"),
        cuda=types.SimpleNamespace(is_available=lambda: False),
    )
    with pytest.raises(gpu_check.Unavailable, match=r"CUDA 12.4\) cannot use the GPU"):
        gpu_check.check_torch_cuda(torch)


def test_missing_packages_are_named_in_one_line():
    with pytest.raises(gpu_check.Unavailable) as err:
        gpu_check.check_packages(lambda m: None if m in ("openai", "torch") else object())
    assert "openai" in str(err.value) and "cu124" in str(err.value) and "\n" not in str(err.value)


def test_integral_of_sampled_power():
    assert gpu_check.integrate_j([(0.0, 100.0), (1.0, 100.0), (2.0, 100.0)]) == pytest.approx(200.0)
    assert gpu_check.integrate_j([(0.0, 100.0), (1.0, 300.0)]) == pytest.approx(200.0)  # trapezoid
    assert gpu_check.integrate_j([(0.0, 100.0)]) == 0.0


def test_comparison_and_its_tolerance():
    inside = gpu_check.compare_energy(1000.0, 1080.0, 0.10)
    assert inside["relative_difference"] == pytest.approx(0.08) and inside["within_tolerance"]
    outside = gpu_check.compare_energy(1000.0, 850.0, 0.10)
    assert outside["relative_difference"] == pytest.approx(-0.15) and not outside["within_tolerance"]
    nothing = gpu_check.compare_energy(0.0, 10.0)
    assert nothing["relative_difference"] is None and not nothing["within_tolerance"]


class ClockGpu(FakeGpu):
    """A GPU drawing `power_w` whose energy counter advances with the clock at `counter_w`."""

    def __init__(self, power_w: float, counter_w: float):
        super().__init__(power_w=power_w)
        self.counter_w, self.t0 = counter_w, time.perf_counter()

    @property
    def energy_mj(self):
        return round(self.counter_w * (time.perf_counter() - self.t0) * 1000)

    @energy_mj.setter
    def energy_mj(self, value):  # FakeGpu's constructor sets it
        pass


def test_power_sampler_sums_the_gpus(install_pynvml):
    nvml = install_pynvml([FakeGpu(power_w=150.0), FakeGpu(power_w=50.0)])
    sampler = gpu_check.PowerSampler(nvml, interval_s=0.01)
    sampler.start()
    time.sleep(0.05)
    samples = sampler.stop()
    assert len(samples) >= 2 and {p for _, p in samples} == {200.0}
    assert nvml.calls["shutdown"] == nvml.calls["init"] == 1


@pytest.mark.parametrize(("counter_w", "agrees"), [(200.0, True), (400.0, False)])
def test_power_check_compares_the_meter_window_with_the_power_integral(install_pynvml, counter_w, agrees):
    nvml = install_pynvml([ClockGpu(power_w=200.0, counter_w=counter_w)])
    meter = NvmlMeter()
    try:

        def run():
            time.sleep(0.4)
            return {"step": "measure", "output": {"energy_j": 50.0}}

        step, check = gpu_check.power_check(nvml, meter, run, tolerance=0.25)
    finally:
        meter.close()
    assert step["output"]["energy_j"] == 50.0
    assert check["window_s"] >= 0.4 and check["samples"] >= 2
    assert check["counter_j"] == pytest.approx(counter_w * check["window_s"], rel=0.05)
    assert check["within_tolerance"] is agrees  # 400 W counted against 200 W drawn: -50%
    assert check["measure_within_counter"]  # 50 J inside the window's 80+ J
    assert "counter" in check["counter"]["gpu-0"]["method"]


def test_the_record_and_its_markdown(tmp_path, monkeypatch):
    from benchlib import Recorder

    steps = [
        {"step": "meters", "ok": True, "wall_s": 1.0, "checks": {"nvml available": True}, "error": None},
        {
            "step": "measure",
            "ok": False,
            "wall_s": 40.0,
            "checks": {"device is cuda": True, "counter within tolerance of the power integral": False},
            "error": None,
            "output": {"decode_j_per_token": 0.0123, "decode_tokens_per_s": 150.0},
        },
        {"step": "serve", "ok": False, "error": "skipped: the check's time limit was reached"},
    ]
    check = {
        **gpu_check.compare_energy(1000.0, 1200.0),
        "window_s": 40.0,
        "samples": 2000,
        "interval_s": 0.02,
    }
    gpu = {
        "gpus": [{"index": 0, "name": "H100", "driver": "550.54"}],
        "torch": "2.6",
        "cuda": "12.4",
        "device": "H100",
    }
    result = gpu_check.summary(gpu, steps, check, 300.0, 0.10)
    assert result["passed"] is False and result["notes"]
    text = gpu_check_markdown(result)
    assert text.startswith("FAILED on H100 (driver 550.54, torch 2.6, CUDA 12.4) in 5.0 min")
    assert (
        "| measure | FAILED | 40.0 | decode J/token 0.0123, decode tok/s 150.0 | counter within tolerance"
        in text
    )
    assert "| serve | FAILED | n/a |  | skipped: the check's time limit was reached |" in text
    assert "+20.0% (tolerance 10%: OUTSIDE)" in text
    out = tmp_path / "gpu_check.json"
    Recorder("gpu_check").finish({**result, "markdown": text}, out=out)
    written = json.loads(out.read_text())
    assert written["benchmark"] == "gpu_check" and written["machine"]["commit"] is not None
