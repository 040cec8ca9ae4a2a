"""The final round: re-measure the best feasible candidates and both baselines interleaved, on this host and
meter, and choose on those medians.

Candidates are measured one after another during the search, minutes apart; on a shared machine the load in
those minutes differs, and between close candidates that is the whole difference. Re-measuring the finalists
in turns (A B C, B C A, C A B, ...) spreads slow and fast moments over all of them, and the ratio to each
baseline comes from the same rounds on the same meter and host.
"""

from __future__ import annotations

import multiprocessing
import socket
import statistics
from collections.abc import Callable

from greenlm.errors import GreenlmError
from greenlm.io import noop
from greenlm.optimize.candidate import load_candidate_engine, measure_config
from greenlm.optimize.config import EvalSettings
from greenlm.optimize.space import Candidate
from greenlm.workload.runner import run_measure

COST = "decode_j_per_token"


def _candidate(row: dict) -> Candidate:
    return Candidate(
        recipe=tuple(row.get("recipe") or ()),
        engine=row["engine"],
        quant_type=row.get("quant_type"),
        threads=row.get("threads"),
        speculative=row.get("speculative"),
    )


def _measure_worker(conn, settings: EvalSettings, candidate: Candidate, model_path: str | None) -> None:
    """One finalist's process: load its engine once, then measure on each request until told to stop."""
    engine = None
    try:
        engine = load_candidate_engine(settings, candidate, model_path)
        conn.send(("ready", None))
        config = measure_config(settings, candidate, model_path, repeats=1, num_prompts=settings.num_prompts)
        while conn.recv():
            conn.send(("ok", run_measure_once(config, engine)))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the driver reports it
        pass
    except Exception as exc:  # the driver raises it as one line; a traceback from a child helps no one
        conn.send(("error", str(exc) if isinstance(exc, GreenlmError) else f"{type(exc).__name__}: {exc}"))
    finally:
        if engine is not None:
            engine.close()


class _Worker:
    """A finalist's measuring process and the driver's end of its pipe."""

    def __init__(self, context, settings: EvalSettings, row: dict):
        self.label = row.get("label", row["key"])
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_measure_worker,
            args=(child, settings, _candidate(row), row.get("model_path")),
            name=f"greenlm-final-{row['key']}",
            daemon=True,
        )
        self.process.start()
        child.close()

    def reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise GreenlmError(
                f"the final round's process for {self.label} ended without an answer (exit code "
                f"{self.process.exitcode}): out of memory?"
            ) from None
        if status == "error":
            raise GreenlmError(f"final round, {self.label}: {value}")
        return value

    def measure(self) -> dict:
        self.conn.send(True)
        return self.reply()

    def stop(self) -> None:
        try:
            self.conn.send(False)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


def final_round(
    settings: EvalSettings,
    rows: list[dict],
    rounds: int,
    progress: Callable[[int, int], None] = noop,
) -> dict[str, dict]:
    """{row key: median and spread of decode J/token and tokens/s over `rounds` interleaved single-repeat
    measurements, with the meter and host}.

    Each row runs in its own process, loaded once and idle while the others measure: two engines in one
    process interfere (a llama.cpp candidate measured right after float32 transformers in the same process
    ran 25-40% slower on 2 vCPUs, the threads and caches the other left behind), and `greenlm measure` on the
    saved winner runs alone in a fresh process, which is what the final figure must predict."""
    context = multiprocessing.get_context("spawn")  # a fork would copy the driver's torch threads and state
    workers: dict[str, _Worker] = {}
    figures: dict[str, list[dict]] = {row["key"]: [] for row in rows}
    total, done = rounds * len(rows), 0
    try:
        for row in rows:
            workers[row["key"]] = _Worker(context, settings, row)
        for worker in workers.values():
            worker.reply()  # loaded
        for r in range(rounds):
            order = rows[r % len(rows) :] + rows[: r % len(rows)]  # each starts a round in turn
            for row in order:
                figures[row["key"]].append(workers[row["key"]].measure())
                done += 1
                progress(done, total)
    finally:
        for worker in workers.values():
            worker.stop()
    host = socket.gethostname()
    return {key: _summary(values, host) for key, values in figures.items()}


def run_measure_once(config, engine) -> dict:
    record = run_measure(config, engine=engine).to_dict()
    return {
        k: record[k]
        for k in (COST, "decode_tokens_per_s", "carbon_g_per_1k_tokens", "meter", "energy_source")
    }


def _summary(values: list[dict], host: str) -> dict:
    costs = [v[COST] for v in values]
    return {
        COST: statistics.median(costs),
        "spread": {"min": min(costs), "max": max(costs)},
        "per_round": costs,
        "decode_tokens_per_s": statistics.median(v["decode_tokens_per_s"] for v in values),
        "carbon_g_per_1k_tokens": statistics.median(v["carbon_g_per_1k_tokens"] for v in values),
        "meter": values[0]["meter"],
        "energy_source": values[0]["energy_source"],
        "host": host,
        "rounds": len(values),
    }


def within_noise(a: dict, b: dict) -> bool:
    """Two finalists whose ranges over the rounds overlap: the order between them is not established."""
    return a["spread"]["max"] >= b["spread"]["min"] and b["spread"]["max"] >= a["spread"]["min"]
