"""1 thread against all threads on llama.cpp, under the CPU model's static + dynamic rule (issue 12, part 1).

The built-in GGUF on the llama.cpp engine, loaded once per thread count, measured in interleaved rounds
(1, all, all, 1, 1, all, ...: the order alternates so drift in machine load hits both alike), every round a
full `greenlm measure` pass (run_measure) with one repeat. Reports per thread count the median decode tokens/s
and decode J/token with its parts (static: the cores the process may use for every wall second; dynamic:
busy core-seconds; memory), their spread over rounds, the ratios all/1, and which wins, or that the two are
within noise (their ranges overlap). Under the old busy-seconds-only rule one thread could only look cheaper;
now a slower run pays for the time it keeps the cores on.

Prints JSON and writes it to bench/results/threads.json (with date, CPU, cores, load average, git commit).
    .venv/bin/python bench/threads.py                    # about 5 minutes on 2 quiet cores
    .venv/bin/python bench/threads.py --quick --out /tmp/threads.json    # checks the script end to end
Run it on an otherwise idle machine: llama.cpp's threads wait for each other at every operation, so another
busy process slows the all-threads rows far more than the 1-thread rows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchlib import Recorder, log

from greenlm.energy.settings import EnergySettings
from greenlm.engines import create_engine
from greenlm.engines.llamacpp_engine import default_threads
from greenlm.models import DEFAULT_MODEL, resolve_model
from greenlm.workload import MeasureConfig, run_measure

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "decode_tokens_per_s",
    "decode_j_per_token",
    "decode_static_j_per_token",
    "decode_dynamic_j_per_token",
    "decode_memory_j_per_token",
    "prefill_tokens_per_s",
    "prefill_j_per_token",
    "tokens_per_j",
)


def figures(record: dict) -> dict:
    memory = record["energy_domains"].get("memory", {}).get("decode_j_per_token")
    return {
        **{k: record.get(k) for k in FIGURES if k != "decode_memory_j_per_token"},
        "decode_memory_j_per_token": memory,
    }


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for key in FIGURES:
        values = [r[key] for r in rounds if r[key] is not None]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        else:
            out[key] = None  # a hardware meter measures the package whole: no static/dynamic split
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rounds", type=int, default=7, help="interleaved rounds (each thread count once a round)"
    )
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--watts-per-core", type=float, default=None)
    ap.add_argument("--idle-watts-per-core", type=float, default=None)
    ap.add_argument(
        "--quick", action="store_true", help="2 rounds, 1 short prompt: checks the script, no figures"
    )
    ap.add_argument("--out", default=None, help="where the JSON goes (default bench/results/threads.json)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.prompts, args.prompt_tokens, args.new_tokens = 2, 1, 32, 16
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    all_threads = default_threads()
    counts = [1, all_threads] if all_threads > 1 else [1]
    spec = resolve_model(None)
    rec = Recorder("threads")
    start = time.perf_counter()
    engines = {t: create_engine("llamacpp", spec, threads=t) for t in counts}
    rounds: dict[int, list[dict]] = {t: [] for t in counts}
    records: dict[int, list[dict]] = {t: [] for t in counts}
    try:
        for index in range(args.rounds):
            order = counts if index % 2 == 0 else counts[::-1]
            for threads in order:
                config = MeasureConfig(
                    model=None,
                    engine="llamacpp",
                    threads=threads,
                    device="cpu",
                    num_prompts=args.prompts,
                    prompt_tokens=args.prompt_tokens,
                    max_new_tokens=args.new_tokens,
                    repeats=1,
                    energy=EnergySettings(
                        meter=args.meter,
                        watts_per_core=args.watts_per_core,
                        idle_watts_per_core=args.idle_watts_per_core,
                    ),
                )
                record = run_measure(config, engine=engines[threads]).to_dict()
                rounds[threads].append(figures(record))
                records[threads].append(record)
                log(
                    f"round {index + 1}/{args.rounds} threads {threads}: "
                    f"{record['decode_tokens_per_s']:.1f} decode tok/s, {record['decode_j_per_token']:.3g} J/token"
                )
    finally:
        for engine in engines.values():
            engine.close()

    per_threads = {str(t): summarize(rounds[t]) for t in counts}
    result = {
        "benchmark": "threads",
        "model": DEFAULT_MODEL,
        "gguf": str(spec.path),
        "engine": "llamacpp",
        "quant_type": records[1][0].get("quant_type"),
        "thread_counts": counts,
        "workload": {
            "prompts": args.prompts,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "order": "interleaved, alternating which thread count goes first",
            "statistic": "median over rounds (min and max beside it)",
            "quick": args.quick,
        },
        "meter": records[1][0]["meter"],
        "energy_source": records[1][0]["energy_source"],
        "meter_note": records[1][0]["meter_note"],
        "meter_details": records[1][0]["meter_details"],
        "results": per_threads,
        "rounds": {str(t): rounds[t] for t in counts},
        "wall_s": time.perf_counter() - start,
    }
    if len(counts) == 2:
        one, many = per_threads["1"], per_threads[str(all_threads)]
        j1, jn = one["decode_j_per_token"], many["decode_j_per_token"]
        overlap = j1["min"] <= jn["max"] and jn["min"] <= j1["max"]
        winner = "1" if j1["median"] < jn["median"] else str(all_threads)
        result["comparison"] = {
            "decode_j_per_token_ratio_all_over_1": jn["median"] / j1["median"],
            "decode_tokens_per_s_ratio_all_over_1": (
                many["decode_tokens_per_s"]["median"] / one["decode_tokens_per_s"]["median"]
            ),
            "lower_decode_j_per_token": f"{winner} thread(s)",
            "within_noise": overlap,
            "note": (
                "the J/token ranges over rounds overlap: the difference is within the noise of this run"
                if overlap
                else "the J/token ranges over rounds do not overlap"
            ),
        }
    else:
        result["comparison"] = {
            "note": f"this machine lets the process use {all_threads} CPU: nothing to compare"
        }
    rec.finish(result, out=args.out)


if __name__ == "__main__":
    main()
