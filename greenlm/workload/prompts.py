"""Prompts for the workload: the user's file, or equal-length windows of held-out evaluation text."""

from __future__ import annotations

from pathlib import Path

from greenlm.data.sources import json_line, load_text, read_text_file
from greenlm.data.split import TextSplit, split_text
from greenlm.engines.base import Engine
from greenlm.errors import GreenlmError


def _chat_messages(row: dict, where: str) -> list[dict] | None:
    messages = row.get("messages")
    if messages is None:
        return None
    ok = (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    )
    if not ok:
        raise GreenlmError(f"{where}: 'messages' must be a non-empty list of {{'role': ..., 'content': ...}}")
    return messages


def read_prompt_file(path_str: str) -> list[str | list[dict]]:
    """`.jsonl` with a `prompt` (or `text`) string per line, or a chat (`messages`: [{role, content}, ...],
    rendered later with the model's chat template); or `.txt` with one prompt per line."""
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise GreenlmError(f"prompts file '{path_str}' not found: pass a .jsonl or .txt file")
    lines = [
        ln for ln in read_text_file(path, "prompts file", "a .jsonl or .txt file").splitlines() if ln.strip()
    ]
    if path.suffix.lower() == ".jsonl":
        prompts: list[str | list[dict]] = []
        for lineno, line in enumerate(lines, 1):
            where = f"{path}:{lineno}"
            row = json_line(line, where)
            if isinstance(row, dict) and (messages := _chat_messages(row, where)) is not None:
                prompts.append(messages)
                continue
            text = (
                row
                if isinstance(row, str)
                else (row.get("prompt") or row.get("text"))
                if isinstance(row, dict)
                else None
            )
            if not isinstance(text, str) or not text.strip():
                raise GreenlmError(f"{where} has no non-empty 'prompt' or 'text' string, nor 'messages'")
            prompts.append(text)
    else:
        prompts = list(lines)
    if not prompts:
        raise GreenlmError(f"prompts file '{path_str}' is empty: give one prompt per line")
    return prompts


def encode_prompt(engine: Engine, prompt: str | list[dict]) -> list[int]:
    """A prompt's ids as the model expects them: a chat through its chat template, plain text after BOS when
    its tokenizer adds one."""
    if isinstance(prompt, list):
        return engine.chat_tokens(prompt)
    return engine.with_bos(engine.tokenize(prompt))


def evaluation_prompts(
    engine: Engine, text: str | TextSplit | None, count: int, prompt_tokens: int
) -> tuple[list[list[int]], str]:
    """`count` windows of `prompt_tokens` tokens, evenly spaced through the evaluation split; each starts
    with BOS (and holds one text token fewer) when the model's tokenizer adds one."""
    split = text if isinstance(text, TextSplit) else split_text(load_text(text))
    ids = engine.tokenize(split.text("evaluation"))
    prefix = [] if engine.bos_token_id is None else [engine.bos_token_id]
    text_tokens = prompt_tokens - len(prefix)
    if len(ids) < text_tokens or text_tokens < 1:
        raise GreenlmError(
            f"the evaluation text has {len(ids)} tokens, fewer than --prompt-tokens {prompt_tokens}: "
            "give more text or shorter prompts"
        )
    stride = max(1, (len(ids) - text_tokens) // max(1, count))
    prompts = [[*prefix, *ids[i * stride : i * stride + text_tokens]] for i in range(count)]
    return prompts, split.describe("evaluation")


def workload_prompts(
    engine: Engine,
    *,
    prompts_file: str | None,
    text: str | TextSplit | None,
    count: int,
    prompt_tokens: int,
    max_new_tokens: int,
    file_prompts: list[str | list[dict]] | None = None,
) -> tuple[list[list[int]], str]:
    """Token ids of the prompts to run, and a label naming where they came from. `file_prompts`: the
    prompts file already read (read_prompt_file), so a bad file fails before the model loads."""
    if prompts_file:
        prompts = file_prompts if file_prompts is not None else read_prompt_file(prompts_file)
        token_lists = [encode_prompt(engine, p) for p in prompts]
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
