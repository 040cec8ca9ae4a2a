"""One variant opened for serving: its engine and serving stepper, and a short warm-up that pays for
first-call allocations and measures what a prefill token and a decode token cost (the split rule's weights)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from greenlm.energy import Meter
from greenlm.engines.base import Engine
from greenlm.engines.factory import create_engine, open_stepper
from greenlm.engines.stepper import SlotFeed, Stepper
from greenlm.models.spec import ModelSpec
from greenlm.serve.attribution import PhaseCosts
from greenlm.serve.ladder import Variant

WARMUP_TEXT = "The quick brown fox jumps over the lazy dog. " * 8
WARMUP_PROMPT_TOKENS = 32
WARMUP_DECODE_STEPS = 4


@dataclass
class Loaded:
    variant: Variant
    engine: Engine
    stepper: Stepper
    load_s: float
    warmup: dict
    costs: PhaseCosts
    used_s: float = 0.0  # when it last became active

    def close(self) -> None:
        self.stepper.close()
        self.engine.close()


def warm_up(stepper: Stepper, meter: Meter) -> tuple[dict, PhaseCosts]:
    """One prompt and a few decode steps through a slot: pays for first-call allocations, and measures
    what a prefill token and a decode token cost, which seeds the split rule's weights."""
    ids = stepper.tokenize_prompt(WARMUP_TEXT)[:WARMUP_PROMPT_TOKENS]
    ids = ids[: max(1, min(len(ids), stepper.step_tokens, stepper.context_tokens - WARMUP_DECODE_STEPS - 1))]

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
            stepper.release(0, keep=False)  # the second run must compute its prompt again

    run()  # the first steps of a new context pay for allocations: not what a token costs
    prefill, decode = run()
    record = {
        "prompt_tokens": len(ids),
        "decode_steps": WARMUP_DECODE_STEPS,
        "prefill_j": prefill.total_j,
        "decode_j": decode.total_j,
        "prefill_s": prefill.duration_s,
        "decode_s": decode.duration_s,
    }
    costs = PhaseCosts(
        prefill.total_j / len(ids) if prefill.total_j > 0 else None,
        decode.total_j / WARMUP_DECODE_STEPS if decode.total_j > 0 else None,
    )
    return record, costs


def load_variant(
    variant: Variant,
    spec: ModelSpec,
    *,
    threads: int | None,
    device: str,
    dtype: str,
    slots: int,
    step_tokens: int,
    context_tokens: int,
    meter: Meter,
    prefix_cache: bool = True,
) -> Loaded:
    start = time.perf_counter()
    engine = create_engine(variant.engine, spec, threads=threads, device=device, dtype=dtype)
    try:
        stepper = open_stepper(engine, slots=slots, step_tokens=step_tokens, context_tokens=context_tokens)
        if not prefix_cache:
            stepper.reuses_prefixes = False  # --no-prefix-cache: every request computes its whole prompt
    except BaseException:
        engine.close()
        raise
    load_s = time.perf_counter() - start
    try:
        warmup, costs = warm_up(stepper, meter)
    except BaseException:
        stepper.close()
        engine.close()
        raise
    return Loaded(variant, engine, stepper, load_s, warmup, costs, used_s=time.monotonic())
