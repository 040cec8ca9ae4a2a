"""Settings of one optimization run, validated once; `EvalSettings` is the picklable part a worker needs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from greenlm.energy.settings import EnergySettings, flat_dict
from greenlm.errors import GreenlmError
from greenlm.optimize.pareto import QualityBudget


def parse_duration_s(text: str | float | int) -> float:
    """'20m', '90s', '1h', '1h30m' or a number of seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.fullmatch(
            r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
        )
        if not parts or not any(parts.groups()):
            raise GreenlmError(f"--time-budget '{text}' is not a duration: use e.g. 20m, 90s, 1h30m")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise GreenlmError(f"time budget must be positive, got {text!r}")
    return seconds


def parse_percent(text: str | float) -> float:
    """'3%' or '3' → 3.0 (percent)."""
    raw = text.strip().removesuffix("%") if isinstance(text, str) else text
    try:
        value = float(raw)
    except ValueError:
        raise GreenlmError(f"'{text}' is not a percentage: use e.g. 3%") from None
    if not math.isfinite(value) or value < 0:
        raise GreenlmError(f"--max-ppl-increase must be a percentage >= 0, got {text!r}")
    return value


@dataclass
class EvalSettings:
    """How every candidate is judged: the same text, token budgets and workload for all of them."""

    model: str | None = None
    text: str | None = None
    screen_eval_tokens: int = 1024  # cheap KLD screen before any full measurement
    eval_tokens: int = 4096
    num_prompts: int = 2
    prompt_tokens: int = 64
    max_new_tokens: int = 48
    repeats: int = 3
    energy: EnergySettings = field(default_factory=EnergySettings)  # how every candidate is metered
    device: str = "auto"  # auto, cpu, cuda or cuda:N: where every candidate (and baseline) runs
    workdir: str = ""  # where candidate variants are built (under the cache dir by default)
    budget: QualityBudget = field(default_factory=QualityBudget)
    screen_margin: float = 3.0  # reject when the screen KLD exceeds margin x the budget: hopeless
    # The energy probe after the screen: a short measurement (one prompt, two repeats) that lets a candidate be
    # skipped only when a measured front member with the same execution is both better and cheaper.
    probe_repeats: int = 2
    # A probe must cost this much more than a member (relative) before the member is called cheaper: repeats
    # of one measurement on a shared CPU differ by a few percent.
    probe_margin: float = 0.05

    def __post_init__(self) -> None:
        self.energy = EnergySettings.coerce(self.energy)

    def to_dict(self) -> dict:
        return flat_dict(self)


@dataclass
class OptimizeConfig:
    settings: EvalSettings = field(default_factory=EvalSettings)
    space: str | None = None  # YAML file; None = default space
    time_budget_s: float = 20 * 60
    max_candidates: int | None = None
    executor: str = "local"
    ray_address: str | None = None
    ray_cpus_per_task: float = 1.0  # Ray resource requests of each candidate task
    ray_gpus_per_task: float = 0.0
    out: str | None = None  # where the chosen variant is saved
    resume: bool = False
    search_id: str | None = None
    # The final round re-measures the best feasible candidates and both baselines, interleaved, this many
    # rounds, on this host and meter, and chooses on those medians; 0 skips it (choice on search-time figures).
    final_rounds: int = 3
    final_candidates: int = 3

    def __post_init__(self) -> None:
        b = self.settings.budget
        if not (math.isfinite(b.max_ppl_increase_pct) and b.max_ppl_increase_pct >= 0):
            raise GreenlmError(f"--max-ppl-increase must be >= 0%, got {b.max_ppl_increase_pct}")
        if not (math.isfinite(b.max_kld) and b.max_kld >= 0):
            raise GreenlmError(f"--max-kld must be >= 0, got {b.max_kld}")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise GreenlmError(f"--max-candidates must be at least 1, got {self.max_candidates}")
        if not (self.ray_cpus_per_task > 0 and self.ray_gpus_per_task >= 0):
            raise GreenlmError(
                "--ray-cpus-per-task must be > 0 and --ray-gpus-per-task >= 0, "
                f"got {self.ray_cpus_per_task} and {self.ray_gpus_per_task}"
            )
        if self.time_budget_s <= 0:
            raise GreenlmError("--time-budget must be positive")
        if self.final_rounds < 0 or self.final_candidates < 1:
            raise GreenlmError(
                f"--final-rounds must be >= 0 and final candidates >= 1, got {self.final_rounds} and "
                f"{self.final_candidates}"
            )
        if self.ray_gpus_per_task > 0 and self.settings.device == "cpu":
            raise GreenlmError(
                "--ray-gpus-per-task reserves GPUs that candidates on --device cpu would not use: pass "
                "--device cuda (or auto), or drop --ray-gpus-per-task"
            )
        s = self.settings
        for name in (
            "screen_eval_tokens",
            "eval_tokens",
            "num_prompts",
            "prompt_tokens",
            "repeats",
            "probe_repeats",
        ):
            if getattr(s, name) < 1:
                raise GreenlmError(f"{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}")
        if s.max_new_tokens < 2:
            raise GreenlmError(f"--max-new-tokens must be at least 2, got {s.max_new_tokens}")
