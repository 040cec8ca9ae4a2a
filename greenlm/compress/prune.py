"""Unstructured and N:M sparsity: magnitude and Wanda (|W| * ||X_j||), pruned per output row.

The mask math is pure functions on tensors; the apply functions only gather statistics and zero weights.
Zeros in a dense matrix cost the same to multiply, so these steps are `simulated`: they model the quality of
a sparse model, they do not make it cheaper to run on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from greenlm.compress.base import CompressContext, StepConfig, StepReport, register
from greenlm.data.calibration import capture_linear_inputs, linear_names
from greenlm.errors import GreenlmError
from greenlm.progress import relabel

# Tied to the input embedding in most small models: pruning it would prune the embedding too.
DEFAULT_SKIP = ("lm_head",)
SPARSITY_NOTE = (
    "unstructured sparsity: the zeros stay in dense matrices, so there is no dense-kernel speed-up on CPU "
    "and no smaller file (simulated: quality only)"
)
Score = Literal["wanda", "magnitude"]


# --- pure mask math ---------------------------------------------------------------------------------------


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||: a weight matters as much as the input it multiplies (Sun et al., 2023)."""
    if col_norm.shape != (weight.shape[1],):
        raise ValueError(f"input norms {tuple(col_norm.shape)} do not match weight columns {weight.shape[1]}")
    return weight.detach().abs().float() * col_norm.float().to(weight.device)[None, :]


def pruned_per_row(columns: int, ratio: float) -> int:
    return int(round(ratio * columns))


def row_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask that removes exactly `round(ratio * columns)` lowest-scoring weights in every row."""
    k = pruned_per_row(scores.shape[1], ratio)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        # sort, not a threshold: ties would otherwise prune more or fewer than k
        idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
        keep.scatter_(1, idx, False)
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with exactly `n` nonzeros in every group of `m` consecutive inputs of a row."""
    rows, cols = scores.shape
    if cols % m:
        raise GreenlmError(f"{n}:{m} sparsity needs input widths divisible by {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, idx, True)
    return keep.reshape(rows, cols)


# --- configs ----------------------------------------------------------------------------------------------


def _check_ratio(ratio: float, method: str) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise GreenlmError(
            f"{method} ratio must be between 0 and 1 (fraction of weights removed), got {ratio!r}"
        )


def _check_skip(skip) -> tuple[str, ...]:
    if isinstance(skip, str) or not all(isinstance(p, str) for p in skip):
        raise GreenlmError(f"skip must be a list of module-name patterns, got {skip!r}")
    return tuple(skip)


@dataclass
class _RowSparsity(StepConfig):
    """Settings shared by the unstructured methods: the share of each output row to zero, and what to skip."""

    ratio: float = 0.5
    skip: tuple[str, ...] = DEFAULT_SKIP

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, self.method)
        self.skip = _check_skip(self.skip)


@dataclass
class Magnitude(_RowSparsity):
    """Zero the smallest-magnitude `ratio` of weights in each output row."""

    method = "magnitude"


@dataclass
class Wanda(_RowSparsity):
    """Zero the `ratio` of weights per output row with the lowest |W| * ||X|| on calibration text."""

    method = "wanda"


@dataclass
class NMSparsity(StepConfig):
    """Keep `n` of every `m` consecutive weights per row (2:4 is what sparse tensor cores accelerate)."""

    method = "nm"
    n: int = 2
    m: int = 4
    score: Score = "wanda"
    skip: tuple[str, ...] = DEFAULT_SKIP

    def __post_init__(self) -> None:
        for name in ("n", "m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GreenlmError(f"nm sparsity '{name}' must be a whole number >= 1, got {value!r}")
        if self.n >= self.m:
            raise GreenlmError(
                f"nm sparsity keeps n of every m weights: n must be below m, got {self.n}:{self.m}"
            )
        if self.score not in ("wanda", "magnitude"):
            raise GreenlmError(f"nm sparsity score must be 'wanda' or 'magnitude', got {self.score!r}")
        self.skip = _check_skip(self.skip)


# --- apply ------------------------------------------------------------------------------------------------


def _targets(model, skip: tuple[str, ...]) -> dict[str, torch.nn.Linear]:
    modules = dict(model.named_modules())
    names = linear_names(model, skip=skip)
    if not names:
        raise GreenlmError(f"no linear layers left to prune after skip patterns {list(skip)}")
    return {n: modules[n] for n in names}


def _input_norms(model, names, ctx: CompressContext) -> dict[str, torch.Tensor]:
    stats = capture_linear_inputs(
        model,
        names,
        ctx.calibration_windows(),
        progress=relabel(ctx.progress, "calibrating"),
    )
    return {n: s.col_norm for n, s in stats.items()}


def _apply_masks(targets, mask_of) -> dict:
    zeroed = total = 0
    with torch.no_grad():
        for name, linear in targets.items():
            keep = mask_of(name, linear.weight)
            linear.weight.mul_(keep.to(linear.weight.dtype))
            zeroed += int((~keep).sum())
            total += keep.numel()
    return {"layers_pruned": len(targets), "weights_zeroed": zeroed, "sparsity": round(zeroed / total, 6)}


def _report(method: str, details: dict) -> StepReport:
    return StepReport(method, "simulated", notes=[SPARSITY_NOTE], details=details)


@register(Magnitude)
def apply_magnitude(model, config: Magnitude, ctx: CompressContext) -> StepReport:
    targets = _targets(model, config.skip)
    details = _apply_masks(targets, lambda _n, w: row_mask(magnitude_scores(w), config.ratio))
    return _report(config.method, details)


@register(Wanda)
def apply_wanda(model, config: Wanda, ctx: CompressContext) -> StepReport:
    targets = _targets(model, config.skip)
    norms = _input_norms(model, list(targets), ctx)
    details = _apply_masks(targets, lambda n, w: row_mask(wanda_scores(w, norms[n]), config.ratio))
    details["calibration_tokens"] = int(ctx.calibration_windows().numel())
    return _report(config.method, details)


@register(NMSparsity)
def apply_nm(model, config: NMSparsity, ctx: CompressContext) -> StepReport:
    targets = _targets(model, config.skip)
    bad = [n for n, lin in targets.items() if lin.in_features % config.m]
    if bad:
        raise GreenlmError(
            f"{config.n}:{config.m} sparsity needs input widths divisible by {config.m}; "
            f"{bad[0]} has {targets[bad[0]].in_features}: add it to skip"
        )
    if config.score == "wanda":
        norms = _input_norms(model, list(targets), ctx)
        details = _apply_masks(targets, lambda n, w: nm_mask(wanda_scores(w, norms[n]), config.n, config.m))
    else:
        details = _apply_masks(targets, lambda _n, w: nm_mask(magnitude_scores(w), config.n, config.m))
    details["pattern"] = f"{config.n}:{config.m}"
    return _report(config.method, details)
