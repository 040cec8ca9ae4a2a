"""A chat or text completion request, parsed, to what the scheduler runs: the model it names checked, fields
greenlm cannot honour refused (a 400 naming the field), its prompt as token ids and its sampling settings.
Shared by the HTTP routes and the runner of deferred work (`deferred`), so a batch line is read exactly as
the same request sent live."""

from __future__ import annotations

from greenlm.serve.errors import RequestError
from greenlm.serve.protocol import ChatCompletionRequest, CompletionRequest
from greenlm.serve.sampling import SamplingParams


def refuse(condition: bool, param: str, message: str) -> None:
    if condition:
        raise RequestError(message, param=param)


def message_text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise RequestError(
                f"message content of type '{part.type}' is not supported: send text", param="messages"
            )
        texts.append(part.text)
    return "".join(texts)


def check_chat(server, body: ChatCompletionRequest) -> list[dict]:
    """The chat's messages, once the request is one this server runs."""
    server.check_model(body.model)
    refuse(body.n != 1 and body.n is not None, "n", "only n=1 is supported: send one request per choice")
    refuse(bool(body.logprobs) or body.top_logprobs is not None, "logprobs", "logprobs are not supported")
    return [{"role": m.role, "content": message_text(m.content)} for m in body.messages]


def check_completion(server, body: CompletionRequest):
    """The prompt (text or token ids), once the request is one this server runs."""
    server.check_model(body.model)
    refuse(body.n != 1 and body.n is not None, "n", "only n=1 is supported: send one request per choice")
    refuse(bool(body.logprobs), "logprobs", "logprobs are not supported")
    refuse(body.echo, "echo", "echo is not supported")
    refuse(body.suffix is not None, "suffix", "suffix (insertion) is not supported")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        refuse(len(prompt) != 1, "prompt", "send one prompt per request")
        prompt = prompt[0]
    return prompt


def completion_ids(server, prompt) -> list[int]:
    return (
        server.prompt_from_text(prompt) if isinstance(prompt, str) else server.prompt_from_ids(list(prompt))
    )


def max_tokens_of(body) -> int | None:
    if isinstance(body, ChatCompletionRequest):
        return body.max_completion_tokens or body.max_tokens
    return body.max_tokens


def sampling_of(server, body, ids: list[int]) -> SamplingParams:
    return server.sampling(
        prompt_tokens=len(ids),
        max_tokens=max_tokens_of(body),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop,
        ignore_eos=body.ignore_eos,
    )


def prompt_ids(server, body) -> list[int]:
    """The prompt's token ids of a parsed chat or completion request (tokenizes: call off the event loop)."""
    if isinstance(body, ChatCompletionRequest):
        return server.prompt_from_messages(check_chat(server, body))
    return completion_ids(server, check_completion(server, body))
