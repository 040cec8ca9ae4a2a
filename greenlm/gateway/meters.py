"""Meters for an upstream on this host: its process tree under the cpu-model estimate, or the package counters
(RAPL, NVML), which see every process of the machine, the gateway's own included.

The upstream's process is found by the port it listens on (psutil's view of the sockets: it needs the same
user as the upstream, or root, to see which process holds a socket) or given by pid. Its tree is metered by
`CpuModelMeter(pid=..., include_children=True)`, so an engine's worker processes count. An upstream restarts
under a running gateway (a new process on the same port), so `ProcessTreeMeter` keeps running totals
(`AccumulatingMeter`): each read adds what the process metered since the previous read, and finds the new
process when the old one is gone.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from abc import abstractmethod
from dataclasses import dataclass

import psutil

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, window_duration_s
from greenlm.energy.composite import CompositeMeter
from greenlm.energy.cpu_model import CpuModelMeter
from greenlm.energy.detect import meter_names
from greenlm.energy.nvml import NvmlMeter
from greenlm.energy.rapl import RaplMeter
from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError, MeterUnavailable

log = logging.getLogger(__name__)

_ENERGY, _DETAIL = "e:", "d:"
PACKAGE_NOTE = (
    "a package counter sees every process on this machine (the gateway's own, and any other work), not only "
    "the upstream's"
)


class AccumulatingMeter(Meter):
    """A meter whose source may restart under it: each read adds the energy since the previous read to running
    totals per domain, so readings stay cumulative and any window between two readings is a plain difference.
    Subclasses give `_delta()`: (the time of the reading, its energy since the previous one)."""

    def __init__(self) -> None:
        self._totals: dict[str, float] = {}

    @abstractmethod
    def _delta(self) -> tuple[float, Measurement | None]:
        """(perf_counter time of this reading, what was spent since the previous one; None: nothing)."""

    def read(self) -> Reading:
        time_s, spent = self._delta()
        if spent is not None:
            for prefix, domains in ((_ENERGY, spent.energy_j), (_DETAIL, spent.detail_j)):
                for domain, joules in domains.items():
                    self._totals[prefix + domain] = self._totals.get(prefix + domain, 0.0) + joules
        return Reading(time_s=time_s, values=dict(self._totals))

    def measure(self, start: Reading, end: Reading) -> Measurement:
        duration_s = window_duration_s(start, end)

        def spent(prefix: str) -> dict[str, float]:
            return {
                k[len(prefix) :]: max(0.0, v - start.values.get(k, 0.0))
                for k, v in end.values.items()
                if k.startswith(prefix)
            }

        return Measurement(
            meter=self.name,
            energy_source=self.energy_source,
            duration_s=duration_s,
            energy_j=spent(_ENERGY) or {"total": 0.0},
            detail_j=spent(_DETAIL),
        )


# ---- finding the upstream's process -----------------------------------------------------------------------
@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    how: str  # how it was found, for the meter's note


def host_addresses(host: str) -> set[str]:
    """The IP addresses `host` resolves to (empty when it does not resolve)."""
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return set()


def is_local_host(host: str) -> bool:
    """Whether `host` is this machine: a loopback address, or an address of one of its interfaces."""
    addresses = host_addresses(host)
    if not addresses:
        return False
    mine = {a.address.split("%")[0] for nics in psutil.net_if_addrs().values() for a in nics}
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback or a in mine for a in addresses)


def find_listener(host: str, port: int) -> Listener:
    """The process listening on host:port (the root of the tree when several share the socket), or one line
    saying why it cannot be found."""
    wanted = host_addresses(host) | {"0.0.0.0", "::"}
    try:
        sockets = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        raise GreenlmError(
            f"cannot list this machine's sockets to find the process on port {port}: run the gateway as root or "
            "give --upstream-pid PID"
        ) from None
    pids, hidden = set(), False
    for s in sockets:
        if s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == port and s.laddr.ip in wanted:
            if s.pid is None:
                hidden = True
            else:
                pids.add(s.pid)
    if not pids:
        if hidden:
            raise GreenlmError(
                f"a process listens on {host}:{port} but this user cannot see which (it runs as another user): "
                "run the gateway as that user or as root, or give --upstream-pid PID"
            )
        raise GreenlmError(f"nothing listens on {host}:{port} on this machine: start the upstream first")
    roots = [p for p in pids if not _ancestor_in(p, pids)]
    pid = min(roots or pids)
    try:
        name = psutil.Process(pid).name()
    except psutil.Error:
        name = "?"
    return Listener(pid, name, f"listening on port {port}")


def _ancestor_in(pid: int, pids: set[int]) -> bool:
    try:
        return any(parent.pid in pids for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


class ProcessTreeMeter(AccumulatingMeter):
    """The cpu-model estimate of an upstream's process and its descendants, following the upstream through a
    restart on the same port (with a pid given, it follows that process only: gone is gone)."""

    name = "cpu-model"
    energy_source: EnergySource = "estimated"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        pid: int | None = None,
        energy: EnergySettings = EnergySettings(),
        required: bool = True,
    ):
        """`required` False: an upstream down at start: metered from when a process listens on the port."""
        super().__init__()
        self.host, self.port, self.fixed_pid, self.energy = host, port, pid, energy
        self._inner: CpuModelMeter | None = None
        self._prev: Reading | None = None
        self.listener: Listener | None = None
        self.gone_note = ""
        if pid is not None:
            try:
                name = psutil.Process(pid).name()
            except psutil.Error as exc:
                raise GreenlmError(
                    f"--upstream-pid {pid}: no such process here ({exc}): give a running pid"
                ) from None
            self._attach(Listener(pid, name, "given by --upstream-pid"))
        else:
            try:
                self._attach(find_listener(host, port))
            except GreenlmError as exc:
                if required:
                    raise
                self.gone_note = str(exc)

    def _attach(self, listener: Listener) -> None:
        self._inner = CpuModelMeter(
            watts_per_core=self.energy.watts_per_core,
            idle_watts_per_core=self.energy.idle_watts_per_core,
            include_children=True,
            pid=listener.pid,
        )
        self._prev = self._inner.read()
        self.listener = listener
        self.gone_note = ""

    @property
    def note(self) -> str:
        inner, listener = self._inner, self.listener
        if inner is None or listener is None:
            return f"the process tree on port {self.port}: none now ({self.gone_note})"
        own = " (the gateway's own process: its work is counted too)" if listener.pid == os.getpid() else ""
        return (
            f"the upstream's process tree: pid {listener.pid} ({listener.name}, "
            f"{listener.how}){own}; {inner.idle_watts_per_core:.3g} W per allotted core of its CPU affinity "
            f"for every second ({inner.idle_source}) + {inner.dynamic_watts_per_core:.3g} W per busy core "
            f"(watts per core: {inner.watts_source})"
        )

    def _delta(self) -> tuple[float, Measurement | None]:
        if self._inner is None and self.fixed_pid is None:
            try:
                self._attach(find_listener(self.host, self.port))
                log.warning("meter: the upstream on port %s is back as pid %s", self.port, self.listener.pid)
            except GreenlmError as exc:
                self.gone_note = str(exc)
        if self._inner is None:
            return time.perf_counter(), None
        try:
            reading = self._inner.read()
        except psutil.Error as exc:  # the process ended: nothing more to meter until one listens again
            log.warning("meter: upstream process %s is gone (%s)", self.listener.pid, exc)
            self._inner, self.gone_note = None, f"pid {self.listener.pid} ended"
            return time.perf_counter(), None
        spent = self._inner.measure(self._prev, reading)
        self._prev = reading
        return reading.time_s, spent

    def describe(self) -> dict:
        inner = self._inner.describe() if self._inner is not None else {}
        return {
            **inner,
            "meter": self.name,
            "energy_source": self.energy_source,
            "upstream_process": self.note,
        }


def resolve_local_meters(spec: str) -> tuple[list[str], list[str]]:
    """The meters `--meter` `spec` means for upstreams on this host, and why better ones are absent. auto: the
    CPU by RAPL when present, else each upstream's process tree by the cpu-model estimate; plus NVML's GPUs
    when present."""
    names = meter_names(spec)
    why_not: list[str] = []
    if names != ["auto"]:
        return names, why_not
    names = []
    try:
        RaplMeter().close()
        names.append("rapl")
    except MeterUnavailable as exc:
        why_not.append(f"no RAPL: {exc}")
        names.append("cpu-model")
    try:
        NvmlMeter().close()
        names.append("nvml")
    except MeterUnavailable as exc:
        why_not.append(f"no NVML: {exc}")
    return names, why_not


def shares_package(names: list[str]) -> bool:
    """Whether these meters include a package counter: every upstream of this host then shares one meter (a
    package counter cannot tell them apart)."""
    return "rapl" in names or "nvml" in names


def local_meter(
    names: list[str],
    hosts: list[tuple[str, int, int | None, bool]],
    energy: EnergySettings,
    why_not: list[str] = (),
) -> tuple[Meter, str]:
    """One meter over the upstreams of this host (`hosts`: (host, port, pid or None, up now) each), and a note
    saying what it counts."""
    meters: list[Meter] = []
    notes: list[str] = []
    try:
        for name in names:
            if name == "cpu-model":
                trees = [
                    ProcessTreeMeter(h, p, pid=pid, energy=energy, required=up) for h, p, pid, up in hosts
                ]
                meters += trees
                notes += [t.note for t in trees]
            elif name == "rapl":
                meters.append(RaplMeter())
                notes.append(f"rapl: {PACKAGE_NOTE}")
            else:
                meters.append(NvmlMeter())
                notes.append(f"nvml: {PACKAGE_NOTE}")
    except BaseException:
        for m in meters:
            m.close()
        raise
    meter = meters[0] if len(meters) == 1 else CompositeMeter(meters)
    note = f"meter: {meter.name} ({meter.energy_source}): " + "; ".join(notes)
    if why_not:
        note += " — " + "; ".join(why_not)
    return meter, note
