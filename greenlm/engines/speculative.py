"""Speculative greedy decoding: cheap drafters propose tokens, the target model verifies them in one pass.

The target keeps only the drafted tokens equal to its own argmax, then adds its own next token, so the
output is the target's greedy output whatever the drafter proposed: a bad drafter costs speed, never quality.
A drafter has one job, `propose(history_ids, k)`: up to `k` guesses of the tokens after `history_ids`.

- `prompt-lookup`: find the longest recent n-gram of the sequence earlier in the sequence (prompt and
  generated text) and propose what followed it there. Free to run; pays off on text that repeats itself.
- `draft`: a second, smaller GGUF of the same tokenizer (a layer-dropped, quantized export of the model)
  run greedily by its own llama.cpp context, its KV cache kept in step with the accepted tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from greenlm.engines.base import StepEngine
from greenlm.errors import GreenlmError
from greenlm.models.spec import ModelSpec, resolve_model

KINDS = ("prompt-lookup", "draft")
MAX_DRAFT_TOKENS = 16  # past this a verify pass costs more than the few extra tokens it could accept
MAX_NGRAM = 16
DEFAULT_DRAFT_TOKENS = 4
DEFAULT_NGRAM_MIN = 1
DEFAULT_NGRAM_MAX = 3
# Why a batch is refused. llama.cpp's CPU flash attention adds a sequence's keys in blocks of cache cells with
# f16 sums, so a token's logits depend on which cells its history occupies. One sequence verified alone keeps
# position p in cell p, as plain decoding does (measured on SmolLM2-135M: identical logits); sequences
# verified together, or one after another in a shared cache, land elsewhere, and we measured logits 0.05-0.1
# apart and a different greedy text, which would break the promise of unchanged output.
SPECULATIVE_BATCH_MESSAGE = (
    "speculative decoding runs one sequence at a time, so its output stays exactly plain greedy decoding's: "
    "use --batch-size 1 (or drop --speculative to measure batching)"
)
# A short text both tokenizers must split identically: a draft with other token ids would propose nonsense.
VOCAB_PROBE = "The quick brown fox, 1234 times: def f(x): return x + 1\n"


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class SpeculativeConfig:
    kind: str  # "prompt-lookup" | "draft"
    draft_tokens: int = DEFAULT_DRAFT_TOKENS  # tokens proposed per verify pass (at most)
    ngram_min: int = DEFAULT_NGRAM_MIN  # prompt-lookup: shortest n-gram that may match
    ngram_max: int = DEFAULT_NGRAM_MAX  # prompt-lookup: longest n-gram tried first
    draft_model: str | None = None  # draft: .gguf, built-in name or HF directory (same tokenizer)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GreenlmError(f"unknown --speculative '{self.kind}': choose one of {', '.join(KINDS)}")
        if not _whole(self.draft_tokens, 1, MAX_DRAFT_TOKENS):
            raise GreenlmError(
                f"--draft-tokens must be a whole number from 1 to {MAX_DRAFT_TOKENS}, got {self.draft_tokens!r}"
            )
        for flag, value in (("--ngram-min", self.ngram_min), ("--ngram-max", self.ngram_max)):
            if not _whole(value, 1, MAX_NGRAM):
                raise GreenlmError(f"{flag} must be a whole number from 1 to {MAX_NGRAM}, got {value!r}")
        if self.ngram_min > self.ngram_max:
            raise GreenlmError(
                f"--ngram-min {self.ngram_min} is larger than --ngram-max {self.ngram_max}: swap them"
            )
        if self.kind == "draft":
            if not isinstance(self.draft_model, str) or not self.draft_model.strip():
                raise GreenlmError(
                    "--speculative draft needs --draft-model: a smaller GGUF of the same model, e.g. a "
                    "layer-dropped variant exported with `greenlm export --quant q4_0`"
                )
        elif self.draft_model is not None:
            raise GreenlmError(
                f"--draft-model is only used by --speculative draft, not '{self.kind}': drop it or use draft"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def speculative_from_flags(
    kind: str | None,
    *,
    draft_tokens: int | None = None,
    draft_model: str | None = None,
    ngram_min: int | None = None,
    ngram_max: int | None = None,
) -> SpeculativeConfig | None:
    """The config for the CLI flags (None: no speculative decoding); a tuning flag without --speculative is
    refused rather than silently ignored."""
    if kind is None:
        given = [
            flag
            for flag, value in (
                ("--draft-tokens", draft_tokens),
                ("--draft-model", draft_model),
                ("--ngram-min", ngram_min),
                ("--ngram-max", ngram_max),
            )
            if value is not None
        ]
        if given:
            raise GreenlmError(
                f"{given[0]} only applies to speculative decoding: add --speculative prompt-lookup or "
                "--speculative draft"
            )
        return None
    return SpeculativeConfig(
        kind=kind,
        draft_tokens=DEFAULT_DRAFT_TOKENS if draft_tokens is None else draft_tokens,
        ngram_min=DEFAULT_NGRAM_MIN if ngram_min is None else ngram_min,
        ngram_max=DEFAULT_NGRAM_MAX if ngram_max is None else ngram_max,
        draft_model=draft_model,
    )


class Drafter(Protocol):
    def propose(self, history_ids: list[int], k: int) -> list[int]:
        """Up to `k` guessed next tokens after `history_ids` (fewer, or none, when it has no guess)."""
        ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


class PromptLookupDrafter:
    """N-gram lookup in the sequence itself (prompt lookup decoding); no model, no state."""

    def __init__(self, ngram_min: int = DEFAULT_NGRAM_MIN, ngram_max: int = DEFAULT_NGRAM_MAX):
        self.ngram_min, self.ngram_max = ngram_min, ngram_max

    def propose(self, history_ids: list[int], k: int) -> list[int]:
        size = len(history_ids)
        if k < 1:
            return []
        for n in range(min(self.ngram_max, size - 1), self.ngram_min - 1, -1):
            tail = history_ids[size - n :]
            # The most recent earlier occurrence: nearby text predicts the continuation best.
            for start in range(size - n - 1, -1, -1):
                if history_ids[start] == tail[0] and history_ids[start : start + n] == tail:
                    return history_ids[start + n : start + n + k]
        return []

    def describe(self) -> dict:
        return {"ngram_min": self.ngram_min, "ngram_max": self.ngram_max}

    def close(self) -> None:
        pass


class DraftModelDrafter:
    """A smaller llama.cpp model decoding greedily. Its KV cache holds `self._cached`; each call keeps the
    common prefix with the new history, removes the rest (tokens the target rejected) with
    llama_memory_seq_rm, and feeds only the new tokens."""

    def __init__(self, engine: StepEngine, source: str):
        self.engine = engine
        self.source = source
        self._cached: list[int] = []
        self._generation = engine.cache_generation

    def propose(self, history_ids: list[int], k: int) -> list[int]:
        engine = self.engine
        if k < 1 or not history_ids or len(history_ids) + k > engine.context_tokens:
            return []  # nothing to guess, or beyond the draft's context: the target steps alone
        if self._generation != engine.cache_generation:  # a new context starts empty
            self._generation, self._cached = engine.cache_generation, []
        cached = self._cached
        keep = 0
        limit = min(len(cached), len(history_ids) - 1)  # refeed at least the last token: we need its logits
        while keep < limit and cached[keep] == history_ids[keep]:
            keep += 1
        if keep < len(cached):
            engine.remove_from(0, keep)
            del cached[keep:]
        proposed: list[int] = []

        def take(_chunk, logits):
            proposed.append(int(logits[-1].argmax()))

        feed = history_ids[keep:]
        engine.decode_entries([(t, keep + i, 0, i == len(feed) - 1) for i, t in enumerate(feed)], take)
        cached.extend(feed)
        while len(proposed) < k:
            token = proposed[-1]
            engine.decode_entries([(token, len(cached), 0, True)], take)
            cached.append(token)
        return proposed

    def describe(self) -> dict:
        info = self.engine.describe()
        return {
            "draft_gguf": info["gguf"],
            "draft_quant_type": info["quant_type"],
            "draft_file_mb": info["file_mb"],
            "draft_llama_model": info["llama_model"],
            "draft_load_source": info["load_source"],
        }

    def close(self) -> None:
        self.engine.close()


def resolve_draft(config: SpeculativeConfig) -> ModelSpec:
    """The draft model's spec (kind draft), or a GreenlmError that names --draft-model."""
    try:
        return resolve_model(config.draft_model)
    except GreenlmError as exc:
        raise GreenlmError(f"--draft-model: {exc}") from None


def make_drafter(config: SpeculativeConfig, target: StepEngine) -> Drafter:
    """The drafter `config` describes; a draft model is loaded with the target's threads, device and context
    and must tokenize exactly as the target does. The draft runs on the target's own engine class."""
    if config.kind == "prompt-lookup":
        return PromptLookupDrafter(config.ngram_min, config.ngram_max)
    spec = resolve_draft(config)
    draft = type(target).load(
        spec, threads=target.threads, device=target.device, context_tokens=target.context_tokens
    )
    try:
        if draft.n_vocab != target.n_vocab or draft.tokenize(VOCAB_PROBE) != target.tokenize(VOCAB_PROBE):
            raise GreenlmError(
                f"draft model {config.draft_model} does not share {target.model_name}'s tokenizer "
                f"({draft.n_vocab} vs {target.n_vocab} tokens): use a smaller variant of the same model"
            )
    except BaseException:
        draft.close()
        raise
    return DraftModelDrafter(draft, config.draft_model)
