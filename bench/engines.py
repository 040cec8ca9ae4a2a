"""Engines side by side on the built-in model: transformers float32 against llama.cpp on GGUF files greenlm
exported (f32, f16, q8_0, q4_k_m, q4_k_m with an importance matrix) and the packaged Q4_1 original.

Every row: quality from `greenlm eval` (same windows and token ids, against the same cached float32
transformers reference), speed/energy from `greenlm measure` (same prompts, threads and meter), file size and
the tensor types the file really holds, all in one run. Prints JSON on stdout and the README's markdown table
on stderr; `--table FILE` prints the table again from saved JSON.
    .venv/bin/python bench/engines.py                  # about 15 minutes on 2 quiet cores; writes bench/results/engines.json
    .venv/bin/python bench/engines.py --table bench/results/engines.json
Run it on an otherwise idle machine: llama.cpp's worker threads wait for each other at every operation, so
another busy process on the same cores slows its rows far more than the transformers row (seen here with
other jobs running: q8_0 decoded 2.3 tokens/s on 2 threads, 38 tokens/s on 1).
Smoke run (checks the script end to end, numbers meaningless; estimated 5 minutes when idle, 13.5 measured
on a busy machine):
    .venv/bin/python bench/engines.py --smoke --out-dir /tmp/bench-engines --out /tmp/engines-smoke.json
Targets (issue 4): q8_0 KLD <= 0.01 and decode J/token at least 2.5x lower than transformers float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchlib import Recorder

from greenlm.energy.settings import EnergySettings
from greenlm.engines.llamacpp_engine import default_threads
from greenlm.evaluate import DEFAULT_MAX_EVAL_TOKENS, EvalConfig, evaluate
from greenlm.export import ExportConfig, export_model
from greenlm.llamacpp import tensor_type_report
from greenlm.llamacpp.imatrix import DEFAULT_IMATRIX_SAMPLES, DEFAULT_IMATRIX_TOKENS
from greenlm.models import DEFAULT_MODEL, resolve_model
from greenlm.paths import cache_dir
from greenlm.workload import MeasureConfig
from greenlm.workload.interleave import measure_interleaved

EXPORTS = (  # (row name, quant type, importance matrix)
    ("llama.cpp f32", "f32", False),
    ("llama.cpp f16", "f16", False),
    ("llama.cpp q8_0", "q8_0", False),
    ("llama.cpp q4_k_m", "q4_k_m", False),
    ("llama.cpp q4_k_m + imatrix", "q4_k_m", True),
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_files(out_dir: Path, args) -> dict[str, dict]:
    """The GGUF files to compare, exported once into `out_dir` (reused when already there)."""
    files = {}
    for name, quant, imatrix in EXPORTS:
        suffix = f"-imatrix{args.imatrix_samples}x{args.imatrix_tokens}" if imatrix else ""
        path = out_dir / f"{DEFAULT_MODEL}-{quant}{suffix}.gguf"
        if not path.is_file():
            log(f"exporting {name} -> {path}")
            export_model(
                ExportConfig(
                    out=str(path),
                    model=DEFAULT_MODEL,
                    quant=quant,
                    imatrix=imatrix,
                    imatrix_samples=args.imatrix_samples,
                    imatrix_tokens=args.imatrix_tokens,
                    threads=args.threads,
                )
            )
        files[name] = {"model": str(path), "engine": "llamacpp"}
    files["llama.cpp original Q4_1"] = {"model": DEFAULT_MODEL, "engine": "llamacpp"}
    return files


def quality_row(name: str, model: str, engine: str, args) -> dict:
    log(f"{name}: evaluating")
    return evaluate(
        EvalConfig(
            model=model,
            engine=engine,
            reference=DEFAULT_MODEL,
            threads=args.threads,
            max_eval_tokens=args.max_eval_tokens,
        )
    ).to_dict()


def measure_rows(models: dict[str, dict], args) -> dict[str, dict]:
    """`repeats` rounds of one repeat each, the rows taking turns so noise from other work on the machine
    falls on all rows alike; each row in its own process, loaded once (see greenlm.workload.interleave)."""
    configs = {
        name: MeasureConfig(
            model=m["model"],
            engine=m["engine"],
            num_prompts=args.num_prompts,
            prompt_tokens=args.prompt_tokens,
            max_new_tokens=args.max_new_tokens,
            repeats=1,
            threads=args.threads,
            energy=EnergySettings(meter=args.meter),
        )
        for name, m in models.items()
    }
    rounds = measure_interleaved(configs, args.repeats, announce=lambda m: log(f"measuring {m}"))
    out = {}
    for name, results in rounds.items():
        first = results[0]
        for later in results[1:]:
            first.repeats.extend(later.repeats)
        out[name] = first.to_dict()
    return out


def held_types(path: Path) -> dict[str, float]:
    """Tensor type → share of the parameters it holds, as read back from the file."""
    if path.suffix == ".gguf":
        by_type = tensor_type_report(path).by_type
        return {name: entry["share_of_params"] for name, entry in by_type.items()}
    from safetensors import safe_open

    params: dict[str, int] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            piece = f.get_slice(key)
            count = 1
            for dim in piece.get_shape():
                count *= dim
            dtype = piece.get_dtype().lower()
            params[dtype] = params.get(dtype, 0) + count
    total = sum(params.values()) or 1
    return {dtype: round(n / total, 4) for dtype, n in sorted(params.items(), key=lambda kv: -kv[1])}


def row(name: str, model: str, engine: str, quality: dict, speed: dict) -> dict:
    details = speed["engine_details"]
    if engine == "llamacpp":
        weights = Path(details["gguf"])
        size_mb, size_of = details["file_mb"], "GGUF file"
    else:  # the float32 weights transformers holds: the dequantized safetensors cache
        from greenlm.models.loader import gguf_cache_path

        weights = gguf_cache_path(resolve_model(model)) / "model.safetensors"
        size_mb, size_of = round(weights.stat().st_size / 1e6, 2), "float32 safetensors"
    return {
        "name": name,
        "engine": engine,
        "model": model,
        "quant_type": speed.get("quant_type", details.get("dtype")),
        "size_mb": size_mb,
        "size_of": size_of,
        "tensor_types": held_types(weights),  # type → share of parameters, read back from the file
        "weights_file": str(weights),
        "ppl": quality["ppl"],
        "ppl_increase_pct": quality["ppl_increase_pct"],
        "kld": quality["kld"],
        "kld_stderr": quality["kld_stderr"],
        "top1_agreement": quality["top1_agreement"],
        "eval_tokens_per_s": quality["eval_tokens_per_s"],
        "decode_tokens_per_s": speed["decode_tokens_per_s"],
        "prefill_tokens_per_s": speed["prefill_tokens_per_s"],
        "decode_j_per_token": speed["decode_j_per_token"],
        "prefill_j_per_token": speed["prefill_j_per_token"],
        "rel_spread": {
            k: speed["spread"][k]["rel_spread"]
            for k in ("decode_tokens_per_s", "prefill_tokens_per_s", "decode_j_per_token")
        },
        "meter": speed["meter"],
        "energy_source": speed["energy_source"],
        "threads": speed["threads"],
        "measure_run": speed,
        "eval_run": quality,
    }


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    source = rows[0]["energy_source"]
    lines = [
        f"| engine / file | size (MB) | tensor types held (share of parameters) | PPL | KLD | top-1 | decode tok/s | "
        f"prefill tok/s | decode J/token ({source}) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        types = ", ".join(f"{t} {share:.0%}" for t, share in r["tensor_types"].items() if share >= 0.005)
        lines.append(
            f"| {r['name']} | {r['size_mb']:.0f} | {types} | {r['ppl']:.3f} | {r['kld']:.4f} | "
            f"{r['top1_agreement']:.3f} | "
            f"{r['decode_tokens_per_s']:.1f} (±{r['rel_spread']['decode_tokens_per_s'] / 2:.0%}) | "
            f"{r['prefill_tokens_per_s']:.0f} (±{r['rel_spread']['prefill_tokens_per_s'] / 2:.0%}) | "
            f"{r['decode_j_per_token']:.3f} (±{r['rel_spread']['decode_j_per_token'] / 2:.0%}) |"
        )
    t = result["targets"]
    lines.append("")
    if result.get("smoke"):
        lines.append(
            "SMOKE RUN (--smoke): smallest settings, the figures below say nothing about the engines."
        )
    lines.append(
        f"Medians of {result['workload']['repeats']} interleaved repeats (± half the min-max range); "
        f"{result['threads']} threads; energy from meter {result['meter']} ({source}); quality on "
        f"{result['quality']['max_eval_tokens']} tokens of {result['quality']['text']} against "
        f"{result['quality']['reference']}."
    )
    lines.append(
        f"q8_0: KLD {t['q8_0_kld']:.4f} (target <= 0.01: {'met' if t['q8_0_kld_met'] else 'NOT met'}); decode "
        f"J/token {t['decode_j_ratio_transformers_over_q8_0']:.2f}x lower than transformers float32 (target >= 2.5x: "
        f"{'met' if t['decode_j_ratio_met'] else 'NOT met'})."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="where the JSON goes (default bench/results/engines.json)")
    ap.add_argument("--table", metavar="JSON", help="print the markdown table of a saved result and exit")
    ap.add_argument("--out-dir", default=str(cache_dir() / "bench-engines"), help="where the GGUF exports go")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--max-eval-tokens", type=int, default=DEFAULT_MAX_EVAL_TOKENS)
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--imatrix-samples", type=int, default=DEFAULT_IMATRIX_SAMPLES)
    ap.add_argument("--imatrix-tokens", type=int, default=DEFAULT_IMATRIX_TOKENS)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="smallest settings: one 512-token window, one short prompt, one repeat (checks the script only)",
    )
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return
    if args.smoke:
        args.max_eval_tokens, args.num_prompts, args.prompt_tokens = 512, 1, 16
        args.max_new_tokens, args.repeats, args.imatrix_samples, args.imatrix_tokens = 8, 1, 2, 64

    rec = Recorder("engines")
    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = {"transformers float32": {"model": DEFAULT_MODEL, "engine": "transformers"}}
    models.update(export_files(out_dir, args))
    quality = {name: quality_row(name, m["model"], m["engine"], args) for name, m in models.items()}
    speed = measure_rows(models, args)
    rows = [row(name, m["model"], m["engine"], quality[name], speed[name]) for name, m in models.items()]
    by_name = {r["name"]: r for r in rows}
    q8, hf = by_name["llama.cpp q8_0"], by_name["transformers float32"]
    ratio = hf["decode_j_per_token"] / q8["decode_j_per_token"]
    result = {
        "benchmark": "engines",
        "model": DEFAULT_MODEL,
        "threads": args.threads,
        "meter": rows[0]["meter"],
        "energy_source": rows[0]["energy_source"],
        "smoke": args.smoke,  # smallest settings: the numbers only show that the script runs
        "workload": {
            "num_prompts": args.num_prompts,
            "prompt_tokens": args.prompt_tokens,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "statistic": "median over repeats; rows take turns within each round (interleaved)",
        },
        "quality": {
            "reference": f"{DEFAULT_MODEL} through transformers float32 (dequantized from its Q4_1 GGUF)",
            "max_eval_tokens": args.max_eval_tokens,
            "text": rows[0]["eval_run"]["text"],
        },
        "rows": rows,
        "targets": {
            "q8_0_kld": q8["kld"],
            "q8_0_kld_met": q8["kld"] <= 0.01,
            "decode_j_ratio_transformers_over_q8_0": ratio,
            "decode_j_ratio_met": ratio >= 2.5,
        },
        "wall_s": time.perf_counter() - start,
    }
    result["markdown"] = markdown_table(result)
    rec.finish(result, out=args.out)
    log("\n" + result["markdown"])


if __name__ == "__main__":
    main()
