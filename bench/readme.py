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


def _speedup_cell(row: dict, workload: str) -> str:
    """A cell like "1.31x (1.10-1.80, faster)": the median over processes, their range, the verdict."""
    median = _f(row.get(f"{workload}_speedup_vs_float32"), ".2f")
    span = row.get(f"{workload}_speedup_range")
    if not span:  # a result from before the runs in several processes
        return f"{median}x"
    return f"{median}x ({span[0]:.2f}-{span[1]:.2f}, {row.get(f'{workload}_vs_float32', '?')})"


def quant_kernels_table(r: dict) -> str:
    lines = [
        "| kernel | weights | activations | decode speed-up vs float32 | prefill speed-up vs float32 |",
        "|---|---|---|---:|---:|",
    ]
    for row in r["kernels"]:
        if row.get("error"):
            continue
        lines.append(
            f"| {row['kernel']} | {row['weights']} | {row['activations']} | "
            f"{_speedup_cell(row, 'decode')} | {_speedup_cell(row, 'prefill')} |"
        )
    if r.get("processes"):
        lines += [
            "",
            f"Each cell: the median over {r['processes']} fresh processes, their min-max range, and whether the "
            "kernel is faster or slower than float32 beyond that range.",
        ]
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
    from deferral_table import markdown  # bench/ is the script's directory, so first on sys.path

    return markdown(r)


def gateway_table(r: dict) -> str:
    """The gateway benchmark: latency and CPU it adds, its per-request figures against serve's, the peers."""
    a, b, e = r["a_direct"], r["b_gateway_to_serve"], r["energy"]
    over, targets = r["overhead"], r["targets"]

    def met(key: str) -> str:
        return "met" if targets.get(key) else "missed"

    rows = [
        "| | straight to serve | through the gateway |",
        "|---|---:|---:|",
        f"| output tokens/s | {_f(a['output_tokens_per_s'], '.1f')} | {_f(b['output_tokens_per_s'], '.1f')} |",
        f"| TTFT p50 (ms) | {_f(a['ttft_ms']['p50'], '.1f')} | {_f(b['ttft_ms']['p50'], '.1f')} |",
        f"| ITL p50 (ms) | {_f(a['itl_ms']['p50'], '.2f')} | {_f(b['itl_ms']['p50'], '.2f')} |",
        f"| errors | {a['errors']} | {b['errors']} |",
    ]
    peers = []
    for key, name in (
        ("c_gateway_to_llama_server", "llama-server"),
        ("c_gateway_to_llama_cpp_python_server", "llama-cpp-python's server"),
    ):
        peer = r.get(key) or {}
        if peer.get("failed"):
            peers.append(f"{name}: did not run ({peer['failed'][:120]})")
        else:
            peers.append(
                f"{name}: {peer.get('requests')} requests, {peer.get('errors')} errors, energy in usage: "
                f"{'yes' if peer.get('energy_in_usage') else 'no'}"
            )
    lines = [
        f"GuideLLM, concurrency {r['concurrency']}, {r['requests_per_phase']} requests per phase, "
        f"{r['prompt_tokens']} prompt and {r['output_tokens']} output tokens; {r['meters']}.",
        "",
        *rows,
        "",
        f"Per request (our client, {e['requests']} requests through the gateway): the gateway's figure within 10% of "
        f"serve's own for {_f(100 * (e['within_10pct_share'] or 0), '.0f')}% (target >= 90%: "
        f"{met('per_request_within_10pct_for_90pct')}), p90 of the difference {_f(100 * (e['abs_rel_diff_p90'] or 0), '.1f')}%; "
        f"requests' totals {_f(100 * (e['requests_total_rel_diff'] or 0), '+.2f')}% apart (target 1%: "
        f"{met('requests_total_within_1pct')}), meters' totals {_f(100 * (e['meter_total_rel_diff'] or 0), '+.2f')}% "
        f"(target 1%: {met('meter_total_within_1pct')}). At concurrency {r['concurrency']} the gateway added TTFT p50 {_f(over['ttft_p50_added_ms'], '+.1f')} ms "
        f"(target <= 5 ms: {met('ttft_p50_added_at_most_5ms')}), ITL p50 {_f(over['itl_p50_added_ms'], '+.2f')} ms; "
        f"the gateway's CPU {_f(100 * over['gateway_cpu_share_of_upstream'], '.1f')}% of the server's (target < 5%: "
        f"{met('gateway_cpu_under_5pct')}).",
    ]
    if "ttft_p50_added_ms_c1" in over:
        lines[-1] += (
            f" One stream at a time ({r['b1_gateway_c1']['requests']} requests each way): added TTFT p50 "
            f"{_f(over['ttft_p50_added_ms_c1'], '+.1f')} ms (target <= 5 ms: {met('ttft_p50_added_at_most_5ms_c1')}), "
            f"ITL p50 {_f(over['itl_p50_added_ms_c1'], '+.2f')} ms."
        )
    lines += [
        "",
        "Through the gateway, unchanged: " + "; ".join(peers) + ".",
    ]
    return "\n".join(lines)


def readme_commands_line(r: dict) -> str:
    """The README's command block, run top to bottom in a fresh clone: how long, and where it stopped if it did."""
    line = r["markdown"]
    if r["exit"] != 0:
        failed = r["steps"][-1]
        line += f" It stopped at `{failed['command']}`."
    return line


RENDERERS: dict[str, Callable[[dict], str]] = {
    "gateway": gateway_table,
    "readme_commands": readme_commands_line,
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
