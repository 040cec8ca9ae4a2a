"""Measure several configurations in turns, each in a process of its own.

Comparing close configurations needs the same moments of machine load spread over all of them, so they are
measured in rounds (A B C, B C A, C A B, ...). Each runs in its own process, its engine loaded once and idle
while the others measure: two engines in one process interfere (on 2 vCPUs a llama.cpp run measured right
after float32 transformers in the same process ran 25-35% slower, and stayed slower while the other was
loaded), and a user's `greenlm measure` runs one engine alone in a fresh process, which is what these figures
must predict.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

from greenlm.engines.saved import apply_saved_run
from greenlm.errors import GreenlmError
from greenlm.io import noop
from greenlm.models.spec import resolve_model
from greenlm.progress import Progress, ProgressEvent, no_progress
from greenlm.workload.config import MeasureConfig
from greenlm.workload.result import MeasureResult
from greenlm.workload.runner import engine_for, run_measure

STOP_TIMEOUT_S = 30.0


def _worker(conn, config: MeasureConfig) -> None:
    """One configuration's process: load its engine once, then measure each time the driver asks."""
    engine = None
    try:
        spec = resolve_model(config.model)
        # as run_measure loads it: a model optimize saved runs with its saved engine and threads
        engine = engine_for(apply_saved_run(config, spec, noop), spec)
        conn.send(("ready", None))
        while conn.recv():
            conn.send(("ok", run_measure(config, engine=engine)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the driver reports it
        pass
    except Exception as exc:  # the driver raises it as one line; a child's traceback helps no one
        conn.send(("error", str(exc) if isinstance(exc, GreenlmError) else f"{type(exc).__name__}: {exc}"))
    finally:
        if engine is not None:
            engine.close()


class _Worker:
    """A configuration's measuring process and the driver's end of its pipe."""

    def __init__(self, context, name: str, config: MeasureConfig):
        self.name = name
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker, args=(child, config), name="greenlm-measure", daemon=True
        )
        self.process.start()
        child.close()

    def reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise GreenlmError(
                f"the measuring process for {self.name} ended without an answer (exit code "
                f"{self.process.exitcode}): out of memory?"
            ) from None
        if status == "error":
            raise GreenlmError(f"{self.name}: {value}")
        return value

    def measure(self) -> MeasureResult:
        self.conn.send(True)
        return self.reply()

    def stop(self) -> None:
        try:
            self.conn.send(False)
        except OSError:  # already gone
            pass
        self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


def measure_interleaved(
    configs: dict[str, MeasureConfig],
    rounds: int,
    progress: Progress = no_progress,
    announce: Callable[[str], None] = noop,
) -> dict[str, list[MeasureResult]]:
    """{name: one MeasureResult per round}: `rounds` rounds over `configs` (each run as given, usually with
    repeats=1), every round starting at the next configuration, each in its own process."""
    context = multiprocessing.get_context("spawn")  # a fork would copy the driver's torch threads and state
    workers: dict[str, _Worker] = {}
    results: dict[str, list[MeasureResult]] = {name: [] for name in configs}
    names = list(configs)
    total, done = rounds * len(names), 0
    try:
        for name, config in configs.items():
            workers[name] = _Worker(context, name, config)
        for worker in workers.values():
            worker.reply()  # loaded
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                announce(f"round {r + 1}/{rounds}: {name}")
                results[name].append(workers[name].measure())
                done += 1
                progress(ProgressEvent("interleaved rounds", done, total, "measurements"))
    finally:
        for worker in workers.values():
            worker.stop()
    return results
