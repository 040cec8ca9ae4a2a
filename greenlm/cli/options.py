"""The flags several commands share, declared once: `from greenlm.cli import options`, then
`db: str | None = options.DbOpt`, `device: options.DeviceFlag = options.default(Config, "device")`, and the
energy and carbon group as one parameter (`options.energy_options`). Defaults come from the library's config
dataclasses."""

from __future__ import annotations

import functools
import inspect
from dataclasses import MISSING, fields
from typing import Annotated

import typer

from greenlm.energy.settings import EnergySettings


def default(config_cls: type, name: str):
    """The default of field `name` of a library config dataclass: a CLI flag takes it from there, so the CLI
    and the library function of a verb run with the same settings."""
    for f in fields(config_cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
    raise KeyError(f"{config_cls.__name__} has no field {name!r} with a default")


JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of a table.")
DbOpt = typer.Option(None, "--db", help="Results store (SQLite). Default: the user data dir, or $GREENLM_DB.")
ModelOpt = typer.Option(
    None, "--model", "-m", help="Built-in name, HF directory or .gguf (default smollm2-135m)."
)
VariantOutOpt = typer.Option(..., "--out", "-o", help="Variant directory to create (must not exist).")
TorchThreadsOpt = typer.Option(None, "--threads", help="CPU threads (default: torch's choice).")
# Flags whose default each verb takes from its own config dataclass: `device: DeviceFlag = default(...)`.
DeviceFlag = Annotated[
    str, typer.Option("--device", help="auto (a GPU when the engine can use one), cpu, cuda or cuda:N.")
]
TrainDeviceFlag = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
CalibrationTokensFlag = Annotated[
    int, typer.Option("--calibration-tokens", help="Tokens per calibration window.")
]
# The grid deferred work follows (serve, batch run, distill): greenlm.defer.settings.GridSettings
GridCsvOpt = typer.Option(
    None,
    "--grid-csv",
    help="Replay a CSV of (timestamp, gCO2e/kWh) rows as the grid (e.g. bench/data/gb-2020-ci.csv).",
)
ReplaySpeedOpt = typer.Option(
    1.0, "--replay-speed", help="Trace seconds per wall second of the --grid-csv replay."
)
ReplayFromOpt = typer.Option(
    None, "--replay-from", help="Start the replay at this time in the CSV (ISO 8601)."
)
GridOpt = typer.Option(
    None,
    "--grid",
    help="A live grid: electricitymaps:ZONE or watttime:REGION (token/account from the environment).",
)
ForecastOpt = typer.Option(
    "auto",
    "--forecast",
    help="How a --grid-csv is forecast: yesterday (auto), persistence, or perfect (the trace: for comparison).",
)
GridUrlOpt = typer.Option(None, "--grid-url", help="The --grid provider's API base URL (a proxy).")
StateDirOpt = typer.Option(
    None,
    "--state-dir",
    help="Where batch files, batches and finished lines are kept (default: beside the store).",
)
# Energy and carbon flags every metered verb takes (defaults: the library's EnergySettings).
MeterOpt = typer.Option(
    default(EnergySettings, "meter"),
    "--meter",
    help="auto (CPU + GPU), rapl, nvml, cpu-model, or a '+' join.",
)
CountryOpt = typer.Option(None, "--country", help="ISO 3166 country code for grid carbon intensity.")
RegionOpt = typer.Option(None, "--region", help="Cloud region, e.g. gcp:europe-west1.")
IntensityOpt = typer.Option(None, "--carbon-intensity", help="Grid intensity in gCO2e/kWh.")
PueOpt = typer.Option(
    default(EnergySettings, "pue"), "--pue", help="Data-centre power usage effectiveness (>= 1)."
)
# The cpu-model meter's constants, on every verb that takes --meter (`greenlm meters` shows the defaults).
WattsOpt = typer.Option(
    None, "--watts-per-core", help="cpu-model: watts of one fully busy physical core (default: TDP / cores)."
)
IdleWattsOpt = typer.Option(
    None,
    "--idle-watts-per-core",
    help="cpu-model: static watts of each allotted core for every second (default: 0.21 x watts per core).",
)


# The energy and carbon flags of a metered verb, as one value: the library's EnergySettings, validated when the
# flags are parsed, handed as `energy=` to the verb's config (MeasureConfig, EvalSettings, ServeConfig,
# DistillConfig, track_command).
EnergyFlags = EnergySettings

_ENERGY_OPTIONS = {
    "meter": (str, MeterOpt),
    "watts_per_core": (float | None, WattsOpt),
    "idle_watts_per_core": (float | None, IdleWattsOpt),
    "country": (str | None, CountryOpt),
    "region": (str | None, RegionOpt),
    "carbon_intensity": (float | None, IntensityOpt),
    "pue": (float, PueOpt),
}


# the default of a command's `energy: EnergyFlags` parameter, replaced by the seven flags in energy_options
EnergyOpts: EnergyFlags = None  # type: ignore[assignment]


def energy_options(command):
    """Declare the seven energy and carbon flags once for every metered verb: the command takes one parameter
    `energy: EnergyFlags = EnergyOpts`, and typer sees the seven flags in its place (same names, order and
    help)."""
    signature = inspect.signature(command, eval_str=True)
    params = []
    for param in signature.parameters.values():
        if param.name == "energy":
            params += [
                inspect.Parameter(name, param.kind, default=option, annotation=annotation)
                for name, (annotation, option) in _ENERGY_OPTIONS.items()
            ]
        else:
            params.append(param)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        energy = EnergySettings(**{name: kwargs.pop(name) for name in _ENERGY_OPTIONS})
        return command(*args, energy=energy, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": signature.return_annotation}
    return wrapper
