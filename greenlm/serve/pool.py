"""The variant pool: the one place that loads, activates, unloads, reloads and evicts a server's variants, and
sets the CPU cores they run on.

A variant loads on first use (`loading.load_variant`: engine, serving stepper, a warm-up that measures its
prefill and decode J/token for the split rule). At most `MAX_LOADED` stay loaded: the active one and the one
it replaced (so a switch back costs nothing); older ones are closed once their last request has finished.
Unloading closes the llama.cpp model and its KV cache, which gives their memory back; the next request
reloads the active variant (recorded as a `Reload` decision).

Every change runs in the scheduler's thread between steps, in a load window of the energy ledger (`apply` is
called through `Scheduler.call`, reloads by the scheduler itself), except the first load: it happens before
the server's energy account starts, so the pool is attached to the scheduler, ledger and metrics after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from greenlm.energy import Meter
from greenlm.engines.stepper import Stepper
from greenlm.errors import GreenlmError
from greenlm.models.spec import ModelSpec
from greenlm.serve.config import ServeConfig
from greenlm.serve.cores import CoreAllotment
from greenlm.serve.decisions import Decision, Reload, SetCores, SwitchVariant, Unload
from greenlm.serve.errors import EngineFailed
from greenlm.serve.ladder import Ladder, Variant
from greenlm.serve.ledger import EnergyLedger
from greenlm.serve.loading import Loaded, load_variant
from greenlm.serve.metrics import ServeMetrics
from greenlm.serve.scheduler import Scheduler

MAX_LOADED = 2
RELOAD_WAIT_S = 600.0  # a request waits this long for a reload of a big variant on a slow disk
SAME_MODEL_PROBE = "Variants of one model tokenize alike: 123 <|im_start|> é"

OnReload = Callable[[Reload, dict], None]


@dataclass(frozen=True)
class LoadSettings:
    """How every variant of a server loads (from its config)."""

    threads: int | None  # --threads (None: each variant's own, else the engine's default)
    device: str
    dtype: str
    slots: int
    step_tokens: int
    context_tokens: int
    prefix_cache: bool = True

    @classmethod
    def of(cls, config: ServeConfig) -> LoadSettings:
        return cls(
            config.threads,
            config.device,
            config.dtype,
            config.max_batch,
            config.step_tokens,
            config.context_tokens,
            config.prefix_cache,
        )


class VariantPool:
    """`moves_cores`: a policy moves the cores (load or low-load), so every variant runs on as many threads
    as the server has cores; otherwise each runs on the threads it was measured with."""

    def __init__(
        self,
        ladder: Ladder,
        specs: dict[str, ModelSpec],
        settings: LoadSettings,
        meter: Meter,
        *,
        moves_cores: bool = False,
        cores: CoreAllotment | None = None,
    ):
        self.ladder, self.specs, self.settings, self.meter = ladder, specs, settings, meter
        self.moves_cores = moves_cores
        self.cores = cores or CoreAllotment()
        self.loaded: dict[str, Loaded] = {}  # read it; only the pool changes it
        self.reloads: list[dict] = []  # what each reload cost
        self._shape: tuple[int, int] | None = (
            None  # the first variant's vocabulary and context: all share them
        )
        self._tokenizer_lock = threading.RLock()  # no variant closes while a request is tokenized on it
        self.scheduler: Scheduler | None = None
        self.ledger: EnergyLedger | None = None
        self.metrics: ServeMetrics | None = None
        self._on_reload: OnReload | None = None

    # ---- before serving ---------------------------------------------------------------------------------
    def load_first(self, variant: Variant) -> Loaded:
        """The start variant, loaded before the scheduler and the energy account exist."""
        loaded = self._load(variant)
        self._shape = (loaded.stepper.vocab_size, loaded.stepper.context_tokens)
        return loaded

    def attach(
        self,
        scheduler: Scheduler,
        ledger: EnergyLedger,
        metrics: ServeMetrics,
        *,
        on_reload: OnReload | None = None,
    ) -> None:
        """Serve through `scheduler` (started on the first variant), account in `ledger`, show in `metrics`.
        `on_reload`: told of every reload a request caused, with what it cost."""
        self.scheduler, self.ledger, self.metrics = scheduler, ledger, metrics
        self._on_reload = on_reload
        ledger.set_costs(scheduler.variant, self.loaded[scheduler.variant].costs)
        metrics.cores.labels(metrics.model_name).set(self.cores.cores)
        self._show_active(scheduler.variant)

    # ---- decisions (in the scheduler's thread) ----------------------------------------------------------
    def apply(self, decision: Decision) -> dict:
        """Carry out `decision`; what it cost (load seconds and joules, CPUs), for the decision's record."""
        if isinstance(decision, SwitchVariant):
            return self.activate(decision.to)
        if isinstance(decision, SetCores):
            return self.set_cores(decision.cores)
        if isinstance(decision, Unload):
            return self.unload()
        if isinstance(decision, Reload):
            return self.reload() or {}
        raise TypeError(f"not a decision: {decision!r}")

    def activate(self, name: str) -> dict:
        """New requests start on `name` (loaded now if it is not; nothing loads while the pool is unloaded)."""
        if self.scheduler.stepper is None:
            self.scheduler.activate(None, name)
            self._show_active(name)
            return {"loaded": False}
        loaded, spent_j, fresh = self._bring_in(name)
        self._evict()
        return {"load_s": loaded.load_s, "energy_j": spent_j} if fresh else {}

    def unload(self) -> dict:
        """Close every variant with no request running; new requests wait for a reload of the active one."""
        sched = self.scheduler
        name = sched.variant
        for other, loaded in list(self.loaded.items()):
            if not sched.busy(loaded.stepper):
                self._close(other)
        sched.activate(None, name)
        return {"loaded_variants": sorted(self.loaded)}

    def reload(self) -> dict | None:
        """Requests wait and nothing is active: bring the active variant back; what that cost (None: one is
        active already)."""
        sched = self.scheduler
        if sched.stepper is not None:
            return None
        loaded, spent_j, _ = self._bring_in(sched.variant)
        sched.mark_busy()  # a reload is activity: the idle clock starts again
        record = {"load_s": loaded.load_s, "energy_j": spent_j}
        self.reloads.append(record)
        return record

    def reload_for_requests(self) -> None:
        """The scheduler's hook when requests wait on an unloaded pool: reload, and report it as a decision."""
        name = self.scheduler.variant
        record = self.reload()
        if record is not None and self._on_reload is not None:
            reason = "a request arrived while the model was unloaded"
            self._on_reload(Reload(variant=name, reason="request", detail=reason), record)

    def set_cores(self, cores: int) -> dict:
        cpus = self.cores.set(cores)
        self.ledger.tiled_total = True
        for loaded in self.loaded.values():
            loaded.stepper.set_threads(self.cores.cores)
        self.metrics.cores.labels(self.metrics.model_name).set(self.cores.cores)
        return {"cpus": cpus}

    # ---- requests (any thread) --------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """`text` as prompt tokens, on the active variant (or any loaded one: variants of one model tokenize
        alike), reloading it first when the idle policy unloaded it."""
        if self.scheduler.stepper is None:
            self._tokenizer()  # reload outside the lock: the loop thread takes it to close variants
        with self._tokenizer_lock:
            return self._tokenizer().tokenize_prompt(text)

    def _tokenizer(self) -> Stepper:
        sched = self.scheduler
        stepper = sched.stepper or next((v.stepper for v in self.loaded.values()), None)
        if stepper is None:
            sched.call(self.reload_for_requests, RELOAD_WAIT_S)
            stepper = sched.stepper or next((v.stepper for v in self.loaded.values()), None)
        if stepper is None:
            raise EngineFailed(
                "the model could not be loaded: see the server log", status=503, code="model_unavailable"
            )
        return stepper

    def close(self) -> None:
        """Close every variant and give the CPUs back."""
        for loaded in list(self.loaded.values()):
            loaded.close()
        self.loaded.clear()
        self.cores.restore()

    # ---- the one way in and out -------------------------------------------------------------------------
    def _bring_in(self, name: str) -> tuple[Loaded, float, bool]:
        """Make `name` the variant new requests start on: loaded now if it is not (its warm-up's J/token
        become the split weights of its steps), else moved to the current cores. (it, the joules that took,
        whether it was loaded now)."""
        start = self.meter.read()
        loaded = self.loaded.get(name)
        fresh = loaded is None
        if fresh:
            loaded = self._load(self.ladder.get(name))
            self.ledger.set_costs(name, loaded.costs)
        elif self.moves_cores and loaded.stepper.engine.threads != self.cores.cores:
            loaded.stepper.set_threads(self.cores.cores)
        spent = self.meter.measure(start, self.meter.read())
        loaded.used_s = time.monotonic()
        self.scheduler.activate(loaded.stepper, name)
        self._show_active(name)
        return loaded, spent.total_j, fresh

    def _load(self, variant: Variant) -> Loaded:
        s = self.settings
        loaded = load_variant(
            variant,
            self.specs[variant.name],
            threads=self.cores.cores if self.moves_cores else (s.threads or variant.threads),
            device=s.device,
            dtype=s.dtype,
            slots=s.slots,
            step_tokens=s.step_tokens,
            context_tokens=s.context_tokens,
            meter=self.meter,
            prefix_cache=s.prefix_cache,
        )
        if self._shape is not None:
            self._check_same_model(loaded)
        self.loaded[variant.name] = loaded
        return loaded

    def _check_same_model(self, loaded: Loaded) -> None:
        reference = next((v for v in self.loaded.values() if v is not loaded), None)
        new = loaded.stepper
        same = (new.vocab_size, new.context_tokens) == self._shape
        if same and reference is not None:
            same = new.tokenize_prompt(SAME_MODEL_PROBE) == reference.stepper.tokenize_prompt(
                SAME_MODEL_PROBE
            )
        if not same:
            loaded.close()
            raise GreenlmError(
                f"variant '{loaded.variant.name}' tokenizes differently or has another context than the others: "
                "a ladder holds variants of one model"
            )

    def _evict(self) -> None:
        """Close the least recently used variants beyond MAX_LOADED that have no request running."""
        sched = self.scheduler
        extra = len(self.loaded) - MAX_LOADED
        for name, loaded in sorted(self.loaded.items(), key=lambda kv: kv[1].used_s):
            if extra <= 0:
                break
            if loaded.stepper is sched.stepper or sched.busy(loaded.stepper):
                continue
            self._close(name)
            extra -= 1

    def _close(self, name: str) -> None:
        loaded = self.loaded.pop(name)
        with self._tokenizer_lock:
            self.scheduler.forget(loaded.stepper)
            loaded.close()

    def _show_active(self, name: str) -> None:
        for v in self.ladder:
            self.metrics.active.labels(self.metrics.model_name, v.name).set(1 if v.name == name else 0)
