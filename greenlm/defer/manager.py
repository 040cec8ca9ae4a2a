"""Work that can wait, run when the grid is clean: Batch API files and batches, flex requests, the planner
that decides when each runs, and the durable record of what finished.

`Deferral` owns one thread with its own asyncio loop. Every tick (`tick_s` of wall time) it reads the grid
clock and the forecast, plans every waiting job (each batch's remaining requests, each flex request) with
`planner.plan`, logs and counts each change of decision, and runs what the plan puts in the current slot: a
batch's requests go to the runner at the "batch" tier, as many at once as the server has slots beside its
interactive load (a full batch: the cheapest joules per token it has); a flex request is let through. Every
finished request is committed to the state before the next is counted; a batch whose requests are all done
is finalized into its output and error files.

The planner needs the server's throughput and J/token: both are measured from the deferred work itself
(`rates`). Until a full batch of requests has finished, a batch's first full batch is its probe: planned, like a
flex request, into the cleanest slot of the first half of its window ("probing", said as a decision), the rest
waiting for the measured figures; unless the state kept them from an earlier run of the same model.

Thread-safety: the API methods (the routes' threads) touch only the state (SQLite, locked) and hand work to
the loop with `call_soon_threadsafe`; everything in memory belongs to the loop's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from greenlm.defer.batchfile import (
    ENDPOINTS,
    MAX_FILE_BYTES,
    MAX_LINES,
    BatchLine,
    parse_batch_file,
    unknown_endpoint,
)
from greenlm.defer.clock import iso
from greenlm.defer.errors import ApiError, BatchInputError, NotFound
from greenlm.defer.grid import GridSetup, keep_replay
from greenlm.defer.objects import (
    CANCELLED_MESSAGE,
    EXPIRED_MESSAGE,
    batch_object,
    file_object,
    new_id,
    result_line,
    unrun_line,
)
from greenlm.defer.planner import Job, Plan, plan
from greenlm.defer.rates import Rates
from greenlm.defer.runner import RequestRunner, RunResult
from greenlm.defer.settings import DEFAULT_FLEX_MAX_WAIT_S, parse_duration_s
from greenlm.defer.state import DeferState
from greenlm.errors import GreenlmError
from greenlm.store import Store

log = logging.getLogger(__name__)

MAX_WINDOW_S = 24 * 3600.0  # OpenAI's completion window; shorter ones are greenlm's extension
CAPACITY_SAFETY = 0.75  # plan with this share of the measured throughput (it varies with the load beside it)
DEADLINE_MARGIN = 0.15  # plan to finish this share of a batch's window before it expires
PROBE_SHARE = 0.5  # an unmeasured server probes in the cleanest slot of this first share of a window
KEEP_DECISIONS = 500
KEEP_DONE = 5000


@dataclass
class _Active:
    """A batch being run: its requests left, each one's work in tokens, its deadline on the grid clock."""

    id: str
    record: dict
    pending: deque[BatchLine]
    tokens: dict[int, int]  # line -> the most tokens it costs
    deadline_s: float  # grid time the window expires
    plan_deadline_s: float  # with the margin
    inflight: dict[int, asyncio.Task] = field(default_factory=dict)
    closing: str | None = None  # "expired" | "cancelled" once it is being wound up
    unfinished: list[BatchLine] = field(default_factory=list)  # every line without a result when loaded

    def tokens_left(self) -> float:
        return float(
            sum(self.tokens[b.line] for b in self.pending) + sum(self.tokens[n] for n in self.inflight)
        )


@dataclass
class _Flex:
    id: str
    tokens: int
    arrived_s: float  # grid time
    deadline_s: float
    future: concurrent.futures.Future


class Deferral:
    def __init__(
        self,
        runner: RequestRunner,
        grid: GridSetup,
        state: DeferState,
        *,
        pue: float = 1.0,
        flex_max_wait_s: float = DEFAULT_FLEX_MAX_WAIT_S,
        headroom_slots: int = 1,
        registry=None,
        announce: Callable[[str], None] | None = None,
        tick_s: float = 0.25,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_lines: int = MAX_LINES,
        store_path=None,
        owns_signal: bool = False,
        follow_grid: Callable | None = None,
    ):
        """`headroom_slots`: slots deferred work leaves free for interactive arrivals (0 offline). `registry`:
        the Prometheus registry its counters join. `store_path`: the results store that gets one row per
        finished batch. `owns_signal`: start and close the grid signal too (nobody else follows it). `follow_grid`:
        called with the grid reading every tick (the energy account converts at it: a fast replay's intervals
        are shorter than a control loop's)."""
        self.runner, self.grid, self.state, self.pue = runner, grid, state, float(pue)
        self.clock = grid.clock
        self.flex_max_wait_s = float(flex_max_wait_s)
        self.headroom_slots = int(headroom_slots)
        self.announce = announce
        self.tick_s = float(tick_s)
        self.max_file_bytes, self.max_lines = int(max_file_bytes), int(max_lines)
        self.store_path = store_path
        self.owns_signal = owns_signal
        self.follow_grid = follow_grid
        self.model_id = runner.model_id
        self.rates = Rates(state.get_meta(self._rates_key()))
        self._active: dict[str, _Active] = {}
        self._flex: dict[str, _Flex] = {}
        self._actions: dict[str, str] = {}
        self.decisions: deque[dict] = deque(maxlen=KEEP_DECISIONS)
        self.decision_count = 0
        self.replans = 0
        self.preemptions = 0  # batch requests whose slot the default tier took back (their work restarted)
        self._done: deque[tuple[float, int, float, str]] = deque(
            maxlen=KEEP_DONE
        )  # (grid s, tokens, g, kind)
        self._tick_tokens = self._tick_requests = 0
        self._last_tick = time.monotonic()
        self._inflight_before = 0
        self._forecast_version: object = None
        self._last_plan: Plan | None = None
        self._snapshot: dict = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._counters(registry)

    def _rates_key(self) -> str:
        return f"rates:{self.model_id}"

    def _counters(self, registry) -> None:
        self._decision_counter = self._lines_counter = None
        if registry is None:
            return
        self._decision_counter = Counter(
            "greenlm:defer_decisions",
            "Deferred-work decisions: a job (batch or flex request) set to run or wait, and why",
            ["model_name", "kind", "action", "reason"],
            registry=registry,
        )
        self._lines_counter = Counter(
            "greenlm:defer_requests",
            "Deferred requests finished, by kind and outcome",
            ["model_name", "kind", "outcome"],
            registry=registry,
        )
        waiting = Gauge(
            "greenlm:defer_tokens_waiting",
            "Tokens of deferred work not yet run (at most)",
            ["model_name"],
            registry=registry,
        )
        waiting.labels(self.model_id).set_function(lambda: self._snapshot.get("tokens_waiting", 0))

    # ---- life ---------------------------------------------------------------------------------------------
    def _grid_parts(self) -> list:
        """What this deferral starts and closes: the forecaster, and the signal when nobody else follows it."""
        parts = [self.grid.forecaster] if self.grid.forecaster is not self.grid.signal else []
        return parts + [self.grid.signal] if self.owns_signal else parts

    def start(self) -> None:
        for part in self._grid_parts():
            part.start()
        self._thread = threading.Thread(target=self._run_loop, name="greenlm-defer", daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._wake = asyncio.Event()
        try:
            loop.run_until_complete(self._resume())  # before any new batch can arrive
        finally:
            self._ready.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    def close(self) -> None:
        """Stop: requests in flight are cancelled unanswered (they run again after a restart); nothing
        finished is lost."""
        self._stopping = True
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(self._wake.set)
            self._thread.join(60)
        for part in self._grid_parts():
            part.close()
        self._keep_rates()

    def _keep_rates(self) -> None:
        try:
            self.state.set_meta(self._rates_key(), self.rates.to_dict(self._full_batch()))
        except Exception:  # the kept rates are a head start, not a reason to fail a shutdown
            log.exception("cannot keep the measured rates")

    def _full_batch(self) -> int:
        return max(1, self.runner.concurrency().slots - self.headroom_slots)

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # closed between the check and the call: it is stopping anyway
                pass

    async def _main(self) -> None:
        while not self._stopping:
            try:
                await self._tick()
            except Exception:  # a planning bug must not stop the work: say it, try again next tick
                log.exception("the deferral loop failed a tick")
            try:
                await asyncio.wait_for(self._wake.wait(), self.tick_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
        await self._stop_all()

    async def _stop_all(self) -> None:
        tasks = [t for a in self._active.values() for t in a.inflight.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for flex in self._flex.values():  # a flex request waiting now runs at once: the server is stopping
            if not flex.future.done():
                flex.future.set_result({"waited_s": 0.0, "reason": "stopping"})

    def _own(self) -> None:
        """Writes need the state directory to be this server's (another server's batches are its own)."""
        owner = self.state.acquire()
        if owner is None:
            keep_replay(self.grid, self.state)
        else:
            raise ApiError(
                f"the state directory {self.state.root} is in use by another greenlm process (pid {owner}): give "
                "this server its own --state-dir",
                code="state_dir_in_use",
            )

    # ---- files (any thread) -------------------------------------------------------------------------------
    def create_file(self, filename: str, purpose: str, content: bytes) -> dict:
        self._own()
        if purpose != "batch":
            raise ApiError(
                f"purpose {purpose!r} is not kept here: this server keeps files for the Batch API (purpose 'batch')",
                param="purpose",
            )
        lines = parse_batch_file(content, max_lines=self.max_lines, max_bytes=self.max_file_bytes)
        urls: dict[str, int] = {}
        for line in lines:
            urls.setdefault(line.url, line.line)
        record = {
            "id": new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename or "upload.jsonl",
            "purpose": "batch",
        }
        self.state.add_file(record, content, {"lines": len(lines), "urls": urls})
        return file_object(self.state.get_file(record["id"]))

    def get_file(self, file_id: str) -> dict:
        record = self.state.get_file(file_id)
        if record is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return record

    def file_content(self, file_id: str) -> bytes:
        self.get_file(file_id)
        try:
            return self.state.file_path(file_id).read_bytes()
        except OSError:
            raise NotFound(
                f"the content of file {file_id} is gone from the state directory", param="file_id"
            ) from None

    def list_files(
        self,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10_000,
        order: str = "desc",
    ):
        if not 1 <= limit <= 10_000:
            raise ApiError(f"limit must be from 1 to 10000, got {limit}", param="limit")
        if order not in ("asc", "desc"):
            raise ApiError(f"order must be 'asc' or 'desc', got {order!r}", param="order")
        return self.state.list_files(purpose=purpose, after=after, limit=limit, ascending=order == "asc")

    def delete_file(self, file_id: str) -> dict:
        self.get_file(file_id)
        self._own()
        user = self.state.file_in_use(file_id)
        if user is not None:
            raise ApiError(
                f"file {file_id} is the input of batch {user}, which has not finished: cancel it first",
                param="file_id",
            )
        self.state.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- batches (any thread) -----------------------------------------------------------------------------
    def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict | None = None,
        *,
        window_s: float | None = None,
    ) -> dict:
        """A new batch (status validating). `window_s`: the window in seconds, beyond the API's 24 hours
        (`greenlm batch run`); else `completion_window` is checked as the API takes it."""
        self._own()
        if endpoint not in ENDPOINTS:
            raise ApiError(unknown_endpoint(endpoint), param="endpoint", code="unknown_endpoint")
        window_s = self._window(completion_window) if window_s is None else float(window_s)
        _check_metadata(metadata)
        source = self.state.get_file(input_file_id)
        if source is None:
            raise NotFound(f"No such File object: {input_file_id}", param="input_file_id")
        if source["purpose"] != "batch":
            raise ApiError(
                f"file {input_file_id} has purpose {source['purpose']!r}: a batch reads a purpose 'batch' file",
                param="input_file_id",
            )
        for url, line in source["_info"]["urls"].items():
            if url != endpoint:
                raise BatchInputError(
                    f"line {line} of {input_file_id} is for {url}, not the batch's endpoint {endpoint}: one endpoint per batch",
                    param="endpoint", code="mismatched_endpoint", line=line,
                )  # fmt: skip
        now_s, now_unix = self.clock.now_s(), time.time()
        reading = self.grid.signal.now()
        label = self.runner.describe()
        record = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(now_unix),
            "in_progress_at": None,
            "expires_at": int(self.clock.unix_at(now_s + window_s)),
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "metadata": metadata,
            "model": self.model_id,
            "greenlm_deadline": iso(now_s + window_s),
            "greenlm_grid_clock": self.clock.kind
            + (f" at {self.clock.speed:g}x" if self.clock.kind == "replay" else ""),
            "_lines": source["_info"]["lines"],
            "_window_s": window_s,
            "_submitted_s": now_s,
            "_deadline_s": now_s + window_s,
            "_intensity_at_submission_g_per_kwh": reading.intensity_g_per_kwh,
            "_meter": label.get("meter"),
            "_energy_source": label.get("energy_source"),
        }
        self.state.put_batch(record)
        self._notify()
        return self.batch(record["id"])

    def _window(self, text) -> float:
        if not isinstance(text, str):
            raise ApiError("completion_window must be a string such as '24h'", param="completion_window")
        try:
            seconds = parse_duration_s(text, "completion_window")
        except GreenlmError:
            seconds = math.nan
        if not (seconds <= MAX_WINDOW_S) or text.strip()[-1:] not in ("h", "m"):
            raise ApiError(
                f"completion_window must be '24h' or a shorter window in hours or minutes such as '1h' or '8h', got {text!r}",
                param="completion_window",
            )
        return seconds

    def batch(self, batch_id: str) -> dict:
        record = self.state.get_batch(batch_id)
        if record is None:
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch_object(record, self.state.totals(batch_id), self.pue)

    def list_batches(self, *, after: str | None = None, limit: int = 20) -> tuple[list[dict], bool]:
        if not 1 <= limit <= 100:
            raise ApiError(f"limit must be from 1 to 100, got {limit}", param="limit")
        records, more = self.state.list_batches(after=after, limit=limit)
        return [batch_object(r, self.state.totals(r["id"]), self.pue) for r in records], more

    def cancel_batch(self, batch_id: str) -> dict:
        record = self.state.get_batch(batch_id)
        if record is None:
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        self._own()
        finished = ("completed", "failed", "expired", "cancelled", "finalizing", "cancelling")
        changed = self.state.update_batch(
            batch_id, {"status": "cancelling", "cancelling_at": int(time.time())}, unless=finished
        )
        if changed is None:
            changed = self.state.get_batch(batch_id) or record
            if changed["status"] != "cancelling":  # cancelling twice is not an error
                raise ApiError(f"Cannot cancel a batch with status '{changed['status']}'.", param="batch_id")
        answer = batch_object(
            changed, self.state.totals(batch_id), self.pue
        )  # as cancelled, before the loop moves on
        self._notify()
        return answer

    # ---- flex (any thread) --------------------------------------------------------------------------------
    def flex(self, tokens: int) -> concurrent.futures.Future:
        """A flex request of at most `tokens` asks to run: the future resolves (with how long it waited and
        why it runs now) when the plan puts it in the current slot, or when its wait runs out."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        loop = self._loop
        if self._stopping or loop is None or loop.is_closed():
            future.set_result({"waited_s": 0.0, "reason": "no deferral running"})
            return future
        now_s = self.clock.now_s()
        job = _Flex(new_id("flex_"), int(tokens), now_s, now_s + self.flex_max_wait_s, future)
        loop.call_soon_threadsafe(self._add_flex, job)
        return future

    def _add_flex(self, job: _Flex) -> None:
        self._flex[job.id] = job
        self._wake.set()

    # ---- the loop's work ----------------------------------------------------------------------------------
    async def _resume(self) -> None:
        """Batches a previous run left unfinished continue (the requests they finished are kept), when the
        state directory is free to own."""
        unfinished = self.state.unfinished_batches()
        if not unfinished:
            return
        owner = self.state.acquire()
        if owner is not None:
            self._say(
                f"{len(unfinished)} unfinished batch(es) in {self.state.root} belong to greenlm pid {owner}: not resumed here"
            )
            return
        keep_replay(self.grid, self.state)
        for record in unfinished:
            self._say(
                f"resuming batch {record['id']} ({record['status']}, {len(self.state.finished_lines(record['id']))} of {record['_lines']} requests done)"
            )

    def _say(self, note: str) -> None:
        if self.announce:
            self.announce(note)
        else:
            log.warning(note)

    async def _tick(self) -> None:
        now_mono = time.monotonic()
        inflight = sum(len(a.inflight) for a in self._active.values())
        before, self._inflight_before = self._inflight_before, inflight
        # busy when requests were in flight at either edge of the tick: the last ones of a batch finish in it
        busy_s = now_mono - self._last_tick if inflight or before else 0.0
        self._last_tick = now_mono
        self.rates.tick(
            busy_s, self._tick_tokens, self._tick_requests, max(inflight, before) / self._full_batch()
        )
        self._tick_tokens = self._tick_requests = 0
        if self.follow_grid is not None:
            self.follow_grid(self.grid.signal.now())
        await self._pick_up()
        now_s = self.clock.now_s()
        for active in list(self._active.values()):
            if active.closing is None and now_s >= active.deadline_s:
                await self._finish(active, "expired")
        for flex_id in [f.id for f in self._flex.values() if f.future.done()]:  # cancelled by its client
            self._flex.pop(flex_id)
            self._actions.pop(flex_id, None)
        self._plan_and_run(now_s)

    async def _pick_up(self) -> None:
        """New batches get validated; cancelled ones wound up; finished ones finalized."""
        if not self.state.owned:
            return
        for record in self.state.unfinished_batches():
            active = self._active.get(record["id"])
            closing = record.get("_closing")
            if record["status"] == "finalizing" and closing and active is None:  # a crash while winding up
                active = await self._load(record)
                if active is not None:
                    await self._finish(active, closing)
                continue
            if record["status"] == "cancelling":
                if active is None:
                    active = await self._load(record)
                if active is not None and active.closing is None:
                    await self._finish(active, "cancelled")
                continue
            if active is None and record["status"] in ("validating", "in_progress", "finalizing"):
                await self._load(record)
        for active in list(self._active.values()):
            if active.closing is None and not active.pending and not active.inflight:
                await self._finish(active, "completed")

    async def _load(self, record: dict) -> _Active | None:
        """Read a batch's input, the work of each request left, and start it (status in_progress)."""
        try:
            content = self.state.file_path(record["input_file_id"]).read_bytes()
            lines = parse_batch_file(content, max_lines=10**9, max_bytes=10**12)
        except (OSError, GreenlmError) as exc:
            error = {
                "code": "invalid_input_file",
                "message": f"the input file cannot be read: {exc}",
                "param": "input_file_id",
                "line": None,
            }
            self.state.update_batch(
                record["id"],
                {
                    "status": "failed",
                    "failed_at": int(time.time()),
                    "errors": {"object": "list", "data": [error]},
                },
            )
            return None
        done = self.state.finished_lines(record["id"])
        pending = [b for b in lines if b.line not in done]
        tokens = await asyncio.to_thread(
            lambda: {b.line: max(1, self.runner.work_tokens(b.url, b.body)) for b in pending}
        )
        window = record["_window_s"]
        deadline = record["_deadline_s"]
        active = _Active(
            record["id"], record, deque(pending), tokens, deadline,
            deadline - max(DEADLINE_MARGIN * window, 4 * self.tick_s * self.clock.speed), unfinished=pending,
        )  # fmt: skip
        self._active[record["id"]] = active
        if record["status"] == "validating":
            self.state.update_batch(
                record["id"],
                {"status": "in_progress", "in_progress_at": int(time.time())},
                unless=("cancelling",),
            )
        return active

    def _jobs(self, now_s: float, measured: bool) -> list[Job]:
        """Every job waiting. Until the server is measured, a batch's job is its probe: one full batch of its
        requests, due by the middle of its window (so the rest still has half the window)."""
        jobs = []
        for a in self._active.values():
            if a.closing is not None or not (a.pending or a.inflight):
                continue
            if measured:
                jobs.append(Job(a.id, a.tokens_left(), self._due(a), "batch"))
                continue
            probe = (
                list(a.inflight) + [b.line for b in a.pending][: max(0, self._full_batch() - len(a.inflight))]
            )
            # unmeasured, its length is unknown: it is due by the middle of the window, leaving the other half
            due = min(a.plan_deadline_s, a.record["_submitted_s"] + PROBE_SHARE * a.record["_window_s"])
            jobs.append(Job(a.id, float(sum(a.tokens[n] for n in probe)), due, "batch"))
        jobs += [Job(f.id, float(f.tokens), f.deadline_s, "flex") for f in self._flex.values()]
        return sorted(jobs, key=lambda j: (j.deadline_s, j.id))

    def _due(self, a: _Active) -> float:
        """When a measured batch's work must be done by: its deadline less the margin, and less the time its
        longest request left takes by itself (a fluid capacity says nothing of one request's own pace)."""
        speed = self.rates.request_tokens_per_s()
        left = [a.tokens[b.line] for b in a.pending] + [a.tokens[n] for n in a.inflight]
        if not speed or not left:
            return a.plan_deadline_s
        return min(a.plan_deadline_s, a.deadline_s - max(left) / speed * self.clock.speed)

    def _plan_and_run(self, now_s: float) -> None:
        capacity = self.rates.capacity_tokens_per_s(self._full_batch())
        j_per_token = self.rates.j_per_token()
        jobs = self._jobs(now_s, measured=bool(capacity))
        version = self.grid.forecaster.version
        if version != self._forecast_version:
            self._forecast_version = version
            self.replans += 1
        horizon = max([j.deadline_s for j in jobs] + [now_s + 3600.0]) - now_s
        forecast = self.grid.forecaster.forecast(now_s, horizon)
        the_plan: Plan | None = None
        if jobs:
            if capacity:
                rate = CAPACITY_SAFETY * capacity / self.clock.speed
            else:  # probes and flex requests are short beside a slot: plan as if any slot could hold them all
                rate = sum(j.tokens for j in jobs) / (self.tick_s * self.clock.speed)
            slots = forecast.slots(now_s, max(j.deadline_s for j in jobs) + 1.0)
            the_plan = plan(
                jobs, slots, now_s=now_s, capacity_tokens_per_s=max(rate, 1e-9), j_per_token=j_per_token or 0.0,
                pue=self.pue,
            )  # fmt: skip
        self._last_plan = the_plan
        reading = self.grid.signal.now()
        for job in jobs:
            action, reason, detail = self._decide(job, the_plan, capacity, now_s, reading.intensity_g_per_kwh)
            self._record(job, action, reason, detail, now_s, reading.intensity_g_per_kwh)
            if action != "run":
                continue
            if job.kind == "flex":
                flex = self._flex.pop(job.id)
                self._actions.pop(job.id, None)
                if not flex.future.done():
                    flex.future.set_result({"waited_s": now_s - flex.arrived_s, "reason": reason})
            else:
                self._launch(self._active[job.id])
        self._snapshot = self._make_snapshot(now_s, forecast, the_plan, capacity, j_per_token, jobs, reading)

    def _decide(
        self, job: Job, the_plan: Plan | None, capacity, now_s: float, now_g: float
    ) -> tuple[str, str, str]:
        if not capacity and job.kind != "flex" and the_plan.runs_now(job.id):
            return (
                "run",
                "probing",
                "measures the server's throughput and J/token on one full batch, in the cleanest slot of the first half of its window",
            )
        if the_plan.runs_now(job.id):
            if job.id in the_plan.late_jobs:
                return (
                    "run",
                    "late",
                    "its work no longer fits before its deadline at the cleanest slots: runs now",
                )
            return (
                "run",
                "cleanest",
                f"the plan's slot now ({now_g:.0f} g/kWh) is among the cleanest before its deadline",
            )
        start = the_plan.next_run_s(job.id)
        if start is None:
            return "run", "late", "no slot before its deadline: runs now"
        slot = next((s for s in the_plan.slots if s.start_s <= start < s.end_s), None)
        later = f"{slot.intensity_g_per_kwh:.0f} g/kWh" if slot else "a cleaner slot"
        return "wait", "cleaner_later", f"waits for {iso(start)} ({later} forecast vs {now_g:.0f} now)"

    def _record(self, job: Job, action: str, reason: str, detail: str, now_s: float, now_g: float) -> None:
        if self._actions.get(job.id) == f"{action}:{reason}":
            return
        self._actions[job.id] = f"{action}:{reason}"
        entry = {
            "time": iso(now_s), "t_s": now_s, "job": job.id, "kind": job.kind, "action": action, "reason": reason,
            "detail": detail, "tokens": job.tokens, "intensity_g_per_kwh": now_g, "deadline": iso(job.deadline_s),
        }  # fmt: skip
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self.decisions.append(entry)
            self.decision_count += 1
        if self._decision_counter is not None:
            self._decision_counter.labels(self.model_id, job.kind, action, reason).inc()
        log.info("defer: %s %s %s [%s] %s", job.kind, job.id, action, reason, detail)

    # ---- running a batch's requests -----------------------------------------------------------------------
    def _launch(self, active: _Active) -> None:
        c = self.runner.concurrency()
        limit = max(1, c.slots - c.interactive - self.headroom_slots)
        inflight = sum(len(a.inflight) for a in self._active.values())
        room = limit - max(inflight, c.deferred)
        while room > 0 and active.pending:
            line = active.pending.popleft()
            active.inflight[line.line] = asyncio.get_running_loop().create_task(self._run_line(active, line))
            room -= 1

    async def _run_line(self, active: _Active, line: BatchLine) -> None:
        try:
            started = time.monotonic()
            try:
                result = await self.runner.run(line.url, line.body, tier="batch")
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # a runner bug answers this line with a 500, not the whole batch
                log.exception("batch %s line %d failed", active.id, line.line)
                result = RunResult(
                    500,
                    {
                        "error": {
                            "message": f"internal error: {type(exc).__name__}: {exc}",
                            "type": "server_error",
                            "param": None,
                            "code": "internal_error",
                        }
                    },
                )
            if result.retry:
                if active.closing is None:
                    active.pending.appendleft(line)  # not answered: it runs again
                return
            self._keep(active, line, result, time.monotonic() - started)
        finally:
            active.inflight.pop(line.line, None)
            if self._wake is not None:
                self._wake.set()

    def _keep(self, active: _Active, line: BatchLine, result: RunResult, seconds: float) -> None:
        usage = result.usage
        self.preemptions += result.preempted
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        stored = self.state.add_result(
            active.id, line.custom_id, line.line, result.ok, result_line(line.custom_id, result.status_code, result.body),
            usage, time.time(),
        )  # fmt: skip
        if not stored:
            log.warning(
                "batch %s: custom_id %s was answered already; this answer is dropped",
                active.id,
                line.custom_id,
            )
            return
        if result.ok:
            self._tick_tokens += tokens
            self._tick_requests += 1
            self.rates.line(tokens, float(usage.get("energy_j") or 0.0), result.run_s or seconds)
            self._done.append((self.clock.now_s(), tokens, float(usage.get("carbon_g") or 0.0), "batch"))
        if self._lines_counter is not None:
            self._lines_counter.labels(self.model_id, "batch", "completed" if result.ok else "failed").inc()

    def flex_done(self, tokens: int, carbon: float) -> None:
        """A flex request that ran finished (its route reports it: for the dashboard's work done)."""
        self._done.append((self.clock.now_s(), tokens, carbon, "flex"))
        if self._lines_counter is not None:
            self._lines_counter.labels(self.model_id, "flex", "completed").inc()

    async def _finish(self, active: _Active, status: str) -> None:
        """Wind a batch up: cancel what runs (expired, cancelled), list what did not run in the error file,
        write the output and error files, and set its final status."""
        active.closing = status
        for task in list(active.inflight.values()):
            task.cancel()
        if active.inflight:
            await asyncio.gather(*active.inflight.values(), return_exceptions=True)
        self.state.update_batch(active.id, {"_closing": status})
        if status != "completed":
            code, message = (
                ("batch_expired", EXPIRED_MESSAGE)
                if status == "expired"
                else ("batch_cancelled", CANCELLED_MESSAGE)
            )
            done = self.state.finished_lines(active.id)
            for line in active.unfinished:  # waiting, or cancelled in flight just now
                if line.line not in done:
                    self.state.add_result(
                        active.id,
                        line.custom_id,
                        line.line,
                        False,
                        unrun_line(line.custom_id, code, message),
                        {},
                        time.time(),
                    )
            active.pending.clear()
        self.state.update_batch(active.id, {"status": "finalizing", "finalizing_at": int(time.time())})
        results = self.state.results(active.id)
        files = {}
        for ok, key in ((True, "output_file_id"), (False, "error_file_id")):
            rows = [r["result"] for r in results if r["ok"] == ok]
            if rows:
                files[key] = self._write_output(f"{active.id}_{'output' if ok else 'error'}.jsonl", rows)
        stamp = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[status]
        self.state.update_batch(active.id, {**files, "status": status, stamp: int(time.time())})
        self._active.pop(active.id, None)
        self._actions.pop(active.id, None)
        self._keep_rates()
        public = self.batch(active.id)
        counts = public["request_counts"]
        note = (
            f"batch {active.id} {status}: {counts['completed']} of {counts['total']} requests completed, "
            f"{counts['failed']} failed; {public['greenlm_energy_j']:.1f} J, {public['greenlm_carbon_g']:.4g} g "
            f"(at submission it would have been {public['greenlm_carbon_if_run_at_submission_g']:.4g} g)"
        )
        self._say(note)
        self._store(public)

    def _write_output(self, filename: str, rows: list[dict]) -> str:
        content = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
        record = {
            "id": new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "batch_output",
        }
        self.state.add_file(record, content, {"lines": len(rows), "urls": {}})
        return record["id"]

    def _store(self, public: dict) -> None:
        if self.store_path is None:
            return
        try:
            with Store(self.store_path) as store:
                store.add(
                    "batch",
                    {
                        **public,
                        "model": self.model_id,
                        "meter": public.get("greenlm_meter"),
                        "energy_source": public.get("greenlm_energy_source"),
                    },
                )
        except GreenlmError as exc:  # the results store is a record, not a reason to lose the batch
            log.error("cannot store batch %s in the results store: %s", public["id"], exc)

    # ---- what the dashboard sees (any thread) -------------------------------------------------------------
    def _make_snapshot(self, now_s, forecast, the_plan, capacity, j_per_token, jobs, reading) -> dict:
        step = forecast.step_s if forecast.step_s < 86400 else 1800.0
        done: dict[float, list[float]] = {}
        for t, tokens, grams, _kind in self._done:
            bucket = math.floor(t / step) * step
            done.setdefault(bucket, [0.0, 0.0])
            done[bucket][0] += tokens
            done[bucket][1] += grams
        return {
            "now_s": now_s,
            "now": iso(now_s),
            "clock": self.clock.describe(),
            "intensity_g_per_kwh": reading.intensity_g_per_kwh,
            "forecast": forecast.to_dict(now_s - 6 * step, max_points=200),
            "plan": the_plan.to_dict(max_slots=200) if the_plan else None,
            "probing": not capacity,
            "capacity_tokens_per_s": capacity,
            "j_per_token": j_per_token,
            "done": [{"t_s": t, "tokens": v[0], "carbon_g": v[1]} for t, v in sorted(done.items())][-200:],
            "jobs": [
                {
                    "id": j.id,
                    "kind": j.kind,
                    "tokens": j.tokens,
                    "deadline": iso(j.deadline_s),
                    "runs_now": self._actions.get(j.id, "").startswith("run"),
                }
                for j in jobs
            ],
            "tokens_waiting": sum(j.tokens for j in jobs),
            "replans": self.replans,
            "preemptions": self.preemptions,
        }

    def view(self, since: int = 0) -> dict:
        with self._lock:
            decisions = [d for d in self.decisions if d["seq"] > since]
            count = self.decision_count
        return {
            **self._snapshot,
            "decisions": decisions,
            "decision_count": count,
            "grid": self.grid.describe(),
        }


def _check_metadata(metadata) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise ApiError("metadata must be an object of at most 16 string keys and values", param="metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise ApiError(
                "metadata keys must be strings of at most 64 characters, values at most 512", param="metadata"
            )
