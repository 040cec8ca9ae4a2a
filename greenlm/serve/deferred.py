"""The server as a runner of deferred work (greenlm.defer's `RequestRunner`): one batch line's body runs as
the same request sent live would (`prepare`), at a tier that waits for slots the default tier leaves free and
gives them back when it needs them, and answers with OpenAI's response, usage (energy, carbon) included."""

from __future__ import annotations

import asyncio
import json
import time

from pydantic import ValidationError

from greenlm.defer.runner import Concurrency, RunResult
from greenlm.errors import GreenlmError
from greenlm.serve.errors import RequestError
from greenlm.serve.prepare import prompt_ids, sampling_of
from greenlm.serve.protocol import ChatCompletionRequest, CompletionRequest, ErrorResponse
from greenlm.serve.scheduler import FinishEvent
from greenlm.serve.streaming import CHAT, COMPLETION, failed, usage_of

KINDS = {
    "/v1/chat/completions": (ChatCompletionRequest, CHAT),
    "/v1/completions": (CompletionRequest, COMPLETION),
}
CHARS_PER_TOKEN = 4  # the rough size of a body the model cannot run (that line fails when it runs)


def _error(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None
) -> RunResult:
    return RunResult(status, ErrorResponse.of(message, type_, param, code))


def _invalid(exc: ValidationError) -> RunResult:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ())]
    return _error(
        400,
        f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}",
        "invalid_request_error",
        loc[0] if loc else None,
    )


class ServeRunner:
    def __init__(self, server):
        self.server = server
        self.model_id = server.model_id

    def describe(self) -> dict:
        meter = self.server.meter
        return {"model": self.model_id, "meter": meter.name, "energy_source": meter.energy_source}

    def _parse(self, url: str, body: dict):
        model, kind = KINDS[url]
        return model.model_validate(body), kind

    def work_tokens(self, url: str, body: dict) -> int:
        try:
            parsed, _ = self._parse(url, body)
            ids = prompt_ids(self.server, parsed)
            return len(ids) + sampling_of(self.server, parsed, ids).max_tokens
        except (ValidationError, GreenlmError, KeyError):
            return max(1, len(json.dumps(body)) // CHARS_PER_TOKEN)

    def concurrency(self) -> Concurrency:
        interactive, deferred = self.server.scheduler.tier_counts()
        return Concurrency(self.server.config.max_batch, interactive, deferred)

    async def run(self, url: str, body: dict, *, tier: str) -> RunResult:
        server = self.server
        try:
            parsed, kind = self._parse(url, body)
            if parsed.stream:
                raise RequestError("stream must be false in deferred work", param="stream")
            ids = await asyncio.to_thread(prompt_ids, server, parsed)
            params = sampling_of(server, parsed, ids)
            handle = server.submit(ids, params, loop=asyncio.get_running_loop(), tier=tier, preemptible=True)
        except ValidationError as exc:
            return _invalid(exc)
        except RequestError as exc:
            return _error(exc.status, str(exc), exc.type, exc.param, exc.code)
        created = int(time.time())
        try:
            result = None
            async for event in handle:
                if isinstance(event, FinishEvent):
                    result = event.result
        finally:
            handle.cancel()  # a no-op when it finished; frees the slot when this task was cancelled
        error = failed(result)
        if error is not None:
            return _error(error.status, str(error), error.type, error.param, error.code)
        response = kind.response(
            id=f"{kind.id_prefix}-{handle.request_id}",
            created=created,
            model=server.model_id,
            choices=[kind.choice(result)],
            usage=usage_of(result, server.replica),
            service_tier="flex" if tier == "flex" else "default",
        )
        run_s = result.e2e_s - result.queue_s
        return RunResult(200, response.model_dump(), preempted=result.preempted, run_s=run_s)
