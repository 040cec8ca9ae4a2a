"""An upstream on this host: its process found by the port it listens on, metered with its descendants by the
cpu-model estimate, and followed when it restarts on the same port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.gateway.meters import (
    ProcessTreeMeter,
    find_listener,
    is_local_host,
    local_meter,
    resolve_local_meters,
)

# listens, then burns CPU in a child process (the tree counts it) until killed
LISTENER = """
import socket, subprocess, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
child = subprocess.Popen([sys.executable, "-c", "while True: sum(range(10000))"])
print("ready", flush=True)
time.sleep(600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_listener(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen) -> None:
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait(10)


def test_the_process_on_a_port_is_found_and_its_tree_metered():
    port = free_port()
    proc = start_listener(port)
    try:
        found = find_listener("127.0.0.1", port)
        assert found.pid == proc.pid and "port" in found.how
        meter = ProcessTreeMeter("127.0.0.1", port)
        a = meter.read()
        time.sleep(0.5)
        b = meter.read()
        m = meter.measure(a, b)
        # the child burns CPU: its busy time (at least 0.05 core-s of the 0.5 s, on a busy machine) is the tree's
        assert m.detail_j["cpu-dynamic"] >= 0.05 * meter._inner.dynamic_watts_per_core
        assert m.energy_source == "estimated" and f"pid {proc.pid}" in meter.note
    finally:
        stop(proc)


def test_a_restart_on_the_same_port_is_followed_and_windows_stay_additive():
    port = free_port()
    proc = start_listener(port)
    meter = ProcessTreeMeter("127.0.0.1", port)
    try:
        a = meter.read()
        stop(proc)
        b = meter.read()  # gone: nothing more to meter
        assert "ended" in meter.note or "none now" in meter.note
        proc = start_listener(port)
        c = meter.read()  # attaches to the new process (a baseline)
        time.sleep(0.3)
        d = meter.read()
        assert meter.listener.pid == proc.pid
        assert meter.measure(c, d).total_j > 0
        total = meter.measure(a, d).total_j
        parts = sum(meter.measure(x, y).total_j for x, y in ((a, b), (b, c), (c, d)))
        assert total == pytest.approx(parts)
    finally:
        stop(proc)


def test_nothing_listening_is_one_line_and_the_host_is_local():
    port = free_port()
    with pytest.raises(GreenlmError, match=f"nothing listens on 127.0.0.1:{port} on this machine"):
        find_listener("127.0.0.1", port)
    detached = ProcessTreeMeter("127.0.0.1", port, required=False)  # an upstream down at start
    assert detached.read().values == {} and "none now" in detached.note
    assert is_local_host("127.0.0.1") and is_local_host("localhost")
    assert not is_local_host("no-such-host.invalid")
    with pytest.raises(GreenlmError, match="no such process"):
        ProcessTreeMeter("127.0.0.1", port, pid=2**22 + 12345)


def test_auto_without_rapl_meters_each_upstream_tree():
    names, why_not = resolve_local_meters("auto")
    if "rapl" in names:
        pytest.skip("this machine has RAPL: auto takes the package counter")
    assert names[0] == "cpu-model" and any("RAPL" in w for w in why_not)
    meter, note = local_meter(["cpu-model"], [("127.0.0.1", 1, os.getpid(), True)], EnergySettings())
    assert "the gateway's own process" in note
    meter.close()
