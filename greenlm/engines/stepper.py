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

    # True: a finished sequence's cells stay in its slot for the next request that shares a prefix, and cells
    # can be copied between slots (see `admit`); False: a slot starts empty every time.
    reuses_prefixes: bool = False

    def __init__(self) -> None:
        self._cached: dict[int, list[int]] = {}  # slot -> the token ids whose KV cells it holds, in order
        self._open: set[int] = set()  # slots holding a running sequence (the others may hold a kept prefix)
        self._kept_at: dict[int, int] = {}  # free slot with kept cells -> when it was released (LRU order)
        self._clock = 0

    # ---- what subclasses run ---------------------------------------------------------------------------
    @abstractmethod
    def _forward(self, feeds: list[SlotFeed], positions: list[int]) -> list[np.ndarray]:
        """Run one forward pass; one float32 logits row per feed that wants logits, in feed order."""

    @abstractmethod
    def _forget(self, slot: int) -> None:
        """Drop the slot's cached tokens."""

    def _truncate(self, slot: int, keep_tokens: int) -> None:
        """Drop the slot's cells at positions `keep_tokens` and after (prefix reuse only)."""
        raise NotImplementedError

    def _copy(self, source: int, target: int) -> None:
        """Make `target` hold a copy of `source`'s cells (prefix reuse only; `target` is free)."""
        raise NotImplementedError

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
        return len(self._cached.get(slot, ()))

    def admit(
        self, free: list[int], prompt_ids: list[int], *, min_reuse_tokens: int = 16, min_copy_tokens: int = 32
    ) -> Admission:
        """Open a sequence for `prompt_ids` in one of the `free` slots; the slot and how many of the prompt's
        first tokens it already holds (their cells are reused, so the caller feeds only the rest).

        Without prefix reuse: the first free slot, empty. With it: the free slot whose kept cells share the
        longest prefix with the prompt, when that is at least `min_reuse_tokens` (a few shared tokens, such as
        a chat template's opening, are not worth overwriting another prefix for); else the free slot released
        longest ago, an empty one first (kept prefixes live only in free slots, so the KV memory the slots were
        given bounds them, and the least recently used goes first). When another slot (running or free)
        shares a longer prefix by at least `min_copy_tokens`, its cells are copied in (a copy moves the whole
        slot's buffer, so short gains are not worth it). At least the prompt's last token is always computed
        again: its logits give the first output token."""
        if not free:
            raise GreenlmError("no free slot to admit a request into")
        limit = len(prompt_ids) - 1
        if not self.reuses_prefixes or limit < 1:
            slot = self._oldest(free)
            self._open_slot(slot, 0)
            return Admission(slot, 0, None)
        shared = {s: min(limit, common_prefix(self._cached.get(s, ()), prompt_ids)) for s in self._cached}
        slot = max(free, key=lambda s: shared.get(s, 0))
        if shared.get(slot, 0) < min_reuse_tokens:
            slot = self._oldest(free)
        reused = shared.get(slot, 0) if shared.get(slot, 0) >= min_reuse_tokens else 0
        source = slot if reused else None
        donor = max((s for s in shared if s != slot), key=lambda s: shared[s], default=None)
        if donor is not None and shared[donor] >= reused + max(1, min_copy_tokens):
            self._copy(donor, slot)
            self._cached[slot] = list(self._cached[donor])
            reused, source = shared[donor], donor
        self._open_slot(slot, reused)
        return Admission(slot, reused, source)

    def _age_rank(self, slot: int) -> int:
        """Smaller for the slot to overwrite first: empty (-1), then the earliest released."""
        return self._kept_at.get(slot, -1)

    def _oldest(self, free: list[int]) -> int:
        return min(free, key=self._age_rank)

    def _open_slot(self, slot: int, keep_tokens: int) -> None:
        """`slot` starts a sequence holding the first `keep_tokens` of its kept (or copied) cells."""
        held = self._cached.get(slot)
        if held is not None and len(held) > keep_tokens:
            if keep_tokens == 0:
                self._forget(slot)
            else:
                self._truncate(slot, keep_tokens)
        if keep_tokens == 0:
            self._cached.pop(slot, None)
        else:
            self._cached[slot] = held[:keep_tokens]
        self._kept_at.pop(slot, None)
        self._open.add(slot)

    def step(self, feeds: list[SlotFeed]) -> dict[int, np.ndarray]:
        """Append every feed's tokens to its slot in one forward pass; logits rows for the feeds that asked
        (views of the engine's buffer, valid until the next step: sample from them, or copy them)."""
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
            if feed.slot not in self._open:  # fed without `admit`: a fresh sequence
                self._open_slot(feed.slot, 0)
            if self.tokens_in(feed.slot) + len(feed.token_ids) > self.context_tokens:
                raise GreenlmError(
                    f"slot {feed.slot} would hold {self.tokens_in(feed.slot) + len(feed.token_ids)} tokens, more "
                    f"than the context of {self.context_tokens}"
                )
            if min(feed.token_ids) < 0 or max(feed.token_ids) >= self.vocab_size:
                bad = next(t for t in feed.token_ids if not 0 <= t < self.vocab_size)
                raise GreenlmError(f"token id {bad} is outside the vocabulary of {self.vocab_size}")
            total += len(feed.token_ids)
        if total > self.step_tokens:
            raise GreenlmError(f"a step of {total} tokens exceeds the stepper's {self.step_tokens}")
        positions = [self.tokens_in(f.slot) for f in feeds]
        try:
            rows = self._forward(feeds, positions)
        except BaseException:
            for feed in feeds:  # what the failed step left in these slots is unknown: never reuse it
                self._discard(feed.slot)
            raise
        for feed in feeds:
            self._cached.setdefault(feed.slot, []).extend(feed.token_ids)
        wanted = [f.slot for f in feeds if f.wants_logits]
        return dict(zip(wanted, rows, strict=True))

    def release(self, slot: int, *, keep: bool = True) -> None:
        """The slot's sequence is over (finished or cancelled). With prefix reuse and `keep`, its cells stay
        for a later request that shares a prefix (until `admit` overwrites them); otherwise they are freed."""
        self._open.discard(slot)
        if slot not in self._cached:
            return
        if keep and self.reuses_prefixes:
            self._clock += 1
            self._kept_at[slot] = self._clock
        else:
            self._discard(slot)

    def _discard(self, slot: int) -> None:
        self._open.discard(slot)
        self._kept_at.pop(slot, None)
        if self._cached.pop(slot, None) is not None:
            self._forget(slot)

    def kept_tokens(self) -> int:
        """Tokens held in free slots for reuse (what the prefix cache holds now)."""
        return sum(len(self._cached[s]) for s in self._kept_at)


@dataclass(frozen=True)
class Admission:
    """Where `Stepper.admit` put a new sequence: its slot, how many prompt tokens it already holds, and the
    slot they came from (itself, another slot copied in, or None)."""

    slot: int
    cached_tokens: int
    source: int | None


def common_prefix(a, b) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0 or a[0] != b[0]:
        return 0
    if a[:n] == b[:n]:
        return n
    low, high = 1, n  # a[:low] == b[:low] and a[:high] != b[:high]: bisect on slices (C-speed compares)
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


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
