"""The compression contract: a step is a validated config dataclass plus a function that applies it.

Methods register themselves (`@register(ConfigClass)`), so recipes, the CLI and the optimizer find them by
name without a central if-chain. Each application returns a `StepReport` saying whether the step makes the
model really cheaper to run (`real`) or only models the quality effect (`simulated`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from greenlm.compress.config import DEFAULT_CALIBRATION_SAMPLES, DEFAULT_CALIBRATION_TOKENS
from greenlm.data.calibration import calibration_windows
from greenlm.errors import GreenlmError
from greenlm.progress import Progress, no_progress

Execution = Literal["real", "simulated"]


@dataclass
class StepConfig:
    """Base for one step's settings. Subclasses are dataclasses that validate in `__post_init__`."""

    method: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"method"})
        if unknown:
            raise GreenlmError(
                f"step '{cls.method}' has no setting {', '.join(map(repr, unknown))}: valid settings are {', '.join(sorted(known))}"
            )
        return cls(**{k: v for k, v in data.items() if k != "method"})


@dataclass
class StepReport:
    method: str
    execution: Execution
    # things the user must know, e.g. "no dense-kernel speed-up on CPU"
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. layers removed, parameters before/after
    # Integer codes (kernels.quant_grid.QuantizedWeight) of quantized layers installed as dense float weights, by
    # module name: saved beside the variant so `greenlm export` can write them as GGUF blocks. Not in the JSON.
    codes: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(replace(self, codes={}), dict_factory=lambda kv: {k: v for k, v in kv if k != "codes"})


@dataclass
class CompressContext:
    """What a step may need besides the model: the tokenizer and calibration text (never evaluation text)."""

    tokenizer: Any
    text: str | None = None  # text spec as for --text; the calibration split of it is used
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    progress: Progress = no_progress
    parent: Any = None  # the parent's ModelSpec: a step that learns from the parent (distill) loads it
    reports: list[StepReport] = field(default_factory=list)  # the steps applied before this one
    _windows: Any = None

    def calibration_windows(self):
        """[samples, tokens] token ids from the calibration split, built once per compression run."""
        if self._windows is None:
            self._windows = calibration_windows(
                self.tokenizer, self.text, samples=self.calibration_samples, tokens=self.calibration_tokens
            )
        return self._windows


def parameter_count(model) -> int:
    """Parameters of a torch model, each shared (tied) tensor once, as `Module.parameters` yields them."""
    return sum(p.numel() for p in model.parameters())


ApplyFn = Callable[[Any, StepConfig, CompressContext], StepReport]
_REGISTRY: dict[str, tuple[type[StepConfig], ApplyFn]] = {}


def register(config_cls: type[StepConfig]) -> Callable[[ApplyFn], ApplyFn]:
    def decorate(fn: ApplyFn) -> ApplyFn:
        _REGISTRY[config_cls.method] = (config_cls, fn)
        return fn

    return decorate
