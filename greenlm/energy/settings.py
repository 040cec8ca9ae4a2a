"""The energy and carbon settings of every metered verb, as one value validated once.

    energy = EnergySettings(meter="cpu-model", country="FR", pue=1.2)
    meter = energy.open_meter()         # the meter it names (close it when done)
    carbon = energy.carbon()            # the grid intensity and PUE that turn joules into grams

Each config that meters nests it as `energy` (MeasureConfig, ServeConfig, DistillConfig, optimize's
EvalSettings), the train `Tracker` and `EnergyCallback` take it, and the CLI's seven flags build it. Rows and
--json documents keep the seven keys flat (`to_dict`, `flat_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from greenlm.energy.base import Meter
from greenlm.energy.carbon import CarbonRate, GridIntensity, check_intensity, resolve_intensity, validate_pue
from greenlm.energy.detect import check_watts, get_meter, meter_names
from greenlm.errors import GreenlmError


@dataclass(frozen=True)
class EnergySettings:
    meter: str = "auto"  # auto (CPU + GPU), rapl, nvml, cpu-model, or a '+' join such as rapl+nvml
    watts_per_core: float | None = None  # cpu-model: a fully busy physical core (None: TDP / cores)
    idle_watts_per_core: float | None = None  # cpu-model: an allotted core's static power (None: sourced)
    country: str | None = None  # ISO 3166 code of the grid
    region: str | None = None  # cloud region, PROVIDER:REGION
    carbon_intensity: float | None = None  # gCO2e/kWh, overrides region and country
    pue: float = 1.0  # data-centre power usage effectiveness

    def __post_init__(self) -> None:
        meter_names(self.meter)  # a meter name this greenlm does not know, whether or not this machine has it
        check_watts(self.watts_per_core, "--watts-per-core")
        check_watts(self.idle_watts_per_core, "--idle-watts-per-core", allow_zero=True)
        busy, idle = self.watts_per_core, self.idle_watts_per_core
        if busy is not None and idle is not None and idle > busy:
            raise GreenlmError(
                f"--idle-watts-per-core ({idle:g}) exceeds --watts-per-core ({busy:g}): an idle core draws less "
                "than a busy one; lower --idle-watts-per-core or raise --watts-per-core"
            )
        for flag, value, example in (
            ("--country", self.country, "FR"),
            ("--region", self.region, "gcp:europe-west1"),
        ):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise GreenlmError(f"{flag} must be a name such as {example}, got {value!r}")
        if self.carbon_intensity is not None:
            check_intensity(self.carbon_intensity)
        validate_pue(self.pue)

    def open_meter(self, *, include_children: bool = False) -> Meter:
        """The meter these settings name (MeterUnavailable when this machine lacks it); the caller closes it.
        `include_children`: the cpu-model estimate also counts live child processes."""
        return get_meter(
            self.meter,
            watts_per_core=self.watts_per_core,
            idle_watts_per_core=self.idle_watts_per_core,
            include_children=include_children,
        )

    def intensity(self) -> GridIntensity:
        """The grid intensity to use: --carbon-intensity > --region > --country > the world average."""
        return resolve_intensity(self.country, self.region, self.carbon_intensity)

    def carbon(self) -> CarbonRate:
        """The intensity and PUE that convert this run's joules into grams of CO2e."""
        return CarbonRate(self.intensity(), float(self.pue))

    def to_dict(self) -> dict[str, Any]:
        """The seven settings under the names of their flags (meter, watts_per_core, ..., pue)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def coerce(cls, value: EnergySettings | Mapping | None) -> EnergySettings:
        """`value` as EnergySettings: itself, the defaults for None, or built from a mapping of its fields (a
        config read back from JSON or sent through Ray as a dict)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise GreenlmError(
                    f"energy settings have no {', '.join(map(repr, unknown))}: valid are {', '.join(known)}"
                )
            return cls(**value)
        raise GreenlmError(f"energy must be EnergySettings(...), got {type(value).__name__}")


def flat_dict(config) -> dict[str, Any]:
    """`asdict(config)` with its `energy` field's seven keys in that field's place: the flat form rows and
    --json documents keep."""
    out: dict[str, Any] = {}
    for key, value in asdict(config).items():
        if key == "energy":
            out.update(value)  # asdict made the EnergySettings a dict of its seven fields
        else:
            out[key] = value
    return out
