"""Grid carbon intensity and the arithmetic that turns joules into grams of CO2e.

Intensities come from the tables codecarbon ships (a declared dependency), read as plain files: importing
codecarbon itself is slow and has side effects (logging setup, API clients), and we need only its data.

    carbon_g = energy_kwh × intensity_g_per_kwh × PUE      (DESIGN.md, "Formulas")
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from greenlm.errors import GreenlmError

J_PER_KWH = 3.6e6  # 1 kWh = 1000 W × 3600 s

# codecarbon's own world default: `world_average` in its data/private_infra/carbon_intensity_per_source.json
# (codecarbon 3.3.2), used by codecarbon/core/emissions.py when it has no data for a location. That file cites
# IEA, Global Energy & CO2 Status Report 2019:
# https://www.iea.org/reports/global-energy-co2-status-report-2019/emissions
# Kept as a literal so importing this module reads no file; a test checks it still matches the shipped file.
WORLD_INTENSITY_G_PER_KWH: float = 475.0
WORLD_SOURCE = "codecarbon world_average (IEA Global Energy & CO2 Status Report 2019)"

# PUE (facility power / IT power) is >= 1 by definition. The 3.0 ceiling is a typo guard, not a measured
# limit: it sits well above the industry averages the Uptime Institute's annual data-centre surveys report
# (about 2.5 in 2007, about 1.6 in recent years).
PUE_MIN = 1.0
PUE_MAX = 3.0

_ENERGY_MIX = ("data", "private_infra", "global_energy_mix.json")
_CLOUD_IMPACT = ("data", "cloud", "impact.csv")
_COUNTRY_ADVICE = "use an ISO 3166 code such as FR or FRA, or --carbon-intensity G_PER_KWH"


@dataclass(frozen=True)
class GridIntensity:
    """A grid carbon intensity and where it came from."""

    intensity_g_per_kwh: float
    location: str  # "FR", "gcp:europe-west1", "world" or "override"
    source: str  # file and entry (or user flag) the figure was taken from

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Region:
    provider: str
    region: str
    intensity_g_per_kwh: float
    source: str


def _codecarbon_file(*parts: str) -> Path:
    """Path of a data file inside the installed codecarbon package, found without importing it."""
    spec = importlib.util.find_spec("codecarbon")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise GreenlmError(
            "codecarbon is not installed, so grid carbon intensities are unavailable: "
            "pip install codecarbon (a greenlm dependency), or pass --carbon-intensity G_PER_KWH"
        )
    path = Path(next(iter(locations)), *parts)
    if not path.is_file():
        raise GreenlmError(
            f"codecarbon's data file {'/'.join(parts)} is missing from {path.parent}: "
            "reinstall it (pip install --force-reinstall codecarbon), or pass --carbon-intensity G_PER_KWH"
        )
    return path


@functools.cache
def _energy_mix() -> dict[str, dict]:
    """codecarbon's per-country table, keyed by ISO 3166 alpha-3."""
    path = _codecarbon_file(*_ENERGY_MIX)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GreenlmError(f"cannot read {path}: {exc}; reinstall codecarbon") from exc
    return {code.upper(): entry for code, entry in table.items() if "carbon_intensity" in entry}


@functools.cache
def _cloud_regions() -> tuple[_Region, ...]:
    """codecarbon's per-cloud-region table, in file order."""
    path = _codecarbon_file(*_CLOUD_IMPACT)
    try:
        # utf-8-sig: the shipped CSV starts with a byte-order mark that would otherwise glue onto "provider".
        with path.open(encoding="utf-8-sig", newline="") as f:
            return tuple(
                _Region(
                    provider=row["provider"].strip().lower(),
                    region=row["region"].strip().lower(),
                    intensity_g_per_kwh=float(row["impact"]),
                    source=row.get("source", "").strip(),
                )
                for row in csv.DictReader(f)
                if row.get("impact", "").strip()
            )
    except (OSError, KeyError, ValueError) as exc:
        raise GreenlmError(f"cannot read {path}: {exc}; reinstall codecarbon") from exc


def list_regions() -> list[dict]:
    """Every cloud region codecarbon has an intensity for (provider, region, intensity_g_per_kwh, source)."""
    return [asdict(r) for r in _cloud_regions()]


def check_intensity(intensity_g_per_kwh: float) -> float:
    try:
        value = float(intensity_g_per_kwh)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise GreenlmError(
            f"carbon intensity {intensity_g_per_kwh!r} is invalid: give grams of CO2e per kWh "
            "as a finite number >= 0 (e.g. --carbon-intensity 400)"
        )
    return value


def _alpha3(country: str) -> str:
    """ISO 3166 alpha-3 for an alpha-2 or alpha-3 code, case-insensitive."""
    code = country.strip().upper()
    if len(code) == 3 and code in _energy_mix():
        return code
    import pycountry  # deferred: loads its ISO database; only needed when a country is given

    match = None
    if len(code) == 2 and code.isalpha():
        match = pycountry.countries.get(alpha_2=code)
    elif len(code) == 3 and code.isalpha():
        match = pycountry.countries.get(alpha_3=code)
    if match is None:
        raise GreenlmError(f"unknown country code '{country}': {_COUNTRY_ADVICE}")
    return match.alpha_3


def _country_intensity(country: str) -> GridIntensity:
    alpha3 = _alpha3(country)
    entry = _energy_mix().get(alpha3)
    if entry is None:
        raise GreenlmError(
            f"country '{country}' ({alpha3}) has no carbon intensity in codecarbon's global_energy_mix.json: "
            f"use a neighbouring grid's code, a --region, or --carbon-intensity G_PER_KWH"
        )
    name = entry.get("country_name", alpha3)
    year = entry.get("year", "year unknown")
    return GridIntensity(
        intensity_g_per_kwh=float(entry["carbon_intensity"]),
        location=country.strip().upper(),
        source=f"codecarbon global_energy_mix.json ({name}, {year})",
    )


def _region_help() -> str:
    providers = sorted({r.provider for r in _cloud_regions()})
    example = next((f"{r.provider}:{r.region}" for r in _cloud_regions()), "gcp:europe-west1")
    return (
        f"codecarbon has regions for {', '.join(providers) or 'no provider'}; "
        f"list them with greenlm.energy.carbon.list_regions(), give one as PROVIDER:REGION (e.g. {example}), "
        "or use --country CODE or --carbon-intensity G_PER_KWH"
    )


def _find_region(region: str) -> _Region:
    spec = region.strip().lower()
    regions = _cloud_regions()
    if ":" in spec:
        provider, _, name = spec.partition(":")
        found = [r for r in regions if r.provider == provider.strip() and r.region == name.strip()]
    else:
        found = [r for r in regions if r.region == spec]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        options = ", ".join(f"{r.provider}:{r.region}" for r in found)
        raise GreenlmError(f"cloud region '{region}' is ambiguous ({options}): give it as PROVIDER:REGION")
    if ":" in spec:
        # Suggest only within the provider asked for: another provider's region is a different grid.
        provider = spec.partition(":")[0].strip()
        known = [f"{r.provider}:{r.region}" for r in regions if r.provider == provider]
    else:
        known = [r.region for r in regions]
    close = difflib.get_close_matches(spec, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise GreenlmError(f"unknown cloud region '{region}': {hint}{_region_help()}")


def _region_intensity(region: str) -> GridIntensity:
    r = _find_region(region)
    detail = f"{r.provider} {r.region}; {r.source}" if r.source else f"{r.provider} {r.region}"
    return GridIntensity(
        intensity_g_per_kwh=r.intensity_g_per_kwh,
        location=f"{r.provider}:{r.region}",
        source=f"codecarbon cloud/impact.csv ({detail})",
    )


def resolve_intensity(
    country: str | None = None,
    region: str | None = None,
    intensity_g_per_kwh: float | None = None,
) -> GridIntensity:
    """The grid intensity to use: explicit intensity > cloud region > country > world default.

    Every argument given is validated, even one that a higher-precedence argument overrides, so a typo
    never passes silently.
    """
    by_country = _country_intensity(country) if country is not None else None
    by_region = _region_intensity(region) if region is not None else None
    if intensity_g_per_kwh is not None:
        return GridIntensity(check_intensity(intensity_g_per_kwh), "override", "user --carbon-intensity")
    if by_region is not None:
        return by_region
    if by_country is not None:
        return by_country
    return GridIntensity(WORLD_INTENSITY_G_PER_KWH, "world", WORLD_SOURCE)


def validate_pue(pue: float) -> float:
    """Check a power usage effectiveness and return it as a float."""
    try:
        value = float(pue)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or not PUE_MIN <= value <= PUE_MAX:
        raise GreenlmError(
            f"PUE {pue!r} is out of range (--pue): PUE is facility power / IT power, so it is >= {PUE_MIN}; "
            f"give a value from {PUE_MIN} (no facility overhead, e.g. a laptop) to {PUE_MAX}"
        )
    return value


def energy_kwh(energy_j: float) -> float:
    """Joules to kilowatt-hours."""
    if not (math.isfinite(energy_j) and energy_j >= 0):
        raise ValueError(f"energy must be finite and >= 0 J, got {energy_j!r}")
    return energy_j / J_PER_KWH


def carbon_g(energy_j: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """Grams of CO2e for energy measured at the IT equipment, scaled by the facility's PUE."""
    if not (math.isfinite(intensity_g_per_kwh) and intensity_g_per_kwh >= 0):
        raise ValueError(f"carbon intensity must be finite and >= 0 g/kWh, got {intensity_g_per_kwh!r}")
    return energy_kwh(energy_j) * intensity_g_per_kwh * validate_pue(pue)


@dataclass(frozen=True)
class CarbonRate:
    """A grid intensity and the facility's PUE: what turns a run's joules into grams of CO2e."""

    grid: GridIntensity
    pue: float = 1.0

    def carbon_g(self, energy_j: float) -> float:
        return carbon_g(energy_j, self.grid.intensity_g_per_kwh, self.pue)

    def to_dict(self) -> dict:
        """The keys a stored row carries for its carbon figures."""
        return {
            "intensity_g_per_kwh": self.grid.intensity_g_per_kwh,
            "intensity_source": self.grid.source,
            "pue": self.pue,
        }
