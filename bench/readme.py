"""Fill the README's benchmark sections from bench/results/*.json, so no figure in the README is typed by hand.

The README marks each section with `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`; this script replaces what
is between the marks with the table rendered from bench/results/NAME.json and a provenance line (date, CPU,
CPUs, load average, commit). Run it after re-running a benchmark:
    .venv/bin/python bench/readme.py            # rewrite README.md in place
    .venv/bin/python bench/readme.py --check    # exit 1 if the README is not what the results say
Under each table go the result's `notes` (its caveats), whatever the benchmark. Standard library only (with
bench/tables.py and bench/spread.py): checking the README loads no torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from tables import adapt_trace_markdown  # bench/ is the script's directory, so first on sys.path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "results"
# A section whose JSON is not there yet says what that means, rather than a generic line.
PLACEHOLDERS = {
    "gpu_check": (
        "Not yet run on a GPU: the NVML meter and the CUDA paths of measure, eval, serve and distill are tested "
        "with fakes only (patched NVML) until this check has run."
    ),
}
MARK = re.compile(r"(<!-- bench:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def _f(value, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def provenance(result: dict, name: str) -> str:
    m = result.get("machine") or {}
    load = result.get("load_average_1m") or {}
    commit = (m.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if m.get("dirty") else "")
    vm = ", virtual machine" if m.get("virtual_machine") else ""
    return (
        f"Measured {m.get('date', 'unknown date')} on {m.get('cpu', 'unknown CPU')} ({m.get('cpus_allowed', '?')} "
        f"CPUs{vm}), load average {_f(load.get('start'), '.2f')} at start and {_f(load.get('end'), '.2f')} at end; "
        f"greenlm commit {commit}; JSON: `bench/results/{name}.json`."
    )


def optimize_table(r: dict) -> str:
    base, natural, chosen = r["baseline"], r["natural_baseline"], r["chosen"]

    def cost(row):
        return None if row is None else (row.get("final") or row)["decode_j_per_token"]

    def speed(row):
        return None if row is None else (row.get("final") or row)["decode_tokens_per_s"]

    lines = [
        "| | decode J/token | decode tok/s | PPL +% | KLD | engine, threads |",
        "|---|---:|---:|---:|---:|---|",
    ]
    rows = [("float32 transformers (baseline)", base), ("the model as given", natural), ("chosen", chosen)]
    for label, row in rows:
        if row is None:
            lines.append(f"| {label} | nothing within budget | | | | |")
            continue
        lines.append(
            f"| {label}: {row['label']} | {_f(cost(row), '.4f')} | {_f(speed(row), '.1f')} | "
            f"{_f(row.get('ppl_increase_pct'), '+.2f')} | {_f(row.get('kld'), '.4f')} | "
            f"{row['engine']}, {row.get('threads') or 'all'} |"
        )
    out = "\n".join(lines)
    ratio, ratio_natural = r.get("j_per_token_ratio"), r.get("j_per_token_ratio_natural")
    out += (
        f"\n\nDecode J/token **{_f(ratio, '.2f')}x** lower than float32 transformers and **{_f(ratio_natural, '.2f')}x** "
        f"lower than the model as given, from the final round's medians ({len(r.get('final_round') or [])} rows "
        f"re-measured interleaved). {r['candidates_evaluated']} candidates: "
        + ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items()))
        + f"; stopped by {r['stopped_by']}; wall {r['wall_s'] / 60:.1f} min."
    )
    final = r.get("final_round") or []
    if final:
        out += (
            "\n\nFinal round (each row in its own process, interleaved):\n\n"
            "| row | role | decode J/token, median | range | decode tok/s |\n|---|---|---:|---|---:|\n"
        )
        out += "\n".join(
            f"| {f['label']} | {f['role']} | {_f(f['decode_j_per_token'], '.4f')} | "
            f"{_f(f['spread']['min'], '.4f')}-{_f(f['spread']['max'], '.4f')} | {_f(f['decode_tokens_per_s'], '.1f')} |"
            for f in final
        )
    rep = r.get("reproduction")
    if rep and rep.get("error"):
        out += f"\n\n`greenlm measure --model OUT` on the saved winner failed: {rep['error']}"
    elif rep:
        out += (
            f"\n\n`greenlm measure --model OUT` on the saved winner ran {rep['engine']} with {rep['threads']} "
            f"thread(s): {_f(rep['decode_j_per_token'], '.4f')} J/token, "
            f"{'within' if rep['within_final_spread'] else 'OUTSIDE'} the final round's range "
            f"{_f(rep['final_spread']['min'], '.4f')}-{_f(rep['final_spread']['max'], '.4f')} "
            f"({rep['relative_difference']:+.1%})."
        )
    return out


def threads_table(r: dict) -> str:
    lines = [
        "| threads | decode tok/s | decode J/token | static | dynamic | memory |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for threads, fig in r["results"].items():

        def med(key, fig=fig):
            return None if fig.get(key) is None else fig[key]["median"]

        lines.append(
            f"| {threads} | {_f(med('decode_tokens_per_s'), '.1f')} | {_f(med('decode_j_per_token'), '.3f')} | "
            f"{_f(med('decode_static_j_per_token'), '.3f')} | {_f(med('decode_dynamic_j_per_token'), '.3f')} | "
            f"{_f(med('decode_memory_j_per_token'), '.3f')} |"
        )
    c = r.get("comparison") or {}
    tail = (
        f"\n\nLower decode J/token: {c.get('lower_decode_j_per_token', 'n/a')} "
        f"({c.get('note', '')}); meter {r['meter']} ({r['energy_source']})."
    )
    return "\n".join(lines) + tail


def meter_overhead_table(r: dict) -> str:
    cc = (
        f"; codecarbon's offline tracker around the same workload: {r['codecarbon_overhead_ratio']:+.1%}"
        if "codecarbon_overhead_ratio" in r
        else ""
    )
    return (
        f"A begin+end window pair costs {r['greenlm_window_cost_s'] * 1e6:.0f} us, "
        f"{r['greenlm_window_cost_ratio']:.4%} of the {r['bare_median_s']:.2f} s workload ({r['new_tokens']} "
        f"decode tokens, {r['engine']}, meter {r['meter']}); end to end the metered runs took "
        f"{r['greenlm_overhead_ratio']:+.1%} against bare runs whose own spread was {r['bare_spread_rel']:.1%}{cc}."
    )


def quant_kernels_table(r: dict) -> str:
    lines = [
        "| kernel | weights | activations | decode speed-up vs float32 | prefill speed-up |",
        "|---|---|---|---:|---:|",
    ]
    for row in r["kernels"]:
        if row.get("error"):
            continue
        lines.append(
            f"| {row['kernel']} | {row['weights']} | {row['activations']} | "
            f"{_f(row.get('decode_speedup_vs_float32'), '.2f')}x | {_f(row.get('prefill_speedup_vs_float32'), '.2f')}x |"
        )
    return "\n".join(lines)


def adapt_trace_table(r: dict) -> str:
    """The trace benchmark's own table, and its plot of the day (written beside the JSON)."""
    plot = RESULTS / "adapt_trace.svg"
    figure = f"\n\n![the day, static against adaptive](bench/results/{plot.name})" if plot.is_file() else ""
    return adapt_trace_markdown(r) + figure


def distill_heal_table(r: dict) -> str:
    """The script's table, then each cut against the issue's two targets."""
    targets = r.get("targets") or {}
    removed_min, forecast_max = (
        targets.get("drop2_ppl_increase_removed_pct_at_least"),
        targets.get("forecast_error_pct_within"),
    )
    lines = []
    for row in r["rows"]:
        removed, error = row.get("ppl_increase_removed_pct"), row.get("forecast_error_pct")
        heal = f"healing removed {_f(removed, '.0f')}% of the cut's perplexity increase"
        if removed_min is not None and removed is not None and row["layers_removed"] == 2:
            heal += f" (target >= {removed_min:g}%: {'met' if removed >= removed_min else 'missed'})"
        fc = f"the forecast at step {row.get('forecast_at_step')} was off by {_f(error, '+.1f')}%"
        if forecast_max is not None and error is not None:
            fc += f" (target within {forecast_max:g}%: {'met' if abs(error) <= forecast_max else 'missed'})"
        lines.append(f"{row['name']}: {heal}; {fc}.")
    return r["markdown"].strip() + "\n\n" + " ".join(lines)


def deferral_table(r: dict) -> str:
    """The deferral benchmark's own table and summary lines."""
    from deferral import markdown  # bench/ is the script's directory, so first on sys.path

    return markdown(r)


RENDERERS: dict[str, Callable[[dict], str]] = {
    "deferral": deferral_table,
    "distill_heal": distill_heal_table,
    "adapt_trace": adapt_trace_table,
    "optimize_builtin": optimize_table,
    "threads": threads_table,
    "meter_overhead": meter_overhead_table,
    "quant_kernels": quant_kernels_table,
}


def notes(result: dict) -> str:
    """The result's caveats, one bullet each ("" when it has none)."""
    items = result.get("notes") or []
    items = [items] if isinstance(items, str) else items
    return "".join(f"- {note}\n" for note in items)


def render(name: str) -> str:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return (
            PLACEHOLDERS.get(name, f"(no result yet: run the benchmark to write `bench/results/{name}.json`)")
            + "\n"
        )
    result = json.loads(path.read_text(encoding="utf-8"))
    table = RENDERERS[name](result) if name in RENDERERS else result.get("markdown")
    if not table:
        raise SystemExit(f"{path} has no markdown table and bench/readme.py has no renderer for it")
    caveats = notes(result)
    caveats = f"\nNotes:\n{caveats}" if caveats else ""
    return f"{table.strip()}\n{caveats}\n{provenance(result, name)}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the results")
    args = ap.parse_args()
    text = README.read_text(encoding="utf-8")
    new = MARK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)
    if args.check:
        sys.exit(0 if new == text else 1)
    README.write_text(new, encoding="utf-8")
    print(
        f"README.md: {len(MARK.findall(text))} benchmark sections filled from bench/results/", file=sys.stderr
    )


if __name__ == "__main__":
    main()
