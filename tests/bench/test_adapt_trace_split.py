"""bench/adapt_trace.py's outside split of a server's energy: static power follows the CPU affinity as it
changes (tiled windows), dynamic power the busy core-seconds."""

import os
import time

import adapt_trace
import pytest


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_split_parts_add_up_and_follow_the_formula():
    split = adapt_trace.EnergySplit(os.getpid(), interval_s=0.05)
    cores = split.meter.share().core_equivalents
    split.start()
    burn(0.3)
    parts = split.stop()
    assert parts["error"] is None
    assert parts["total_j"] == pytest.approx(parts["static_j"] + parts["dynamic_j"] + parts["memory_j"])
    assert parts["core_s"] == pytest.approx(cores * parts["duration_s"], rel=1e-6)
    assert parts["static_j"] == pytest.approx(parts["idle_watts_per_core"] * parts["core_s"], rel=1e-6)
    assert parts["dynamic_j"] > 0 and parts["duration_s"] >= 0.3


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs, Linux"
)
def test_static_part_follows_an_affinity_change_inside_the_window():
    before = os.sched_getaffinity(0)
    split = adapt_trace.EnergySplit(os.getpid(), interval_s=0.05)
    all_cores = split.meter.share().core_equivalents
    try:
        split.start()
        time.sleep(0.2)
        os.sched_setaffinity(0, {min(before)})
        one_core = split.meter.share().core_equivalents
        time.sleep(0.8)
        parts = split.stop()
    finally:
        os.sched_setaffinity(0, before)
    exact = all_cores * 0.2 + one_core * 0.8
    edges_only = (all_cores + one_core) / 2 * parts["duration_s"]  # what one window would say
    # the tiles land near the exact core-seconds, far nearer than the two edges' mean would
    assert abs(parts["core_s"] - exact) < abs(edges_only - exact) / 2
