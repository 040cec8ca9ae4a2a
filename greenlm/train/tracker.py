"""Energy and carbon of any work: a block of Python, a function, or a whole command with its child processes.

    with greenlm.track("my-step") as t:              # or track("my-step", energy=EnergySettings(country="FR"))
        work()
    t.energy_j, t.carbon_g

    @greenlm.track("epoch")          # each call is one window; `epoch.last` is the newest result
    def epoch(): ...

    greenlm track -- python train.py  # `track_command`: the command's exit code passes through

Each window is read at its edges by a greenlm meter (RAPL/NVML, else the CPU-time model; for a command it
follows the whole process tree: live descendants while they run, and everything reaped once they exit). Every result is stored as one row (kind "track") unless
`store=False`.
"""

from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from greenlm.energy.base import Measurement
from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.store import Store


@dataclass
class TrackResult:
    name: str
    energy_j: float
    duration_s: float
    carbon_g: float
    meter: str
    energy_source: str  # measured | estimated
    energy_by_domain_j: dict[str, float]
    energy_detail_j: dict[str, float]  # parts already inside a domain (the CPU estimate's static and dynamic)
    intensity_g_per_kwh: float
    intensity_source: str
    pue: float
    meter_note: str
    meter_details: dict[str, Any] = field(default_factory=dict)
    command: list[str] | None = None
    exit_code: int | None = None
    interrupted: bool = False
    run_id: str | None = None

    @property
    def avg_power_w(self) -> float:
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"avg_power_w": self.avg_power_w}


class Tracker:
    """One meter window around a block (context manager) or around each call of a function (decorator)."""

    def __init__(
        self,
        name: str = "track",
        *,
        energy: EnergySettings | None = None,
        store: bool = True,
        db: str | None = None,
        include_children: bool = False,
    ) -> None:
        """`energy`: the meter and carbon settings (default: auto, the world-average grid); `store`: save one
        row (kind "track") to the results store `db`; `include_children`: the cpu-model estimate also counts
        live child processes."""
        if not isinstance(name, str) or not name.strip():
            raise GreenlmError(f"track needs a name for its window, got {name!r}")
        self.name = name
        self.energy = EnergySettings.coerce(energy)
        self.store, self.db, self.include_children = store, db, include_children
        # Cheap checks now, so a typo fails before the work it would measure.
        self.carbon = self.energy.carbon()
        self.extra: dict[str, Any] = {}  # command, exit_code, interrupted: filled in by track_command
        self.result: TrackResult | None = None
        self._meter = None
        self._start = None

    # --- context manager ----------------------------------------------------------------------------------

    def __enter__(self) -> Tracker:
        self.result = None
        self._meter = self.energy.open_meter(include_children=self.include_children)
        self._start = self._meter.begin_window()
        return self

    def __exit__(self, *exc) -> None:
        meter, self._meter = self._meter, None
        try:
            measurement: Measurement = meter.end_window(self._start)
            self.result = self._result(measurement, meter)
        finally:
            meter.close()
        if self.store:
            with Store(self.db) as store:
                record = self.result.to_dict() | {"model": self.name, "kind": "track"}
                self.result.run_id = store.add("track", record)

    def _result(self, m: Measurement, meter) -> TrackResult:
        return TrackResult(
            name=self.name,
            energy_j=m.total_j,
            duration_s=m.duration_s,
            carbon_g=self.carbon.carbon_g(m.total_j),
            meter=m.meter,
            energy_source=m.energy_source,
            energy_by_domain_j=dict(m.energy_j),
            energy_detail_j=dict(m.detail_j),
            **self.carbon.to_dict(),
            meter_note=meter.selection_note,
            meter_details=meter.describe(),
            **self.extra,
        )

    # --- what the block measured --------------------------------------------------------------------------

    def _done(self) -> TrackResult:
        if self.result is None:
            raise RuntimeError("the tracked block has not finished yet: read energy_j after the with-block")
        return self.result

    @property
    def energy_j(self) -> float:
        return self._done().energy_j

    @property
    def carbon_g(self) -> float:
        return self._done().carbon_g

    @property
    def duration_s(self) -> float:
        return self._done().duration_s

    # --- decorator ----------------------------------------------------------------------------------------

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            # a fresh window per call: calls may nest or overlap
            window = Tracker(
                self.name,
                energy=self.energy,
                store=self.store,
                db=self.db,
                include_children=self.include_children,
            )
            with window:
                value = fn(*args, **kwargs)
            wrapper.last = window.result
            return value

        wrapper.last = None
        return wrapper


def track(name: str | Callable | None = None, **settings) -> Any:
    """`with track("name") as t:`, `@track("name")` or bare `@track`: see the module docstring.
    Settings: energy (EnergySettings: meter, grid, PUE), store, db, include_children (cpu-model: also count
    live child processes), as `Tracker` takes them."""
    if callable(name):
        return Tracker(getattr(name, "__qualname__", "function"), **settings)(name)
    return Tracker(name or "track", **settings)


def check_command(argv: list[str]) -> str:
    """The executable `argv` starts, or a GreenlmError for no command or one that does not exist."""
    if not argv:
        raise GreenlmError(
            "no command to track: greenlm track -- CMD [ARGS...], e.g. greenlm track -- python train.py"
        )
    found = shutil.which(argv[0])
    if found is None:
        raise GreenlmError(
            f"command '{argv[0]}' not found (not on PATH, or not an executable file): check its name"
        )
    return found


def exit_status(returncode: int) -> int:
    """A shell-style exit status: 128 + N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def track_command(
    argv: list[str],
    *,
    name: str | None = None,
    energy: EnergySettings | None = None,
    store: bool = True,
    db: str | None = None,
) -> TrackResult:
    """Run `argv` to completion inside one meter window and return what it (and its children) cost.
    Ctrl-C reaches the command too; the run waits for it to stop, records it as interrupted and re-raises."""
    check_command(argv)
    # the CPU estimate follows the command's live descendants too (their time and memory while they run)
    tracker = Tracker(name or shlex.join(argv), energy=energy, store=store, db=db, include_children=True)
    interrupted = False
    with tracker:
        try:
            process = subprocess.Popen(argv)
        except OSError as exc:
            raise GreenlmError(f"cannot run '{argv[0]}': {exc.strerror or exc}") from None
        while True:
            try:
                code = process.wait()
                break
            except KeyboardInterrupt:
                # The terminal sent SIGINT to the whole process group: the command is stopping too.
                interrupted = True
        tracker.extra.update(command=list(argv), exit_code=exit_status(code), interrupted=interrupted)
    if interrupted:
        raise KeyboardInterrupt
    return tracker.result
