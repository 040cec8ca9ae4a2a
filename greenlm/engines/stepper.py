"""Step-level execution for serving: several sequences, each in a slot, advanced together one step at a time.

The `Engine` interface runs a whole batch from prefill to the last token, which is what `measure` wants. A
server instead admits and retires sequences between steps (continuous batching), so it drives a `Stepper`:
each `step` takes, per busy slot, the tokens to append (a chunk of a new prompt, or the one token sampled
last step) and returns next-token logits for the slots that asked. The caller owns sampling and scheduling;
the stepper owns positions and the KV cache of each slot. One step is one forward pass, so a caller can put
one energy window around it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from greenlm.engines.base import Engine
from greenlm.errors import GreenlmError


@dataclass(frozen=True)
class SlotFeed:
    """What one slot appends in a step: `token_ids` at its next positions; `wants_logits`: return the
    next-token logits after the last of them (a finished prompt chunk or a decode token)."""

    slot: int
    token_ids: list[int]
    wants_logits: bool


class Stepper(ABC):
    """Slots `0..slots-1` of one loaded engine; each holds at most `context_tokens` tokens."""

    engine: Engine
    slots: int
    context_tokens: int
    step_tokens: int  # most tokens one step may hold, summed over slots
    vocab_size: int

    def __init__(self) -> None:
        self._positions: dict[int, int] = {}  # busy slot -> tokens cached

    # ---- what subclasses run ---------------------------------------------------------------------------
    @abstractmethod
    def _forward(self, feeds: list[SlotFeed], positions: list[int]) -> list[np.ndarray]:
        """Run one forward pass; one float32 logits row per feed that wants logits, in feed order."""

    @abstractmethod
    def _forget(self, slot: int) -> None:
        """Drop the slot's cached tokens."""

    @abstractmethod
    def is_end_of_generation(self, token_id: int) -> bool: ...

    @abstractmethod
    def tokenize_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt as the model expects it: special tokens in the text (a chat template's
        markers) parsed as such, and the beginning-of-sequence token added when the tokenizer adds one."""

    @property
    @abstractmethod
    def chat_template(self) -> str | None:
        """The model's chat template (Jinja), None when it has none."""

    def detokenize(self, token_ids: list[int]) -> str:
        """Generated text: special tokens (end of turn, template markers) leave no text."""
        return self.engine.detokenize(token_ids)

    @property
    def special_tokens(self) -> dict[str, str]:
        """Text of the bos/eos tokens, for chat templates that mention them."""
        return {}

    def describe(self) -> dict:
        return {
            "slots": self.slots,
            "context_tokens_per_slot": self.context_tokens,
            "step_tokens": self.step_tokens,
        }

    def set_threads(self, threads: int) -> None:
        """Run the next steps on `threads` threads (an adaptive server changes this while serving)."""
        self.engine.threads = threads

    def close(self) -> None:
        """Release the serving cache (the engine stays the caller's)."""

    # ---- the contract ----------------------------------------------------------------------------------
    def tokens_in(self, slot: int) -> int:
        return self._positions.get(slot, 0)

    def step(self, feeds: list[SlotFeed]) -> dict[int, np.ndarray]:
        """Append every feed's tokens to its slot in one forward pass; logits rows for the feeds that asked."""
        if not feeds:
            return {}
        total = 0
        seen: set[int] = set()
        for feed in feeds:
            if not 0 <= feed.slot < self.slots or feed.slot in seen:
                raise GreenlmError(f"slot {feed.slot} is out of range or fed twice in one step")
            if not feed.token_ids:
                raise GreenlmError(f"slot {feed.slot} was fed no tokens")
            seen.add(feed.slot)
            if self.tokens_in(feed.slot) + len(feed.token_ids) > self.context_tokens:
                raise GreenlmError(
                    f"slot {feed.slot} would hold {self.tokens_in(feed.slot) + len(feed.token_ids)} tokens, more "
                    f"than the context of {self.context_tokens}"
                )
            bad = [t for t in feed.token_ids if not 0 <= t < self.vocab_size]
            if bad:
                raise GreenlmError(f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}")
            total += len(feed.token_ids)
        if total > self.step_tokens:
            raise GreenlmError(f"a step of {total} tokens exceeds the stepper's {self.step_tokens}")
        positions = [self.tokens_in(f.slot) for f in feeds]
        rows = self._forward(feeds, positions)
        for feed in feeds:
            self._positions[feed.slot] = self.tokens_in(feed.slot) + len(feed.token_ids)
        wanted = [f.slot for f in feeds if f.wants_logits]
        return dict(zip(wanted, rows, strict=True))

    def release(self, slot: int) -> None:
        """The slot's sequence is over (finished or cancelled): free its cache for the next one."""
        if slot in self._positions:
            self._forget(slot)
            del self._positions[slot]


def check_slots(slots: int, step_tokens: int, context_tokens: int) -> None:
    if not isinstance(slots, int) or slots < 1:
        raise GreenlmError(f"--max-batch must be a whole number of at least 1, got {slots!r}")
    if not isinstance(step_tokens, int) or step_tokens < slots:
        raise GreenlmError(
            f"--step-tokens ({step_tokens!r}) must be at least --max-batch ({slots}): every running request "
            "decodes one token per step"
        )
    if context_tokens < 2:
        raise GreenlmError(f"the context must hold at least 2 tokens per request, got {context_tokens}")
