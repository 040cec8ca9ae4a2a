"""The server's control loop: every `interval_s` it reads the grid, samples what the dashboard shows, and (on
an adaptive server) asks the policies what to change and has its target apply it. It sees its target through
a narrow view (`view.ControlTarget`: load stats, the energy ledger's totals, the active variant), not the server.

Each decision is logged with its reason, counted in `greenlm:policy_decisions_total{from,to,reason}`, kept
for /dashboard (the last `KEEP_DECISIONS`), and written to the results store as a row of kind
"policy_decision" (by this thread, which owns its store connection).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from greenlm.errors import GreenlmError
from greenlm.grid.reading import GridSignal
from greenlm.serve.decisions import Decision
from greenlm.serve.ladder import Ladder
from greenlm.serve.metrics import ServeMetrics
from greenlm.serve.policies import Memory, Observed, decide
from greenlm.serve.policy_file import PolicyConfig
from greenlm.serve.view import ControlTarget
from greenlm.store import Store

log = logging.getLogger(__name__)

KEEP_SAMPLES = 3600  # one an interval: an hour at 1 s
KEEP_DECISIONS = 2000
APPLY_TIMEOUT_S = 600.0  # a load of a big variant on a slow disk; the scheduler thread does it


class QualityWindow:
    """The last `window_tokens` generated tokens and the KLD of the variant that generated each."""

    def __init__(self, window_tokens: int):
        self.window_tokens = window_tokens
        self._parts: deque[tuple[int, float]] = deque()  # (tokens, kld)
        self.tokens = 0
        self.kld_sum = 0.0
        self.life_tokens = 0
        self.life_kld_sum = 0.0
        self._lock = threading.Lock()

    def add(self, tokens: int, kld: float) -> None:
        if tokens <= 0:
            return
        with self._lock:
            self._parts.append((tokens, kld))
            self.tokens += tokens
            self.kld_sum += tokens * kld
            self.life_tokens += tokens
            self.life_kld_sum += tokens * kld
            while self.tokens - self._parts[0][0] >= self.window_tokens:
                old, k = self._parts.popleft()
                self.tokens -= old
                self.kld_sum -= old * k

    def read(self) -> tuple[int, float]:
        with self._lock:
            return self.tokens, self.kld_sum

    def life_mean(self) -> float | None:
        with self._lock:
            return self.life_kld_sum / self.life_tokens if self.life_tokens else None


class Controller:
    def __init__(
        self,
        target: ControlTarget,
        policy: PolicyConfig | None,
        ladder: Ladder,
        grid: GridSignal,
        metrics: ServeMetrics,
        *,
        identity: Callable[[], dict] | None = None,
        announce: Callable[[str], None] | None = None,
        store_path=None,
    ):
        """`policy` None: a plain server (samples and grid only, no decisions). Each decision is counted in
        `metrics`, said to `announce` (besides the log) and, with `store_path`, stored with the served model's
        `identity()`."""
        self.target = target
        self.policy = policy
        self.metrics = metrics
        self.identity = identity
        self.announce = announce
        self.ladder = ladder
        self.grid = grid
        self.interval_s = policy.interval_s if policy else 1.0
        self.memory = Memory()
        window = policy.quality.window_tokens if policy else 50_000
        self.quality = QualityWindow(window)
        self.samples: deque[dict] = deque(maxlen=KEEP_SAMPLES)
        self.decisions: deque[dict] = deque(maxlen=KEEP_DECISIONS)
        self.decision_count = 0
        self.started_s = time.monotonic()
        self.started_unix = time.time()
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rows: queue.SimpleQueue = queue.SimpleQueue()
        self._store_path = store_path
        self._store = None
        self._prev: dict | None = None
        self._finished = [0, 0.0]  # requests finished, their energy (for J/request)
        self.variant_tokens: dict[str, int] = {}
        self.grid_reading = grid.now()
        self._thread: threading.Thread | None = None

    # ---- hooks from the server ---------------------------------------------------------------------------
    def on_finish(self, result) -> None:
        """Every finished request (the scheduler thread): its tokens in the quality window, its energy."""
        if result.finish_reason not in ("stop", "length"):
            return
        with self._lock:
            self._finished[0] += 1
            self._finished[1] += result.energy_j
            if result.variant:
                self.variant_tokens[result.variant] = (
                    self.variant_tokens.get(result.variant, 0) + result.completion_tokens
                )
        if result.variant is not None:
            kld = self._kld(result.variant)
            if kld is not None:
                self.quality.add(result.completion_tokens, kld)

    def _kld(self, name: str) -> float | None:
        try:
            return self.ladder.get(name).kld
        except GreenlmError:  # not a variant of the ladder: no KLD to count
            return None

    # ---- the loop ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.grid.start()
        self.started_s = time.monotonic()
        self.started_unix = time.time()
        self._thread = threading.Thread(target=self._run, name="greenlm-controller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # a policy bug must not stop serving: say it, try again next tick
                log.exception("the control loop failed a tick")
            self._flush_rows()
        self._flush_rows()
        if self._store is not None:
            self._store.close()

    def observe(self, now_s: float) -> Observed:
        target = self.target
        recent = self.policy.load.recent_s if self.policy and self.policy.load else 10.0
        stats = target.load_stats(recent)
        tokens, kld_sum = self.quality.read()
        pending_tokens, pending_kld = 0, 0.0
        active = target.state()
        for name, count in stats["pending_tokens"].items():
            kld = self._kld(name) if name is not None else None
            if kld is not None:
                pending_tokens += count
                pending_kld += count * kld
        return Observed(
            now_s=now_s,
            state=active,
            max_cores=target.max_cores,
            running=stats["running"],
            waiting=stats["waiting"],
            peak_concurrency=stats["peak_concurrency"],
            ttft_p90_s=stats["ttft_p90_s"],
            queue_p90_s=stats["queue_p90_s"],
            oldest_wait_s=stats["oldest_wait_s"],
            idle_s=stats["idle_s"],
            intensity_g_per_kwh=self.grid_reading.intensity_g_per_kwh,
            served_tokens=tokens,
            served_kld_sum=kld_sum,
            pending_tokens=pending_tokens,
            pending_kld_sum=pending_kld,
            waiting_tokens=stats["pending_tokens"].get(None, 0),
            active_kld=self._kld(active.variant),
        )

    def tick(self) -> None:
        target = self.target
        self.grid_reading = self.grid.now()
        target.follow_grid(self.grid_reading)
        self.metrics.intensity.labels(self.metrics.model_name).set(self.grid_reading.intensity_g_per_kwh)
        now = time.monotonic()
        obs = self.observe(now)
        if self.policy is not None:
            decisions, self.memory = decide(obs, self.policy, self.ladder, self.memory)
            for decision in decisions:
                applied = target.apply(decision)
                self.record(decision, obs=obs, applied=applied)
        self._sample(now, obs)

    # ---- what it keeps ----------------------------------------------------------------------------------
    def record(self, decision: Decision, *, obs: Observed | None = None, applied: dict | None = None) -> dict:
        """Log, count, keep and store one decision (any thread)."""
        mean = obs.mean_kld() if obs is not None else None
        entry = {
            **decision.to_dict(),
            "t_s": round(time.monotonic() - self.started_s, 3),
            "time_unix": time.time(),
            "intensity_g_per_kwh": self.grid_reading.intensity_g_per_kwh,
            "grid_time": self.grid_reading.trace_time,
            "mean_kld": mean,
            **(applied or {}),
        }
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self.decisions.append(entry)
            self.decision_count += 1
        self.metrics.decisions.labels(
            self.metrics.model_name, decision.from_, decision.to, decision.reason
        ).inc()
        extra = ""
        if applied and applied.get("load_s") is not None:
            extra = f" (loaded in {applied['load_s']:.2f} s, {applied.get('energy_j', 0):.2f} J)"
        log.warning(
            "policy: %s %s -> %s [%s] %s%s",
            decision.kind,
            decision.from_,
            decision.to,
            decision.reason,
            decision.detail,
            extra,
        )
        if self.announce is not None:
            self.announce(
                f"policy: {decision.kind} {decision.from_} -> {decision.to} [{decision.reason}] {decision.detail}{extra}"
            )
        if self._store_path is not None:
            identity = self.identity() if self.identity is not None else None
            self._rows.put({"model": self.target.model_id, "model_identity": identity, **entry})
        return entry

    def _flush_rows(self) -> None:
        if self._store_path is None:
            return
        while True:
            try:
                row = self._rows.get_nowait()
            except queue.Empty:
                return
            try:
                if self._store is None:
                    self._store = Store(self._store_path)
                self._store.add("policy_decision", row)
            except Exception:  # the store is a record, not a reason to stop serving
                log.exception("cannot store a policy decision")

    def _sample(self, now: float, obs: Observed) -> None:
        snap = self.target.ledger_snapshot()
        with self._lock:
            finished, request_j = self._finished
        point = {
            "t_s": round(now - self.started_s, 3),
            "time_unix": time.time(),
            "energy_j": snap["meter_total_j"],
            "carbon_g": snap["carbon_g"],
            "tokens": snap["output_tokens"],
            "requests": finished,
        }
        prev = self._prev
        self._prev = {**point, "request_j": request_j}
        if prev is None:
            return
        dt = max(1e-9, now - self.started_s - prev["t_s"])
        d_j = point["energy_j"] - prev["energy_j"]
        d_req = finished - prev["requests"]
        state = obs.state
        sample = {
            **point,
            "power_w": d_j / dt,
            "tokens_per_j": (point["tokens"] - prev["tokens"]) / d_j if d_j > 0 else 0.0,
            "j_per_request": (request_j - prev["request_j"]) / d_req if d_req > 0 else None,
            "carbon_g_per_h": (point["carbon_g"] - prev["carbon_g"]) / dt * 3600,
            "running": obs.running,
            "waiting": obs.waiting,
            "variant": state.variant,
            "loaded": state.loaded,
            "cores": state.cores,
            "intensity_g_per_kwh": self.grid_reading.intensity_g_per_kwh,
            "grid_time": self.grid_reading.trace_time,
            "mean_kld": obs.mean_kld(),
        }
        with self._lock:
            self._seq += 1
            sample["seq"] = self._seq
            self.samples.append(sample)

    def view(self, since: int = 0) -> dict:
        """Samples and decisions after sequence number `since` (for the dashboard's polling)."""
        with self._lock:
            samples = [s for s in self.samples if s["seq"] > since]
            decisions = [d for d in self.decisions if d["seq"] > since]
            seq = self._seq
        return {"seq": seq, "samples": samples, "decisions": decisions}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.grid.close()
