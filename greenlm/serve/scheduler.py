"""Continuous batching: one background thread owns a stepper and advances every running request together.

Each iteration: drop cancelled requests, admit waiting ones into free slots, build one step (a decode token
for every running request first, then prompt chunks of new ones up to the step's token budget, so a long
prompt is spread over several steps and never stalls the others), run it, sample, stream the new text out,
and close the step's energy window, whose energy the requests in the step share (see `attribution`). A
request that finished leaves its slot in the same iteration; a new one joins at the next. With nothing to
run the thread sleeps, and the time until the next request arrives is idle energy.

Results reach the caller through a per-request handle: a blocking iterator for library use, or an asyncio
queue for the HTTP app (events are handed to its event loop thread-safely).

Several steppers (an adaptive server's variants): a request is bound to the active stepper when it is admitted
and finishes there, so a switch (`activate`) lets in-flight requests finish where they started while new ones
start on the new variant. Each iteration steps every stepper that has requests, each step its own window.
Work that is not a step (loading a variant, changing threads) runs in this thread between iterations, in a
load window of its own (`call`), so the energy account stays exact.

Tiers: a request that can wait (`tier` "batch" or "flex", greenlm.defer) queues apart and is admitted only
into slots the default tier leaves free; when a default request finds every slot taken and some are held by
preemptible deferred requests (ones whose output nobody has seen yet), the newest of those is put back at the
head of its queue (its slot freed, its output restarted later; the energy it used stays its own), so
default-tier requests never wait behind deferred work. Only default-tier requests feed the TTFT and queue-wait
records the load policy reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from greenlm.engines.stepper import SlotFeed, Stepper
from greenlm.errors import GreenlmError
from greenlm.serve.attribution import StepWork
from greenlm.serve.errors import NotAccepting, QueueFull, RequestError
from greenlm.serve.ledger import EnergyLedger
from greenlm.serve.metrics import ServeMetrics
from greenlm.serve.policies import p90 as _p90
from greenlm.serve.sampling import SamplingParams, sample
from greenlm.serve.text import TextStream

log = logging.getLogger(__name__)


# ---- what a caller gets back ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenEvent:
    text: str  # final text since the previous event (may be empty while a character or stop is pending)
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class RequestResult:
    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # stop | length | abort | error
    prompt_tokens: int
    completion_tokens: int
    prefill_j: float
    decode_j: float
    carbon_g: float
    meter: str
    energy_source: str
    queue_s: float
    ttft_s: float | None
    e2e_s: float
    error: str | None = None
    variant: str | None = None  # the variant (of an adaptive server's ladder) that served it
    cached_tokens: int = 0  # prompt tokens whose KV cells were reused (prefix cache), not computed or charged
    tier: str = "default"  # default | batch | flex
    preempted: int = 0  # times a default-tier request took its slot (its output restarted)

    @property
    def energy_j(self) -> float:
        return self.prefill_j + self.decode_j

    def usage(self) -> dict:
        """OpenAI's usage fields and greenlm's energy fields."""
        return {
            "variant": self.variant,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "energy_j": self.energy_j,
            "prefill_energy_j": self.prefill_j,
            "decode_energy_j": self.decode_j,
            "carbon_g": self.carbon_g,
            "meter": self.meter,
            "energy_source": self.energy_source,
        }


@dataclass(frozen=True)
class FinishEvent:
    result: RequestResult


_DONE = object()


class RequestHandle:
    """The caller's side of one request: iterate its events (TokenEvent..., FinishEvent), or cancel it."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None):
        self.request_id = request_id
        self._loop = loop
        self._sync: queue.SimpleQueue | None = None if loop else queue.SimpleQueue()
        self._async: asyncio.Queue | None = asyncio.Queue() if loop else None
        self._cancel = threading.Event()
        self.result: RequestResult | None = None

    def _put(self, event) -> None:
        if self._loop is None:
            self._sync.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._async.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self._cancel.set()

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step. Safe to call from any thread, any time."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def events(self, timeout_s: float | None = None) -> Iterator[TokenEvent | FinishEvent]:
        if self._sync is None:
            raise RuntimeError("this handle was submitted for asyncio: use `async for`")
        while True:
            event = self._sync.get(timeout=timeout_s)
            if event is _DONE:
                return
            yield event

    async def __aiter__(self) -> AsyncIterator[TokenEvent | FinishEvent]:
        if self._async is None:
            raise RuntimeError("this handle was submitted without an event loop: use events()")
        while True:
            event = await self._async.get()
            if event is _DONE:
                return
            yield event

    def wait(self, timeout_s: float | None = None) -> RequestResult:
        """Block until the request ends; its result."""
        for event in self.events(timeout_s):
            if isinstance(event, FinishEvent):
                return event.result
        raise RuntimeError("request ended without a result")


class _Outbox:
    """Events the serving loop produced in one iteration, handed to each event loop in one call: a wake-up
    of the HTTP thread per step instead of one per token (each wake-up is a syscall and a thread switch that
    competes with the engine's threads for the cores)."""

    def __init__(self) -> None:
        self._items: list[tuple[RequestHandle, object]] = []

    def put(self, handle: RequestHandle, event) -> None:
        if handle._loop is None:
            handle._sync.put(event)
        else:
            self._items.append((handle, event))

    def flush(self) -> None:
        if not self._items:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for handle, event in self._items:
            by_loop.setdefault(handle._loop, []).append((handle, event))
        self._items = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                for handle, _event in items:
                    handle._cancel.set()


def _deliver(items: list) -> None:
    for handle, event in items:
        handle._async.put_nowait(event)


# ---- the scheduler's own record of a request -------------------------------------------------------------
@dataclass
class _Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    handle: RequestHandle
    text: TextStream | None  # made when the request is admitted, with its stepper's detokenizer
    arrival_s: float
    rng: object = None
    stepper: Stepper | None = None  # where it runs (bound at admission)
    variant: str | None = None
    slot: int | None = None
    fed: int = 0  # prompt tokens already in the slot's cache
    cached_tokens: int = 0  # of those, the ones reused from the prefix cache at admission
    pending: int | None = None  # sampled token not yet fed back
    output_ids: list[int] = field(default_factory=list)
    admitted_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    prefill_j: float = 0.0
    decode_j: float = 0.0
    carbon_g: float = 0.0  # each step's share at the grid intensity of its time
    finish_reason: str | None = None
    error: str | None = None
    tier: str = "default"
    preemptible: bool = False
    preempted: int = 0


RECENT_KEEP_S = 300.0  # how far back the latency records for the load policy reach


class Scheduler:
    """Owns its steppers from its own thread. `submit` from any thread; `close` drains and stops.

    `reload`: called (in this thread, in a load window) when requests wait and no stepper is active (an
    unloaded model); it must `activate` one. `on_finish`: called with every result."""

    def __init__(
        self,
        stepper: Stepper | None,
        ledger: EnergyLedger,
        metrics: ServeMetrics,
        *,
        detokenize: Callable[[list[int]], str] | None = None,
        max_queue: int,
        name: str = "greenlm-scheduler",
        variant: str | None = None,
        context_tokens: int | None = None,
        prefill_chunk_tokens: int | None = None,
        reload: Callable[[], None] | None = None,
        on_finish: Callable[[RequestResult], None] | None = None,
    ):
        self.stepper: Stepper | None = None  # the active one: admitted requests start here
        self.variant: str | None = None
        self.ledger = ledger
        self.metrics = metrics
        self.max_queue = max_queue
        self.reload = reload
        self.on_finish = on_finish
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._deferred: deque[_Request] = deque()  # tiers that can wait: admitted into slots left free
        self._running: list[_Request] = []
        self._free: dict[Stepper, list[int]] = {}
        self._detokenize: dict[Stepper, Callable[[list[int]], str]] = {}
        self._tasks: deque[tuple[Callable[[], object], concurrent.futures.Future]] = deque()
        self._accepting = True
        self._stop = False
        self._ids = itertools.count()
        self._recent_e2e_s: deque[float] = deque(maxlen=32)
        self._recent_ttft: deque[tuple[float, float]] = deque()  # (when, seconds)
        self._recent_queue: deque[tuple[float, float]] = deque()
        self._peak = 0
        self._last_busy_s = time.perf_counter()
        self.fatal: BaseException | None = None  # what killed the loop, if anything did
        self._outbox = _Outbox()
        if stepper is not None:
            self.activate(stepper, variant, detokenize)
        self.context_tokens = context_tokens or (stepper.context_tokens if stepper else None)
        if self.context_tokens is None:
            raise ValueError("a scheduler with no stepper needs context_tokens")
        metrics.watch_queue(lambda: len(self._running), lambda: len(self._waiting))
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---- steppers (from the loop thread: inside `call`, or `reload`) -----------------------------------
    def activate(
        self, stepper: Stepper | None, variant: str | None = None, detokenize: Callable | None = None
    ) -> None:
        """Requests admitted from now on start on `stepper` (None: none until `reload` activates one)."""
        if stepper is not None and stepper not in self._free:
            self._free[stepper] = list(range(stepper.slots))
            self._detokenize[stepper] = detokenize or stepper.detokenize
        self.stepper, self.variant = stepper, variant

    def busy(self, stepper: Stepper) -> bool:
        """Requests are still running on `stepper`."""
        return any(r.stepper is stepper for r in self._running)

    def forget(self, stepper: Stepper) -> None:
        """`stepper` is about to be closed: it must have no request running."""
        if self.busy(stepper):
            raise RuntimeError("a stepper with requests running cannot be closed")
        self._free.pop(stepper, None)
        self._detokenize.pop(stepper, None)
        if self.stepper is stepper:
            self.stepper = None

    def call(self, fn: Callable[[], object], timeout_s: float | None = None):
        """Run `fn` in the loop thread between iterations, in a load window; its result (or exception)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if threading.current_thread() is self._thread:
            self._run_task(fn, future)
        else:
            with self._cond:
                if self._stop or not self._thread.is_alive():
                    raise NotAccepting("the server is shutting down")
                self._tasks.append((fn, future))
                self._cond.notify()
        return future.result(timeout_s)

    def _run_task(self, fn: Callable[[], object], future: concurrent.futures.Future) -> None:
        self.ledger.begin_load()
        try:
            result = fn()
        except BaseException as exc:  # the caller hears of it; the loop goes on
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            self.ledger.close_load()

    # ---- callers ---------------------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        request_id: str | None = None,
        tier: str = "default",
        preemptible: bool = False,
    ) -> RequestHandle:
        """Queue a request (its prompt and max_tokens must fit a slot's context: the caller checks). `tier`
        other than "default": it waits for slots the default tier leaves free (the deferral bounds how many
        it queues, not --max-queue); `preemptible`: a default request may take its slot back (see above)."""
        if not prompt_ids:
            raise RequestError("the prompt is empty", param="prompt")
        if len(prompt_ids) + params.max_tokens > self.context_tokens:
            raise RequestError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceed the context of "
                f"{self.context_tokens} tokens",
                param="max_tokens",
            )
        request_id = request_id or f"{uuid.uuid4().hex[:20]}"
        handle = RequestHandle(request_id, loop)
        request = _Request(
            id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            handle=handle,
            text=None,
            arrival_s=time.perf_counter(),
            rng=params.generator(),
            tier=tier,
            preemptible=preemptible and tier != "default",
        )
        with self._cond:
            if not self._accepting or self.fatal is not None:
                raise NotAccepting("the server is shutting down: retry on another instance")
            if tier != "default":
                self._deferred.append(request)
                self._cond.notify()
                return handle
            free = len(self._free.get(self.stepper, ())) if self.stepper is not None else 0
            free += sum(1 for r in self._running if r.preemptible and r.stepper is self.stepper)
            # queued requests a free slot (or a deferred one's) will take at the next step do not count
            # against --max-queue
            if len(self._waiting) >= self.max_queue + free:
                raise QueueFull(
                    f"all {len(self._running)} slots are busy and {len(self._waiting)} requests are queued "
                    f"(--max-queue {self.max_queue}): retry later",
                    self._retry_after_s(),
                )
            self._waiting.append(request)
            self._peak = max(self._peak, len(self._running) + len(self._waiting))
            self._cond.notify()
        return handle

    def _retry_after_s(self) -> int:
        """A guess at when a slot frees: the recent mean request latency, at least 1 s."""
        if not self._recent_e2e_s:
            return 1
        return max(1, round(sum(self._recent_e2e_s) / len(self._recent_e2e_s)))

    @property
    def running(self) -> int:
        return len(self._running)

    def load_stats(self, recent_s: float, *, reset_peak: bool = True) -> dict:
        """What the load and idle policies look at: p90 TTFT and queue wait of the requests of the last
        `recent_s`, the oldest wait now, the most requests at once since the previous resetting call, idle time,
        and the tokens requests in flight may still generate (by variant; queued ones under None). Only the
        control loop resets the peak: a reader such as the dashboard must not hide a burst from it."""
        now = time.perf_counter()
        with self._cond:
            # list() copies a deque atomically; the loop thread appends (and trims) them
            ttft = [v for t, v in list(self._recent_ttft) if t >= now - recent_s]
            waits = [v for t, v in list(self._recent_queue) if t >= now - recent_s]
            oldest = max((now - r.arrival_s for r in self._waiting), default=0.0)
            peak = self._peak
            if reset_peak:
                self._peak = len(self._running) + len(self._waiting)
            pending: dict[str | None, int] = {}
            for r in self._running:
                pending[r.variant] = pending.get(r.variant, 0) + max(
                    0, r.params.max_tokens - len(r.output_ids)
                )
            for r in self._waiting:
                pending[None] = pending.get(None, 0) + r.params.max_tokens
            deferred_running = sum(1 for r in self._running if r.tier != "default")
            deferred_waiting = len(self._deferred)
            busy = bool(self._running or self._waiting or self._deferred)
            idle_s = 0.0 if busy else now - self._last_busy_s
        return {
            "ttft_p90_s": _p90(ttft),
            "queue_p90_s": _p90(waits),
            "oldest_wait_s": oldest,
            "peak_concurrency": peak,
            "running": len(self._running),
            "waiting": len(self._waiting),
            "idle_s": idle_s,
            "pending_tokens": pending,
            "deferred_running": deferred_running,
            "deferred_waiting": deferred_waiting,
        }

    def mark_busy(self) -> None:
        """Activity now (the last request left, or a variant was reloaded): the idle clock that `load_stats`
        reports, and the idle policy reads, starts again."""
        with self._cond:
            self._last_busy_s = time.perf_counter()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def tier_counts(self) -> tuple[int, int]:
        """(default-tier requests running or queued, deferred ones running or queued)."""
        with self._cond:
            deferred = sum(1 for r in self._running if r.tier != "default") + len(self._deferred)
            return len(self._running) + len(self._waiting) + len(self._deferred) - deferred, deferred

    def stop_accepting(self) -> None:
        """Refuse new requests (safe from a signal handler: it never blocks)."""
        self._accepting = False

    def drain(self, timeout_s: float) -> bool:
        """Stop accepting; wait up to `timeout_s` for queued and running requests to finish. True if all did."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._accepting = False
            while (self._waiting or self._running or self._deferred) and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, drain_timeout_s: float = 0.0) -> None:
        """Drain (bounded), then cancel what is left and stop the thread."""
        self.drain(drain_timeout_s)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()

    # ---- the loop --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._waiting or self._running or self._deferred or self._stop or self._tasks):
                        self._cond.wait()
                    if self._stop:
                        break
                    tasks = list(self._tasks)
                    self._tasks.clear()
                for fn, future in tasks:
                    self._run_task(fn, future)
                if (self._waiting or self._deferred) and self.stepper is None and self.reload is not None:
                    self._run_task(self.reload, concurrent.futures.Future())
                if not (self._waiting or self._running or self._deferred):
                    continue
                with self._cond:
                    self._admit()
                self.ledger.start_busy()  # closes the idle window that ends here, if one was open
                self._iteration()
                self._outbox.flush()
                if not self._running:
                    self.ledger.mark_idle()
                    with self._cond:
                        self.mark_busy()
                        self._cond.notify_all()  # a drain may be waiting for this
        except BaseException as exc:  # a broken engine: fail everything, accept nothing more
            log.exception("the serving loop stopped")
            self.fatal = exc
        finally:
            self._abandon_all("the server stopped before the request finished")

    def _admit(self) -> None:
        """(Under the lock.) Forget cancelled queued requests; move waiting ones into free slots: the default
        tier first (taking back slots from preemptible deferred requests if it must), then deferred ones."""
        for queued in (self._waiting, self._deferred):
            if any(r.handle.cancelled for r in queued):
                for r in [r for r in queued if r.handle.cancelled]:
                    queued.remove(r)
                    r.finish_reason = "abort"
                    self._finish(r)
        free = self._free.get(self.stepper) if self.stepper is not None else None
        if free is None:
            return
        if len(self._waiting) > len(free):
            for r in reversed([r for r in self._running if r.preemptible and r.stepper is self.stepper]):
                if len(self._waiting) <= len(free):
                    break
                self._preempt(r)
        while self._waiting and free:
            self._start(self._waiting.popleft(), free)
        while self._deferred and free:
            self._start(self._deferred.popleft(), free)

    def _start(self, r: _Request, free: list[int]) -> None:
        now = time.perf_counter()
        admission = self.stepper.admit(free, r.prompt_ids)
        free.remove(admission.slot)
        r.stepper, r.variant, r.slot = self.stepper, self.variant, admission.slot
        r.fed = r.cached_tokens = admission.cached_tokens
        r.text = TextStream(self._detokenize[self.stepper], r.params.stop)
        r.admitted_s = now
        self._running.append(r)
        if r.tier == "default":
            self.metrics.queue.observe(now - r.arrival_s)
            _remember(self._recent_queue, now, now - r.arrival_s)
        self._count_reuse(r)

    def _count_reuse(self, r: _Request) -> None:
        m = self.metrics
        m.prefix_queries.inc(len(r.prompt_ids))
        if r.cached_tokens:
            m.prefix_hits.inc(r.cached_tokens)
            per_token_j = self.ledger.costs_of(r.variant).prefill_j_per_token
            if per_token_j:
                m.prefix_avoided.inc(r.cached_tokens * per_token_j)

    def _preempt(self, r: _Request) -> None:
        """Give a deferred request's slot to the default tier: it goes back to the head of its queue, to
        start over (nobody has seen its output); the energy it used so far stays its own."""
        self._running.remove(r)
        r.stepper.release(r.slot)
        self._free[r.stepper].append(r.slot)
        r.slot, r.fed, r.cached_tokens, r.pending, r.text, r.admitted_s = None, 0, 0, None, None, None
        r.output_ids, r.first_token_s, r.last_token_s = [], None, None
        r.rng = r.params.generator()
        r.preempted += 1
        self._deferred.appendleft(r)

    def _plan(self, stepper: Stepper) -> tuple[list[SlotFeed], list[StepWork], list[_Request]]:
        budget = stepper.step_tokens
        feeds: list[SlotFeed] = []
        work: list[StepWork] = []
        stepped: list[_Request] = []
        live = [r for r in self._running if r.finish_reason is None and r.stepper is stepper]
        for r in live:  # decode tokens first: running requests never wait for a prompt
            if r.pending is not None:
                feeds.append(SlotFeed(r.slot, [r.pending], True))
                work.append(StepWork(r.id, decode_tokens=1))
                stepped.append(r)
                budget -= 1
        # then prompt chunks, oldest request first; while streams decode, at most prefill_chunk_tokens of them,
        # so one step's prompt work delays each stream's next token by a bounded amount
        if feeds and self.prefill_chunk_tokens is not None:
            budget = min(budget, self.prefill_chunk_tokens)
        for r in live:
            if r.pending is None and r.fed < len(r.prompt_ids) and budget > 0:
                chunk = r.prompt_ids[r.fed : r.fed + budget]
                done = r.fed + len(chunk) == len(r.prompt_ids)
                feeds.append(SlotFeed(r.slot, chunk, done))
                work.append(StepWork(r.id, prefill_tokens=len(chunk)))
                stepped.append(r)
                budget -= len(chunk)
        return feeds, work, stepped

    def _iteration(self) -> None:
        for r in [r for r in self._running if r.handle.cancelled]:
            r.finish_reason = "abort"
        steppers = list(dict.fromkeys(r.stepper for r in self._running if r.finish_reason is None))
        for stepper in steppers:
            self._step(stepper)
        for r in [r for r in self._running if r.finish_reason is not None]:
            self._finish(r)

    def _step(self, stepper: Stepper) -> None:
        feeds, work, stepped = self._plan(stepper)
        produced = 0
        if feeds:
            try:
                rows = stepper.step(feeds)
            except GreenlmError as exc:
                log.error("engine step failed: %s", exc)
                rows = {}
                for r in stepped:
                    r.finish_reason, r.error = "error", str(exc)
            for feed, r in zip(feeds, stepped, strict=True):
                if feed.token_ids and r.pending is None:
                    r.fed += len(feed.token_ids)
                r.pending = None
                if r.finish_reason is None and feed.slot in rows:
                    produced += 1
                    self._accept_token(r, sample(rows[feed.slot], r.params, r.rng))
            shares = self.ledger.close_step(work, produced, key=stepped[0].variant)
            by_id = {s.request_id: s for s in shares}
            for r in stepped:
                share = by_id[r.id]
                r.prefill_j += share.prefill_j
                r.decode_j += share.decode_j
                r.carbon_g += self.ledger.carbon_g(share.energy_j)

    def _accept_token(self, r: _Request, token: int) -> None:
        now = time.perf_counter()
        if r.first_token_s is None:
            r.first_token_s = now
            if r.tier == "default":
                self.metrics.ttft.observe(now - r.arrival_s)
                _remember(self._recent_ttft, now, now - r.arrival_s)
        else:
            self.metrics.itl.observe(now - r.last_token_s)
        r.last_token_s = now
        r.output_ids.append(token)
        if not r.params.ignore_eos and r.stepper.is_end_of_generation(token):
            r.finish_reason = "stop"  # the end-of-text token counts as generated but adds no text
            return
        delta = r.text.add(token)
        if r.text.stopped:
            r.finish_reason = "stop"
        elif len(r.output_ids) >= r.params.max_tokens:
            r.finish_reason = "length"
        else:
            r.pending = token
        if delta:
            self._outbox.put(r.handle, TokenEvent(delta, (token,)))

    def _finish(self, r: _Request) -> None:
        """Report the result, free the slot (if it had one), count it."""
        tail = r.text.finish() if r.text is not None and r.finish_reason in ("stop", "length") else ""
        if tail:
            self._outbox.put(r.handle, TokenEvent(tail, ()))
        if r.slot is not None:
            self._running.remove(r)  # first: a release that fails must not leave it running
            r.stepper.release(r.slot, keep=r.finish_reason != "error")  # an engine error: cells unknown
            self._free[r.stepper].append(r.slot)
            r.slot = None
        now = time.perf_counter()
        snapshot_meter = self.ledger.meter
        result = RequestResult(
            request_id=r.id,
            text=r.text.text if r.text is not None else "",
            token_ids=tuple(r.output_ids),
            finish_reason=r.finish_reason or "abort",
            prompt_tokens=len(r.prompt_ids),
            completion_tokens=len(r.output_ids),
            prefill_j=r.prefill_j,
            decode_j=r.decode_j,
            carbon_g=r.carbon_g,
            meter=snapshot_meter.name,
            energy_source=snapshot_meter.energy_source,
            queue_s=(r.admitted_s or now) - r.arrival_s,
            ttft_s=None if r.first_token_s is None else r.first_token_s - r.arrival_s,
            e2e_s=now - r.arrival_s,
            error=r.error,
            variant=r.variant,
            cached_tokens=r.cached_tokens,
            tier=r.tier,
            preempted=r.preempted,
        )
        r.handle.result = result
        self._outbox.put(r.handle, FinishEvent(result))
        self._outbox.put(r.handle, _DONE)
        m = self.metrics
        m.finished(result.finish_reason)
        m.prompt_tokens.inc(r.fed)  # reused and computed alike, as vLLM counts them
        m.generation_tokens.inc(len(r.output_ids))
        if result.finish_reason in ("stop", "length"):
            m.e2e.observe(result.e2e_s)
            m.energy.observe(result.energy_j)
            self._recent_e2e_s.append(result.e2e_s)
        if self.on_finish is not None:
            try:
                self.on_finish(result)
            except Exception:  # an observer's bug must not take the serving loop down
                log.exception("on_finish failed")

    def _abandon_all(self, why: str) -> None:
        with self._cond:
            self._accepting = False
            for _fn, future in self._tasks:
                future.set_exception(NotAccepting(f"the server stopped: {why}"))
            self._tasks.clear()
            left = list(self._running) + list(self._waiting) + list(self._deferred)
            self._waiting.clear()
            self._deferred.clear()
            for r in left:
                r.finish_reason, r.error = "abort", why
                try:
                    self._finish(r)
                except Exception:  # the engine may be what broke; the caller must still hear back
                    self._outbox.put(r.handle, _DONE)
            self._outbox.flush()
            self._cond.notify_all()


def _remember(records: deque, now: float, value: float) -> None:
    records.append((now, value))
    while records[0][0] < now - RECENT_KEEP_S:
        records.popleft()
