"""Records: the quality figures of one model on a set of windows, and the full `greenlm eval` result."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch


def kld_method(top_k: int, tail_samples: int) -> str:
    return (
        f"top-{top_k}+tail-{tail_samples}: KL(reference || model) per position, exact over the reference's "
        f"{top_k} most likely tokens plus the rest mass times the mean log-ratio over {tail_samples} tokens "
        "sampled from the reference's tail (an unbiased estimate of the full-vocabulary KL), averaged over "
        f"positions; kld_lower_bound merges the tail into one bucket instead (top-{top_k}+rest), a lower "
        "bound on the true KL by the data-processing inequality"
    )


def mean_stderr(per_window: torch.Tensor) -> tuple[float, float | None]:
    """Mean over windows and its standard error (windows treated as independent samples of the text)."""
    values = per_window.double()
    mean = float(values.mean())
    if values.numel() < 2:
        return mean, None
    return mean, float(values.std(unbiased=True) / math.sqrt(values.numel()))


@dataclass
class QualityStats:
    """One model on one set of windows. Compared with a reference when `kld` is not None."""

    ppl: float
    nll_mean: float  # nats per token; ppl = exp(nll_mean)
    nll_stderr: float | None
    windows: int
    window_tokens: int
    tokens_evaluated: int  # scored next-token predictions: windows x (window_tokens - 1)
    eval_s: float  # time running the model over the windows (0 when its statistics came from the cache)
    ppl_reference: float | None = None
    ppl_increase_pct: float | None = None
    ppl_increase_pct_stderr: float | None = None  # from the paired per-window NLL differences
    kld: float | None = None
    kld_stderr: float | None = None
    kld_lower_bound: float | None = None  # top-k + one rest bucket: a guaranteed lower bound on the true KL
    kld_p99: float | None = None  # 99th percentile over positions: rare large disagreements
    kld_method: str | None = None
    top1_agreement: float | None = None
    top_k: int | None = None
    tail_samples: int | None = None
    ref_topk_mass: float | None = None  # mean share of the reference's probability its top-k tokens hold
    ref_topk_mass_min: float | None = None
    tokenizer_match: bool | None = None  # the model's own tokenizer splits a probe of the text identically

    @classmethod
    def from_nll(
        cls,
        nll_mean: float,
        nll_stderr: float | None,
        windows: int,
        window_tokens: int,
        eval_s: float,
        **compared,
    ) -> QualityStats:
        """From the mean per-token NLL over `windows` windows (each scores window_tokens - 1 predictions);
        `compared`: the figures against a reference."""
        return cls(
            ppl=math.exp(nll_mean),
            nll_mean=nll_mean,
            nll_stderr=nll_stderr,
            windows=windows,
            window_tokens=window_tokens,
            tokens_evaluated=windows * (window_tokens - 1),
            eval_s=eval_s,
            **compared,
        )

    @property
    def tokens_fed(self) -> int:
        return self.windows * self.window_tokens

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_fed"] = self.tokens_fed
        d["eval_tokens_per_s"] = self.tokens_fed / self.eval_s if self.eval_s > 0 else None
        return d


@dataclass
class EvalResult:
    """`greenlm eval`: a model's perplexity, and its agreement with a reference when there is one."""

    model: str
    model_identity: dict
    engine: str
    engine_info: dict  # threads, device, dtype, load time: what the model ran on (empty when cached)
    text: str  # e.g. "builtin:pydoc-topics/evaluation"
    text_fingerprint: str
    text_tokens: int  # tokens in the whole evaluation split (tokenized once, with the reference's tokenizer)
    quality: QualityStats
    max_eval_tokens: int | None
    wall_s: float
    reference: str | None = None
    reference_identity: dict | None = None
    reference_source: str | None = None  # "--reference" or "variant parent"
    reference_engine: dict | None = None  # what produced the cached reference statistics
    reference_cached: bool | None = None
    reference_s: float | None = None  # time to compute (cold) or read (cached) the reference statistics
    reference_cache: str | None = None
    model_cached: bool = False  # without a reference: the model's own statistics came from the cache
    variant: dict | None = None  # from greenlm-variant.json: execution, recipe, parent
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    payback: dict | None = None  # a variant made with training energy: served tokens until it is repaid

    def to_dict(self) -> dict:
        q = self.quality.to_dict()
        d = {
            "model": self.model,
            "reference": self.reference,
            "engine": self.engine,
            "device": (self.engine_info or {}).get("device"),  # what the evaluated model ran on
            "ppl": q.pop("ppl"),
            "ppl_reference": q.pop("ppl_reference"),
            "ppl_increase_pct": q.pop("ppl_increase_pct"),
            "kld": q.pop("kld"),
            "top1_agreement": q.pop("top1_agreement"),
            "tokens_evaluated": q.pop("tokens_evaluated"),
            "text": self.text,
            "wall_s": self.wall_s,
            "window_tokens": q.pop("window_tokens"),
            "windows": q.pop("windows"),
            "max_eval_tokens": self.max_eval_tokens,
            "reference_cached": self.reference_cached,
            "reference_s": self.reference_s,
            "model_cached": self.model_cached,
            **q,
            "text_fingerprint": self.text_fingerprint,
            "text_tokens": self.text_tokens,
            "reference_source": self.reference_source,
            "reference_engine": self.reference_engine,
            "reference_cache": self.reference_cache,
            "engine_info": self.engine_info,
            "model_identity": self.model_identity,
            "reference_identity": self.reference_identity,
            "variant": self.variant,
            "execution": (self.variant or {}).get("execution"),
            "notes": self.notes,
            "payback": self.payback,
            "run_id": self.run_id,
        }
        # llama.cpp rows carry the file's type and size at the top level, as `greenlm measure` rows do.
        d.update({k: self.engine_info[k] for k in ("quant_type", "file_mb") if k in (self.engine_info or {})})
        return d
