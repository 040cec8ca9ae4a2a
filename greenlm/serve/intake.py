"""What a request becomes before it is queued: the model it names checked, its prompt as token ids (a chat
through the model's own template, text, or ids checked against the vocabulary), and its sampling settings, each
checked against the served model's context. Every refusal is a `RequestError` naming the field, as OpenAI's
errors do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from greenlm.engines.chat import render_chat
from greenlm.errors import GreenlmError
from greenlm.serve.errors import ModelNotFound, RequestError
from greenlm.serve.sampling import SamplingParams


@dataclass(frozen=True)
class ServedModel:
    """What requests are checked against: the id clients send, and the model's tokens and template."""

    model_id: str
    context_tokens: int  # per request: prompt and output
    vocab_size: int
    chat_template: str | None
    special_tokens: dict
    max_tokens_default: int  # when a request gives none (capped by the context left)


class RequestIntake:
    """`tokenize(text)`: the prompt's token ids on the model served (the variant pool's, which reloads an
    unloaded model first)."""

    def __init__(self, model: ServedModel, tokenize: Callable[[str], list[int]]):
        self.model = model
        self._tokenize = tokenize

    def check_model(self, model: str | None) -> None:
        served = self.model.model_id
        if model != served:
            raise ModelNotFound(f"model '{model}' is not served here: this server serves '{served}'")

    def prompt_from_messages(self, messages: list[dict]) -> list[int]:
        if not messages:
            raise RequestError("messages is empty: send at least one message", param="messages")
        m = self.model
        try:
            text = render_chat(m.chat_template, messages, m.special_tokens, m.model_id)
        except GreenlmError as exc:
            raise RequestError(str(exc), param="messages") from None
        return self._prompt_ids(self._tokenize(text), "messages")

    def prompt_from_text(self, prompt: str) -> list[int]:
        if not prompt:
            raise RequestError("prompt is empty", param="prompt")
        return self._prompt_ids(self._tokenize(prompt), "prompt")

    def prompt_from_ids(self, ids: list[int]) -> list[int]:
        vocab = self.model.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside the vocabulary of {vocab}", param="prompt")
        return self._prompt_ids(list(ids), "prompt")

    def _prompt_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise RequestError(f"{param} has no tokens", param=param)
        limit = self.model.context_tokens
        if len(ids) >= limit:
            raise RequestError(
                f"the prompt is {len(ids)} tokens, and this server's context is {limit} tokens per request "
                "(prompt and output): shorten it",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    def sampling(
        self,
        *,
        prompt_tokens: int = 0,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        ignore_eos: bool = False,
    ) -> SamplingParams:
        """Request fields to sampling settings: OpenAI's defaults (temperature 1, top_p 1), max_tokens from
        --max-tokens-default capped by the context left after the prompt."""
        context = self.model.context_tokens
        room = context - prompt_tokens
        if max_tokens is None:
            max_tokens = max(1, min(self.model.max_tokens_default, room))
        elif max_tokens > room:
            raise RequestError(
                f"max_tokens {max_tokens} + the prompt's {prompt_tokens} tokens exceed this server's context of "
                f"{context} tokens per request: ask for at most {room}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=1.0 if temperature is None else float(temperature),
                top_p=1.0 if top_p is None else float(top_p),
                seed=seed,
                stop=stops,
                ignore_eos=bool(ignore_eos),
            )
        except GreenlmError as exc:
            param = str(exc).split(" ", 1)[0]
            raise RequestError(str(exc), param=param) from None
