"""Healing cut models by distillation: drop 2 and 4 layers of the built-in model, distill each from the
original for a fixed wall-clock budget, and report what healing bought and what it cost.

Per cut: held-out PPL, KLD and top-1 agreement against the original before and after healing (the same
evaluation windows for every row, text training never saw); decode J/token through llama.cpp after export
(the original exported the same way, so the saving is like for like); the training energy and carbon; the
energy forecast made at 10% of the steps and its error; and the payback, the served tokens after which the
decode saving repays the training energy. Prints JSON on stdout (progress on stderr) and writes it to --out;
`--markdown FILE` also writes the table.

    .venv/bin/python bench/distill_heal.py --minutes 15 --markdown distill.md   # ~45 min on 2 quiet cores
    .venv/bin/python bench/distill_heal.py --minutes 1 --drops 2 --out /tmp/distill_heal.json  # smoke run

Targets (issue 11, on the 2-core machine): with 15 minutes of training, healing removes at least half of
the 2-layer cut's perplexity increase; the forecast at 10% of the budget is within 10% of the measured
training energy. Run it on an otherwise idle machine: training time, decode speed and estimated energy all
suffer from other work on the same cores (the load average is recorded).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import RESULTS, Recorder, log

from greenlm.compress.config import CompressConfig
from greenlm.compress.pipeline import compress
from greenlm.distill.config import DistillConfig
from greenlm.distill.runner import distill
from greenlm.energy.payback import payback_tokens
from greenlm.energy.settings import EnergySettings
from greenlm.export import ExportConfig, export_model
from greenlm.models import DEFAULT_MODEL
from greenlm.train.settings import TrainSettings
from greenlm.workload import MeasureConfig, run_measure


def decode_cost(model: str, args) -> dict:
    """Decode J/token of a GGUF on llama.cpp, from greenlm's measure workload."""
    r = run_measure(
        MeasureConfig(
            model=model,
            engine="llamacpp",
            num_prompts=args.prompts,
            prompt_tokens=args.prompt_tokens,
            max_new_tokens=args.decode_tokens + 1,
            repeats=args.repeats,
            threads=args.threads,
            energy=EnergySettings(meter=args.meter),
        )
    ).to_dict()
    return {k: r[k] for k in ("decode_j_per_token", "decode_tokens_per_s", "meter", "energy_source")}


def export(model: str, target: Path, args) -> str:
    if not target.is_file():
        export_model(ExportConfig(out=str(target), model=model, quant=args.quant, threads=args.threads))
    return str(target)


def heal(drop: int, parent_cost: dict, workdir: Path, args) -> dict:
    cut_dir, healed_dir = workdir / f"drop{drop}", workdir / f"drop{drop}-kd"
    for d in (cut_dir, healed_dir, workdir / f"drop{drop}-kd.ckpt"):
        shutil.rmtree(d, ignore_errors=True)
    log(f"drop {drop}: cutting")
    compress(
        CompressConfig(recipe=[{"method": "drop_layers", "count": drop}], out=str(cut_dir), evaluate=False)
    )
    log(f"drop {drop}: distilling for {args.minutes:g} min")
    t0 = time.perf_counter()
    result = distill(
        DistillConfig(
            out=str(healed_dir),
            student=str(cut_dir),
            train=TrainSettings(minutes=args.minutes, forecast_after=0.1),
            eval_tokens=args.eval_tokens,
            threads=args.threads,
            energy=EnergySettings(meter=args.meter),
        ),
        announce=lambda m: log(f"  {m}"),
    ).to_dict()
    distill_s = time.perf_counter() - t0
    before, after, e = result["quality_before"], result["quality_after"], result["energy"]
    log(
        f"drop {drop}: PPL +{before['ppl_increase_pct']:.1f}% -> +{after['ppl_increase_pct']:.1f}%; exporting"
    )
    cost = decode_cost(export(str(healed_dir), workdir / f"drop{drop}-kd-{args.quant}.gguf", args), args)
    tokens = payback_tokens(e["energy_j"], parent_cost["decode_j_per_token"], cost["decode_j_per_token"])
    removed = None
    if before["ppl_increase_pct"] > 0:
        removed = (before["ppl_increase_pct"] - after["ppl_increase_pct"]) / before["ppl_increase_pct"] * 100
    forecast = e.get("forecast") or {}
    return {
        "name": f"drop{drop}",
        "layers_removed": drop,
        "before": before,
        "after": after,
        "ppl_increase_removed_pct": removed,
        "training": {
            "minutes_budget": args.minutes,
            "steps": result["steps"],
            "planned_steps": result["planned_steps"],
            "stopped_by": result["stopped_by"],
            "tokens": result["tokens"],
            "epochs": result["epochs"],
            "training_s": result["training_s"],
            "precision": result["precision"],
            "loss": result["loss"],
            "loss_first": result["loss_first"],
            "loss_last": result["loss_last"],
            "data": result["data"],
            "plan": result["plan"],
            "wall_s_with_eval_and_save": distill_s,
        },
        "training_energy_j": e["energy_j"],
        "training_carbon_g": e["carbon_g"],
        "j_per_training_token": e.get("j_per_training_token"),
        "j_per_step_median": e.get("j_per_step_median"),
        "forecast_at_step": forecast.get("steps_done"),
        "forecast_total_j": forecast.get("total_j"),
        "forecast_range_j": [forecast.get("total_low_j"), forecast.get("total_high_j")],
        "forecast_error_pct": e.get("forecast_error_pct"),
        "meter": e["meter"],
        "energy_source": e["energy_source"],
        "intensity_source": e["intensity_source"],
        "decode": cost,
        "payback_tokens": tokens,
        "architecture": result["architecture"],
    }


def _num(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    head = (
        "| cut | PPL +% before → after | KLD before → after | top-1 before → after | training | "
        "energy (kJ) | forecast at 10% (error) | decode J/token | payback tokens |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    parent = report["parent_decode"]
    rows = [
        f"| original ({report['quant']}) | — | — | — | — | — | — | {parent['decode_j_per_token']:.4f} | — |"
    ]
    for r in report["rows"]:
        b, a, t = r["before"], r["after"], r["training"]
        rows.append(
            f"| drop {r['layers_removed']} | {b['ppl_increase_pct']:+.1f} → {a['ppl_increase_pct']:+.1f} | "
            f"{b['kld']:.4f} → {a['kld']:.4f} | {b['top1_agreement']:.3f} → {a['top1_agreement']:.3f} | "
            f"{t['steps']} steps, {t['tokens'] / 1000:.0f}k tokens, {t['training_s'] / 60:.1f} min | "
            f"{r['training_energy_j'] / 1000:.1f} | {_num(r['forecast_total_j'] and r['forecast_total_j'] / 1000, '.1f')} "
            f"({_num(r['forecast_error_pct'], '+.1f')}%) | {r['decode']['decode_j_per_token']:.4f} | "
            f"{_num(r['payback_tokens'], ',.0f') if r['payback_tokens'] is not None else 'never (no saving measured)'} |"
        )
    return "\n".join([head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per cut (wall clock)")
    ap.add_argument("--drops", default="2,4", help="comma-separated layer counts to cut")
    ap.add_argument("--eval-tokens", type=int, default=8192, help="held-out evaluation tokens per model")
    ap.add_argument("--quant", default="q8_0", help="llama.cpp file type for the decode measurement")
    ap.add_argument("--prompts", type=int, default=2, help="decode workload: prompts")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=64, help="decode steps per prompt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", default=None, help="keep variants and GGUF files under this folder")
    ap.add_argument("--out", default=str(RESULTS / "distill_heal.json"), help="where the JSON is written")
    ap.add_argument("--markdown", default=None, help="also write the markdown table to this file")
    args = ap.parse_args()
    if not args.minutes > 0:
        sys.exit("--minutes must be > 0")
    drops = [int(d) for d in args.drops.split(",")]

    rec = Recorder("distill_heal")
    start = time.perf_counter()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="greenlm-distill-heal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        log(f"original {DEFAULT_MODEL}: exporting {args.quant} and measuring decode")
        parent_cost = decode_cost(export(DEFAULT_MODEL, workdir / f"original-{args.quant}.gguf", args), args)
        rows = [heal(drop, parent_cost, workdir, args) for drop in drops]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": "distill_heal",
        "model": DEFAULT_MODEL,
        "minutes": args.minutes,
        "quant": args.quant,
        "parent_decode": parent_cost,
        "decode_workload": {
            "engine": "llamacpp",
            "prompts": args.prompts,
            "prompt_tokens": args.prompt_tokens,
            "decode_tokens": args.decode_tokens,
            "repeats": args.repeats,
            "statistic": "median over repeats",
        },
        "eval": {
            "tokens": args.eval_tokens,
            "note": "the same evenly spread windows of the evaluation split for before and after, against the "
            "float32 original; training read only the calibration split",
        },
        "targets": {
            "drop2_ppl_increase_removed_pct_at_least": 50.0,
            "forecast_error_pct_within": 10.0,
        },
        "rows": rows,
        "wall_s": time.perf_counter() - start,
    }
    report["markdown"] = markdown(report)
    if args.markdown:
        Path(args.markdown).write_text(report["markdown"] + "\n", encoding="utf-8")
    rec.finish(report, out=args.out)


if __name__ == "__main__":
    main()
