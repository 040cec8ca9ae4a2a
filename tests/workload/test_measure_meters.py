"""`measure` under `auto` on a GPU machine without RAPL (NVML patched): CPU and GPU metered together, each
domain of the record labelled with its meter and source, the CPU estimate split into static and dynamic."""

from __future__ import annotations

import sys

import pytest

from greenlm.energy import detect
from greenlm.energy.settings import EnergySettings
from greenlm.errors import MeterUnavailable
from greenlm.workload import MeasureConfig, run_measure
from tests.energy.fakes import FakeGpu, make_pynvml


class TickingGpu(FakeGpu):
    """A GPU whose energy counter advances 50 mJ at every read, as a real one does while powered."""

    @property
    def energy_mj(self):
        self._mj = getattr(self, "_mj", 0) + 50
        return self._mj

    @energy_mj.setter
    def energy_mj(self, value):
        self._mj = value


@pytest.fixture
def gpu_machine_without_rapl(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml([TickingGpu()]))

    def no_rapl(*_args, **_kwargs):
        raise MeterUnavailable("no intel-rapl zones (test)")

    monkeypatch.setattr(detect, "RaplMeter", no_rapl)


def test_auto_meters_cpu_and_gpu_with_each_domain_labelled(gpu_machine_without_rapl, tiny_model_dir):
    result = run_measure(
        MeasureConfig(
            model=str(tiny_model_dir),
            num_prompts=1,
            prompt_tokens=16,
            max_new_tokens=4,
            repeats=2,
            device="cpu",
        )
    )
    record = result.to_dict()
    assert record["meter"] == "cpu-model+nvml" and record["energy_source"] == "estimated"
    assert "CPU estimated by cpu-model, GPU measured by nvml" in record["meter_note"]
    domains = record["energy_domains"]
    assert domains["gpu-0"]["meter"] == "nvml" and domains["gpu-0"]["energy_source"] == "measured"
    assert domains["gpu-0"]["decode_j"] > 0  # the idle GPU's draw is counted, and labelled as the GPU's
    assert domains["cpu"]["meter"] == "cpu-model" and domains["cpu"]["energy_source"] == "estimated"
    assert domains["cpu-static"]["additive"] is False
    additive = sum(v["decode_j_per_token"] for v in domains.values() if v["additive"])
    assert additive == pytest.approx(record["decode_j_per_token"], rel=1e-6)
    assert record["decode_static_j_per_token"] > 0 and record["decode_dynamic_j_per_token"] is not None
    assert record["device"] == "cpu" and record["config"]["device"] == "cpu"


def test_forced_hardware_meter_has_no_static_dynamic_split(gpu_machine_without_rapl, tiny_model_dir):
    record = run_measure(
        MeasureConfig(
            model=str(tiny_model_dir),
            num_prompts=1,
            prompt_tokens=16,
            max_new_tokens=4,
            repeats=1,
            energy=EnergySettings(meter="nvml"),
        )
    ).to_dict()
    assert record["meter"] == "nvml" and record["energy_source"] == "measured"
    for phase in ("prefill", "decode"):
        assert (
            record[f"{phase}_static_j_per_token"] is None and record[f"{phase}_dynamic_j_per_token"] is None
        )
    assert set(record["energy_domains"]) == {"gpu-0"}
