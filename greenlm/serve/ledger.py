"""The server's meter, read at every window edge, and the running account of where the energy went.

One reading closes a window and opens the next, so the windows tile the server's life with no gap: a
meter that charges for wall-clock time (static power) charges every second to a step or to idle, never to
nobody. See `attribution` for the split rule. Thread-safe: the scheduler closes windows, an HTTP scrape may
close an idle one (so idle energy is current) and read the totals.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from greenlm.energy import Measurement, Meter, Reading
from greenlm.energy.carbon import carbon_g
from greenlm.serve.attribution import EnergyTotals, PhaseCosts, Share, StepWork, split_step, update_costs

RECENT_S = 60.0  # what power_watts and tokens_per_joule average over


@dataclass(frozen=True)
class _Window:
    end_s: float
    duration_s: float
    energy_j: float
    output_tokens: int


class EnergyLedger:
    def __init__(
        self, meter: Meter, *, intensity_g_per_kwh: float, pue: float, costs: PhaseCosts | None = None
    ):
        self.meter = meter
        self.intensity_g_per_kwh = intensity_g_per_kwh
        self.pue = pue
        self.costs = costs or PhaseCosts()
        self.totals = EnergyTotals()
        self._lock = threading.Lock()
        self._start: Reading = meter.read()
        self._last: Reading = self._start
        self._idle = True  # no request running since the last window closed
        self._recent: deque[_Window] = deque()

    # ---- windows (the scheduler) -----------------------------------------------------------------------
    def _close(self) -> Measurement:
        reading = self.meter.read()
        measurement = self.meter.measure(self._last, reading)
        self._last = reading
        return measurement

    def close_step(self, work: list[StepWork], output_tokens: int) -> list[Share]:
        """End the window of a step that processed `work` (and produced `output_tokens`): split it."""
        with self._lock:
            m = self._close()
            shares = split_step(m.total_j, work, self.costs)
            self.costs = update_costs(self.costs, m.total_j, work)
            self.totals.add_step(m.total_j, shares)
            self._remember(m, output_tokens)
            self._idle = False
            return shares

    def close_idle(self) -> float:
        """End an idle window (no request was running in it); the next window starts now."""
        with self._lock:
            return self._close_idle()

    def _close_idle(self) -> float:
        m = self._close()
        self.totals.add_idle(m.total_j)
        self._remember(m, 0)
        return m.total_j

    def mark_idle(self) -> None:
        """No request is running from now on: what the meter sees next is idle until `close_idle`."""
        with self._lock:
            self._idle = True

    def start_busy(self) -> None:
        """A request is about to run: close the idle window that ends here."""
        with self._lock:
            if self._idle:
                self._close_idle()
                self._idle = False

    def _remember(self, m: Measurement, output_tokens: int) -> None:
        end = self._last.time_s
        self._recent.append(_Window(end, m.duration_s, m.total_j, output_tokens))
        while self._recent and self._recent[0].end_s < end - RECENT_S:
            self._recent.popleft()

    # ---- reading the account (HTTP threads) ------------------------------------------------------------
    def snapshot(self) -> dict:
        """Totals up to the last window edge (an idle window in progress is closed first, so idle is current;
        a step in flight is not yet counted). `meter_total_j` is the meter's own reading over the same span,
        one window from the first edge to the last."""
        with self._lock:
            if self._idle:
                self._close_idle()
            t = self.totals
            life = self.meter.measure(self._start, self._last)
            recent = list(self._recent)
            costs = self.costs
        gap = t.requests_j + t.idle_j - life.total_j
        return {
            "meter": life.meter,
            "energy_source": life.energy_source,
            "duration_s": life.duration_s,
            "requests_j": t.requests_j,
            "prefill_j": t.prefill_j,
            "decode_j": t.decode_j,
            "idle_j": t.idle_j,
            "windows_j": t.windows_j,
            "meter_total_j": life.total_j,
            "invariant_gap_j": gap,
            "invariant_gap_rel": abs(gap) / life.total_j if life.total_j > 0 else 0.0,
            "accounting_gap_j": t.invariant_gap_j(),  # requests + idle - sum of windows: rounding only
            "step_windows": t.step_windows,
            "idle_windows": t.idle_windows,
            "carbon_g": carbon_g(t.windows_j, self.intensity_g_per_kwh, self.pue),
            "phase_costs": costs.to_dict(),
            **self._recent_rates(recent),
        }

    @staticmethod
    def _recent_rates(recent: list[_Window]) -> dict:
        seconds = sum(w.duration_s for w in recent)
        joules = sum(w.energy_j for w in recent)
        tokens = sum(w.output_tokens for w in recent)
        return {
            "recent_s": seconds,
            "power_w": joules / seconds if seconds > 0 else 0.0,
            "tokens_per_j": tokens / joules if joules > 0 else 0.0,
        }

    def carbon_g(self, energy_j: float) -> float:
        return carbon_g(energy_j, self.intensity_g_per_kwh, self.pue)
