"""Cut tokenized evaluation text into fixed-length, non-overlapping windows spread evenly through it.

Spreading (rather than taking the first windows) keeps a small evaluation representative of the whole text,
and the same rule picks the screening subset out of a larger set of windows.
"""

from __future__ import annotations

from greenlm.errors import GreenlmError


def spread(available: int, wanted: int) -> list[int]:
    """`wanted` distinct indices out of `available`, evenly spaced and centred: spread(10, 2) == [2, 7]."""
    count = min(available, wanted)
    return [((2 * i + 1) * available) // (2 * count) for i in range(count)]


def window_starts(total_tokens: int, window_tokens: int, max_eval_tokens: int | None) -> list[int]:
    """Offsets of the windows in the token stream: aligned slots of `window_tokens`, as many as fit in
    `max_eval_tokens` (all of them when None), chosen evenly through the text."""
    if window_tokens < 2:
        raise GreenlmError(
            f"--window-tokens must be at least 2 (one prediction per window), got {window_tokens}"
        )
    slots = total_tokens // window_tokens
    if slots == 0:
        raise GreenlmError(
            f"the evaluation text has {total_tokens} tokens, fewer than one window of {window_tokens}: "
            "give more text or a smaller --window-tokens"
        )
    wanted = slots if max_eval_tokens is None else max_eval_tokens // window_tokens
    if wanted < 1:
        raise GreenlmError(
            f"--max-eval-tokens {max_eval_tokens} is less than one window of {window_tokens} tokens: "
            "raise it or lower --window-tokens"
        )
    return [slot * window_tokens for slot in spread(slots, wanted)]


def cut_windows(
    token_ids: list[int], window_tokens: int, max_eval_tokens: int | None
) -> tuple[list[int], list[list[int]]]:
    """The chosen windows' start offsets and token ids."""
    starts = window_starts(len(token_ids), window_tokens, max_eval_tokens)
    return starts, [token_ids[s : s + window_tokens] for s in starts]
