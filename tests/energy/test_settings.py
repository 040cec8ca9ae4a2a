"""EnergySettings: the seven meter and carbon settings, checked once with one line naming the flag, and the
helpers every metered verb uses (the meter, the grid, the flat keys of rows)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from greenlm.energy.carbon import WORLD_INTENSITY_G_PER_KWH
from greenlm.energy.cpu_model import CpuModelMeter
from greenlm.energy.settings import EnergySettings, flat_dict
from greenlm.errors import GreenlmError

FLAT_KEYS = [
    "meter",
    "watts_per_core",
    "idle_watts_per_core",
    "country",
    "region",
    "carbon_intensity",
    "pue",
]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"meter": "joules"}, "unknown meter 'joules'"),
        ({"meter": "rapl+cpu-model"}, "double count"),
        ({"watts_per_core": -3.0}, "--watts-per-core"),
        ({"watts_per_core": 0.0}, "--watts-per-core"),
        ({"watts_per_core": math.inf}, "--watts-per-core"),
        ({"watts_per_core": math.nan}, "--watts-per-core"),
        ({"watts_per_core": "ten"}, "--watts-per-core"),
        ({"idle_watts_per_core": -1.0}, "--idle-watts-per-core"),
        ({"idle_watts_per_core": math.inf}, "--idle-watts-per-core"),
        ({"watts_per_core": 2.0, "idle_watts_per_core": 3.0}, "exceeds --watts-per-core"),
        ({"carbon_intensity": -1.0}, "--carbon-intensity"),
        ({"carbon_intensity": math.inf}, "--carbon-intensity"),
        ({"pue": 0.5}, "--pue"),
        ({"pue": math.inf}, "--pue"),
        ({"pue": math.nan}, "--pue"),
        ({"country": ""}, "--country"),
        ({"region": 3}, "--region"),
    ],
)
def test_nonsense_is_one_line_naming_the_flag(kwargs, message):
    with pytest.raises(GreenlmError, match=message) as err:
        EnergySettings(**kwargs)
    assert "\n" not in str(err.value)


def test_the_edges_are_allowed():
    EnergySettings(watts_per_core=2.0, idle_watts_per_core=2.0)  # an idle core may draw what a busy one does
    EnergySettings(idle_watts_per_core=0.0, carbon_intensity=0.0, pue=1.0)
    EnergySettings(meter="RAPL+nvml")  # names are case-insensitive, as get_meter reads them


def test_open_meter_passes_the_cpu_model_constants():
    meter = EnergySettings(meter="cpu-model", watts_per_core=8.0, idle_watts_per_core=1.0).open_meter(
        include_children=True
    )
    try:
        assert isinstance(meter, CpuModelMeter) and meter.include_children
        assert meter.watts_per_core == 8.0 and meter.idle_watts_per_core == 1.0
        assert meter.idle_source == "user override (--idle-watts-per-core)"
    finally:
        meter.close()


def test_carbon_resolves_the_grid_once_with_its_source():
    assert EnergySettings().intensity().intensity_g_per_kwh == WORLD_INTENSITY_G_PER_KWH
    carbon = EnergySettings(carbon_intensity=400, pue=1.5, country="FR").carbon()
    assert carbon.grid.location == "override"  # the explicit figure wins over the country
    assert carbon.carbon_g(3.6e6) == pytest.approx(600.0)  # 1 kWh x 400 g/kWh x 1.5
    assert carbon.to_dict() == {
        "intensity_g_per_kwh": 400.0,
        "intensity_source": "user --carbon-intensity",
        "pue": 1.5,
    }
    with pytest.raises(GreenlmError, match="unknown country code 'XX'"):
        EnergySettings(country="XX").carbon()  # looked up when resolved, not on construction


def test_coerce_takes_a_mapping_and_refuses_strangers():
    settings = EnergySettings(meter="cpu-model", pue=1.2)
    assert EnergySettings.coerce(settings) is settings
    assert EnergySettings.coerce(None) == EnergySettings()
    assert EnergySettings.coerce(settings.to_dict()) == settings
    with pytest.raises(GreenlmError, match="'watts'"):
        EnergySettings.coerce({"watts": 3})
    with pytest.raises(GreenlmError, match="EnergySettings"):
        EnergySettings.coerce("cpu-model")


def test_rows_keep_the_seven_keys_flat_where_the_field_stands():
    @dataclass
    class Config:
        model: str = "m"
        energy: EnergySettings = field(default_factory=EnergySettings)
        device: str = "cpu"

    assert list(EnergySettings().to_dict()) == FLAT_KEYS
    d = flat_dict(Config(energy=EnergySettings(country="FR")))
    assert list(d) == ["model", *FLAT_KEYS, "device"] and d["country"] == "FR"
