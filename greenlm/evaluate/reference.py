"""Reference statistics: what the reference model predicts on the evaluation windows, computed once and cached.

Full next-token distributions (positions x 49k vocabulary floats) are too big to keep, so per scored position
we store the target's NLL, the top-k token ids with their log-probs, and a few token ids sampled from the rest
of the distribution (the tail) with their log-probs: enough for an unbiased KL estimate (see metrics.py). The
windows' token ids are stored too: every engine evaluated against this reference is fed exactly these ids,
so tokenization is identical.

The cache file is keyed by the reference's weights (fingerprint), the engine/dtype/device that ran it, the
text and its split, the window settings, the BOS every window starts with when the model's tokenizer adds one
(engines/bos.py), and `FORMAT_VERSION`; it is written to a temporary file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from greenlm.data.sources import load_text
from greenlm.data.split import TextSplit, split_text
from greenlm.engines.base import Engine
from greenlm.engines.bos import model_bos_token_id
from greenlm.engines.factory import create_engine, device_kind_for
from greenlm.errors import GreenlmError
from greenlm.evaluate.config import (
    DEFAULT_MAX_EVAL_TOKENS,
    DEFAULT_TAIL_SAMPLES,
    DEFAULT_TOP_K,
    DEFAULT_WINDOW_TOKENS,
    validate_window_settings,
)
from greenlm.evaluate.metrics import next_token_logprobs, sample_tail, target_nll, top_k_summary
from greenlm.evaluate.result import QualityStats, mean_stderr
from greenlm.evaluate.windows import cut_windows, spread
from greenlm.io import atomic_file, noop
from greenlm.models.spec import ModelSpec, resolve_model
from greenlm.paths import cache_dir
from greenlm.progress import Progress, ProgressEvent, no_progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
TAIL_SEED = 0
PROBE_CHARS = 2000  # text the model's own tokenizer is checked on against the reference's

TENSORS = ("token_ids", "nll", "topk_ids", "topk_logp", "tail_ids", "tail_logp")


def device_kind(device: str) -> str:
    """cpu / cuda: what changes the numbers (which GPU does not)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


@dataclass
class ReferenceStats:
    """The reference's view of the evaluation windows. Tensors are on the CPU."""

    model: str
    model_identity: dict
    engine: dict  # engine name, dtype, device kind that produced the statistics
    text: str  # "builtin:pydoc-topics/evaluation"
    text_fingerprint: str
    text_tokens: int  # tokens in the whole evaluation split
    window_tokens: int
    max_eval_tokens: int | None
    starts: list[int]  # offset of each window in the tokenized evaluation split
    token_ids: torch.Tensor  # [W, T] int32
    nll: torch.Tensor  # [W, T-1] float32: the reference's NLL of each next token
    topk_ids: torch.Tensor  # [W, T-1, k] int32, most likely first
    topk_logp: torch.Tensor  # [W, T-1, k] float32
    tail_ids: torch.Tensor  # [W, T-1, m] int32: samples from the reference's distribution outside its top-k
    tail_logp: torch.Tensor  # [W, T-1, m] float32
    vocab_size: int
    probe_text: str
    probe_ids: list[int]
    bos_token_id: int | None  # every window starts with it (the model's tokenizer adds BOS); None: no BOS
    compute_s: float  # how long the reference pass took when it was computed
    created_at: str
    key: str
    cached: bool = False  # this instance was read from the cache
    path: Path | None = None
    load_s: float = 0.0  # time to read it from the cache, or to compute it
    notes: list[str] = field(default_factory=list)

    @property
    def windows(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[-1])

    @property
    def tail_samples(self) -> int:
        return int(self.tail_ids.shape[-1])

    def select(self, max_eval_tokens: int | None = None) -> list[int]:
        """Indices of the windows to use for a budget of `max_eval_tokens` fed tokens, spread evenly through
        the text (all when None), so a cheap screen and a full evaluation share one reference."""
        if max_eval_tokens is None:
            return list(range(self.windows))
        wanted = max_eval_tokens // self.window_tokens
        if wanted < 1:
            raise GreenlmError(
                f"max_eval_tokens {max_eval_tokens} is less than one window of {self.window_tokens} tokens: raise it"
            )
        return spread(self.windows, wanted)

    def quality(self, max_eval_tokens: int | None = None) -> QualityStats:
        """The reference's own perplexity on the selected windows (no model run needed)."""
        idx = self.select(max_eval_tokens)
        per_window = self.nll[idx].double().mean(-1)
        nll_mean, nll_se = mean_stderr(per_window)
        return QualityStats.from_nll(
            nll_mean,
            nll_se,
            len(idx),
            self.window_tokens,
            0.0 if self.cached else self.compute_s * len(idx) / self.windows,
        )

    def describe(self) -> dict:
        return {
            "model": self.model,
            "engine": self.engine,
            "text": self.text,
            "windows": self.windows,
            "window_tokens": self.window_tokens,
            "top_k": self.top_k,
            "tail_samples": self.tail_samples,
            "vocab_size": self.vocab_size,
            "bos_token_id": self.bos_token_id,
            "cached": self.cached,
            "path": str(self.path) if self.path else None,
            "compute_s": self.compute_s,
            "created_at": self.created_at,
        }

    # ---- cache file -------------------------------------------------------------------------------------
    def _metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "model": self.model,
            "model_identity": self.model_identity,
            "engine": self.engine,
            "text": self.text,
            "text_fingerprint": self.text_fingerprint,
            "text_tokens": self.text_tokens,
            "window_tokens": self.window_tokens,
            "max_eval_tokens": self.max_eval_tokens,
            "starts": self.starts,
            "vocab_size": self.vocab_size,
            "probe_text": self.probe_text,
            "probe_ids": self.probe_ids,
            "bos_token_id": self.bos_token_id,
            "compute_s": self.compute_s,
            "created_at": self.created_at,
        }

    def save(self, path: Path) -> None:
        """Atomic: a reader finds no file or a whole one, even if two processes compute the same reference."""
        tensors = {
            "token_ids": self.token_ids.contiguous(),
            "nll": self.nll.contiguous(),
            "topk_ids": self.topk_ids.contiguous(),
            "topk_logp": self.topk_logp.contiguous(),
            "tail_ids": self.tail_ids.contiguous(),
            "tail_logp": self.tail_logp.contiguous(),
        }
        with atomic_file(path, overwrite=True, check=False) as tmp:
            save_file(tensors, tmp, metadata={"greenlm": json.dumps(self._metadata())})
        self.path = path

    @classmethod
    def load(cls, path: Path, key: str) -> ReferenceStats:
        """Read a cache file; raises ValueError (or an I/O error) if it is not a whole, matching one."""
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["greenlm"])
            if meta.get("format_version") != FORMAT_VERSION or meta.get("key") != key:
                raise ValueError("format version or key differs")
            tensors = {name: f.get_tensor(name) for name in TENSORS}
        windows, width = tensors["token_ids"].shape
        if (
            tensors["nll"].shape != (windows, width - 1)
            or tensors["topk_ids"].shape != tensors["topk_logp"].shape
            or tensors["tail_ids"].shape != tensors["tail_logp"].shape
            or tensors["topk_ids"].shape[:2] != tensors["tail_ids"].shape[:2]
        ):
            raise ValueError("tensor shapes do not match")
        return cls(
            model=meta["model"],
            model_identity=meta["model_identity"],
            engine=meta["engine"],
            text=meta["text"],
            text_fingerprint=meta["text_fingerprint"],
            text_tokens=meta["text_tokens"],
            window_tokens=meta["window_tokens"],
            max_eval_tokens=meta["max_eval_tokens"],
            starts=meta["starts"],
            vocab_size=meta["vocab_size"],
            probe_text=meta["probe_text"],
            probe_ids=meta["probe_ids"],
            bos_token_id=meta.get("bos_token_id"),
            compute_s=meta["compute_s"],
            created_at=meta["created_at"],
            key=key,
            cached=True,
            path=path,
            **tensors,
        )


def reference_key(
    spec: ModelSpec,
    split: TextSplit,
    *,
    engine: str,
    dtype: str,
    device: str,
    window_tokens: int,
    max_eval_tokens: int | None,
    top_k: int,
    tail_samples: int,
    bos: int | None = None,
) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "model": spec.fingerprint(),
        "engine": engine,
        "dtype": dtype,
        "device": device_kind_for(engine, device),
        "text": split.fingerprint,
        "eval_fraction": split.eval_fraction,
        "window_tokens": window_tokens,
        "max_eval_tokens": max_eval_tokens,
        "top_k": top_k,
        "tail_samples": tail_samples,
        "tail_seed": TAIL_SEED,
    }
    # Windows start with BOS: in the key only then, so a model without one keeps the key it had.
    if bos is not None:
        payload["bos"] = bos
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def reference_cache_path(spec: ModelSpec, key: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(spec.name).name or spec.path.name)[:60]
    return cache_dir() / "reference" / f"{stem}-{key}.safetensors"


def logprob_windows(
    engine: Engine, token_ids: torch.Tensor, *, batch_windows: int = 1, progress: Progress = no_progress
) -> Iterator[tuple[int, torch.Tensor]]:
    """Run `engine` over the windows; yield (window index, [T-1, V] next-token log-probs) one window at a time."""
    total = int(token_ids.shape[0])
    for first in range(0, total, batch_windows):
        batch = token_ids[first : first + batch_windows].tolist()
        logits = torch.as_tensor(engine.logits(batch))
        if logits.dim() != 3 or tuple(logits.shape[:2]) != (len(batch), token_ids.shape[1]):
            raise GreenlmError(
                f"engine '{engine.name}' returned logits of shape {tuple(logits.shape)} for "
                f"{len(batch)} window(s) of {token_ids.shape[1]} tokens: it does not support evaluation"
            )
        for offset in range(len(batch)):
            yield first + offset, next_token_logprobs(logits[offset])
        progress(ProgressEvent("evaluating", min(first + batch_windows, total), total, "windows"))


def check_window_fits(engine: Engine, window_tokens: int) -> None:
    if window_tokens > engine.max_context:
        raise GreenlmError(
            f"--window-tokens {window_tokens} exceeds the context of {engine.model_name} "
            f"({engine.max_context} tokens): use a smaller window"
        )


def compute_reference(
    engine: Engine,
    split: TextSplit,
    *,
    spec: ModelSpec,
    key: str,
    window_tokens: int,
    max_eval_tokens: int | None,
    top_k: int,
    tail_samples: int = DEFAULT_TAIL_SAMPLES,
    batch_windows: int = 1,
    progress: Progress = no_progress,
    bos: int | None | str = "engine",
) -> ReferenceStats:
    """Tokenize the evaluation split once with the reference's tokenizer, cut windows (each starting with
    `bos` when the model's tokenizer adds one; by default the engine's convention), run the reference."""
    check_window_fits(engine, window_tokens)
    if bos == "engine":
        bos = engine.bos_token_id
    text = split.text("evaluation")
    all_ids = engine.tokenize(text)
    starts, windows = cut_windows(all_ids, window_tokens, max_eval_tokens, bos)
    token_ids = torch.tensor(windows, dtype=torch.int32)
    nll, topk_ids, topk_logp, tail_ids, tail_logp = [], [], [], [], []
    vocab = 0
    start = time.perf_counter()
    for index, logp in logprob_windows(engine, token_ids, batch_windows=batch_windows, progress=progress):
        vocab = int(logp.shape[-1])
        targets = token_ids[index, 1:].to(logp.device)
        ids, values = top_k_summary(logp, top_k)
        # Seeded per window: the samples do not depend on batching, and every model meets the same ones.
        generator = torch.Generator(device=logp.device).manual_seed(TAIL_SEED + index)
        t_ids, t_values = sample_tail(logp, ids, tail_samples, generator)
        nll.append(target_nll(logp, targets).float().cpu())
        topk_ids.append(ids.to(torch.int32).cpu())
        topk_logp.append(values.float().cpu())
        tail_ids.append(t_ids.to(torch.int32).cpu())
        tail_logp.append(t_values.float().cpu())
    engine.sync()
    compute_s = time.perf_counter() - start
    probe = text[:PROBE_CHARS]
    info = engine.describe()
    return ReferenceStats(
        model=spec.name,
        model_identity=spec.identity(),
        engine={
            "engine": engine.name,
            "dtype": info.get("dtype"),
            "device": device_kind(engine.device),
            "threads": engine.threads,
            # llama.cpp: the GGUF's type and size, so a perplexity-only row says what file ran
            **{k: info[k] for k in ("quant_type", "file_mb") if k in info},
        },
        text=split.describe("evaluation"),
        text_fingerprint=split.fingerprint,
        text_tokens=len(all_ids),
        window_tokens=window_tokens,
        max_eval_tokens=max_eval_tokens,
        starts=starts,
        token_ids=token_ids,
        nll=torch.stack(nll),
        topk_ids=torch.stack(topk_ids),
        topk_logp=torch.stack(topk_logp),
        tail_ids=torch.stack(tail_ids),
        tail_logp=torch.stack(tail_logp),
        vocab_size=vocab,
        probe_text=probe,
        probe_ids=list(engine.tokenize(probe)),
        bos_token_id=bos,
        compute_s=compute_s,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        key=key,
    )


def reference_stats(
    model: str | ModelSpec | None = None,
    text: str | TextSplit | None = None,
    *,
    engine: str = "transformers",
    threads: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    window_tokens: int = DEFAULT_WINDOW_TOKENS,
    max_eval_tokens: int | None = DEFAULT_MAX_EVAL_TOKENS,
    top_k: int = DEFAULT_TOP_K,
    tail_samples: int = DEFAULT_TAIL_SAMPLES,
    batch_windows: int = 1,
    use_cache: bool = True,
    loaded_engine: Engine | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> ReferenceStats:
    """The reference's statistics on the evaluation split of `text`, from the cache when it holds them.

    `loaded_engine` reuses a model the caller already has loaded (it must be `model` on `engine`); otherwise
    the engine is loaded only on a cache miss and closed afterwards.
    """
    progress = progress or no_progress
    announce = announce or noop
    validate_window_settings(window_tokens, max_eval_tokens, top_k, batch_windows, tail_samples)
    spec = model if isinstance(model, ModelSpec) else resolve_model(model)
    split = text if isinstance(text, TextSplit) else split_text(load_text(text))
    if loaded_engine is not None:
        engine = loaded_engine.name
        dtype = loaded_engine.describe().get("dtype", dtype)
        device = loaded_engine.device
    bos = model_bos_token_id(spec)  # one convention per model, whichever engine runs it
    key = reference_key(
        spec,
        split,
        engine=engine,
        dtype=dtype,
        device=device,
        window_tokens=window_tokens,
        max_eval_tokens=max_eval_tokens,
        top_k=top_k,
        tail_samples=tail_samples,
        bos=bos,
    )
    path = reference_cache_path(spec, key)
    notes: list[str] = []
    start = time.perf_counter()
    if use_cache and path.is_file():
        try:
            stats = ReferenceStats.load(path, key)
            stats.load_s = time.perf_counter() - start
            return stats
        except Exception as exc:  # a truncated or foreign file: recompute rather than fail
            note = f"reference cache {path} is unreadable ({type(exc).__name__}: {exc}); recomputing it"
            announce(note)
            notes.append(note)
    own = loaded_engine is None
    runner = loaded_engine or create_engine(engine, spec, threads=threads, device=device, dtype=dtype)
    try:
        stats = compute_reference(
            runner,
            split,
            spec=spec,
            key=key,
            window_tokens=window_tokens,
            max_eval_tokens=max_eval_tokens,
            top_k=top_k,
            tail_samples=tail_samples,
            batch_windows=batch_windows,
            progress=progress,
            bos=bos,
        )
    finally:
        if own:
            runner.close()
    stats.notes = notes
    if use_cache:
        stats.save(path)
        log.info("cached reference statistics in %s", path)
    stats.load_s = time.perf_counter() - start
    return stats
