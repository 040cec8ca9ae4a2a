"""The serving library object: a loaded model, its scheduler, meter, energy ledger and metrics.

Everything the HTTP app does goes through here, so tests and other front ends (a Ray Serve replica) can
drive it without HTTP:

    server = Server(ServeConfig(model="smollm2-135m"))
    handle = server.submit(server.prompt_from_text("Hello"), server.sampling(max_tokens=16, temperature=0))
    result = handle.wait()      # result.text, result.usage()["energy_j"]
    server.close()

An adaptive server (`ServeConfig(policy=...)` or `ladder_from_search=...`) holds a ladder of variants of one
model; the control loop's decisions switch the variant new requests start on, the CPU cores and threads it
runs on, and unload it when idle (the next request reloads it). Loads happen in the scheduler's thread between
steps, in windows of their own. A plain server is a ladder of one variant with no policy.

`Server` composes the parts, each a module of one job: `preflight` (the checks, the ladder, the grid
signal), `pool.VariantPool` (loading and switching variants, the cores), `intake.RequestIntake` (request
checks, tokens, sampling settings), `scheduler.Scheduler` (continuous batching), `ledger.EnergyLedger`,
`metrics.ServeMetrics` and `controller.Controller` (the control loop, which sees the server as a
`view.ControlTarget`), and `greenlm.defer.Deferral` (Batch API, flex requests, the carbon-aware planner),
which runs its work through `deferred.ServeRunner`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from greenlm.defer.grid import GridSetup, open_kept_grid
from greenlm.defer.manager import Deferral
from greenlm.defer.state import DeferState
from greenlm.energy import Meter
from greenlm.engines.base import Engine
from greenlm.engines.compute_thread import run_in_own_thread
from greenlm.engines.stepper import Stepper
from greenlm.errors import GreenlmError
from greenlm.grid.reading import GridReading
from greenlm.io import noop
from greenlm.paths import default_db_path
from greenlm.serve.config import ServeConfig
from greenlm.serve.controller import APPLY_TIMEOUT_S, Controller
from greenlm.serve.decisions import Decision
from greenlm.serve.deferred import ServeRunner
from greenlm.serve.intake import RequestIntake, ServedModel
from greenlm.serve.ledger import EnergyLedger
from greenlm.serve.metrics import ServeMetrics
from greenlm.serve.policies import State
from greenlm.serve.pool import MAX_LOADED, LoadSettings, VariantPool
from greenlm.serve.preflight import Preflight, preflight
from greenlm.serve.sampling import SamplingParams
from greenlm.serve.scheduler import RequestHandle, Scheduler

log = logging.getLogger(__name__)


class Server:
    def __init__(
        self,
        config: ServeConfig,
        *,
        announce: Callable[[str], None] | None = None,
        checked: Preflight | None = None,
    ):
        """Load and start serving `config.model` (or the start variant of a ladder). `checked`:
        `preflight(config)`'s result when the caller has it already (the CLI checks before binding its
        port), so the checks do not run twice."""
        self.announce = announce
        plan = checked or preflight(config, announce or noop)
        self.config = config = plan.config
        self.intensity, self.pue, self.spec, self.saved = plan.intensity, plan.pue, plan.spec, plan.saved
        self.ladder, self.policy, self.specs = plan.ladder, plan.policy, plan.specs
        self.adaptive = plan.policy is not None
        self.model_id = (
            config.served_model_name or (plan.model_name if self.adaptive else None) or self.spec.name
        )
        self.meter: Meter = config.energy.open_meter()
        # threads follow the cores when a policy moves them (load or low-load); else each variant runs on the
        # threads it was measured with (a flag's, or the engine's default)
        moves_cores = self.adaptive and (
            plan.policy.load is not None or plan.policy.idle.low_load_after_s is not None
        )
        self.pool = VariantPool(
            self.ladder, self.specs, LoadSettings.of(config), self.meter, moves_cores=moves_cores
        )
        self.cores = self.pool.cores
        self.defer_state = DeferState(config.state_dir)
        self.grid_setup: GridSetup | None = None
        self.grid = (
            None  # the grid signal, opened once the model is loaded (a replay starts when it is ready)
        )
        self.scheduler: Scheduler | None = None
        self.controller: Controller | None = None
        self.deferral: Deferral | None = None
        self._final_energy: dict | None = None
        self.replica: str | None = None  # a Ray Serve replica's id
        try:
            self._start(plan, announce or noop)
        except BaseException:
            self._release()
            raise
        self.started_s = time.time()

    def _start(self, plan: Preflight, announce: Callable[[str], None]) -> None:
        """Load the start variant, then open the energy account and start the scheduler and control loop."""
        # in a thread that exits: the scheduler's thread must be the only one that ever computes (compute_thread)
        first = run_in_own_thread(self.pool.load_first, plan.start)
        self.engine_name = first.engine.name
        self.load_s, self.warmup = first.load_s, first.warmup
        stepper = first.stepper
        self.context_tokens, self.vocab_size = stepper.context_tokens, stepper.vocab_size
        self.chat_template, self.special_tokens = stepper.chat_template, stepper.special_tokens
        announce(self.meter.selection_note)
        self.grid_setup = open_kept_grid(plan.grid, self.intensity, self.defer_state)
        self.grid = self.grid_setup.signal
        # the server's energy account starts here: everything after this is a request's, idle or a load's
        self.ledger = EnergyLedger(
            self.meter,
            intensity_g_per_kwh=self.grid.now().intensity_g_per_kwh,
            pue=self.pue,
            costs=first.costs,
        )
        self.metrics = ServeMetrics(self.model_id, self.ledger, adaptive=self.adaptive)
        # decisions go to the results store (the user's default one unless --db says otherwise)
        store_path = (self.config.db or default_db_path()) if self.adaptive else None
        self.controller = controller = Controller(
            self, plan.policy, self.ladder, self.grid, self.metrics,
            identity=self.spec.identity, announce=self.announce, store_path=store_path,
        )  # fmt: skip
        self.scheduler = Scheduler(
            stepper,
            self.ledger,
            self.metrics,
            detokenize=stepper.detokenize,
            max_queue=self.config.max_queue,
            variant=plan.start.name,
            context_tokens=self.context_tokens,
            prefill_chunk_tokens=self.config.prefill_chunk_tokens,
            reload=self.pool.reload_for_requests,
            on_finish=controller.on_finish,
        )
        self.pool.attach(
            self.scheduler,
            self.ledger,
            self.metrics,
            on_reload=lambda d, cost: controller.record(d, applied=cost),
        )
        served = ServedModel(
            self.model_id, self.context_tokens, self.vocab_size, self.chat_template, self.special_tokens,
            self.config.max_tokens_default,
        )  # fmt: skip
        self.intake = RequestIntake(served, self.pool.tokenize)
        controller.start()
        self.deferral = Deferral(
            ServeRunner(self), self.grid_setup, self.defer_state, pue=self.pue, flex_max_wait_s=self.config.flex_max_wait_s,
            headroom_slots=1 if self.config.max_batch >= 4 else 0, registry=self.metrics.registry,
            announce=self.announce, store_path=self.config.db or default_db_path(),
            max_file_bytes=self.config.batch_max_file_bytes, follow_grid=self.follow_grid,
        )  # fmt: skip
        self.deferral.start()

    # ---- what the control loop and the dashboard see (view.ControlTarget) --------------------------------
    def state(self) -> State:
        sched = self.scheduler
        return State(variant=sched.variant, cores=self.cores.cores, loaded=sched.stepper is not None)

    @property
    def max_cores(self) -> int:
        return self.cores.max_cores

    def load_stats(self, recent_s: float, *, reset_peak: bool = True) -> dict:
        return self.scheduler.load_stats(recent_s, reset_peak=reset_peak)

    def ledger_snapshot(self) -> dict:
        return self.ledger.snapshot()

    def follow_grid(self, reading: GridReading) -> None:
        self.ledger.set_intensity(reading.intensity_g_per_kwh)

    def apply(self, decision: Decision) -> dict:
        """Carry out a decision (from the control loop's thread) in the scheduler's thread, between steps;
        what it cost, or why it failed."""
        try:
            return self.scheduler.call(lambda: self.pool.apply(decision), APPLY_TIMEOUT_S) or {}
        except GreenlmError as exc:
            log.error("policy decision %s -> %s failed: %s", decision.from_, decision.to, exc)
            return {"error": str(exc)}

    # ---- requests (intake.RequestIntake) -----------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        self.intake.check_model(model)

    def prompt_from_messages(self, messages: list[dict]) -> list[int]:
        return self.intake.prompt_from_messages(messages)

    def prompt_from_text(self, prompt: str) -> list[int]:
        return self.intake.prompt_from_text(prompt)

    def prompt_from_ids(self, ids: list[int]) -> list[int]:
        return self.intake.prompt_from_ids(ids)

    def sampling(self, **fields) -> SamplingParams:
        """Request fields (prompt_tokens, max_tokens, temperature, top_p, seed, stop, ignore_eos) to sampling
        settings: see `RequestIntake.sampling`."""
        return self.intake.sampling(**fields)

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        tier: str = "default",
        preemptible: bool = False,
    ) -> RequestHandle:
        """Queue a request; events arrive on the handle (iterate it, or `async for` when `loop` is given).
        `tier` "batch" or "flex": it takes only slots the default tier leaves free (see `Scheduler.submit`)."""
        return self._route().submit(prompt_ids, params, loop=loop, tier=tier, preemptible=preemptible)

    def _route(self) -> Scheduler:
        """The scheduler a request runs on. With a ladder, it starts on the variant active when it is admitted
        (the control loop's `apply` moves that), and finishes there."""
        return self.scheduler

    def stop_accepting(self) -> None:
        """New requests get 503 from now on; the ones already in continue (a drain begins)."""
        if self.scheduler is not None:
            self.scheduler.stop_accepting()

    # ---- state -----------------------------------------------------------------------------------------
    @property
    def reloads(self) -> list[dict]:
        """What each reload after an idle unload cost (load seconds, joules)."""
        return self.pool.reloads

    @property
    def stepper(self) -> Stepper | None:
        """The active variant's stepper (None while unloaded)."""
        return self.scheduler.stepper if self.scheduler is not None else None

    @property
    def engine(self) -> Engine | None:
        stepper = self.stepper
        return stepper.engine if stepper is not None else None

    def healthy(self) -> bool:
        return self.scheduler is not None and self.scheduler.fatal is None

    def health(self) -> dict:
        """What /health answers (a status other than ok: 503 with the reason)."""
        if not self.healthy():
            return {"status": "down", "reason": "the serving loop has stopped"}
        return {"status": "ok", "model": self.model_id}

    def energy(self) -> dict:
        """The energy account so far (see EnergyLedger.snapshot), with the grid it is converted at."""
        if self._final_energy is not None:
            return dict(self._final_energy)
        snap = self.ledger.snapshot()
        reading = self.controller.grid_reading if self.controller else self.grid.now()
        follows_grid = self.adaptive or self.grid_setup.settings.active
        snap["intensity_source"] = reading.source if follows_grid else self.intensity.source
        snap["pue"] = self.pue
        snap["meter_note"] = self.meter.selection_note
        if follows_grid:
            snap["grid_time"] = reading.trace_time
        if self.adaptive:
            snap["reloads"] = list(self.reloads)
        return snap

    def variants(self) -> list[dict]:
        """The ladder with what is loaded and active, and each variant's tokens served so far."""
        budget = self.policy.quality.max_kld if self.policy else None
        active = self.scheduler.variant if self.scheduler else None
        served = dict(self.controller.variant_tokens) if self.controller else {}
        return [
            dict(
                v,
                loaded=v["name"] in self.pool.loaded,
                active=v["name"] == active,
                tokens_served=served.get(v["name"], 0),
            )
            for v in self.ladder.to_list(budget)
        ]

    def describe(self) -> dict:
        """The startup record: what runs, where its figures come from."""
        engine = self.engine
        record = {
            "model": self.model_id,
            "model_identity": self.spec.identity(),
            "engine": engine.name if engine else self.engine_name,
            "threads": engine.threads if engine else None,
            "device": engine.device if engine else None,
            "run_settings": self.saved.to_dict() if self.saved else None,
            "max_batch": self.config.max_batch,
            "max_queue": self.config.max_queue,
            "step_tokens": self.config.step_tokens,
            "prefix_cache": bool(self.stepper and self.stepper.reuses_prefixes),
            "prefill_chunk_tokens": self.config.prefill_chunk_tokens,
            "context_tokens": self.context_tokens,
            "meter": self.meter.name,
            "energy_source": self.meter.energy_source,
            "meter_note": self.meter.selection_note,
            "intensity_g_per_kwh": self.ledger.intensity_g_per_kwh,
            "intensity_source": self.grid.now().source
            if self.adaptive or self.grid_setup.settings.active
            else self.intensity.source,
            "pue": self.pue,
            "load_s": round(self.load_s, 3),
            "warmup": self.warmup,
            "stepper": self.stepper.describe() if self.stepper else None,
            "auth": self.config.api_key is not None,
            "defer": {
                "grid": self.grid_setup.describe(),
                "flex_max_wait_s": self.config.flex_max_wait_s,
                "state_dir": str(self.defer_state.root),
            },
        }
        if self.adaptive:
            record.update(
                variant=self.scheduler.variant,
                ladder=self.variants(),
                policy=self.policy.to_dict(),
                grid=self.grid.describe(),
                cores=self.cores.cores,
                max_cores=self.cores.max_cores,
                max_loaded=MAX_LOADED,
            )
        return record

    def close(self, drain_timeout_s: float = 0.0) -> None:
        """Stop deciding, drain in-flight requests (bounded), stop the scheduler, release the models, the
        CPU affinity and the meter. Deferred requests in flight stop unanswered (they run again after a
        restart); what finished is kept."""
        if self.deferral is not None:
            self.deferral.close()
        if self.controller is not None:
            self.controller.close()
        if self.scheduler is not None:
            self.scheduler.close(drain_timeout_s)
            if self._final_energy is None:
                self._final_energy = (
                    self.energy()
                )  # the account as it stood at the end, before the meter goes
        self._release()

    def _release(self) -> None:
        self.pool.close()
        self.meter.close()
        self.defer_state.close()
