"""The serving library object: a loaded model, its scheduler, meter, energy ledger and metrics.

Everything the HTTP app does goes through here, so tests and other front ends (a Ray Serve replica) can
drive it without HTTP:

    server = Server(ServeConfig(model="smollm2-135m"))
    handle = server.submit(server.prompt_from_text("Hello"), server.sampling(max_tokens=16, temperature=0))
    result = handle.wait()      # result.text, result.usage()["energy_j"]
    server.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from greenlm.energy import Meter, get_meter
from greenlm.energy.carbon import GridIntensity, resolve_intensity, validate_pue
from greenlm.engines.available import check_engine_ready
from greenlm.engines.base import Engine
from greenlm.engines.chat import render_chat
from greenlm.engines.factory import create_engine
from greenlm.engines.saved import apply_saved_run
from greenlm.engines.stepper import SlotFeed, Stepper
from greenlm.engines.steppers import open_stepper
from greenlm.errors import GreenlmError
from greenlm.io import noop
from greenlm.models.run import RunSettings, saved_run_settings
from greenlm.models.spec import ModelSpec, resolve_model
from greenlm.serve.attribution import PhaseCosts
from greenlm.serve.config import SERVE_ENGINE, ServeConfig
from greenlm.serve.errors import ModelNotFound, RequestError
from greenlm.serve.ledger import EnergyLedger
from greenlm.serve.metrics import ServeMetrics
from greenlm.serve.sampling import SamplingParams
from greenlm.serve.scheduler import RequestHandle, Scheduler

log = logging.getLogger(__name__)

WARMUP_TEXT = "The quick brown fox jumps over the lazy dog. " * 8
WARMUP_PROMPT_TOKENS = 32
WARMUP_DECODE_STEPS = 4


@dataclass(frozen=True)
class Preflight:
    """What the cheap checks settled: everything but loading the model."""

    config: ServeConfig  # engine, threads and device filled in from the saved run settings, if any
    intensity: GridIntensity
    pue: float
    spec: ModelSpec
    saved: RunSettings | None


def _meter(config: ServeConfig) -> Meter:
    return get_meter(
        config.meter, watts_per_core=config.watts_per_core, idle_watts_per_core=config.idle_watts_per_core
    )


def preflight(config: ServeConfig, announce: Callable[[str], None] = noop) -> Preflight:
    """Every check that takes a moment (grid, PUE, model path, saved run settings, meter, engine installed,
    file readable), so a mistake fails before the port is bound or a model loads. A model `optimize --out`
    saved runs on the engine, threads and device it was chosen with unless a flag says otherwise; a model
    saved without them runs on llama.cpp."""
    intensity = resolve_intensity(config.country, config.region, config.carbon_intensity)
    pue = validate_pue(config.pue)
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
    return Preflight(config, intensity, pue, spec, saved)


class Server:
    def __init__(
        self,
        config: ServeConfig,
        *,
        announce: Callable[[str], None] | None = None,
        checked: Preflight | None = None,
    ):
        """Load and start serving `config.model`. `checked`: `preflight(config)`'s result when the caller has
        it already (the CLI checks before binding its port), so the checks do not run twice."""
        announce = announce or noop
        plan = checked or preflight(config, announce)
        self.config = config = plan.config
        self.intensity, self.pue, self.spec, self.saved = plan.intensity, plan.pue, plan.spec, plan.saved
        self.engine_name = config.engine
        self.model_id = config.served_model_name or self.spec.name
        self.meter: Meter = _meter(config)
        self.engine: Engine | None = None
        self.stepper: Stepper | None = None
        self.scheduler: Scheduler | None = None
        self._final_energy: dict | None = None
        try:
            start = time.perf_counter()
            self.engine = create_engine(
                self.engine_name, self.spec, threads=config.threads, device=config.device, dtype=config.dtype
            )
            self.stepper = open_stepper(
                self.engine,
                slots=config.max_batch,
                step_tokens=config.step_tokens,
                context_tokens=config.context_tokens,
            )
            self.load_s = time.perf_counter() - start
            announce(self.meter.selection_note)
            costs = self._warm_up()
            # the server's energy account starts here: everything after this is a request's or idle
            self.ledger = EnergyLedger(
                self.meter, intensity_g_per_kwh=self.intensity.intensity_g_per_kwh, pue=self.pue, costs=costs
            )
            self.metrics = ServeMetrics(self.model_id, self.ledger)
            self.scheduler = Scheduler(
                self.stepper,
                self.ledger,
                self.metrics,
                detokenize=self.stepper.detokenize,
                max_queue=config.max_queue,
            )
        except BaseException:
            self._release()
            raise
        self.started_s = time.time()

    def _warm_up(self) -> PhaseCosts:
        """One prompt and a few decode steps through a slot: pays for first-call allocations, and measures
        what a prefill token and a decode token cost, which seeds the split rule's weights."""
        stepper = self.stepper
        ids = stepper.tokenize_prompt(WARMUP_TEXT)[:WARMUP_PROMPT_TOKENS]
        ids = ids[
            : max(1, min(len(ids), stepper.step_tokens, stepper.context_tokens - WARMUP_DECODE_STEPS - 1))
        ]
        meter = self.meter

        def run() -> tuple:
            try:
                start = meter.read()
                token = int(stepper.step([SlotFeed(0, ids, True)])[0].argmax())
                prefill = meter.measure(start, meter.read())
                start = meter.read()
                for _ in range(WARMUP_DECODE_STEPS):
                    token = int(stepper.step([SlotFeed(0, [token], True)])[0].argmax())
                return prefill, meter.measure(start, meter.read())
            finally:
                stepper.release(0)

        run()  # the first steps of a new context pay for allocations: not what a token costs
        prefill, decode = run()
        self.warmup = {
            "prompt_tokens": len(ids),
            "decode_steps": WARMUP_DECODE_STEPS,
            "prefill_j": prefill.total_j,
            "decode_j": decode.total_j,
            "prefill_s": prefill.duration_s,
            "decode_s": decode.duration_s,
        }
        return PhaseCosts(
            prefill.total_j / len(ids) if prefill.total_j > 0 else None,
            decode.total_j / WARMUP_DECODE_STEPS if decode.total_j > 0 else None,
        )

    # ---- requests --------------------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model != self.model_id:
            raise ModelNotFound(f"model '{model}' is not served here: this server serves '{self.model_id}'")

    def prompt_from_messages(self, messages: list[dict]) -> list[int]:
        if not messages:
            raise RequestError("messages is empty: send at least one message", param="messages")
        try:
            text = render_chat(
                self.stepper.chat_template, messages, self.stepper.special_tokens, self.model_id
            )
        except GreenlmError as exc:
            raise RequestError(str(exc), param="messages") from None
        return self._prompt_ids(self.stepper.tokenize_prompt(text), "messages")

    def prompt_from_text(self, prompt: str) -> list[int]:
        if not prompt:
            raise RequestError("prompt is empty", param="prompt")
        return self._prompt_ids(self.stepper.tokenize_prompt(prompt), "prompt")

    def prompt_from_ids(self, ids: list[int]) -> list[int]:
        bad = [t for t in ids if not 0 <= t < self.stepper.vocab_size]
        if bad:
            raise RequestError(
                f"token id {bad[0]} is outside the vocabulary of {self.stepper.vocab_size}", param="prompt"
            )
        return self._prompt_ids(list(ids), "prompt")

    def _prompt_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise RequestError(f"{param} has no tokens", param=param)
        limit = self.stepper.context_tokens
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
        room = self.stepper.context_tokens - prompt_tokens
        if max_tokens is None:
            max_tokens = max(1, min(self.config.max_tokens_default, room))
        elif max_tokens > room:
            raise RequestError(
                f"max_tokens {max_tokens} + the prompt's {prompt_tokens} tokens exceed this server's context of "
                f"{self.stepper.context_tokens} tokens per request: ask for at most {room}",
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
        """The scheduler a request runs on (one engine today; a variant ladder chooses here)."""
        return self.scheduler

    def stop_accepting(self) -> None:
        """New requests get 503 from now on; the ones already in continue (a drain begins)."""
        if self.scheduler is not None:
            self.scheduler.stop_accepting()

    # ---- state -----------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        return self.scheduler is not None and self.scheduler.fatal is None

    def energy(self) -> dict:
        """The energy account so far (see EnergyLedger.snapshot), with the grid it is converted at."""
        if self._final_energy is not None:
            return dict(self._final_energy)
        snap = self.ledger.snapshot()
        snap["intensity_g_per_kwh"] = self.intensity.intensity_g_per_kwh
        snap["intensity_source"] = self.intensity.source
        snap["pue"] = self.pue
        snap["meter_note"] = self.meter.selection_note
        return snap

    def describe(self) -> dict:
        """The startup record: what runs, where its figures come from."""
        return {
            "model": self.model_id,
            "model_identity": self.spec.identity(),
            "engine": self.engine.name,
            "threads": self.engine.threads,
            "device": self.engine.device,
            "run_settings": self.saved.to_dict() if self.saved else None,
            "max_batch": self.stepper.slots,
            "max_queue": self.config.max_queue,
            "step_tokens": self.stepper.step_tokens,
            "context_tokens": self.stepper.context_tokens,
            "meter": self.meter.name,
            "energy_source": self.meter.energy_source,
            "meter_note": self.meter.selection_note,
            "intensity_g_per_kwh": self.intensity.intensity_g_per_kwh,
            "intensity_source": self.intensity.source,
            "pue": self.pue,
            "load_s": round(self.load_s, 3),
            "warmup": self.warmup,
            "stepper": self.stepper.describe(),
            "auth": self.config.api_key is not None,
        }

    def close(self, drain_timeout_s: float = 0.0) -> None:
        """Drain in-flight requests (bounded), stop the scheduler, release the model and the meter."""
        if self.scheduler is not None:
            self.scheduler.close(drain_timeout_s)
            if self._final_energy is None:
                self._final_energy = (
                    self.energy()
                )  # the account as it stood at the end, before the meter goes
        self._release()

    def _release(self) -> None:
        if self.stepper is not None:
            self.stepper.close()
            self.stepper = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.meter.close()
