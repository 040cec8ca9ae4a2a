"""greenlm's own compression in llama.cpp (issue 13): llama.cpp's uniform GGUF types against greenlm-made files,
all run by llama.cpp on the built-in model, in one run.

Rows
- llama.cpp's uniform types, quantized by llama.cpp from the f32 export: q8_0, q6_k, q5_1, q5_0, q4_1, q4_0,
  q4_k_m, and each of those but q8_0 again with an importance matrix from the calibration split.
- greenlm files: GPTQ codes as Q4_0 and as Q4_1 blocks, AWQ (folded scales) and RTN codes as Q4_0 blocks, and
  `export --mixed` at one or two KLD budgets (candidates: llama.cpp's uniform types and the GPTQ codes).
- the packaged SmolLM2 Q4_1 file the built-in model comes from, for context.
Per row: type, file bytes, bits per weight, KLD and PPL on held-out text (`greenlm eval`, evaluation split,
against the float reference), decode tokens/s and J/token at 1 thread and at all threads (`greenlm measure`
in interleaved rounds, each file in a process of its own: see below), the (J/token, KLD) Pareto front, which
greenlm files no uniform type dominates and by how much they win, and the two targets: the GPTQ-coded Q4_0 file's KLD below llama.cpp's
own Q4_0, without and with an importance matrix. It also checks the mixed chooser's cheap sensitivity (Fisher)
against the measured per-matrix KLD (rank correlation).

Reference. The built-in model is the SmolLM2-135M-Instruct Q4_1 GGUF dequantized to float32: every KLD here is
against those float weights through transformers. Its weights lie on a Q4_1 grid already, so Q4_1 files (llama.cpp's
and greenlm's) reproduce them almost exactly; read their KLD accordingly.

Speed and energy. Each file runs in a process of its own, loaded once and idle while the others measure, the
rows taking turns in `--repeats` rounds (greenlm.workload.interleave, as bench/engines.py and the optimizer's
final round do): a user's `greenlm measure` runs one file alone, and a llama.cpp engine sharing a process with
another engine ran 25-40% slower (commit 71550d4, the optimizer's final round). Each row keeps its median, its min-max range and every round's J/token; a row is
called cheaper, dearer, on the front or undominated only when the J/token gap exceeds both rows' range, and is
marked "within noise" otherwise (bench/spread.py). All rows' processes are alive at once: about 0.6 GB each,
some 12 GB for the 19 rows.

Run it on an otherwise idle machine (llama.cpp's threads wait for each other at every operation):
    .venv/bin/python bench/fastpath.py --markdown fastpath.md          # the defaults: longer than the README's settings (35 min here)
    .venv/bin/python bench/fastpath.py --quick                          # smallest settings: checks the script
JSON on stdout, with the machine record (bench/benchlib.py: date, CPU, cores, load average, git commit), also
written to bench/results/fastpath.json (--quick: fastpath-quick.json, so a quick run never replaces the real one).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchlib import Recorder, log
from spread import HIGHER, LOWER, RULE, WITHIN_NOISE, compare, summarize
from tables import fastpath_markdown

from greenlm.energy.settings import EnergySettings
from greenlm.engines.llamacpp_engine import default_threads
from greenlm.evaluate import DEFAULT_MAX_EVAL_TOKENS, EvalConfig, evaluate
from greenlm.export import ExportConfig, export_model
from greenlm.export.config import DEFAULT_CANDIDATES
from greenlm.export.fastpath import variant_for
from greenlm.llamacpp.inspect import tensor_type_report
from greenlm.models import DEFAULT_MODEL, resolve_model
from greenlm.paths import cache_dir
from greenlm.workload import MeasureConfig
from greenlm.workload.interleave import measure_interleaved

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
    """Decode speed and energy at `threads`: `args.repeats` interleaved rounds, each file in a process of its
    own, loaded once and idle while the others measure (greenlm.workload.interleave), as a user's
    `greenlm measure` runs one file alone; per row the median, the min-max range and every round."""
    configs = {
        row["name"]: MeasureConfig(
            model=row["path"],
            engine="llamacpp",
            num_prompts=args.num_prompts,
            prompt_tokens=args.prompt_tokens,
            max_new_tokens=args.max_new_tokens,
            repeats=1,
            threads=threads,
            energy=EnergySettings(meter=args.meter),
        )
        for row in rows
    }
    rounds = measure_interleaved(
        configs, args.repeats, announce=lambda m: log(f"measuring {threads} thread(s), {m}")
    )
    for row in rows:
        per_round = [r.to_dict() for r in rounds[row["name"]]]
        cost = summarize([r["decode_j_per_token"] for r in per_round])
        row.setdefault("speed", {})[str(threads)] = {
            "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in per_round),
            "decode_j_per_token": cost["median"],
            "rel_spread_j": cost["rel_spread"],
            "spread_j": {"min": cost["min"], "max": cost["max"]},
            "per_round_j": cost["per_round"],
            "meter": per_round[0]["meter"],
            "energy_source": per_round[0]["energy_source"],
        }


# --- analysis ----------------------------------------------------------------------------------------------


def cost(row: dict, threads: str) -> dict:
    """The row's decode J/token at `threads` as {median, min, max} (a JSON from before the rounds kept their
    range has none: its range is then the median alone, and every gap looks clear)."""
    s = row["speed"][threads]
    spread = s.get("spread_j") or {"min": s["decode_j_per_token"], "max": s["decode_j_per_token"]}
    return {"median": s["decode_j_per_token"], **spread}


def pareto(rows: list[dict], threads: str) -> dict[str, str]:
    """{name: "clear" or WITHIN_NOISE} for the rows no other row beats on both median decode J/token and KLD
    at `threads`, cheapest first. "clear": every row with no more KLD is dearer by more than both rows' range
    over the rounds; WITHIN_NOISE: its place on the front rests on a J/token gap inside that noise."""
    front = {}
    for r in sorted(rows, key=lambda r: cost(r, threads)["median"]):
        j, k = cost(r, threads)["median"], r["kld"]
        rivals = [o for o in rows if o is not r and o["kld"] <= k]
        if any(
            cost(o, threads)["median"] <= j and (cost(o, threads)["median"] < j or o["kld"] < k)
            for o in rivals
        ):
            continue
        clear = all(compare(cost(o, threads), cost(r, threads)) == HIGHER for o in rivals)
        front[r["name"]] = "clear" if clear else WITHIN_NOISE
    return front


def wins(rows: list[dict], threads: str) -> list[dict]:
    """For each greenlm file against llama.cpp's uniform types at `threads`: its status ("undominated": every
    uniform type with no more KLD costs more J/token beyond both rows' noise; "dominated": one with no more
    KLD costs less beyond it; WITHIN_NOISE otherwise), the types on each side, and its margins."""
    uniform = [r for r in rows if r["group"] == "uniform"]
    out = []
    for g in (r for r in rows if r["group"] == "greenlm"):
        mine, k = cost(g, threads), g["kld"]
        relation = {u["name"]: compare(cost(u, threads), mine) for u in uniform}  # the uniform row's J/token
        no_worse = [u for u in uniform if u["kld"] <= k]
        dominated_by = [u["name"] for u in no_worse if relation[u["name"]] == LOWER]
        tied = [u["name"] for u in no_worse if relation[u["name"]] == WITHIN_NOISE]
        status = "dominated" if dominated_by else WITHIN_NOISE if tied else "undominated"
        # Margins over the uniform types that cost no more than this file (cheaper, or within noise of it)...
        not_dearer = [u for u in uniform if relation[u["name"]] != HIGHER]
        best_cheaper = min(not_dearer, key=lambda u: u["kld"], default=None)
        # ...and over those with no more KLD.
        cheapest_better = min(no_worse, key=lambda u: cost(u, threads)["median"], default=None)
        out.append(
            {
                "name": g["name"],
                "status": status,
                "dominated_by": dominated_by,
                "within_noise_of": tied,
                "dominated_by_medians": [
                    u["name"] for u in no_worse if cost(u, threads)["median"] <= mine["median"]
                ],
                # the lowest KLD any uniform type reaches at no more J/token, as a multiple of this file's KLD
                "kld_margin": (best_cheaper["kld"] / k) if best_cheaper and k > 0 else None,
                "kld_margin_vs": best_cheaper["name"] if best_cheaper else None,
                "kld_margin_energy": relation[best_cheaper["name"]] if best_cheaper else None,
                # the least J/token any uniform type needs for no more KLD, as a multiple of this file's
                "energy_margin": (cost(cheapest_better, threads)["median"] / mine["median"])
                if cheapest_better
                else None,
                "energy_margin_vs": cheapest_better["name"] if cheapest_better else None,
                "energy_margin_energy": relation[cheapest_better["name"]] if cheapest_better else None,
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
            2,  # two rounds: the interleaving and the ranges run too
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
            "statistic": "median over rounds; each file in a process of its own, the rows taking turns within "
            "each round (interleaved); range: min-max over the rounds",
            "difference_rule": RULE,
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
            "undominated_greenlm": [w for w in win if w["status"] == "undominated"],
            "within_noise_greenlm": [w for w in win if w["status"] == WITHIN_NOISE],
            "any_greenlm_undominated": any(w["status"] == "undominated" for w in win),
        },
        "wall_s": time.perf_counter() - start,
    }
    result["markdown"] = fastpath_markdown(result)
    if args.markdown:
        Path(args.markdown).write_text(result["markdown"] + "\n")
    recorder.finish(result, out=args.results)
    log("\n" + result["markdown"])


if __name__ == "__main__":
    main()
