"""greenlm's own compression in llama.cpp (issue 13): llama.cpp's uniform GGUF types against greenlm-made files,
all run by llama.cpp on the built-in model, in one run.

Rows
- llama.cpp's uniform types, quantized by llama.cpp from the f32 export: q8_0, q6_k, q5_1, q5_0, q4_1, q4_0,
  q4_k_m, and each of those but q8_0 again with an importance matrix from the calibration split.
- greenlm files: GPTQ codes as Q4_0 and as Q4_1 blocks, AWQ (folded scales) and RTN codes as Q4_0 blocks, and
  `export --mixed` at one or two KLD budgets (candidates: llama.cpp's uniform types and the GPTQ codes).
- the packaged SmolLM2 Q4_1 file the built-in model comes from, for context.
Per row: type, file bytes, bits per weight, KLD and PPL on held-out text (`greenlm eval`, evaluation split,
against the float reference), decode tokens/s and J/token at 1 thread and at all threads (`greenlm measure`,
rows interleaved within each repeat round), the (J/token, KLD) Pareto front, which greenlm files no uniform
type dominates and by how much they win, and the two targets: the GPTQ-coded Q4_0 file's KLD below llama.cpp's
own Q4_0, without and with an importance matrix. It also checks the mixed chooser's cheap sensitivity (Fisher)
against the measured per-matrix KLD (rank correlation).

Reference. The built-in model is the SmolLM2-135M-Instruct Q4_1 GGUF dequantized to float32: every KLD here is
against those float weights through transformers. Its weights lie on a Q4_1 grid already, so Q4_1 files (llama.cpp's
and greenlm's) reproduce them almost exactly; read their KLD accordingly.

Run it on an otherwise idle machine (llama.cpp's threads wait for each other at every operation):
    .venv/bin/python bench/fastpath.py --markdown fastpath.md          # the full run, about 1-2 hours on 2 cores
    .venv/bin/python bench/fastpath.py --quick                          # smallest settings: checks the script
JSON on stdout, with the machine record (bench/benchlib.py: date, CPU, cores, load average, git commit), also
written to bench/results/fastpath.json (--quick: fastpath-quick.json, so a quick run never replaces the real one).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchlib import Recorder, log

from greenlm.energy.settings import EnergySettings
from greenlm.engines.llamacpp_engine import default_threads
from greenlm.evaluate import DEFAULT_MAX_EVAL_TOKENS, EvalConfig, evaluate
from greenlm.export import ExportConfig, export_model
from greenlm.export.config import DEFAULT_CANDIDATES
from greenlm.export.fastpath import variant_for
from greenlm.llamacpp.inspect import tensor_type_report
from greenlm.models import DEFAULT_MODEL, resolve_model
from greenlm.paths import cache_dir
from greenlm.workload import MeasureConfig, run_measure

UNIFORM = ("q8_0", "q6_k", "q5_1", "q5_0", "q4_1", "q4_0", "q4_k_m")
IMATRIX = ("q6_k", "q5_1", "q5_0", "q4_1", "q4_0", "q4_k_m")  # q8_0 ignores an importance matrix
VARIANTS = {  # name -> recipe; every quantization step on a GGUF format's grid, so export writes its codes
    "gptq-q4_0": ({"method": "gptq", "bits": 4, "group_size": 32, "kernel": "dense"},),
    "gptq-q4_1": ({"method": "gptq", "bits": 4, "group_size": 32, "symmetric": False, "kernel": "dense"},),
    "awq-q4_0": ({"method": "awq", "bits": 4, "group_size": 32, "fold": True, "kernel": "dense"},),
    "rtn-q4_0": ({"method": "rtn", "bits": 4, "group_size": 32, "kernel": "dense"},),
}
REFERENCE = (
    f"{DEFAULT_MODEL} float32 through transformers (its packaged Q4_1 GGUF dequantized): Q4_1-grid weights, so Q4_1 "
    "files reproduce them almost exactly"
)


# --- files -------------------------------------------------------------------------------------------------


def _export(path: Path, name: str, **settings) -> Path:
    if not path.is_file():
        log(f"exporting {name} -> {path.name}")
        export_model(ExportConfig(out=str(path), **settings), announce=lambda m: log(f"  {m}"))
    return path


def make_files(out_dir: Path, args) -> list[dict]:
    """Every file of the comparison, made once into `out_dir` (reused when already there)."""
    rows = []
    imatrix = dict(imatrix_samples=args.imatrix_samples, imatrix_tokens=args.imatrix_tokens)
    for quant in UNIFORM:
        path = _export(
            out_dir / f"uniform-{quant}.gguf", f"llama.cpp {quant}", model=DEFAULT_MODEL, quant=quant
        )
        rows.append(
            {"name": f"llama.cpp {quant}", "group": "uniform", "type": quant, "imatrix": False, "path": path}
        )
    for quant in IMATRIX:
        path = _export(
            out_dir / f"uniform-{quant}-imatrix.gguf",
            f"llama.cpp {quant} + imatrix",
            model=DEFAULT_MODEL,
            quant=quant,
            imatrix=True,
            **imatrix,
        )
        rows.append(
            {
                "name": f"llama.cpp {quant} + imatrix",
                "group": "uniform",
                "type": quant,
                "imatrix": True,
                "path": path,
            }
        )
    variants = {}
    for name, recipe in VARIANTS.items():
        log(f"variant {name}: {list(recipe)}")
        variants[name] = variant_for(
            DEFAULT_MODEL,
            recipe,
            out_dir,
            calibration_samples=args.calibration_samples,
            calibration_tokens=args.calibration_tokens,
        )
        path = _export(out_dir / f"greenlm-{name}.gguf", f"greenlm {name}", model=str(variants[name]))
        rows.append(
            {
                "name": f"greenlm {name}",
                "group": "greenlm",
                "type": name.split("-")[1],
                "imatrix": False,
                "path": path,
                "recipe": list(recipe),
            }
        )
    codes_from = (str(variants["gptq-q4_0"]), str(variants["gptq-q4_1"]))
    for budget in args.budgets:
        path = _export(
            out_dir / f"greenlm-mixed-{budget:g}.gguf",
            f"greenlm mixed (max KLD {budget:g})",
            model=DEFAULT_MODEL,
            mixed=True,
            max_kld=budget,
            candidates=DEFAULT_CANDIDATES,
            codes_from=codes_from,
            calibration_samples=args.mixed_samples,
            calibration_tokens=args.mixed_tokens,
        )
        rows.append(
            {
                "name": f"greenlm mixed <= {budget:g}",
                "group": "greenlm",
                "type": "mixed",
                "imatrix": False,
                "path": path,
                "max_kld": budget,
            }
        )
    original = resolve_model(DEFAULT_MODEL).path
    rows.append(
        {
            "name": "packaged Q4_1 (original)",
            "group": "context",
            "type": "q4_1",
            "imatrix": False,
            "path": original,
        }
    )
    for row in rows:
        report = tensor_type_report(row["path"])
        params = sum(e["params"] for e in report.by_type.values())
        row["bytes"] = Path(row["path"]).stat().st_size
        row["bits_per_weight"] = 8.0 * row["bytes"] / params
        row["tensor_types"] = {t: e["share_of_params"] for t, e in report.by_type.items()}
        row["path"] = str(row["path"])
    return rows


# --- quality, speed and energy -----------------------------------------------------------------------------


def quality(rows: list[dict], args) -> None:
    for row in rows:
        log(f"{row['name']}: held-out quality")
        result = evaluate(
            EvalConfig(
                model=row["path"],
                engine="llamacpp",
                reference=DEFAULT_MODEL,
                threads=args.threads,
                max_eval_tokens=args.max_eval_tokens,
            )
        ).to_dict()
        row.update(
            kld=result["kld"],
            kld_stderr=result.get("kld_stderr"),
            ppl=result["ppl"],
            ppl_increase_pct=result["ppl_increase_pct"],
            top1_agreement=result["top1_agreement"],
            eval_text=result.get("text"),
        )


def speed(rows: list[dict], threads: int, args) -> None:
    """Decode speed and energy at `threads`, every file loaded once, rows taking turns in each round."""
    from greenlm.engines import create_engine

    engines = {r["name"]: create_engine("llamacpp", resolve_model(r["path"]), threads=threads) for r in rows}
    results: dict = {}
    try:
        for round_index in range(args.repeats):
            for row in rows:
                log(f"measuring {threads} thread(s), round {round_index + 1}/{args.repeats}: {row['name']}")
                config = MeasureConfig(
                    model=row["path"],
                    engine="llamacpp",
                    num_prompts=args.num_prompts,
                    prompt_tokens=args.prompt_tokens,
                    max_new_tokens=args.max_new_tokens,
                    repeats=1,
                    threads=threads,
                    energy=EnergySettings(meter=args.meter),
                )
                result = run_measure(config, engine=engines[row["name"]])
                if row["name"] in results:
                    results[row["name"]].repeats.extend(result.repeats)
                else:
                    results[row["name"]] = result
    finally:
        for engine in engines.values():
            engine.close()
    for row in rows:
        r = results[row["name"]].to_dict()
        row.setdefault("speed", {})[str(threads)] = {
            "decode_tokens_per_s": r["decode_tokens_per_s"],
            "decode_j_per_token": r["decode_j_per_token"],
            "rel_spread_j": r["spread"]["decode_j_per_token"]["rel_spread"],
            "meter": r["meter"],
            "energy_source": r["energy_source"],
        }


# --- analysis ----------------------------------------------------------------------------------------------


def pareto(rows: list[dict], threads: str) -> list[str]:
    """Names of the rows no other row beats on both decode J/token and KLD at `threads`."""

    def point(r):
        return r["speed"][threads]["decode_j_per_token"], r["kld"]

    front = []
    for r in rows:
        j, k = point(r)
        if not any(
            (point(o)[0] <= j and point(o)[1] <= k) and (point(o)[0] < j or point(o)[1] < k)
            for o in rows
            if o is not r
        ):
            front.append(r["name"])
    return sorted(front, key=lambda n: next(point(r)[0] for r in rows if r["name"] == n))


def wins(rows: list[dict], threads: str) -> list[dict]:
    """For each greenlm file: whether a uniform llama.cpp type dominates it, and its margins."""
    uniform = [r for r in rows if r["group"] == "uniform"]
    out = []
    for g in (r for r in rows if r["group"] == "greenlm"):
        j, k = g["speed"][threads]["decode_j_per_token"], g["kld"]
        dominated_by = [
            u["name"] for u in uniform if u["speed"][threads]["decode_j_per_token"] <= j and u["kld"] <= k
        ]
        cheaper = [u for u in uniform if u["speed"][threads]["decode_j_per_token"] <= j]
        better = [u for u in uniform if u["kld"] <= k]
        best_cheaper = min(cheaper, key=lambda u: u["kld"], default=None)
        cheapest_better = min(better, key=lambda u: u["speed"][threads]["decode_j_per_token"], default=None)
        out.append(
            {
                "name": g["name"],
                "dominated_by": dominated_by,
                # the lowest KLD any uniform type reaches at no more J/token, as a multiple of this file's KLD
                "kld_margin": (best_cheaper["kld"] / k) if best_cheaper and k > 0 else None,
                "kld_margin_vs": best_cheaper["name"] if best_cheaper else None,
                # the least J/token any uniform type needs for no more KLD, as a multiple of this file's
                "energy_margin": (cheapest_better["speed"][threads]["decode_j_per_token"] / j)
                if cheapest_better
                else None,
                "energy_margin_vs": cheapest_better["name"] if cheapest_better else None,
            }
        )
    return out


def fisher_check(args) -> dict:
    """Rank correlation of the Fisher estimate with the measured KLD, one matrix rounded to Q4_0 at a time."""
    import torch

    from greenlm.data.calibration import calibration_windows
    from greenlm.export.sensitivity import fisher_diagonal, fisher_kld, measured_kld, reference_logprobs
    from greenlm.kernels.quant_grid import GGUF_GRIDS, rtn
    from greenlm.models import load_model

    log("sensitivity check: Fisher estimate vs measured KLD per matrix")
    loaded = load_model(resolve_model(DEFAULT_MODEL))
    model = loaded.model
    windows = calibration_windows(
        loaded.tokenizer, None, samples=args.check_windows, tokens=args.check_tokens
    )
    fisher = fisher_diagonal(model, windows)
    refs = reference_logprobs(model, windows)
    matrices = [(n, p) for n, p in model.named_parameters() if p.ndim == 2]
    step = max(1, len(matrices) // args.check_matrices)
    rows = []
    for name, param in matrices[::step]:
        rounded = rtn(param.detach(), 4, 32, True, GGUF_GRIDS["q4_0"]).dequantize()
        rows.append(
            {
                "matrix": name,
                "fisher_kld": fisher_kld(fisher[name], rounded - param.detach()),
                "measured_kld": measured_kld(model, param, rounded, windows, refs),
            }
        )
    est = torch.tensor([r["fisher_kld"] for r in rows])
    mes = torch.tensor([r["measured_kld"] for r in rows])

    def rank(v):
        return v.argsort().argsort().float()

    rho = float(torch.corrcoef(torch.stack([rank(est), rank(mes)]))[0, 1]) if len(rows) > 2 else float("nan")
    return {
        "what": "each matrix alone rounded to greenlm's Q4_0 grid; KLD vs the float model on calibration text",
        "windows": args.check_windows,
        "tokens_per_window": args.check_tokens,
        "matrices": len(rows),
        "spearman_rank_correlation": rho,
        "median_ratio_estimate_over_measured": float((est / mes).median()),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    threads = result["threads"]
    lines = [
        f"| file | type | MB | bits/weight | KLD | PPL | decode tok/s (1 / {threads} threads) | "
        f"J/token (1 / {threads} threads) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        s1, sn = r["speed"]["1"], r["speed"][str(threads)]
        front = " *" if r["name"] in result["pareto"][str(threads)] else ""
        lines.append(
            f"| {r['name']}{front} | {r['type']} | {r['bytes'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | {r['kld']:.4f} | "
            f"{r['ppl']:.3f} | {s1['decode_tokens_per_s']:.1f} / {sn['decode_tokens_per_s']:.1f} | "
            f"{s1['decode_j_per_token']:.3f} / {sn['decode_j_per_token']:.3f} |"
        )
    t = result["targets"]
    lines += [
        "",
        f"* on the (J/token at {threads} threads, KLD) Pareto front. KLD and PPL on held-out text against {result['reference']}.",
        f"Energy: {result['energy_source']} ({result['meter']}); medians of {result['workload']['repeats']} interleaved repeats.",
        f"GPTQ-coded Q4_0 vs llama.cpp Q4_0: KLD {t['gptq_q4_0_kld']:.4f} vs {t['llamacpp_q4_0_kld']:.4f} "
        f"({'met' if t['beats_q4_0'] else 'NOT met'}); vs Q4_0 + imatrix {t['llamacpp_q4_0_imatrix_kld']:.4f} "
        f"({'met' if t['beats_q4_0_imatrix'] else 'NOT met'}).",
        "Undominated greenlm files: "
        + (
            "; ".join(
                f"{w['name']} (KLD {w['kld_margin']:.2f}x lower than {w['kld_margin_vs']} at no more J/token)"
                if w["kld_margin"]
                else w["name"]
                for w in t["undominated_greenlm"]
            )
            or "none"
        ),
        f"Fisher vs measured per-matrix KLD: Spearman {result['sensitivity_check']['spearman_rank_correlation']:.2f} "
        f"over {result['sensitivity_check']['matrices']} matrices.",
    ]
    if result.get("quick"):
        lines.insert(0, "QUICK RUN (--quick): smallest settings, the figures say nothing about the files.\n")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(cache_dir() / "bench-fastpath"), help="where the files go")
    ap.add_argument(
        "--threads", type=int, default=default_threads(), help="'all threads' (default: usable cores)"
    )
    ap.add_argument("--max-eval-tokens", type=int, default=DEFAULT_MAX_EVAL_TOKENS)
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--imatrix-samples", type=int, default=64)
    ap.add_argument("--imatrix-tokens", type=int, default=256)
    ap.add_argument("--calibration-samples", type=int, default=64, help="GPTQ / AWQ calibration windows")
    ap.add_argument("--calibration-tokens", type=int, default=256)
    ap.add_argument("--mixed-samples", type=int, default=16, help="--mixed sensitivity and check windows")
    ap.add_argument("--mixed-tokens", type=int, default=256)
    ap.add_argument("--budgets", default="0.01,0.03", help="--max-kld of the mixed files")
    ap.add_argument(
        "--check-matrices", type=int, default=211, help="matrices in the Fisher vs measured check"
    )
    ap.add_argument("--check-windows", type=int, default=4)
    ap.add_argument("--check-tokens", type=int, default=256)
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as markdown here")
    ap.add_argument(
        "--results", metavar="FILE", help="where the JSON goes (default bench/results/fastpath.json)"
    )
    ap.add_argument("--quick", action="store_true", help="smallest settings: checks the script end to end")
    args = ap.parse_args()
    if args.quick:
        args.max_eval_tokens, args.num_prompts, args.prompt_tokens, args.max_new_tokens, args.repeats = (
            512,
            1,
            16,
            8,
            1,
        )
        args.imatrix_samples, args.imatrix_tokens, args.calibration_samples, args.calibration_tokens = (
            2,
            64,
            4,
            128,
        )
        args.mixed_samples, args.mixed_tokens, args.check_matrices, args.check_windows = 2, 128, 8, 1
        args.check_tokens, args.budgets = 128, "0.03"
        if args.out_dir == str(cache_dir() / "bench-fastpath"):
            args.out_dir = str(cache_dir() / "bench-fastpath-quick")
    args.budgets = [float(b) for b in str(args.budgets).split(",") if b.strip()]
    recorder = Recorder("fastpath-quick" if args.quick else "fastpath")
    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = make_files(out_dir, args)
    quality(rows, args)
    for threads in sorted({1, args.threads}):
        speed(rows, threads, args)
    check = fisher_check(args)
    fronts = {str(t): pareto(rows, str(t)) for t in sorted({1, args.threads})}
    by_name = {r["name"]: r for r in rows}
    gptq, q4, q4i = (
        by_name["greenlm gptq-q4_0"],
        by_name["llama.cpp q4_0"],
        by_name["llama.cpp q4_0 + imatrix"],
    )
    win = wins(rows, str(args.threads))
    first = rows[0]["speed"][str(args.threads)]
    result = {
        "benchmark": "fastpath",
        "issue": 13,
        "model": DEFAULT_MODEL,
        "reference": REFERENCE,
        "quick": args.quick,
        "threads": args.threads,
        "meter": first["meter"],
        "energy_source": first["energy_source"],
        "workload": {
            "num_prompts": args.num_prompts,
            "prompt_tokens": args.prompt_tokens,
            "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats,
            "statistic": "median over repeats; rows take turns within each round (interleaved)",
        },
        "quality": {"max_eval_tokens": args.max_eval_tokens, "text": rows[0].get("eval_text")},
        "calibration": {
            "gptq_awq": [args.calibration_samples, args.calibration_tokens],
            "imatrix": [args.imatrix_samples, args.imatrix_tokens],
            "mixed": [args.mixed_samples, args.mixed_tokens],
        },
        "rows": rows,
        "pareto": fronts,
        "greenlm_vs_uniform": win,
        "sensitivity_check": check,
        "targets": {
            "gptq_q4_0_kld": gptq["kld"],
            "llamacpp_q4_0_kld": q4["kld"],
            "llamacpp_q4_0_imatrix_kld": q4i["kld"],
            "beats_q4_0": gptq["kld"] < q4["kld"],
            "beats_q4_0_imatrix": gptq["kld"] < q4i["kld"],
            "undominated_greenlm": [w for w in win if not w["dominated_by"]],
            "any_greenlm_undominated": any(not w["dominated_by"] for w in win),
        },
        "wall_s": time.perf_counter() - start,
    }
    result["markdown"] = markdown(result)
    if args.markdown:
        Path(args.markdown).write_text(result["markdown"] + "\n")
    recorder.finish(result, out=args.results)
    log("\n" + result["markdown"])


if __name__ == "__main__":
    main()
