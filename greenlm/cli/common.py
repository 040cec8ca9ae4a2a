"""What every command shares: the consoles, --json and --db options, number formatting, progress."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from dataclasses import MISSING, asdict, dataclass, fields

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from greenlm.workload.config import MeasureConfig

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


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
# Energy and carbon flags every metered verb takes (defaults: the library's, see MeasureConfig).
MeterOpt = typer.Option(
    default(MeasureConfig, "meter"), "--meter", help="auto (CPU + GPU), rapl, nvml, cpu-model, or a '+' join."
)
CountryOpt = typer.Option(None, "--country", help="ISO 3166 country code for grid carbon intensity.")
RegionOpt = typer.Option(None, "--region", help="Cloud region, e.g. gcp:europe-west1.")
IntensityOpt = typer.Option(None, "--carbon-intensity", help="Grid intensity in gCO2e/kWh.")
PueOpt = typer.Option(
    default(MeasureConfig, "pue"), "--pue", help="Data-centre power usage effectiveness (>= 1)."
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


@dataclass(frozen=True)
class EnergyFlags:
    """The energy and carbon flags of a metered verb, as one value: `**energy.kwargs()` hands them to the
    library config (MeasureConfig, EvalSettings, ServeConfig, DistillConfig, track_command)."""

    meter: str
    watts_per_core: float | None
    idle_watts_per_core: float | None
    country: str | None
    region: str | None
    carbon_intensity: float | None
    pue: float

    def kwargs(self) -> dict:
        return asdict(self)


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
        energy = EnergyFlags(**{name: kwargs.pop(name) for name in _ENERGY_OPTIONS})
        return command(*args, energy=energy, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": signature.return_annotation}
    return wrapper


def emit_json(payload) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def note(message: str) -> None:
    err.print(message, markup=False, style="yellow", soft_wrap=True)


class LazyProgress:
    """A progress bar on stderr that appears with the first update, so an early error prints alone.
    `update(done, total)` keeps the description; `labelled(label, done, total)` changes it with the phase
    (calibrating, step 2/3: gptq, ...)."""

    def __init__(self, description: str = ""):
        self.description = description
        self._bar: Progress | None = None
        self._task = None

    def labelled(self, label: str, done: int, total: int) -> None:
        self.description = label
        self.update(done, total)

    def update(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=total)
        self._bar.update(self._task, description=self.description, completed=done, total=total)

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def fmt(value: float, digits: int = 3) -> str:
    if value == 0 or value != value:
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 0.01:
        return f"{value:.{digits}g}" if magnitude < 1 else f"{value:.{max(digits - 1, 1)}f}"
    return f"{value:.3e}"
