"""Meter overhead: the same generation workload bare, inside a greenlm meter window, and (if installed)
inside a codecarbon tracker, interleaved in one run so machine noise hits all three alike.

Prints JSON and writes bench/results/meter_overhead.json. Target: greenlm's overhead under 1% of the workload's wall time.
    .venv/bin/python bench/meter_overhead.py [--rounds 7] [--new-tokens 32] [--meter auto]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from benchlib import Recorder

from greenlm.energy import get_meter
from greenlm.engines import create_engine
from greenlm.models import resolve_model
from greenlm.workload.prompts import evaluation_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=None, help="where the JSON goes (default bench/results/meter_overhead.json)"
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--meter", default="auto")
    args = ap.parse_args()
    rec = Recorder("meter_overhead")

    engine = create_engine("transformers", resolve_model(None))
    prompts, text = evaluation_prompts(engine, None, 1, 64)
    meter = get_meter(args.meter)

    def workload() -> float:
        start = time.perf_counter()
        engine.decode(engine.prefill(prompts), args.new_tokens)
        return time.perf_counter() - start

    def metered() -> float:
        start = time.perf_counter()
        window = meter.begin_window()
        engine.decode(engine.prefill(prompts), args.new_tokens)
        meter.end_window(window)
        return time.perf_counter() - start

    tracker_factory = None
    try:
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)

        def tracker_factory():
            return OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False, log_level="error")
    except ImportError:
        pass

    def codecarbon_run() -> float:
        start = time.perf_counter()
        tracker = tracker_factory()
        tracker.start()
        engine.decode(engine.prefill(prompts), args.new_tokens)
        tracker.stop()
        return time.perf_counter() - start

    workload()  # warm-up
    bare, with_meter, with_cc = [], [], []
    for _ in range(args.rounds):
        bare.append(workload())
        with_meter.append(metered())
        if tracker_factory:
            with_cc.append(codecarbon_run())

    # The window edges alone, many times: the cost per window independent of workload noise.
    n_edges = 1000
    start = time.perf_counter()
    for _ in range(n_edges):
        meter.end_window(meter.begin_window())
    edge_s = (time.perf_counter() - start) / n_edges

    base = statistics.median(bare)
    result = {
        "benchmark": "meter_overhead",
        "model": "smollm2-135m",
        "engine": engine.name,
        "threads": engine.threads,
        "text": text,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "meter": meter.name,
        "energy_source": meter.energy_source,
        "bare_median_s": base,
        "greenlm_median_s": statistics.median(with_meter),
        "greenlm_overhead_ratio": statistics.median(with_meter) / base - 1,
        "greenlm_window_cost_s": edge_s,
        "greenlm_window_cost_ratio": edge_s / base,
        "bare_spread_rel": (max(bare) - min(bare)) / base,
        "note": "overhead_ratio is end-to-end and includes machine noise (see bare_spread_rel); "
        "window_cost_ratio is the begin+end cost alone over the workload's wall time",
    }
    if with_cc:
        result["codecarbon_median_s"] = statistics.median(with_cc)
        result["codecarbon_overhead_ratio"] = statistics.median(with_cc) / base - 1
    else:
        result["codecarbon"] = "not installed"
    meter.close()
    rec.finish(result, out=args.out)


if __name__ == "__main__":
    main()
