"""How to distill: budget, loss, optimizer and data settings, validated once for the CLI, the library and the
`distill` compression step alike (their defaults all come from here). No torch here: the CLI imports it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from greenlm.errors import GreenlmError
from greenlm.train.forecast import DEFAULT_FORECAST_AFTER

BUDGETS = ("steps", "tokens", "minutes")
LOSSES = ("forward-kl", "reverse-kl", "jsd")  # greenlm.train.losses
PRECISIONS = ("auto", "bf16", "fp32")  # greenlm.train.precision


def _flag(name: str, cli: bool) -> str:
    return f"--{name.replace('_', '-')}" if cli else name


@dataclass
class TrainSettings:
    # Budget: exactly one of these.
    minutes: float | None = None  # wall-clock minutes of training (data preparation and checkpoints included)
    steps: int | None = None  # optimizer steps
    tokens: int | None = None  # training tokens (steps x batch_size x grad_accum x seq_len)
    # Loss on the teacher's next-token distribution (greenlm.train.losses).
    loss: str = "jsd"
    beta: float = 0.5  # jsd only: the weight of KL(teacher || mixture)
    temperature: float = 1.0
    ce_weight: float = 0.0  # plus this times the cross-entropy on the text itself
    # AdamW with linear warm-up and cosine decay (greenlm.train.schedule).
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # Batches: batch_size windows of seq_len tokens per micro-batch, grad_accum micro-batches per step.
    seq_len: int = 256
    batch_size: int = 4
    grad_accum: int = 1
    # Teacher: K = its top-K log-probabilities computed once, cached and reused every epoch (about 40% less
    # energy per step than running it alongside the student, same healing in a test on the built-in model);
    # 0 = run it on the fly, full vocabulary.
    teacher_topk: int = 64
    teacher_generate: int = 0  # extra windows of text the teacher writes, added to the calibration text
    train_embeddings: bool = False  # the (tied) embedding and output head stay the teacher's by default
    precision: str = "auto"  # auto: bf16 autocast where the device runs bf16 natively, else fp32
    seed: int = 0
    forecast_after: float = DEFAULT_FORECAST_AFTER  # fraction of the planned steps before the energy forecast

    def validate(self, *, cli: bool = True) -> None:
        """Raise GreenlmError naming the first bad setting (as a --flag when `cli`)."""
        given = [b for b in BUDGETS if getattr(self, b) is not None]
        if not given:
            raise GreenlmError(
                f"no training budget: give one of {', '.join(_flag(b, cli) for b in BUDGETS)} "
                f"(e.g. {_flag('minutes', cli)} 15)"
            )
        if len(given) > 1:
            raise GreenlmError(
                f"{' and '.join(_flag(b, cli) for b in given)} both given: the budget is one of them"
            )
        for name in ("steps", "tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise GreenlmError(f"{_flag(name, cli)} must be a whole number of at least 1, got {value!r}")
        if self.minutes is not None and not _positive_number(self.minutes):
            raise GreenlmError(
                f"{_flag('minutes', cli)} must be a number of minutes > 0, got {self.minutes!r}"
            )
        if self.loss not in LOSSES:
            raise GreenlmError(
                f"unknown {_flag('loss', cli)} '{self.loss}': choose one of {', '.join(LOSSES)}"
            )
        if not (_number(self.beta) and 0.0 < self.beta < 1.0):
            raise GreenlmError(f"{_flag('beta', cli)} must be strictly between 0 and 1, got {self.beta!r}")
        for name in ("temperature", "lr"):
            if not _positive_number(getattr(self, name)):
                raise GreenlmError(f"{_flag(name, cli)} must be a number > 0, got {getattr(self, name)!r}")
        for name in ("ce_weight", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not (_number(value) and value >= 0):
                raise GreenlmError(f"{_flag(name, cli)} must be a number >= 0, got {value!r}")
        for name, high in (("warmup_fraction", 0.5), ("min_lr_ratio", 1.0)):
            value = getattr(self, name)
            if not (_number(value) and 0.0 <= value <= high):
                raise GreenlmError(f"{_flag(name, cli)} must be between 0 and {high:g}, got {value!r}")
        if not (_number(self.forecast_after) and 0.0 < self.forecast_after <= 1.0):
            raise GreenlmError(
                f"{_flag('forecast_after', cli)} must be a fraction in (0, 1], got {self.forecast_after!r}"
            )
        for name, low in (("seq_len", 2), ("batch_size", 1), ("grad_accum", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GreenlmError(
                    f"{_flag(name, cli)} must be a whole number of at least {low}, got {value!r}"
                )
        for name in ("teacher_topk", "teacher_generate", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GreenlmError(f"{_flag(name, cli)} must be a whole number >= 0, got {value!r}")
        if self.precision not in PRECISIONS:
            raise GreenlmError(
                f"unknown {_flag('precision', cli)} '{self.precision}': choose one of {', '.join(PRECISIONS)}"
            )
        if not isinstance(self.train_embeddings, bool):
            raise GreenlmError(f"{_flag('train_embeddings', cli)} must be true or false")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def budget(self) -> tuple[str, float]:
        for name in BUDGETS:
            if getattr(self, name) is not None:
                return name, getattr(self, name)
        raise GreenlmError("no training budget")

    def to_dict(self) -> dict:
        return asdict(self)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value) -> bool:
    return _number(value) and value > 0


_SUFFIXES = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}


def parse_count(text: str, flag: str) -> int:
    """A token count such as 2000000, 2M, 500k or 1.5M."""
    raw = text.strip().lower().replace("_", "").replace(",", "")
    scale = _SUFFIXES.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in _SUFFIXES else raw
    try:
        value = float(number) * scale
    except ValueError:
        raise GreenlmError(f"{flag} must be a count such as 2000000, 2M or 500k, got '{text}'") from None
    if not math.isfinite(value) or value != int(value):
        raise GreenlmError(f"{flag} must be a whole number of tokens, got '{text}'")
    return int(value)
