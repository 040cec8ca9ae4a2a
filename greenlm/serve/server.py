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
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from greenlm.energy import Meter, get_meter
from greenlm.energy.carbon import GridIntensity, resolve_intensity, validate_pue
from greenlm.engines.available import check_engine_ready
from greenlm.engines.base import Engine
from greenlm.engines.chat import render_chat
from greenlm.engines.saved import apply_saved_run
from greenlm.engines.stepper import Stepper
from greenlm.errors import GreenlmError
from greenlm.io import noop
from greenlm.models.run import RunSettings, saved_run_settings
from greenlm.models.spec import ModelSpec, resolve_model
from greenlm.paths import default_db_path
from greenlm.serve.config import SERVE_ENGINE, ServeConfig
from greenlm.serve.controller import APPLY_TIMEOUT_S, Controller
from greenlm.serve.errors import EngineFailed, ModelNotFound, RequestError
from greenlm.serve.grid import CsvIntensity, ElectricityMaps, FixedIntensity
from greenlm.serve.ladder import Ladder, Variant, ladder_from_search
from greenlm.serve.ledger import EnergyLedger
from greenlm.serve.metrics import ServeMetrics
from greenlm.serve.policies import UNLOADED, Decision, State, start_variant
from greenlm.serve.policy_file import GridConfig, PolicyConfig, QualityPolicy, load_policy
from greenlm.serve.pool import MAX_LOADED, CoreAllotment, Loaded, load_variant
from greenlm.serve.sampling import SamplingParams
from greenlm.serve.scheduler import RequestHandle, Scheduler
from greenlm.store import Store

log = logging.getLogger(__name__)

RELOAD_WAIT_S = 600.0


@dataclass(frozen=True)
class Preflight:
    """What the cheap checks settled: everything but loading the model."""

    config: ServeConfig  # engine, threads and device filled in from the saved run settings, if any
    intensity: GridIntensity
    pue: float
    spec: ModelSpec  # the start variant's
    saved: RunSettings | None
    ladder: Ladder
    start: Variant
    specs: dict[str, ModelSpec]  # each variant's resolved model
    policy: PolicyConfig | None = None  # None: a plain server (one model, nothing decided)
    model_name: str | None = None  # what the ladder is a ladder of (a search's model)


def _meter(config: ServeConfig) -> Meter:
    return get_meter(
        config.meter, watts_per_core=config.watts_per_core, idle_watts_per_core=config.idle_watts_per_core
    )


def make_grid(grid: GridConfig | None, intensity: GridIntensity):
    """The grid signal: a replayed CSV, a live provider, or the fixed figure the flags resolved."""
    if grid is None:
        return FixedIntensity(intensity)
    if grid.csv is not None:
        return CsvIntensity(grid.csv, speed=grid.speed, loop=grid.loop)
    kwargs = {"url": grid.url} if grid.url else {}
    return ElectricityMaps(
        grid.zone, fallback=intensity, token_env=grid.token_env, poll_s=grid.poll_s, **kwargs
    )


def _policy(config: ServeConfig) -> PolicyConfig:
    policy = load_policy(config.policy) if config.policy else PolicyConfig(source="flags")
    if config.ladder_from_search is not None:
        policy = dataclasses.replace(policy, ladder=(), ladder_from_search=config.ladder_from_search.strip())
    if config.max_kld is not None:
        policy = dataclasses.replace(
            policy, quality=dataclasses.replace(policy.quality, max_kld=float(config.max_kld))
        )
    if policy.quality.max_kld is None and (policy.ladder_from_search or len(policy.ladder) > 1):
        policy = dataclasses.replace(
            policy,
            quality=QualityPolicy(
                max_kld=0.05, window_tokens=policy.quality.window_tokens, margin=policy.quality.margin
            ),
        )
    return policy


def _ladder(policy: PolicyConfig, config: ServeConfig) -> Ladder:
    if policy.ladder_from_search:
        with Store(config.db) as store:
            return ladder_from_search(store, policy.ladder_from_search)
    if not policy.ladder:  # no ladder in the file: the model of the flags is the one variant
        return Ladder(
            [
                Variant(
                    name="model",
                    model=config.model,
                    engine=config.engine or SERVE_ENGINE,
                    threads=config.threads,
                    source="--model",
                )
            ]
        )
    where = f"given in policy {policy.source}"
    return Ladder(
        [
            Variant(
                name=e.name, model=e.model, engine=e.engine, threads=e.threads, kld=e.kld,
                decode_j_per_token=e.decode_j_per_token, decode_tokens_per_s=e.decode_tokens_per_s,
                source=where if e.kld is not None or e.decode_j_per_token is not None else "no figures given",
            )
            for e in policy.ladder
        ]
    )  # fmt: skip


def preflight(config: ServeConfig, announce: Callable[[str], None] = noop) -> Preflight:
    """Every check that takes a moment (grid, PUE, policy file, ladder, model paths, saved run settings, meter,
    engine installed, files readable), so a mistake fails before the port is bound or a model loads. A model
    `optimize --out` saved runs on the engine, threads and device it was chosen with unless a flag says
    otherwise; a model saved without them runs on llama.cpp."""
    intensity = resolve_intensity(config.country, config.region, config.carbon_intensity)
    pue = validate_pue(config.pue)
    if config.policy is None and config.ladder_from_search is None:
        spec = resolve_model(config.model)
        saved = saved_run_settings(spec)
        if config.engine is None and saved is None:
            config = dataclasses.replace(config, engine=SERVE_ENGINE)  # serve's default: it batches best
        config = apply_saved_run(config, spec, announce)  # flags win; threads only for the chosen engine
        if saved and saved.speculative and config.engine == saved.engine:
            announce(
                f"note: {spec.name} was chosen with {saved.speculative} speculative decoding; the server batches "
                "plain greedy decoding instead (the same output, at the speed and energy of batching)"
            )
        _meter(config).close()  # a meter this machine lacks fails here
        check_engine_ready(config.engine, spec)  # the slowest check (reads a GGUF's tensor headers): last
        name = config.served_model_name or spec.name
        variant = Variant(
            name=name,
            model=config.model,
            engine=config.engine,
            threads=config.threads,
            source="the model served as given (no ladder)",
        )
        return Preflight(config, intensity, pue, spec, saved, Ladder([variant]), variant, {name: spec})
    policy = _policy(config)
    ladder = _ladder(policy, config)
    start = start_variant(policy, ladder)
    grid = make_grid(policy.grid, intensity)  # reads and checks a CSV, or the provider's token
    grid.close()
    _meter(config).close()
    specs: dict[str, ModelSpec] = {}
    for v in ladder:
        try:
            specs[v.name] = resolve_model(v.model)
            check_engine_ready(v.engine, specs[v.name])
        except GreenlmError as exc:
            raise GreenlmError(f"ladder variant '{v.name}': {exc}") from None
    spec = specs[start.name]
    return Preflight(config, intensity, pue, spec, None, ladder, start, specs, policy, ladder.model_name)


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
        announce = announce or noop
        plan = checked or preflight(config, announce)
        self.config = config = plan.config
        self.intensity, self.pue, self.spec, self.saved = plan.intensity, plan.pue, plan.spec, plan.saved
        self.ladder, self.policy, self.specs = plan.ladder, plan.policy, plan.specs
        self.adaptive = plan.policy is not None
        # threads follow the cores when a policy moves them (load or low-load); else each variant runs on the
        # threads it was measured with (a flag's, or the engine's default)
        self.moves_cores = self.adaptive and (
            plan.policy.load is not None or plan.policy.idle.low_load_after_s is not None
        )
        self.model_id = (
            config.served_model_name or (plan.model_name if self.adaptive else None) or self.spec.name
        )
        self.meter: Meter = _meter(config)
        self.cores = CoreAllotment()
        self.grid = make_grid(plan.policy.grid if plan.policy else None, self.intensity)
        self._loaded: dict[str, Loaded] = {}
        self._tokenizer_lock = threading.RLock()  # no variant closes while a request is tokenized on it
        self.scheduler: Scheduler | None = None
        self.controller: Controller | None = None
        self._final_energy: dict | None = None
        self.reloads: list[dict] = []
        self.replica: str | None = None  # a Ray Serve replica's id
        try:
            first = self._load(plan.start)
            self.engine_name = first.engine.name
            self.load_s, self.warmup = first.load_s, first.warmup
            stepper = first.stepper
            self.context_tokens, self.vocab_size = stepper.context_tokens, stepper.vocab_size
            self.chat_template, self.special_tokens = stepper.chat_template, stepper.special_tokens
            announce(self.meter.selection_note)
            # the server's energy account starts here: everything after this is a request's, idle or a load's
            self.ledger = EnergyLedger(
                self.meter,
                intensity_g_per_kwh=self.grid.now().intensity_g_per_kwh,
                pue=self.pue,
                costs=first.costs,
            )
            self.ledger.set_costs(plan.start.name, first.costs)
            self.metrics = ServeMetrics(self.model_id, self.ledger, adaptive=self.adaptive)
            self.metrics.cores.labels(self.model_id).set(self.cores.cores)
            # decisions go to the results store (the user's default one unless --db says otherwise)
            store_path = (config.db or default_db_path()) if self.adaptive else None
            self.controller = Controller(self, plan.policy, self.ladder, self.grid, store_path=store_path)
            self.scheduler = Scheduler(
                stepper,
                self.ledger,
                self.metrics,
                detokenize=stepper.detokenize,
                max_queue=config.max_queue,
                variant=plan.start.name,
                context_tokens=self.context_tokens,
                reload=self._reload,
                on_finish=self.controller.on_finish,
            )
            self._show_active(plan.start.name)
            self.controller.start()
        except BaseException:
            self._release()
            raise
        self.started_s = time.time()

    # ---- variants (these run in the scheduler's thread, between steps) ----------------------------------
    def _load(self, variant: Variant) -> Loaded:
        threads = self.cores.cores if self.moves_cores else (self.config.threads or variant.threads)
        loaded = load_variant(
            variant,
            self.specs[variant.name],
            threads=threads,
            device=self.config.device,
            dtype=self.config.dtype,
            slots=self.config.max_batch,
            step_tokens=self.config.step_tokens,
            context_tokens=self.config.context_tokens,
            meter=self.meter,
        )
        if self._loaded or getattr(self, "vocab_size", None) is not None:
            self._check_same_model(loaded)
        self._loaded[variant.name] = loaded
        return loaded

    def _check_same_model(self, loaded: Loaded) -> None:
        probe = "Variants of one model tokenize alike: 123 <|im_start|> é"
        reference = next((v for v in self._loaded.values() if v is not loaded), None)
        same = (
            loaded.stepper.vocab_size == self.vocab_size
            and loaded.stepper.context_tokens == self.context_tokens
        )
        if same and reference is not None:
            same = loaded.stepper.tokenize_prompt(probe) == reference.stepper.tokenize_prompt(probe)
        if not same:
            loaded.close()
            raise GreenlmError(
                f"variant '{loaded.variant.name}' tokenizes differently or has another context than the others: "
                "a ladder holds variants of one model"
            )

    def _show_active(self, name: str) -> None:
        for v in self.ladder:
            self.metrics.active.labels(self.model_id, v.name).set(1 if v.name == name else 0)

    def _activate(self, name: str) -> dict:
        """New requests start on `name` (loaded now if it is not; nothing loads while the server is unloaded)."""
        sched = self.scheduler
        info: dict = {}
        if sched.stepper is None:
            sched.activate(None, name)
            self._show_active(name)
            return {"loaded": False}
        loaded = self._loaded.get(name)
        if loaded is None:
            start = self.meter.read()
            loaded = self._load(self.ladder.get(name))
            spent = self.meter.measure(start, self.meter.read())
            info = {"load_s": loaded.load_s, "energy_j": spent.total_j}
            self.ledger.set_costs(name, loaded.costs)
        elif self.moves_cores and loaded.stepper.engine.threads != self.cores.cores:
            loaded.stepper.set_threads(self.cores.cores)
        loaded.used_s = time.monotonic()
        sched.activate(loaded.stepper, name)
        self._show_active(name)
        self._evict()
        return info

    def _evict(self) -> None:
        """Close the least recently used variants beyond MAX_LOADED that have no request running."""
        sched = self.scheduler
        extra = len(self._loaded) - MAX_LOADED
        for name, loaded in sorted(self._loaded.items(), key=lambda kv: kv[1].used_s):
            if extra <= 0:
                break
            if loaded.stepper is sched.stepper or sched.busy(loaded.stepper):
                continue
            self._close_variant(name)
            extra -= 1

    def _close_variant(self, name: str) -> None:
        loaded = self._loaded.pop(name)
        with self._tokenizer_lock:
            self.scheduler.forget(loaded.stepper)
            loaded.close()

    def _unload(self) -> dict:
        sched = self.scheduler
        name = sched.variant
        for other, loaded in list(self._loaded.items()):
            if not sched.busy(loaded.stepper):
                self._close_variant(other)
        sched.activate(None, name)
        return {"loaded_variants": sorted(self._loaded)}

    def _reload(self) -> None:
        """Requests wait and nothing is loaded: load the active variant (the scheduler calls this)."""
        sched = self.scheduler
        if sched.stepper is not None:
            return
        name = sched.variant
        start = self.meter.read()
        loaded = self._loaded.get(name) or self._load(self.ladder.get(name))
        if self.moves_cores and loaded.stepper.engine.threads != self.cores.cores:
            loaded.stepper.set_threads(self.cores.cores)
        spent = self.meter.measure(start, self.meter.read())
        self.ledger.set_costs(name, loaded.costs)
        loaded.used_s = time.monotonic()
        sched.activate(loaded.stepper, name)
        sched._last_busy_s = time.perf_counter()  # a reload is activity: the idle clock starts again
        record = {"load_s": loaded.load_s, "energy_j": spent.total_j}
        self.reloads.append(record)
        if self.controller is not None:
            self.controller.record(
                Decision(
                    "reload", UNLOADED, name, "request", "a request arrived while the model was unloaded"
                ),
                applied=record,
            )

    def _set_cores(self, cores: int) -> dict:
        cpus = self.cores.set(cores)
        self.ledger.tiled_total = True
        for loaded in self._loaded.values():
            loaded.stepper.set_threads(self.cores.cores)
        self.metrics.cores.labels(self.model_id).set(self.cores.cores)
        return {"cpus": cpus}

    # ---- the control loop's hooks -----------------------------------------------------------------------
    def state(self) -> State:
        sched = self.scheduler
        return State(variant=sched.variant, cores=self.cores.cores, loaded=sched.stepper is not None)

    def apply(self, decision: Decision) -> dict:
        """Carry out a decision (from the control loop's thread); what it cost, or why it failed."""
        try:
            if decision.kind == "variant":
                work = lambda: self._activate(decision.to)  # noqa: E731
            elif decision.kind == "cores":
                work = lambda: self._set_cores(int(decision.to.split(":")[1]))  # noqa: E731
            elif decision.kind == "unload":
                work = self._unload
            else:
                raise ValueError(f"unknown decision kind {decision.kind}")
            return self.scheduler.call(work, APPLY_TIMEOUT_S) or {}
        except GreenlmError as exc:
            log.error("policy decision %s -> %s failed: %s", decision.from_, decision.to, exc)
            return {"error": str(exc)}

    # ---- requests --------------------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model != self.model_id:
            raise ModelNotFound(f"model '{model}' is not served here: this server serves '{self.model_id}'")

    def _tokenizing(self):
        """The active stepper for tokenizing, reloading the model first when the idle policy unloaded it.
        Call with `_tokenizer_lock` held (so no variant closes meanwhile)."""
        sched = self.scheduler
        stepper = sched.stepper or next((v.stepper for v in self._loaded.values()), None)
        if stepper is None:
            sched.call(self._reload, RELOAD_WAIT_S)
            stepper = sched.stepper or next((v.stepper for v in self._loaded.values()), None)
        if stepper is None:
            raise EngineFailed(
                "the model could not be loaded: see the server log", status=503, code="model_unavailable"
            )
        return stepper

    def prompt_from_messages(self, messages: list[dict]) -> list[int]:
        if not messages:
            raise RequestError("messages is empty: send at least one message", param="messages")
        try:
            text = render_chat(self.chat_template, messages, self.special_tokens, self.model_id)
        except GreenlmError as exc:
            raise RequestError(str(exc), param="messages") from None
        return self._prompt_ids(self._tokenize(text), "messages")

    def prompt_from_text(self, prompt: str) -> list[int]:
        if not prompt:
            raise RequestError("prompt is empty", param="prompt")
        return self._prompt_ids(self._tokenize(prompt), "prompt")

    def _tokenize(self, text: str) -> list[int]:
        if self.scheduler.stepper is None:
            self._tokenizing()  # reload outside the lock: the loop thread takes it to close variants
        with self._tokenizer_lock:
            return self._tokenizing().tokenize_prompt(text)

    def prompt_from_ids(self, ids: list[int]) -> list[int]:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(
                f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}", param="prompt"
            )
        return self._prompt_ids(list(ids), "prompt")

    def _prompt_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise RequestError(f"{param} has no tokens", param=param)
        limit = self.context_tokens
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
        room = self.context_tokens - prompt_tokens
        if max_tokens is None:
            max_tokens = max(1, min(self.config.max_tokens_default, room))
        elif max_tokens > room:
            raise RequestError(
                f"max_tokens {max_tokens} + the prompt's {prompt_tokens} tokens exceed this server's context of "
                f"{self.context_tokens} tokens per request: ask for at most {room}",
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

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestHandle:
        """Queue a request; events arrive on the handle (iterate it, or `async for` when `loop` is given)."""
        return self._route().submit(prompt_ids, params, loop=loop)

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
    def stepper(self) -> Stepper | None:
        """The active variant's stepper (None while unloaded)."""
        return self.scheduler.stepper if self.scheduler is not None else None

    @property
    def engine(self) -> Engine | None:
        stepper = self.stepper
        return stepper.engine if stepper is not None else None

    def healthy(self) -> bool:
        return self.scheduler is not None and self.scheduler.fatal is None

    def energy(self) -> dict:
        """The energy account so far (see EnergyLedger.snapshot), with the grid it is converted at."""
        if self._final_energy is not None:
            return dict(self._final_energy)
        snap = self.ledger.snapshot()
        reading = self.controller.grid_reading if self.controller else self.grid.now()
        snap["intensity_source"] = reading.source if self.adaptive else self.intensity.source
        snap["pue"] = self.pue
        snap["meter_note"] = self.meter.selection_note
        if self.adaptive:
            snap["grid_time"] = reading.trace_time
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
                loaded=v["name"] in self._loaded,
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
            "context_tokens": self.context_tokens,
            "meter": self.meter.name,
            "energy_source": self.meter.energy_source,
            "meter_note": self.meter.selection_note,
            "intensity_g_per_kwh": self.ledger.intensity_g_per_kwh,
            "intensity_source": self.grid.now().source if self.adaptive else self.intensity.source,
            "pue": self.pue,
            "load_s": round(self.load_s, 3),
            "warmup": self.warmup,
            "stepper": self.stepper.describe() if self.stepper else None,
            "auth": self.config.api_key is not None,
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
        CPU affinity and the meter."""
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
        for loaded in list(self._loaded.values()):
            loaded.close()
        self._loaded.clear()
        self.cores.restore()
        self.meter.close()
