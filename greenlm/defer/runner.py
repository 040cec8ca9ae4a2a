"""What deferred work runs on: anything that can run one chat or text completion request body and answer
with OpenAI's response (usage included). greenlm serve provides one over its scheduler; a gateway can provide
one over the servers behind it, and mount the same Batch API routes.

    class MyRunner:
        model_id = "my-model"
        def describe(self) -> dict: ...                       # {"model", "meter", "energy_source"}
        def work_tokens(self, url, body) -> int: ...          # prompt + max_tokens: the most a request costs
        def concurrency(self) -> Concurrency: ...             # slots, and how many each tier holds now
        async def run(self, url, body, *, tier) -> RunResult  # tier: "batch" or "flex"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

RETRY_CODES = ("shutting_down", "aborted", "queue_full")  # not the request's fault: it runs again later


@dataclass(frozen=True)
class RunResult:
    status_code: int
    body: dict  # the OpenAI response (with usage), or {"error": {...}}
    preempted: int = 0  # times the default tier took its slot back (its work restarted)
    run_s: float | None = None  # seconds it held a slot (its own pace: queueing for a slot left out)

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def retry(self) -> bool:
        """The server could not run it now (shutting down, cancelled, full): it runs again, not answered."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return not self.ok and isinstance(error, dict) and error.get("code") in RETRY_CODES

    @property
    def usage(self) -> dict:
        usage = self.body.get("usage") if isinstance(self.body, dict) else None
        return usage if isinstance(usage, dict) else {}


@dataclass(frozen=True)
class Concurrency:
    slots: int  # requests the server decodes together (a full batch)
    interactive: int  # held now by default-tier requests (running or queued)
    deferred: int  # held now by deferred requests (batch lines, flex)


class RequestRunner(Protocol):
    model_id: str

    def describe(self) -> dict:
        """{"model", "meter", "energy_source"}: what runs the work and where its energy figures come from."""

    def work_tokens(self, url: str, body: dict) -> int:
        """The most tokens the request costs (its prompt + max_tokens); a rough figure for a body it cannot
        run (that line fails when it runs)."""

    def concurrency(self) -> Concurrency:
        """Slots, and how many each tier holds now."""

    async def run(self, url: str, body: dict, *, tier: str) -> RunResult:
        """Run one request body at `tier` ("batch" or "flex"); never raises for a bad request (its error is
        the result)."""
