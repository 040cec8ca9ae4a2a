"""What `greenlm distill` takes, with the CLI's defaults: flags, numbers and paths checked on construction (no
torch here); the student recipe is parsed first thing in `distill()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greenlm.compress.config import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_EVAL_TOKENS,
    check_data_flags,
)
from greenlm.defer.settings import GridSettings, parse_duration_s
from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.train.settings import TrainSettings

DEFAULT_CHECKPOINT_MINUTES = 5.0


@dataclass
class DistillConfig:
    out: str = ""  # the variant directory to create; must not exist
    train: TrainSettings = field(default_factory=TrainSettings)  # budget, loss, optimizer, batches, teacher
    teacher: str | None = None  # built-in name, HF directory or .gguf; None = the built-in model
    student: str | None = None  # a variant (or HF) directory with the teacher's vocabulary
    student_recipe: Any = None  # or a recipe (YAML path, Recipe, step list) applied to a copy of the teacher
    text: str | None = None  # training reads its calibration split; quality its evaluation split
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES  # for a student recipe's cuts
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    checkpoint_dir: str | None = None  # default: OUT.ckpt beside the output
    checkpoint_minutes: float | None = DEFAULT_CHECKPOINT_MINUTES
    checkpoint_steps: int | None = None
    resume: bool = False
    keep_checkpoint: bool = False
    evaluate: bool = True  # quality against the teacher before and after training
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    threads: int | None = None
    device: str = "auto"  # a CUDA GPU when torch sees one, else the CPU
    energy: EnergySettings = field(default_factory=EnergySettings)  # meter, cpu-model constants, grid, PUE
    # deferred training (greenlm.defer.gate): pause in dirty hours of the grid, finish by the deadline
    deadline: str | None = None  # e.g. 24h (grid clock: a replay's own time)
    grid_csv: str | None = None
    replay_speed: float = 1.0
    replay_from: str | None = None
    grid_provider: str | None = None  # electricitymaps:ZONE or watttime:REGION
    forecast: str = "auto"
    grid_url: str | None = None

    def grid_settings(self) -> GridSettings:
        return GridSettings(
            csv=self.grid_csv, speed=self.replay_speed, replay_from=self.replay_from, provider=self.grid_provider,
            forecast=self.forecast, url=self.grid_url,
        )  # fmt: skip

    @property
    def deadline_s(self) -> float | None:
        return None if self.deadline is None else parse_duration_s(self.deadline, "--deadline")

    def __post_init__(self) -> None:
        if not isinstance(self.out, (str, Path)) or not str(self.out).strip():
            raise GreenlmError("--out is required: the variant directory to write")
        if (self.student is None) == (self.student_recipe is None):
            raise GreenlmError(
                "give the student as --student DIR (a variant directory) or --student-recipe FILE, not "
                f"{'both' if self.student is not None else 'neither'}"
            )
        if not isinstance(self.train, TrainSettings):
            raise GreenlmError(f"train must be TrainSettings(...), got {type(self.train).__name__}")
        self.train.validate()
        self.energy = EnergySettings.coerce(self.energy)
        if self.checkpoint_minutes is not None and not (
            isinstance(self.checkpoint_minutes, (int, float)) and self.checkpoint_minutes > 0
        ):
            raise GreenlmError(f"--checkpoint-minutes must be > 0, got {self.checkpoint_minutes!r}")
        if self.checkpoint_steps is not None and (
            not isinstance(self.checkpoint_steps, int) or self.checkpoint_steps < 1
        ):
            raise GreenlmError(f"--checkpoint-steps must be at least 1, got {self.checkpoint_steps!r}")
        check_data_flags(self)
        grid = self.grid_settings()
        if self.deadline is not None:
            self.deadline_s  # noqa: B018 (checks the duration)
            if not grid.active:
                raise GreenlmError(
                    "--deadline defers training to the grid's clean hours: give the grid with --grid-csv FILE "
                    "or --grid PROVIDER:ZONE"
                )
        elif grid.active:
            raise GreenlmError("--grid-csv / --grid defer training by a deadline: add --deadline (e.g. 24h)")

    @property
    def checkpoint_path(self) -> Path:
        if self.checkpoint_dir:
            return Path(self.checkpoint_dir).expanduser()
        out = Path(self.out).expanduser()
        return out.with_name(out.name + ".ckpt")
