"""The execution-backend interface every engine implements (transformers now, llama.cpp next).

Prefill and decode are separate calls so the workload can put each in its own energy window. `logits`
serves evaluation (perplexity, KL divergence) with the same tokenization the workload uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from greenlm.errors import GreenlmError


@dataclass
class PrefillResult:
    next_token_ids: list[int]  # the first generated token of each sequence
    prompt_tokens: int  # real (non-padding) prompt tokens processed
    state: Any = field(repr=False)  # engine-private: KV cache, positions


@dataclass
class DecodeResult:
    token_ids: list[list[int]]  # every generated token per sequence, the prefill's first token included
    decode_tokens: int  # tokens produced by the decode phase (all sequences)
    steps: int  # tokens per sequence the decode phase produced (plain decoding: one iteration each)
    # Tokens a speculative drafter proposed and how many the target confirmed (0 without speculative
    # decoding), and the target's forward passes in decode (each yields 1 + the accepted drafts per
    # sequence; 0 where an engine does not count them).
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    target_passes: int = 0


class Engine(ABC):
    """One loaded model on one execution backend."""

    name: ClassVar[str]

    model_name: str
    threads: int
    device: str
    speculative = None  # a SpeculativeConfig on engines that decode speculatively (llama.cpp), else None

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """The text's token ids, no special tokens added (see `bos_token_id` and `with_bos`)."""

    @property
    def bos_token_id(self) -> int | None:
        """The token the model's tokenizer starts every sequence with, or None when it adds none.

        Windows and prompts cut from running text start with it, as the model saw in training (llama.cpp's
        perplexity tool does the same); SmolLM2 adds none, Gemma, Llama 3 and Mistral do."""
        return None

    def with_bos(self, token_ids: list[int]) -> list[int]:
        """`token_ids` starting with BOS when this model's tokenizer adds one (never twice)."""
        bos = self.bos_token_id
        if bos is None or token_ids[:1] == [bos]:
            return list(token_ids)
        return [bos, *token_ids]

    def chat_tokens(self, messages: list[dict]) -> list[int]:
        """A chat prompt ([{"role": ..., "content": ...}, ...]) rendered with the model's own chat template,
        ready for the assistant's reply."""
        raise GreenlmError(f"the {self.name} engine cannot build chat prompts")

    @abstractmethod
    def detokenize(self, token_ids: list[int]) -> str: ...

    @property
    @abstractmethod
    def max_context(self) -> int: ...

    @abstractmethod
    def prefill(self, prompts: list[list[int]]) -> PrefillResult:
        """Process a batch of prompts and produce each one's first token."""

    @abstractmethod
    def decode(self, prefill: PrefillResult, new_tokens: int) -> DecodeResult:
        """Generate `new_tokens` more tokens per sequence after `prefill`, greedily, ignoring end-of-sequence
        so every run does the same amount of work."""

    @abstractmethod
    def logits(self, token_ids: list[list[int]]) -> Any:
        """Full-sequence next-token logits, float32 [batch, seq, vocab], for equal-length inputs."""

    def sync(self) -> None:
        """Block until queued device work is done; called at every energy-window edge."""

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model_name, "threads": self.threads, "device": self.device}

    def speculative_summary(self) -> dict | None:
        """The speculative decoding setting in use (kind, draft tokens, draft model), None for plain greedy."""
        return None

    def close(self) -> None:
        """Release the model."""


# (token id, position, sequence id, wants logits): one token of a batch that several sequences share
BatchEntry = tuple[int, int, int, bool]


class StepEngine(Protocol):
    """An engine a caller can drive token by token in its KV cache (what a draft model's drafter needs): feed
    entries of several sequences in one batch, read the logits of those that want them, drop a sequence's
    tail. The llama.cpp engine is one."""

    model_name: str
    threads: int
    device: str
    n_vocab: int
    context_tokens: int

    @property
    def cache_generation(self) -> int:
        """Changes whenever the KV cache is replaced or emptied."""
        ...

    def decode_entries(
        self, entries: list[BatchEntry], on_outputs: Callable[[list[BatchEntry], Any], None]
    ) -> None:
        """Decode `entries`; after each chunk call `on_outputs(chunk, logits)`, logits [outputs, vocab]."""
        ...

    def remove_from(self, seq: int, position: int) -> None:
        """Drop sequence `seq`'s cached tokens at `position` and after."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...
