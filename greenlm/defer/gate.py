"""Deferred training: a gate a training loop consults between optimizer steps, "may I run now, or wait until
when?". With a deadline and a grid forecast it plans the rest of the run (its steps left x the measured time
and energy per step: the training forecast) into the cleanest slots before the deadline, with the same
planner as batches; in a slot the plan leaves out it checkpoints and pauses, and it resumes when the plan's
next slot begins. It keeps what the run emitted (each step's energy at the grid intensity of its time) and what
it would have emitted run straight through from its start (the same steps back to back, at the intensity of
those times: the trace itself for a replay, the readings observed while it ran for a live grid), and how long
and at what energy it paused (the meter keeps running: a paused process still holds its memory and cores).

    gate = RunGate(open_grid(settings, intensity), deadline_s=24 * 3600, meter=meter)
    ...after each step: gate.between_steps(step=s, total_steps=n, step_s=..., step_j=..., checkpoint=save)
    summary = gate.summary()    # carbon against running straight through, pauses, decisions
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
import time
from collections.abc import Callable

from greenlm.defer.clock import iso
from greenlm.defer.forecast import TraceForecaster
from greenlm.defer.grid import GridSetup
from greenlm.defer.planner import Job, plan
from greenlm.energy.carbon import carbon_g

log = logging.getLogger(__name__)

RECENT_STEPS = 20  # the steps the time and energy per step are the median of
MAX_NAP_S = 1.0  # wall seconds between re-plans while paused (a forecast may change)


class RunGate:
    def __init__(
        self,
        grid: GridSetup,
        deadline_s: float,
        *,
        pue: float = 1.0,
        meter=None,
        announce: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """`deadline_s`: seconds of grid time from now by which the run must be done."""
        self.grid, self.clock, self.pue, self.meter = grid, grid.clock, float(pue), meter
        self.announce = announce
        self.sleep = sleep
        self.start_s = self.clock.now_s()
        self.deadline_s = self.start_s + float(deadline_s)
        self._steps: list[tuple[float, float]] = []  # (wall seconds, joules) of each step
        self._observed: list[tuple[float, float]] = []  # (grid s, g/kWh) seen while the run was alive
        self.energy_j = self.carbon_g = 0.0
        self.straight_carbon_g = 0.0
        self._straight_s = self.start_s  # where the straight-through run would be now
        self.paused_s = 0.0
        self.pause_j = 0.0
        self.pauses = 0
        self.decisions: list[dict] = []
        self.late = False
        grid.start()
        self._observe()

    def close(self) -> None:
        self.grid.close()

    def _observe(self) -> float:
        now, value = self.clock.now_s(), self.grid.signal.now().intensity_g_per_kwh
        if not self._observed or now > self._observed[-1][0]:
            self._observed.append((now, value))
        return value

    def _intensity_at(self, t: float) -> float:
        """What the grid did at grid time `t`: the trace itself for a replay, else the reading observed then."""
        forecaster = self.grid.forecaster
        if isinstance(forecaster, TraceForecaster):
            return forecaster.actual(t)
        i = bisect.bisect_right(self._observed, (t, math.inf)) - 1
        return self._observed[max(0, i)][1]

    def _say(self, entry: dict) -> None:
        self.decisions.append(entry)
        message = f"deferred training: {entry['action']} at {entry['time']} ({entry['intensity_g_per_kwh']:.0f} g/kWh): {entry['detail']}"
        if self.announce is not None:
            self.announce(message)
        else:
            log.warning(message)

    def between_steps(
        self, *, step: int, total_steps: int, step_s: float, step_j: float, checkpoint: Callable[[], None]
    ) -> float:
        """Account for the step just done; then, if the plan leaves the slot now out, checkpoint and wait for
        the next planned slot. Returns the seconds it paused (0 when it ran on)."""
        self._observe()
        half = step_s * self.clock.speed / 2  # each step at the intensity of its middle
        self._steps.append((step_s, step_j))
        self.energy_j += step_j
        self.carbon_g += carbon_g(step_j, self._intensity_at(self.clock.now_s() - half), self.pue)
        self.straight_carbon_g += carbon_g(step_j, self._intensity_at(self._straight_s + half), self.pue)
        self._straight_s += 2 * half
        left = total_steps - step
        if left <= 0:
            return 0.0
        paused_s, saved = 0.0, False
        while True:
            decision = self._plan(left)
            if decision is None:
                break
            if not saved:
                checkpoint()
                saved = True
                self.pauses += 1
                start_reading = self.meter.read() if self.meter is not None else None
                self._say(decision)
            wall = min(
                MAX_NAP_S, max(0.01, self.clock.wall_seconds(decision["resume_s"] - self.clock.now_s()))
            )
            t0 = self.clock.wall()
            self.sleep(wall)
            paused_s += self.clock.wall() - t0
            self._observe()
        if saved:
            if start_reading is not None:
                self.pause_j += self.meter.measure(start_reading, self.meter.read()).total_j
            self.paused_s += paused_s
            now = self.clock.now_s()
            self._say({"action": "resume", "time": iso(now), "t_s": now, "intensity_g_per_kwh": self.grid.signal.now().intensity_g_per_kwh,
                       "detail": f"the plan's slot begins; paused {paused_s:.1f} s"})  # fmt: skip
        return paused_s

    def _plan(self, steps_left: int) -> dict | None:
        """None to run now; else the pause decision (when it resumes, why)."""
        now = self.clock.now_s()
        recent = self._steps[-RECENT_STEPS:]
        step_s = statistics.median(s for s, _ in recent)
        step_j = statistics.median(j for _, j in recent)
        if step_s <= 0:
            return None
        work_grid_s = steps_left * step_s * self.clock.speed  # grid seconds of compute left
        slots = self.grid.forecaster.forecast(now, max(self.deadline_s - now, 1.0)).slots(
            now, self.deadline_s
        )
        job = Job("training", work_grid_s, self.deadline_s, "training")
        the_plan = plan(
            [job],
            slots,
            now_s=now,
            capacity_tokens_per_s=1.0,
            j_per_token=step_j / (step_s * self.clock.speed),
            pue=self.pue,
        )
        if the_plan.runs_now("training"):
            if the_plan.late_jobs and not self.late:
                self.late = True
                log.warning("deferred training: its steps left no longer fit before the deadline; it runs on")
            return None
        resume = the_plan.next_run_s("training")
        slot = next((s for s in the_plan.slots if s.start_s <= resume < s.end_s), None)
        now_g = self.grid.signal.now().intensity_g_per_kwh
        return {
            "action": "pause", "time": iso(now), "t_s": now, "intensity_g_per_kwh": now_g, "resume_s": resume,
            "detail": f"checkpointed; resumes at {iso(resume)} ({slot.intensity_g_per_kwh:.0f} g/kWh forecast); "
            f"{steps_left} steps left, done by {iso(the_plan.finish_s('training'))} (deadline {iso(self.deadline_s)})",
        }  # fmt: skip

    def summary(self) -> dict:
        """What the run emitted against running straight through, with the pauses and the grid."""
        now = self.clock.now_s()
        saving = self.straight_carbon_g - self.carbon_g
        return {
            "deadline": iso(self.deadline_s),
            "finished": iso(now),
            "deadline_met": now <= self.deadline_s,
            "steps": len(self._steps),
            "steps_energy_j": self.energy_j,
            "carbon_g": self.carbon_g,
            "carbon_if_straight_through_g": self.straight_carbon_g,
            "saving_g": saving,
            "saving_pct": 100.0 * saving / self.straight_carbon_g if self.straight_carbon_g > 0 else 0.0,
            "pauses": self.pauses,
            "paused_s": self.paused_s,
            "pause_energy_j": self.pause_j,
            "decisions": self.decisions,
            "grid": self.grid.describe(),
            "rule": (
                "the steps left x the median measured step (time, energy) planned into the cleanest forecast "
                "slots before the deadline; carbon: each step's metered energy at the grid intensity of its "
                "time; straight through: the same steps back to back from the start, at the intensity of those "
                "times; the pauses' energy is in the run's total, not in these step figures"
            ),
        }
