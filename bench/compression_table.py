"""Compression table: every method on the built-in model, its quality against the reference and its cost.

For the reference and each variant: PPL, KLD and top-1 agreement against the reference on held-out text
(the same evaluation windows for all), size on disk, decode tokens/s and decode J/token from greenlm's
`measure` workload (on the transformers engine; the meter says whether energy is measured or estimated),
and `real` vs `simulated`. A simulated variant runs as a dense float model: its speed is shown but is not a
saving. Prints JSON on stdout (progress on stderr); `--markdown FILE` also writes the table.
    .venv/bin/python bench/compression_table.py [--markdown table.md] [--only drop2,drop4] [--keep DIR]

Speed and energy. Every variant is compressed first; then all rows, the reference included, are measured in
`--repeats` interleaved rounds, each in a process of its own, loaded once and idle while the others measure
(greenlm.workload.interleave): rows measured one after another, minutes apart, differ by the machine's load in
those minutes (two dense float32 rows read 4-24% apart that way). Each row keeps its median, min-max range and
every round; its J/token is called lower or higher than the reference's only when the gap exceeds both rows'
range, and "within noise" otherwise (bench/spread.py). All rows' processes are alive at once (the float32 ones
about 1 GB each, some 11 GB for the 13 rows) and every variant directory stays on disk until the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Recorder
from spread import RULE, compare, summarize
from tables import compression_markdown

from greenlm.compress import method_names
from greenlm.compress.pipeline import CompressConfig, compress
from greenlm.data import load_text, split_text
from greenlm.energy.settings import EnergySettings
from greenlm.evaluate import DEFAULT_MAX_EVAL_TOKENS, reference_stats
from greenlm.models import resolve_model
from greenlm.models.loader import gguf_cache_path
from greenlm.models.manifest import dir_size_bytes
from greenlm.workload import MeasureConfig
from greenlm.workload.interleave import measure_interleaved

# (name, label, recipe steps). The last entry is the best combination found while writing this benchmark.
ENTRIES: list[tuple[str, str, list[dict]]] = [
    # kernel auto: the fastest weight-only low-bit kernel measured at compress time, or dense (simulated)
    # when none beats float32; bench/quant_kernels.py times every path on its own
    ("int8-rtn", "int8 RTN (per channel)", [{"method": "rtn", "bits": 8, "kernel": "auto"}]),
    ("int4-rtn-g32", "int4 RTN g32", [{"method": "rtn", "bits": 4, "group_size": 32}]),
    ("int4-gptq-g32", "int4 GPTQ g32", [{"method": "gptq", "bits": 4, "group_size": 32}]),
    ("int4-awq-g32", "int4 AWQ g32", [{"method": "awq", "bits": 4, "group_size": 32}]),
    ("wanda50", "Wanda 50%", [{"method": "wanda", "ratio": 0.5}]),
    ("sparse-2of4", "2:4 (Wanda score)", [{"method": "nm", "n": 2, "m": 4}]),
    ("drop2", "drop 2 layers", [{"method": "drop_layers", "count": 2}]),
    ("drop4", "drop 4 layers", [{"method": "drop_layers", "count": 4}]),
    ("drop6", "drop 6 layers", [{"method": "drop_layers", "count": 6}]),
    ("channels25", "MLP channels -25%", [{"method": "prune_channels", "ratio": 0.25}]),
    ("heads33", "heads -1/3 (6 of 9)", [{"method": "prune_heads", "ratio": 0.34}]),
    (
        "best-combo",
        "drop 2 + int8 RTN",
        [{"method": "drop_layers", "count": 2}, {"method": "rtn", "bits": 8}],
    ),
]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_config(model: str, args) -> MeasureConfig:
    return MeasureConfig(
        model=model,
        num_prompts=args.prompts,
        prompt_tokens=args.prompt_tokens,
        max_new_tokens=args.decode_tokens + 1,
        repeats=1,
        energy=EnergySettings(meter=args.meter),
        threads=args.threads,
    )


def measure_rows(models: dict[str, str], args) -> dict[str, dict]:
    """{row name: decode figures}: `args.repeats` interleaved rounds over every row (the reference too), each
    in a process of its own; per row the median, the min-max range and every round of decode J/token."""
    rounds = measure_interleaved(
        {name: measure_config(model, args) for name, model in models.items()},
        args.repeats,
        announce=lambda m: say(f"measuring {m}"),
    )
    out = {}
    for name, results in rounds.items():
        per_round = [r.to_dict() for r in results]
        cost = summarize([r["decode_j_per_token"] for r in per_round])
        first = per_round[0]
        out[name] = {
            "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in per_round),
            "decode_j_per_token": cost["median"],
            "spread_j": {"min": cost["min"], "max": cost["max"]},
            "rel_spread_j": cost["rel_spread"],
            "per_round_j": cost["per_round"],
            "meter": first["meter"],
            "energy_source": first["energy_source"],
            "engine": first["engine"],
            "threads": first["threads"],
        }
    return out


def versus_reference(row: dict, ref: dict) -> dict:
    """The row's decode J/token against the reference's: the change of the medians and whether it is clear of
    both rows' range over the rounds."""
    mine = {"median": row["decode_j_per_token"], **row["spread_j"]}
    theirs = {"median": ref["decode_j_per_token"], **ref["spread_j"]}
    return {
        "change": row["decode_j_per_token"] / ref["decode_j_per_token"] - 1,
        "relation": compare(mine, theirs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=None, help="where the JSON goes (default bench/results/compression_table.json)"
    )
    ap.add_argument("--model", default=None, help="parent model (default: the built-in smollm2-135m)")
    ap.add_argument("--only", default=None, help="comma-separated entry names (see --list)")
    ap.add_argument("--list", action="store_true", help="print the entry names and exit")
    ap.add_argument("--eval-tokens", type=int, default=4096, help="evaluation tokens per variant")
    ap.add_argument("--calibration-samples", type=int, default=32)
    ap.add_argument("--calibration-tokens", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=2, help="decode workload: prompts")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=32, help="decode steps per prompt")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved measuring rounds")
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", default=None, help="keep the variant directories under this folder")
    ap.add_argument("--markdown", default=None, help="also write the markdown table to this file")
    args = ap.parse_args()
    if args.list:
        print("\n".join(name for name, _l, _s in ENTRIES))
        return
    entries = ENTRIES
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {n for n, _l, _s in ENTRIES})
        if unknown:
            sys.exit(f"unknown entries {unknown}: see --list")
        entries = [e for e in ENTRIES if e[0] in wanted]

    start = time.perf_counter()
    rec = Recorder("compression_table")
    parent = resolve_model(args.model)
    split = split_text(load_text(None))
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="greenlm-compression-table-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    try:
        say(f"reference {parent.name}: statistics on {split.describe('evaluation')}")
        ref = reference_stats(parent, split, max_eval_tokens=max(DEFAULT_MAX_EVAL_TOKENS, args.eval_tokens))
        ref_q = ref.quality(args.eval_tokens)
        ref_files = gguf_cache_path(parent) if parent.is_gguf else parent.path
        rows.append(
            {
                "name": "reference",
                "label": f"{parent.name} float32 (reference)",
                "recipe": None,
                "execution": "real",
                "ppl": ref_q.ppl,
                "ppl_increase_pct": None,
                "kld": 0.0,
                "top1_agreement": 1.0,
                "size_mb": dir_size_bytes(ref_files) / 1e6
                if ref_files.is_dir()
                else ref_files.stat().st_size / 1e6,
            }
        )
        models = {"reference": args.model or parent.name}
        say(f"  PPL {ref_q.ppl:.3f}")
        for name, label, steps in entries:
            missing = sorted({s["method"] for s in steps} - set(method_names()))
            if missing:
                skipped.append({"name": name, "reason": f"method(s) {missing} not in this greenlm"})
                say(f"{name}: skipped, no method {missing}")
                continue
            say(f"{name}: compressing ({label})")
            t0 = time.perf_counter()
            out = workdir / name
            if out.exists():
                shutil.rmtree(out)
            result = compress(
                CompressConfig(
                    recipe=steps,
                    out=str(out),
                    model=args.model,
                    calibration_samples=args.calibration_samples,
                    calibration_tokens=args.calibration_tokens,
                    eval_tokens=args.eval_tokens,
                    threads=args.threads,
                )
            )
            compress_s = time.perf_counter() - t0
            q = result.manifest.quality
            row = {
                "name": name,
                "label": label,
                "recipe": result.manifest.recipe,
                "execution": result.execution,
                # the low-bit kernel each quantization step runs on ("dense": dequantized floats, simulated)
                "kernels": [
                    s["details"]["kernel"]
                    for s in result.manifest.steps
                    if "kernel" in (s.get("details") or {})
                ],
                "ppl": q["ppl"],
                "ppl_increase_pct": q["ppl_increase_pct"],
                "kld": q["kld"],
                "top1_agreement": q["top1_agreement"],
                "size_mb": result.size_bytes / 1e6,
                "compress_s": compress_s,
                "step_notes": [n for s in result.manifest.steps for n in s.get("notes", [])],
                "architecture": result.manifest.architecture,
            }
            rows.append(row)
            models[name] = str(out)
            say(
                f"  {row['execution']}: PPL {row['ppl']:.3f} ({row['ppl_increase_pct']:+.1f}%), KLD {row['kld']:.4f}, "
                f"{row['size_mb']:.0f} MB, compress {compress_s:.0f} s"
            )
        speed = measure_rows(models, args)
        for row in rows:
            row.update(speed[row["name"]])
        for row in rows[1:]:
            row["vs_reference"] = versus_reference(row, rows[0])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "model": parent.name,
        "model_identity": parent.identity(),
        "text": ref.text,
        "eval": {
            "windows": ref_q.windows,
            "window_tokens": ref_q.window_tokens,
            "tokens_evaluated": ref_q.tokens_evaluated,
            "note": "the same evenly spread evaluation windows for every row; KLD is top-128 + rest",
        },
        "calibration": {"samples": args.calibration_samples, "tokens_per_sample": args.calibration_tokens},
        "decode_workload": {
            "engine": "transformers",
            "prompts": args.prompts,
            "prompt_tokens": args.prompt_tokens,
            "decode_tokens": args.decode_tokens,
            "repeats": args.repeats,
            "statistic": "median over interleaved rounds, every row (the reference too) in a process of its "
            "own; range: min-max over the rounds",
            "difference_rule": RULE,
        },
        "meter": rows[0]["meter"],
        "energy_source": rows[0]["energy_source"],
        "rows": rows,
        "skipped": skipped,
        "wall_s": time.perf_counter() - start,
    }
    report["markdown"] = compression_markdown(report)
    if args.markdown:
        Path(args.markdown).write_text(report["markdown"] + "\n")
    rec.finish(report, out=args.out)


if __name__ == "__main__":
    main()
