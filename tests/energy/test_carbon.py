"""Grid intensity lookup against codecarbon's shipped tables, and the carbon arithmetic."""

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from greenlm.energy import carbon
from greenlm.energy.carbon import (
    WORLD_INTENSITY_G_PER_KWH,
    GridIntensity,
    carbon_g,
    energy_kwh,
    list_regions,
    resolve_intensity,
    validate_pue,
)
from greenlm.errors import GreenlmError

CODECARBON_DIR = Path(next(iter(importlib.util.find_spec("codecarbon").submodule_search_locations)))


def _json(*parts):
    return json.loads(CODECARBON_DIR.joinpath(*parts).read_text(encoding="utf-8"))


def _cloud_rows():
    with CODECARBON_DIR.joinpath("data", "cloud", "impact.csv").open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


# --- countries -------------------------------------------------------------------------------------------


def test_france_matches_shipped_table():
    france = _json("data", "private_infra", "global_energy_mix.json")["FRA"]
    got = resolve_intensity(country="FR")
    assert got.intensity_g_per_kwh == pytest.approx(france["carbon_intensity"])
    assert 10 <= got.intensity_g_per_kwh <= 200  # a nuclear-heavy grid: far below the world average
    assert got.location == "FR"
    assert got.source == f"codecarbon global_energy_mix.json ({france['country_name']}, {france['year']})"


@pytest.mark.parametrize("code", ["FR", "fr", "FRA", "fra", " Fr "])
def test_alpha2_alpha3_and_case_agree(code):
    got = resolve_intensity(country=code)
    assert got.intensity_g_per_kwh == resolve_intensity(country="FR").intensity_g_per_kwh
    assert got.location == code.strip().upper()


@pytest.mark.parametrize("code", ["XX", "ZZZ", "France", "F", ""])
def test_unknown_country_is_a_helpful_error(code):
    with pytest.raises(GreenlmError, match=r"unknown country code .*ISO 3166.*FR or FRA.*--carbon-intensity"):
        resolve_intensity(country=code)


def test_known_country_missing_from_table_says_so():
    table = _json("data", "private_infra", "global_energy_mix.json")
    import pycountry

    absent = next(c for c in pycountry.countries if c.alpha_3 not in table)
    with pytest.raises(GreenlmError, match=r"no carbon intensity.*--carbon-intensity"):
        resolve_intensity(country=absent.alpha_2)


# --- cloud regions ---------------------------------------------------------------------------------------


def test_cloud_region_resolves_with_its_source():
    row = next(r for r in _cloud_rows() if (r["provider"], r["region"]) == ("gcp", "europe-west1"))
    got = resolve_intensity(region="gcp:europe-west1")
    assert got.intensity_g_per_kwh == float(row["impact"])
    assert got.location == "gcp:europe-west1"
    assert got.source.startswith("codecarbon cloud/impact.csv (gcp europe-west1")
    assert row["source"] in got.source


def test_bare_unique_region_and_case():
    assert resolve_intensity(region="Europe-West1") == resolve_intensity(region="gcp:europe-west1")


@pytest.mark.parametrize("region", ["gcp:mars-north1", "nowhere", "aws:not-a-region"])
def test_unknown_region_says_how_to_list_valid_ones(region):
    with pytest.raises(GreenlmError, match=r"unknown cloud region .*list_regions\(\)"):
        resolve_intensity(region=region)


def test_near_miss_region_gets_a_suggestion():
    with pytest.raises(GreenlmError, match=r"did you mean 'gcp:europe-west1'"):
        resolve_intensity(region="gcp:europe-wset1")


def test_no_suggestion_from_another_provider():
    with pytest.raises(GreenlmError) as info:
        resolve_intensity(region="nocloud:europe-west1")
    assert "did you mean" not in str(info.value)


def test_ambiguous_bare_region(monkeypatch):
    twin = [
        carbon._Region("gcp", "r1", 100.0, "a"),
        carbon._Region("aws", "r1", 200.0, "b"),
    ]
    monkeypatch.setattr(carbon, "_cloud_regions", lambda: tuple(twin))
    with pytest.raises(GreenlmError, match=r"ambiguous \(gcp:r1, aws:r1\).*PROVIDER:REGION"):
        resolve_intensity(region="r1")
    assert resolve_intensity(region="aws:r1").intensity_g_per_kwh == 200.0


def test_list_regions_matches_csv():
    regions = list_regions()
    assert len(regions) == len(_cloud_rows())
    assert {"provider", "region", "intensity_g_per_kwh"} <= set(regions[0])
    assert all(r["intensity_g_per_kwh"] >= 0 for r in regions)


# --- precedence and world default ------------------------------------------------------------------------


def test_precedence_intensity_then_region_then_country_then_world():
    everything = resolve_intensity(country="FR", region="gcp:us-east1", intensity_g_per_kwh=123.0)
    assert everything == GridIntensity(123.0, "override", "user --carbon-intensity")
    assert resolve_intensity(country="FR", region="gcp:us-east1").location == "gcp:us-east1"
    assert resolve_intensity(country="FR").location == "FR"
    world = resolve_intensity()
    assert (world.intensity_g_per_kwh, world.location) == (WORLD_INTENSITY_G_PER_KWH, "world")


def test_overridden_inputs_are_still_validated():
    with pytest.raises(GreenlmError, match="unknown country code"):
        resolve_intensity(country="XX", intensity_g_per_kwh=100.0)


def test_world_default_is_codecarbons():
    per_source = _json("data", "private_infra", "carbon_intensity_per_source.json")
    assert WORLD_INTENSITY_G_PER_KWH == float(per_source["world_average"])


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "lots"])
def test_bad_intensity_is_rejected(bad):
    with pytest.raises(GreenlmError, match=r"carbon intensity .* invalid.*>= 0"):
        resolve_intensity(intensity_g_per_kwh=bad)


def test_zero_intensity_is_allowed():
    assert resolve_intensity(intensity_g_per_kwh=0).intensity_g_per_kwh == 0.0


def test_to_dict():
    assert GridIntensity(1.5, "override", "user --carbon-intensity").to_dict() == {
        "intensity_g_per_kwh": 1.5,
        "location": "override",
        "source": "user --carbon-intensity",
    }


# --- PUE and arithmetic ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.9, 0.0, -1.0, 3.01, math.nan, math.inf])
def test_bad_pue_is_rejected_with_the_definition(bad):
    with pytest.raises(GreenlmError, match=r"PUE .* facility power / IT power.*>= 1"):
        validate_pue(bad)


@pytest.mark.parametrize("pue", [1.0, 1.58, 3.0])
def test_good_pue(pue):
    assert validate_pue(pue) == pue


def test_energy_kwh():
    assert energy_kwh(3.6e6) == 1.0
    assert energy_kwh(0.0) == 0.0
    assert energy_kwh(1800.0) == 0.0005


def test_carbon_g_hand_computed():
    assert carbon_g(3.6e6, 400.0, 1.5) == 600.0  # 1 kWh × 400 g/kWh × 1.5
    assert carbon_g(7.2e6, 50.0) == 100.0  # 2 kWh × 50 g/kWh × default PUE 1
    assert carbon_g(0.0, 400.0, 2.0) == 0.0


def test_carbon_g_rejects_negative_energy_and_bad_inputs():
    with pytest.raises(ValueError, match="energy"):
        carbon_g(-1.0, 400.0)
    with pytest.raises(ValueError, match="energy"):
        energy_kwh(-0.5)
    with pytest.raises(ValueError, match="intensity"):
        carbon_g(1.0, -400.0)
    with pytest.raises(GreenlmError, match="PUE"):
        carbon_g(1.0, 400.0, 0.9)


# --- packaging -------------------------------------------------------------------------------------------


def test_codecarbon_is_never_imported():
    # A fresh interpreter, so another test importing codecarbon cannot hide a regression here.
    code = (
        "import sys; from greenlm.energy.carbon import resolve_intensity as r; "
        "r(country='FR'); r(region='gcp:europe-west1'); sys.exit('codecarbon' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_missing_codecarbon_says_to_install_it(monkeypatch):
    monkeypatch.setattr(carbon.importlib.util, "find_spec", lambda name: None)
    carbon._energy_mix.cache_clear()
    try:
        with pytest.raises(GreenlmError, match="pip install codecarbon"):
            resolve_intensity(country="FR")
    finally:
        carbon._energy_mix.cache_clear()
