"""A stepper and a meter made of plain Python, so the scheduler and the energy account can be tested exactly."""

from __future__ import annotations

import threading
import time

import numpy as np

from greenlm.energy.base import Measurement, Meter, Reading
from greenlm.engines.stepper import SlotFeed, Stepper

VOCAB = 50
EOS = 0


class CounterMeter(Meter):
    """An energy counter the test drives: `spend(j)` adds joules; every read also charges `per_read_j`, as a
    meter with static power charges for the time between reads."""

    name = "fake-counter"
    energy_source = "measured"

    def __init__(self, per_read_j: float = 0.25):
        self.joules = 0.0
        self.per_read_j = per_read_j
        self.reads = 0
        self._lock = threading.Lock()

    def spend(self, joules: float) -> None:
        with self._lock:
            self.joules += joules

    def read(self) -> Reading:
        with self._lock:
            self.joules += self.per_read_j
            self.reads += 1
            return Reading(time_s=time.perf_counter(), values={"j": self.joules})

    def measure(self, start: Reading, end: Reading) -> Measurement:
        return Measurement(
            meter=self.name,
            energy_source=self.energy_source,
            duration_s=max(0.0, end.time_s - start.time_s),
            energy_j={"all": end.values["j"] - start.values["j"]},
        )


class CountingStepper(Stepper):
    """Next token = (last token fed + 1) mod VOCAB (so EOS, 0, follows VOCAB - 1). Each step charges the
    meter 1 J per prefill token and 3 J per decode token. `gate` (when set) holds every step until opened."""

    def __init__(
        self, meter: CounterMeter, *, slots: int = 4, step_tokens: int = 16, context_tokens: int = 64
    ):
        super().__init__()
        self.meter = meter
        self.slots, self.step_tokens, self.context_tokens = slots, step_tokens, context_tokens
        self.vocab_size = VOCAB
        self.steps: list[list[SlotFeed]] = []
        self.released: list[int] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()  # set when a step has started (and may be held at the gate)
        self.fail_next = False

    def _forward(self, feeds, positions):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_next:
            self.fail_next = False
            from greenlm.errors import GreenlmError

            raise GreenlmError("the fake engine failed")
        self.steps.append(list(feeds))
        for f in feeds:
            self.meter.spend(
                3.0 if len(f.token_ids) == 1 and self.tokens_in(f.slot) else float(len(f.token_ids))
            )
        rows = []
        for f in feeds:
            if f.wants_logits:
                row = np.zeros(VOCAB, dtype=np.float32)
                row[(f.token_ids[-1] + 1) % VOCAB] = 10.0  # after VOCAB-1 comes EOS
                rows.append(row)
        return rows

    def _forget(self, slot):
        self.released.append(slot)

    def is_end_of_generation(self, token_id):
        return token_id == EOS

    def tokenize_prompt(self, text):
        return [1 + (ord(c) % (VOCAB - 1)) for c in text]

    @property
    def chat_template(self):
        return "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


def detokenize(ids: list[int]) -> str:
    return "".join(chr(ord("a") + (i % 26)) for i in ids)
