"""One optimization run on the built-in model with the library's default space and settings (what
`greenlm optimize` runs), then the reproduction check: the chosen variant, saved with `--out`, measured again
by `greenlm measure --model OUT` (in a fresh process, the same workload) must land within the spread the final round
measured for it.

Targets checked: decode J/token >= 3x lower than float32 transformers at PPL +<=3% (KLD <= 0.05); the ratio to
the model as given (the built-in GGUF on llama.cpp); the reproduction. Fresh store and work directory, so
nothing is reused. Prints JSON and writes bench/results/optimize_builtin.json with the machine record.
    .venv/bin/python bench/optimize_builtin.py [--time-budget 30m]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import Recorder, log

from greenlm.optimize import EvalSettings, OptimizeConfig, optimize
from greenlm.optimize.config import parse_duration_s
from greenlm.store import Store

ROW_FIELDS = (
    "label", "status", "decode_j_per_token", "decode_tokens_per_s", "probe_j_per_token", "ppl_increase_pct",
    "kld", "screen_kld", "size_mb", "execution", "acceptance_rate", "reason", "wall_s",
)  # fmt: skip


def reproduce(out: str, settings: EvalSettings, repeats: int, db: Path) -> dict:
    """`greenlm measure --model OUT --json` in a fresh process, as a user runs it, with the candidates'
    workload: engine, threads and decoding come from what optimize saved there."""
    command = [
        sys.executable, "-m", "greenlm", "measure", "--model", out,
        "--num-prompts", str(settings.num_prompts), "--prompt-tokens", str(settings.prompt_tokens),
        "--max-new-tokens", str(settings.max_new_tokens), "--repeats", str(repeats),
        "--meter", settings.energy.meter, "--db", str(db), "--json",
    ]  # fmt: skip
    log("reproduction: " + " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"command": command[1:], "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    measured = json.loads(done.stdout)
    return {
        "command": command[1:],
        "engine": measured["engine"],
        "threads": measured["threads"],
        "decode_j_per_token": measured["decode_j_per_token"],
        # raw repeats carry joules and token counts; J/token as the summary computes it
        "per_repeat": [r["decode_j"] / r["decode_tokens"] for r in measured["per_repeat"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-budget", default=f"{OptimizeConfig.time_budget_s / 60:g}m")
    ap.add_argument(
        "--out", default=None, help="where the JSON goes (default bench/results/optimize_builtin.json)"
    )
    args = ap.parse_args()
    rec = Recorder("optimize_builtin")
    with tempfile.TemporaryDirectory(prefix="greenlm-bench-") as scratch:
        settings = EvalSettings(workdir=str(Path(scratch) / "work"))
        saved = str(Path(scratch) / "chosen")
        config = OptimizeConfig(
            settings=settings, time_budget_s=parse_duration_s(args.time_budget), out=saved
        )
        with Store(Path(scratch) / "bench.db") as store:
            found = optimize(config, store=store, announce=log)
        result = found.to_dict()
        result["candidates"] = [{k: r.to_dict().get(k) for k in ROW_FIELDS} for r in found.rows]
        chosen = found.chosen
        if chosen is not None:
            again = reproduce(
                saved,
                settings,
                repeats=config.final_rounds or settings.repeats,
                db=Path(scratch) / "repro.db",
            )
            if "error" not in again:
                spread = (chosen.final or {}).get("spread") or chosen.energy.spread["decode_j_per_token"]
                median = statistics.median(again["per_repeat"])
                again["within_final_spread"] = spread["min"] <= median <= spread["max"]
                again["relative_difference"] = median / chosen.cost - 1
                again["final_spread"] = spread
            result["reproduction"] = again
    ratio, natural = result["j_per_token_ratio"], result["j_per_token_ratio_natural"]
    result["targets"] = {
        "j_per_token_ratio_at_least_3x": bool(ratio and ratio >= 3.0),
        "ppl_increase_at_most_3pct": bool(chosen and chosen.ppl_increase_pct <= 3.0),
        "ratio_to_model_as_given": natural,
        "reproduces_within_spread": bool(result.get("reproduction", {}).get("within_final_spread")),
    }
    rec.finish(result, out=args.out)


if __name__ == "__main__":
    main()
