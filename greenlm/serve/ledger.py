"""The server's meter, read at every window edge, and the running account of where the energy went.

One reading closes a window and opens the next, so the windows tile the server's life with no gap: a
meter that charges for wall-clock time (static power) charges every second to a step or to idle, never to
nobody. See `attribution` for the split rule. Thread-safe: the scheduler closes windows, an HTTP scrape may
close an idle one (so idle energy is current) and read the totals.

An adaptive server adds two things: load windows (a variant loading, unloading or changing threads between
steps: neither a request's energy nor idle, booked as `load_j`, so requests + idle + load = the meter's total),
and a grid intensity that changes while it runs (`set_intensity`): each window's carbon is taken at the
intensity of its time and summed.
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
        self._costs: dict[str | None, PhaseCosts] = {None: costs or PhaseCosts()}
        self.totals = EnergyTotals()
        self.carbon_total_g = 0.0  # each window at the intensity of its time
        self.output_tokens_total = 0
        # Set when the meter's own life-long window stops being a fair total: the cpu-model charges static
        # power for the affinity mask, and one window averages the mask at its two edges, so once an adaptive
        # server changes the mask the meter's total is the sum of its windows (each with one mask).
        self.tiled_total = False
        self._lock = threading.Lock()
        self._start: Reading = meter.read()
        self._last: Reading = self._start
        self._idle = True  # no request running since the last window closed
        self._recent: deque[_Window] = deque()

    @property
    def costs(self) -> PhaseCosts:
        return self._costs[None]

    @costs.setter
    def costs(self, value: PhaseCosts) -> None:
        self._costs[None] = value

    def set_costs(self, key: str, costs: PhaseCosts) -> None:
        """The split weights of the steps of `key` (a variant: each measures its own J/token)."""
        with self._lock:
            self._costs[key] = costs

    def costs_of(self, key: str | None) -> PhaseCosts:
        """The split weights the steps of `key` (a variant) are divided by now: its measured J/token."""
        with self._lock:
            return self._costs.get(key) or self._costs[None]

    def set_intensity(self, intensity_g_per_kwh: float) -> None:
        """The grid intensity windows closed from now on are converted at."""
        with self._lock:
            self.intensity_g_per_kwh = float(intensity_g_per_kwh)

    # ---- windows (the scheduler) -----------------------------------------------------------------------
    def _close(self) -> Measurement:
        reading = self.meter.read()
        measurement = self.meter.measure(self._last, reading)
        self._last = reading
        self.carbon_total_g += carbon_g(measurement.total_j, self.intensity_g_per_kwh, self.pue)
        return measurement

    def close_step(self, work: list[StepWork], output_tokens: int, key: str | None = None) -> list[Share]:
        """End the window of a step that processed `work` (and produced `output_tokens`): split it (with
        the split weights of `key`, the variant that ran the step)."""
        with self._lock:
            m = self._close()
            costs = self._costs.get(key) or self._costs[None]
            shares = split_step(m.total_j, work, costs)
            self._costs[key if key in self._costs else None] = update_costs(costs, m.total_j, work)
            self.totals.add_step(m.total_j, shares)
            self.output_tokens_total += output_tokens
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

    def begin_load(self) -> None:
        """Work that is not a step (a variant loading) starts now: close the idle window that ends here."""
        with self._lock:
            if self._idle:
                self._close_idle()

    def close_load(self) -> Measurement:
        """End a load window (it began at the last window edge): booked as load energy."""
        with self._lock:
            m = self._close()
            self.totals.add_load(m.total_j)
            self._remember(m, 0)
            return m

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
            carbon_total = self.carbon_total_g
            output_tokens = self.output_tokens_total
        meter_total_j = t.windows_j if self.tiled_total else life.total_j
        gap = t.requests_j + t.idle_j + t.load_j - meter_total_j
        return {
            "meter": life.meter,
            "energy_source": life.energy_source,
            "duration_s": life.duration_s,
            "requests_j": t.requests_j,
            "prefill_j": t.prefill_j,
            "decode_j": t.decode_j,
            "idle_j": t.idle_j,
            "load_j": t.load_j,
            "load_windows": t.load_windows,
            "windows_j": t.windows_j,
            "meter_total_j": meter_total_j,
            "meter_total_basis": "sum of windows (CPU affinity changed)"
            if self.tiled_total
            else "one window",
            "invariant_gap_j": gap,
            "invariant_gap_rel": abs(gap) / meter_total_j if meter_total_j > 0 else 0.0,
            "accounting_gap_j": t.invariant_gap_j(),  # requests + idle + load - windows: rounding only
            "step_windows": t.step_windows,
            "idle_windows": t.idle_windows,
            "carbon_g": carbon_total,
            "intensity_g_per_kwh": self.intensity_g_per_kwh,
            "output_tokens": output_tokens,
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
