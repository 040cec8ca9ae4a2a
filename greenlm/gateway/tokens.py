"""Token counts when an upstream reports none (llama-cpp-python's server streams no usage).

With `--tokenizer` (a Hugging Face tokenizer directory, or a GGUF whose vocabulary llama.cpp reads without its
weights) the gateway counts the prompt (a chat rendered through the model's own chat template) and the output
text itself. Without one, output tokens are the streamed output chunks (servers send one per token) and
prompt tokens the prompt's characters over CHARS_PER_TOKEN_PRIOR; the usage says so (`token_counts`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from greenlm.engines.chat import render_chat
from greenlm.errors import GreenlmError
from greenlm.gateway.attribution import CHARS_PER_TOKEN_PRIOR

FROM_CHUNKS = "estimated from chunks"  # output: one token per chunk; prompt: characters / 4
FROM_CHARACTERS = "estimated from characters"  # a non-streaming answer with no usage: characters / 4
FROM_TOKENIZER = "counted by the gateway's tokenizer"


def prompt_chars(body: dict) -> int:
    """The characters of a request's prompt (a chat's message texts, or a completion's prompt)."""
    if isinstance(body.get("messages"), list):
        total = 0
        for m in body["messages"]:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
        return total
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return sum(len(p) for p in prompt if isinstance(p, str))
    return 0


def prompt_ids_count(body: dict) -> int | None:
    """A completion prompt given as token ids: its exact length."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        return sum(len(p) for p in prompt)
    return None


def by_characters(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN_PRIOR) if chars > 0 else 0


class TokenCounter:
    """A tokenizer the gateway counts with: `encode(text)` -> token count, and the chat template."""

    def __init__(self, path: str):
        p = Path(path).expanduser()
        self.path = str(p)
        self.chat_template: str | None = None
        self.special_tokens: dict[str, str] = {}
        if p.is_dir():
            self._from_dir(p)
        elif p.is_file() and p.suffix.lower() == ".gguf":
            self._from_gguf(p)
        else:
            raise GreenlmError(
                f"--tokenizer {path}: not a tokenizer directory (with tokenizer.json) or a .gguf file: give one"
            )

    def _from_dir(self, p: Path) -> None:
        from tokenizers import Tokenizer

        file = p / "tokenizer.json"
        if not file.is_file():
            raise GreenlmError(
                f"--tokenizer {p}: no tokenizer.json there: give a Hugging Face tokenizer directory"
            )
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # the tokenizers library raises its own exception types
            raise GreenlmError(f"--tokenizer {file}: cannot read it ({exc})") from None
        self._encode = lambda text: len(tok.encode(text, add_special_tokens=False).ids)
        config = p / "tokenizer_config.json"
        if config.is_file():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise GreenlmError(f"--tokenizer {config}: cannot read it ({exc})") from None
            template = data.get("chat_template")
            self.chat_template = template if isinstance(template, str) else None
            for name in ("bos_token", "eos_token"):
                value = data.get(name)
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    self.special_tokens[name] = value

        jinja = p / "chat_template.jinja"  # where recent transformers save it
        if self.chat_template is None and jinja.is_file():
            self.chat_template = jinja.read_text(encoding="utf-8")

    def _from_gguf(self, p: Path) -> None:
        from greenlm.llamacpp.runtime import import_llama_cpp

        import_llama_cpp()
        import llama_cpp

        try:
            model = llama_cpp.Llama(str(p), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise GreenlmError(f"--tokenizer {p}: llama.cpp cannot read its vocabulary ({exc})") from None
        self._llama = model
        self._encode = lambda text: len(model.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        self.chat_template = model.metadata.get("tokenizer.chat_template")
        for name, token in (("bos_token", model.token_bos()), ("eos_token", model.token_eos())):
            if token >= 0:
                self.special_tokens[name] = model.detokenize([token], special=True).decode("utf-8", "replace")

    def count(self, text: str) -> int:
        return self._encode(text) if text else 0

    def prompt_tokens(self, body: dict) -> int | None:
        """The prompt's tokens as the upstream's model would see them (None: cannot tell, e.g. a chat with no
        template in the tokenizer)."""
        known = prompt_ids_count(body)
        if known is not None:
            return known
        messages = body.get("messages")
        if isinstance(messages, list):
            if self.chat_template is None:
                return None
            plain = []
            for m in messages:
                if not isinstance(m, dict):
                    return None
                content = m.get("content")
                if isinstance(content, list):
                    content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
                plain.append({"role": m.get("role"), "content": content or ""})
            try:
                text = render_chat(self.chat_template, plain, self.special_tokens, "the tokenizer")
            except GreenlmError:
                return None
            return self.count(text)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return self.count(prompt)
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            return sum(self.count(p) for p in prompt)
        return None

    def describe(self) -> dict:
        return {"path": self.path, "chat_template": self.chat_template is not None}
