import json

import pytest

from greenlm.energy import METER_NAMES, get_meter, probe_meters
from greenlm.energy.composite import CompositeMeter
from greenlm.energy.cpu_model import CpuModelMeter
from greenlm.energy.nvml import NvmlMeter
from greenlm.energy.rapl import RaplMeter
from greenlm.errors import GreenlmError, MeterUnavailable
from tests.energy.fakes import FakeGpu


def test_auto_falls_back_to_cpu_model_naming_both_reasons(powercap, no_nvml):
    meter = get_meter("auto", rapl_root=str(powercap.root))
    assert isinstance(meter, CpuModelMeter) and meter.energy_source == "estimated"
    note = meter.selection_note
    assert note.startswith("meter: cpu-model (estimated) — ")
    assert f"no RAPL: no {powercap.root}/intel-rapl:* zones" in note
    assert "no NVML: NVML could not start (NVML Shared Library Not Found)" in note
    assert "W per allotted core for every second" in note and "W per busy core" in note and "\n" not in note


def test_auto_passes_the_cpu_model_settings_to_the_fallback(powercap, no_nvml):
    meter = get_meter(rapl_root=str(powercap.root), watts_per_core=4.0, idle_watts_per_core=1.0)
    assert meter.watts_per_core == 4.0 and meter.idle_watts_per_core == 1.0
    assert "user override (--watts-per-core)" in meter.selection_note
    assert "user override (--idle-watts-per-core)" in meter.selection_note
    tree = get_meter("cpu-model", include_children=True)
    assert tree.include_children


def test_auto_prefers_rapl(powercap, no_nvml):
    powercap.zone("intel-rapl:0", "package-0")
    meter = get_meter("auto", rapl_root=str(powercap.root))
    assert isinstance(meter, RaplMeter)
    assert meter.selection_note.startswith("meter: rapl (measured) — no NVML: NVML could not start")
    meter.close()


def test_auto_combines_rapl_and_nvml(powercap, install_pynvml):
    powercap.zone("intel-rapl:0", "package-0")
    install_pynvml([FakeGpu()])
    meter = get_meter("auto", rapl_root=str(powercap.root))
    assert isinstance(meter, CompositeMeter) and meter.name == "rapl+nvml"
    assert meter.selection_note == "meter: rapl+nvml (measured: CPU measured by rapl, GPU measured by nvml)"
    meter.close()


def test_auto_on_a_gpu_machine_without_rapl_meters_cpu_and_gpu(powercap, install_pynvml):
    """Finding 3 of issue 12: NVML alone would 'measure' a CPU workload as the idle GPU's draw."""
    gpu = FakeGpu(energy_mj=0)
    install_pynvml([gpu])
    meter = get_meter("auto", rapl_root=str(powercap.root))
    assert isinstance(meter, CompositeMeter) and meter.name == "cpu-model+nvml"
    assert meter.energy_source == "estimated"
    note = meter.selection_note
    assert note.startswith(
        "meter: cpu-model+nvml (estimated: CPU estimated by cpu-model, GPU measured by nvml)"
    )
    assert "no RAPL:" in note and "no NVML" not in note
    start = meter.begin_window()
    gpu.energy_mj += 5000
    m = meter.end_window(start)
    domains = m.domains()
    assert domains["gpu-0"] == {
        "energy_j": 5.0,
        "additive": True,
        "meter": "nvml",
        "energy_source": "measured",
    }
    assert domains["cpu"]["meter"] == "cpu-model" and domains["cpu"]["energy_source"] == "estimated"
    assert domains["cpu-static"]["additive"] is False and domains["cpu-static"]["meter"] == "cpu-model"
    assert m.total_j == pytest.approx(5.0 + m.energy_j["cpu"] + m.energy_j["memory"])
    meter.close()


def test_forcing_nvml_alone_says_the_cpu_is_not_counted(install_pynvml):
    install_pynvml([FakeGpu()])
    meter = get_meter("nvml")
    assert isinstance(meter, NvmlMeter)
    assert "CPU energy is not counted" in meter.selection_note
    meter.close()


def test_forcing_rapl_without_zones_raises(powercap):
    with pytest.raises(MeterUnavailable, match="intel-rapl"):
        get_meter("rapl", rapl_root=str(powercap.root))


def test_forcing_nvml_without_driver_raises(no_nvml):
    with pytest.raises(MeterUnavailable, match="NVML could not start"):
        get_meter("nvml")


def test_forcing_a_pair_closes_the_first_when_the_second_is_missing(powercap, install_pynvml):
    nvml = install_pynvml([FakeGpu()])
    with pytest.raises(MeterUnavailable):
        get_meter("nvml+rapl", rapl_root=str(powercap.root))
    assert nvml.calls["shutdown"] == 1


def test_named_spec_is_case_insensitive_and_noted():
    meter = get_meter(" CPU-Model ")
    assert isinstance(meter, CpuModelMeter)
    assert meter.selection_note == "meter: cpu-model (estimated), as requested"


def test_nvml_plus_cpu_model_is_allowed_and_estimated(install_pynvml):
    install_pynvml([FakeGpu()])
    meter = get_meter("nvml+cpu-model")
    assert meter.name == "nvml+cpu-model" and meter.energy_source == "estimated"
    meter.close()


@pytest.mark.parametrize("spec", ["gpu", "rapl+rapl", "", "rapl+"])
def test_unknown_name_lists_valid_names(spec):
    with pytest.raises(GreenlmError, match="unknown meter .*auto, rapl, nvml, cpu-model") as err:
        get_meter(spec)
    assert not isinstance(err.value, MeterUnavailable)


def test_rapl_with_cpu_model_would_double_count():
    with pytest.raises(GreenlmError, match="double count"):
        get_meter("rapl+cpu-model")


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "8", True])
def test_watts_per_core_is_validated(bad):
    with pytest.raises(GreenlmError, match="watts_per_core"):
        get_meter("cpu-model", watts_per_core=bad)
    if bad != 0:
        with pytest.raises(GreenlmError, match="idle_watts_per_core"):
            get_meter("cpu-model", idle_watts_per_core=bad)


def test_probe_lists_every_backend_with_reasons(powercap, no_nvml):
    statuses = probe_meters(rapl_root=str(powercap.root))
    assert [s.name for s in statuses] == list(METER_NAMES)
    by_name = {s.name: s for s in statuses}
    assert not by_name["rapl"].available and "intel-rapl" in by_name["rapl"].reason
    assert not by_name["nvml"].available and "NVML could not start" in by_name["nvml"].reason
    cpu = by_name["cpu-model"]
    assert cpu.available and cpu.reason == "" and cpu.energy_source == "estimated"
    assert cpu.details["watts_source"]
    assert cpu.details["static"]["source"] and cpu.details["dynamic"]["source"]
    json.dumps([s.to_dict() for s in statuses])


def test_probe_with_hardware_present(powercap, install_pynvml):
    powercap.zone("intel-rapl:0", "package-0")
    nvml = install_pynvml([FakeGpu()])
    statuses = {s.name: s for s in probe_meters(rapl_root=str(powercap.root))}
    assert statuses["rapl"].available and "package-0" in statuses["rapl"].details["domains"]
    assert statuses["nvml"].available and "gpu-0" in statuses["nvml"].details["domains"]
    assert nvml.calls["shutdown"] == 1  # probing leaves nothing open
