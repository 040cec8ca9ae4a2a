"""Chat messages to a prompt, through the model's own chat template (Jinja, rendered as transformers does).
The llama.cpp engine (measure's chat prompts) and `greenlm serve` both use it.

The template comes from the model: a GGUF's `tokenizer.chat_template`, a Hugging Face tokenizer's
`chat_template`. One renderer serves both engines, so the same model gets the same prompt on either.
"""

from __future__ import annotations

import functools
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from greenlm.errors import GreenlmError


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    def raise_exception(message):
        raise TemplateError(message)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise GreenlmError(
            f"the model's chat template does not compile ({exc}): give plain prompts"
        ) from None


def render_chat(
    template: str | None, messages: list[dict], special_tokens: dict[str, str], model: str
) -> str:
    """The prompt text for `messages` ({"role", "content"} dicts), ending where the assistant's reply starts."""
    if template is None:
        raise GreenlmError(
            f"model {model} has no chat template, so chat messages cannot be turned into a prompt: use "
            "plain prompts (/v1/completions when serving)"
        )
    try:
        return _compile(template).render(messages=messages, add_generation_prompt=True, **special_tokens)
    except TemplateError as exc:
        raise GreenlmError(f"the model's chat template refused these messages: {exc}") from None
