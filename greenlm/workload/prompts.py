"""Prompts for the workload: the user's file, or equal-length windows of held-out evaluation text."""

from __future__ import annotations

import json
from pathlib import Path

from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.engines.base import Engine
from greenlm.errors import GreenlmError


def read_prompt_file(path_str: str) -> list[str]:
    """`.jsonl` with a `prompt` (or `text`) field per line, or `.txt` with one prompt per line."""
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise GreenlmError(f"prompts file '{path_str}' not found: pass a .jsonl or .txt file")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix.lower() == ".jsonl":
        prompts = []
        for lineno, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GreenlmError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from None
            text = (
                row
                if isinstance(row, str)
                else (row.get("prompt") or row.get("text"))
                if isinstance(row, dict)
                else None
            )
            if not isinstance(text, str) or not text.strip():
                raise GreenlmError(f"{path}:{lineno} has no non-empty 'prompt' or 'text' string")
            prompts.append(text)
    else:
        prompts = lines
    if not prompts:
        raise GreenlmError(f"prompts file '{path_str}' is empty: give one prompt per line")
    return prompts


def evaluation_prompts(
    engine: Engine, text: str | None, count: int, prompt_tokens: int
) -> tuple[list[list[int]], str]:
    """`count` windows of `prompt_tokens` tokens, evenly spaced through the evaluation split."""
    split = split_text(load_text(text))
    ids = engine.tokenize(split.text("evaluation"))
    if len(ids) < prompt_tokens:
        raise GreenlmError(
            f"the evaluation text has {len(ids)} tokens, fewer than --prompt-tokens {prompt_tokens}: "
            "give more text or shorter prompts"
        )
    stride = max(1, (len(ids) - prompt_tokens) // max(1, count))
    prompts = [ids[i * stride : i * stride + prompt_tokens] for i in range(count)]
    return prompts, split.describe("evaluation")


def workload_prompts(
    engine: Engine,
    *,
    prompts_file: str | None,
    text: str | None,
    count: int,
    prompt_tokens: int,
    max_new_tokens: int,
) -> tuple[list[list[int]], str]:
    """Token ids of the prompts to run, and a label naming where they came from."""
    if prompts_file:
        token_lists = [engine.tokenize(p) for p in read_prompt_file(prompts_file)]
        label = f"prompts:{prompts_file}"
    else:
        token_lists, label = evaluation_prompts(engine, text, count, prompt_tokens)
    longest = max(len(t) for t in token_lists)
    if longest + max_new_tokens > engine.max_context:
        raise GreenlmError(
            f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the model's context "
            f"of {engine.max_context}: shorten the prompts or --max-new-tokens"
        )
    return token_lists, label
