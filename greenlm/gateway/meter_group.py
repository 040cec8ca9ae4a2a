"""A meter, the upstreams it covers and their energy account, with the clock that reads it.

The clock (a thread) reads the meter every `interval_s` and closes a window at each reading. A meter on this
host is also read at each request's end (and again a step's gap later when the other chunks of its last step
may still have been on their way), so a request's energy is final about when it ends; a remote counter is
only read by the clock, so a request that wants its energy in its usage waits for the next scrape (at most one
interval). A reading that fails (the exporter does not answer) leaves the window open, said once per outage;
requests that ended meanwhile get no energy in their usage (`settle` gives up after `settle_timeout_s`) and are
booked once the meter answers again, as are requests nobody waits for (`charge_later`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import psutil

from greenlm.energy import Meter
from greenlm.errors import GreenlmError
from greenlm.gateway.ledger import Charge, OutsideLedger
from greenlm.serve.attribution import PhaseCosts

log = logging.getLogger(__name__)
MAX_STEP_WAIT_S = 0.25  # at most this long for the rest of a request's last step, else the next tick
UPSTREAM_COSTS = "greenlm serve's own (its /energy phase_costs: the J/token its step split weighs by)"


class MeterGroup:
    def __init__(
        self,
        name: str,
        meter: Meter,
        note: str,
        *,
        upstreams: list[str],
        interval_s: float,
        local: bool,
        intensity_g_per_kwh: float,
        pue: float,
        upstream_costs: Callable[[], PhaseCosts | None] | None = None,
    ):
        """`upstream_costs`: the upstream's own split weights (greenlm serve's), read at each tick while
        requests are in flight; the split uses them while they come (said in /energy's phase_costs)."""
        self.name, self.meter, self.note, self.upstreams = name, meter, note, list(upstreams)
        self.upstream_costs = upstream_costs
        self.interval_s, self.local = interval_s, local
        # a remote meter: the next scrape (one interval), which may take its own time-out (at most 2 intervals)
        self.settle_timeout_s = 5.0 if local else 3 * interval_s + 2.0
        self.ledger = OutsideLedger(meter, meter.read(), intensity_g_per_kwh=intensity_g_per_kwh, pue=pue)
        self._edge = threading.Lock()  # readings are taken and handed over in order
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._later: set[str] = set()
        self._later_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failing: str | None = None  # why the last reading failed (None: the meter answers)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"greenlm-meter-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.upstream_costs is not None and self.ledger.in_flight:
                self.ledger.use_upstream_costs(self.upstream_costs(), UPSTREAM_COSTS)
            self.close_now()

    def close_now(self) -> bool:
        """Read the meter and close a window there (False: the meter did not answer)."""
        with self._edge:
            try:
                reading = self.meter.read()
            except (GreenlmError, psutil.Error, OSError) as exc:
                if self.failing is None:
                    log.warning("meter %s: reading failed, the window stays open: %s", self.name, exc)
                self.failing = str(exc)
                return False
            if self.failing is not None:
                log.warning("meter %s: answers again", self.name)
                self.failing = None
            self.ledger.close_window(reading)
        self._charge_ready()
        self._wake()
        return True

    def _wake(self) -> None:
        with self._later_lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def _charge_ready(self) -> None:
        with self._later_lock:
            ready = [rid for rid in self._later if self.ledger.ready(rid)]
            self._later.difference_update(ready)
        for rid in ready:
            self.ledger.charge(rid)

    def charge_later(self, request_id: str) -> None:
        """Book an ended request once a window has closed after its end; nobody waits for its figure. A local
        meter is read at the end anyway (in the background), so the idle time after it is not the request's."""
        if self.ledger.ready(request_id):
            self.ledger.charge(request_id)
            return
        with self._later_lock:
            self._later.add(request_id)
        if self.local:
            try:
                asyncio.get_running_loop().run_in_executor(None, self.close_now)
            except RuntimeError:  # no event loop here: read it now
                self.close_now()

    async def begin(self, request_id: str, start_s: float, **kwargs) -> None:
        """A request starts. On a local meter with nothing in flight, the idle window closes first (as greenlm
        serve closes it when a request is admitted), so the request's first window holds no idle time."""
        if self.local and self.ledger.in_flight == 0:
            await asyncio.to_thread(self.close_now)
            start_s = max(start_s, self.ledger.last_edge_s)
        self.ledger.begin(request_id, start_s, **kwargs)

    async def settle(self, request_id: str) -> Charge | None:
        """The energy of an ended request, once a window has closed after its end (a local meter is read
        now); None when the meter has not answered within `settle_timeout_s` (it is booked later)."""
        loop = asyncio.get_running_loop()
        if self.local and not self.ledger.ready(request_id):
            await asyncio.to_thread(self.close_now)
            if not self.ledger.ready(request_id):  # its last step's other chunks may still be on their way
                await asyncio.sleep(min(self.ledger.step_gap_s, MAX_STEP_WAIT_S))
                await asyncio.to_thread(self.close_now)
        deadline = loop.time() + self.settle_timeout_s
        while not self.ledger.ready(request_id):
            left = deadline - loop.time()
            if left <= 0:
                self.charge_later(request_id)
                return None
            future = loop.create_future()
            with self._later_lock:
                self._waiters.append((loop, future))
            if self.ledger.ready(request_id):  # a window closed between the check and the wait
                break
            try:
                await asyncio.wait_for(future, left)
            except TimeoutError:
                continue
        return self.ledger.charge(request_id)

    def pending(self) -> int:
        with self._later_lock:
            return len(self._later)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "upstreams": self.upstreams,
            "meter": self.meter.name,
            "energy_source": self.meter.energy_source,
            "note": self.note,
            "interval_s": self.interval_s,
            "read_at_request_end": self.local,
            "failing": self.failing,
        }

    def stop(self) -> None:
        """Stop the clock and close a last window (so requests that ended are booked). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.close_now()

    def close(self) -> None:
        """Stop, then release the meter."""
        self.stop()
        self.meter.close()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
