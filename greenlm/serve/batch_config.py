"""What `greenlm batch run` takes, with the CLI's defaults, checked on construction (no model, no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from greenlm.defer.settings import GridSettings, parse_duration_s
from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.serve.config import ServeConfig

MAX_OFFLINE_WINDOW_S = 30 * 86400.0  # offline, a deadline may be longer than the API's 24 hours


@dataclass
class BatchRunConfig:
    input: str
    out: str
    deadline: str = "24h"  # the whole file must be done within this (grid clock: a replay's time)
    model: str | None = None
    engine: str | None = None
    threads: int | None = None
    device: str = "auto"
    max_batch: int = 8
    context_tokens: int = 2048
    max_tokens_default: int = 256
    served_model_name: str | None = None  # None: the model the file's requests name (when they name one)
    dry_run: bool = False
    force: bool = False  # replace OUT
    grid_csv: str | None = None
    replay_speed: float = 1.0
    replay_from: str | None = None
    grid_provider: str | None = None
    forecast: str = "auto"
    grid_url: str | None = None
    energy: EnergySettings = field(default_factory=EnergySettings)  # meter, cpu-model constants, grid, PUE

    def __post_init__(self) -> None:
        self.energy = EnergySettings.coerce(self.energy)
        self.deadline_s = parse_duration_s(self.deadline, "--deadline")
        if self.deadline_s > MAX_OFFLINE_WINDOW_S:
            raise GreenlmError(f"--deadline {self.deadline} is over 30 days: give a shorter one")
        self.grid = GridSettings(
            csv=self.grid_csv, speed=self.replay_speed, replay_from=self.replay_from, provider=self.grid_provider,
            forecast=self.forecast, url=self.grid_url,
        )  # fmt: skip
        if not self.dry_run and not str(self.out or "").strip():
            raise GreenlmError("--out is required: the JSONL file of results to write")

    @property
    def state_dir(self) -> Path:
        out = Path(self.out).expanduser()
        return out.with_name(out.name + ".state")

    def serve_config(self, state_dir: str, served_model_name: str | None = None) -> ServeConfig:
        return ServeConfig(
            model=self.model, engine=self.engine, threads=self.threads, device=self.device,
            max_batch=self.max_batch, step_tokens=max(256, self.max_batch), context_tokens=self.context_tokens,
            max_tokens_default=self.max_tokens_default, served_model_name=served_model_name, energy=self.energy,
            grid_csv=self.grid_csv,
            replay_speed=self.replay_speed, replay_from=self.replay_from, grid_provider=self.grid_provider,
            forecast=self.forecast, grid_url=self.grid_url, state_dir=state_dir,
        )  # fmt: skip
