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


def window_starts(
    total_tokens: int, window_tokens: int, max_eval_tokens: int | None, *, text_tokens: int | None = None
) -> list[int]:
    """Offsets of the windows in the token stream: aligned slots of `text_tokens` (the text each window
    holds: `window_tokens`, or one less when the window starts with BOS), as many windows as fit in
    `max_eval_tokens` fed tokens (all slots when None), chosen evenly through the text."""
    if window_tokens < 2:
        raise GreenlmError(
            f"--window-tokens must be at least 2 (one prediction per window), got {window_tokens}"
        )
    slot = text_tokens or window_tokens
    slots = total_tokens // slot
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
    return [index * slot for index in spread(slots, wanted)]


def cut_windows(
    token_ids: list[int], window_tokens: int, max_eval_tokens: int | None, bos: int | None = None
) -> tuple[list[int], list[list[int]]]:
    """The chosen windows' start offsets and token ids. With `bos` (the model's tokenizer adds one), each
    window is BOS and then `window_tokens - 1` tokens of text, so it is still `window_tokens` long."""
    prefix = [] if bos is None else [bos]
    text_tokens = window_tokens - len(prefix)
    starts = window_starts(len(token_ids), window_tokens, max_eval_tokens, text_tokens=text_tokens)
    return starts, [[*prefix, *token_ids[s : s + text_tokens]] for s in starts]
