"""The markdown of the benchmarks whose JSON the README renders, and the few figures those tables derive.

Standard library only (and bench/spread.py): bench/readme.py renders and checks the README with these without
loading torch, and each benchmark script writes the same markdown into its JSON.
"""

from __future__ import annotations

from spread import LOWER, RULE, WITHIN_NOISE


def _f(value, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


# ---- bench/fastpath.py ------------------------------------------------------------------------------------


def fastpath_markdown(result: dict) -> str:
    threads = str(result["threads"])
    front = result["pareto"][threads]
    lines = [
        f"| file | type | MB | bits/weight | KLD | PPL | decode tok/s (1 / {threads} threads) | "
        f"J/token (1 / {threads} threads) | J/token range, {threads} threads |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        s1, sn = r["speed"]["1"], r["speed"][threads]
        mark = {"clear": " *", WITHIN_NOISE: " ~"}.get(front.get(r["name"]), "")
        spread = sn["spread_j"]
        lines.append(
            f"| {r['name']}{mark} | {r['type']} | {r['bytes'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | "
            f"{r['kld']:.4f} | {r['ppl']:.3f} | {s1['decode_tokens_per_s']:.1f} / {sn['decode_tokens_per_s']:.1f} | "
            f"{s1['decode_j_per_token']:.3f} / {sn['decode_j_per_token']:.3f} | "
            f"{spread['min']:.3f}-{spread['max']:.3f} |"
        )
    t, w = result["targets"], result["workload"]
    undominated = [x for x in result["greenlm_vs_uniform"] if x["status"] == "undominated"]
    tied = [x for x in result["greenlm_vs_uniform"] if x["status"] == WITHIN_NOISE]
    lines += [
        "",
        f"* on the (J/token at {threads} threads, KLD) Pareto front by more than the noise; ~ on it by the medians "
        "only (the J/token gap to a row with no more KLD lies inside both rows' range over the rounds). KLD and "
        f"PPL on held-out text against {result['reference']}.",
        f"Energy: {result['energy_source']} ({result['meter']}); medians of {w['repeats']} interleaved rounds, "
        "each file in a process of its own, loaded once (as `greenlm measure` runs it); range: min-max over the "
        f"rounds; {RULE}.",
        f"GPTQ-coded Q4_0 vs llama.cpp Q4_0: KLD {t['gptq_q4_0_kld']:.4f} vs {t['llamacpp_q4_0_kld']:.4f} "
        f"({'met' if t['beats_q4_0'] else 'NOT met'}); vs Q4_0 + imatrix {t['llamacpp_q4_0_imatrix_kld']:.4f} "
        f"({'met' if t['beats_q4_0_imatrix'] else 'NOT met'}).",
        "Undominated greenlm files (every uniform type with no more KLD costs more J/token, beyond the noise): "
        + ("; ".join(_margin(x) for x in undominated) or "none")
        + ".",
    ]
    if tied:
        lines.append(
            "Within noise of a uniform type (no more KLD, J/token inside both rows' range): "
            + "; ".join(f"{x['name']} (vs {', '.join(x['within_noise_of'])})" for x in tied)
            + "."
        )
    check = result["sensitivity_check"]
    lines.append(
        f"Fisher vs measured per-matrix KLD: Spearman {check['spearman_rank_correlation']:.2f} over "
        f"{check['matrices']} matrices."
    )
    if result.get("quick"):
        lines.insert(0, "QUICK RUN (--quick): smallest settings, the figures say nothing about the files.\n")
    return "\n".join(lines)


def _margin(x: dict) -> str:
    if not x.get("kld_margin"):
        return x["name"]
    at = "at lower J/token" if x["kld_margin_energy"] == LOWER else "at J/token within noise of it"
    return f"{x['name']} (KLD {x['kld_margin']:.2f}x lower than {x['kld_margin_vs']} {at})"


# ---- bench/compression_table.py ---------------------------------------------------------------------------


def compression_markdown(report: dict) -> str:
    ref = next(r for r in report["rows"] if r["name"] == "reference")
    lines = [
        "| variant | execution | PPL (vs ref) | KLD | top-1 | size MB | decode tok/s | decode J/token (range) | "
        "J/token vs reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_compression_row(r, ref) for r in report["rows"]]
    w = report["decode_workload"]
    lines += [
        "",
        f"Decode figures: medians of {w['repeats']} interleaved rounds on {w['engine']}, every row (the reference "
        f"too) in a process of its own, loaded once; range: min-max over the rounds; {RULE}. Simulated rows run "
        "as dense float models: their speed, in parentheses, is no saving.",
    ]
    return "\n".join(lines)


def _compression_row(r: dict, ref: dict) -> str:
    def num(value, fmt):
        return "—" if value is None else format(value, fmt)

    speed = num(r["decode_tokens_per_s"], ".1f")
    joules = f"{num(r['decode_j_per_token'], '.3f')} ({num(r['spread_j']['min'], '.3f')}-{num(r['spread_j']['max'], '.3f')})"
    if r is ref:
        versus = "—"
    else:
        vs = r["vs_reference"]
        versus = WITHIN_NOISE if vs["relation"] == WITHIN_NOISE else f"{vs['change']:+.0%} ({vs['relation']})"
    if r["execution"] == "simulated":  # runs dense: not a saving, say so in the cell itself
        speed, joules, versus = f"({speed})", f"({joules})", f"({versus})"
    delta = "" if r["ppl_increase_pct"] is None else f" ({r['ppl_increase_pct']:+.1f}%)"
    return (
        f"| {r['label']} | {r['execution']} | {num(r['ppl'], '.2f')}{delta} | {num(r['kld'], '.4f')} | "
        f"{num(r['top1_agreement'], '.3f')} | {r['size_mb']:.0f} | {speed} | {joules} | {versus} |"
    )


# ---- bench/adapt_trace.py ---------------------------------------------------------------------------------


def energy_split_change(static: dict, adaptive: dict) -> dict | None:
    """The adaptive server's energy change against the static one, three ways, from each server's energy
    split ({static_j, dynamic_j, memory_j, total_j, core_s, duration_s, idle_watts_per_core}; None when a
    server has none): as charged (the cpu-model charges static power only for the cores a server holds);
    without the static charge of the cores the adaptive server released (as if they still cost it their idle
    power, which is all it saves where a freed core neither idles deeper nor serves other work); and the
    dynamic (busy core-seconds) part alone."""
    s, a = static.get("energy_split"), adaptive.get("energy_split")
    if not s or not a or not s["total_j"] or not s["duration_s"]:
        return None
    held_cores = s["core_s"] / s["duration_s"]  # what the static server held, all day
    released_core_s = max(0.0, held_cores * a["duration_s"] - a["core_s"])
    released_j = released_core_s * a["idle_watts_per_core"]
    return {
        "as_charged": a["total_j"] / s["total_j"] - 1,
        "without_release_credit": (a["total_j"] + released_j) / s["total_j"] - 1,
        "dynamic_only": a["dynamic_j"] / s["dynamic_j"] - 1 if s["dynamic_j"] else None,
        "released_core_s": released_core_s,
        "released_static_j": released_j,
        "held_cores_static": held_cores,
        "what": (
            "as_charged: total energy of each server's split; without_release_credit: the adaptive server also "
            "charged the static power of the core-seconds it released against the static server's allotment; "
            "dynamic_only: busy core-seconds alone"
        ),
    }


def adapt_trace_markdown(report: dict) -> str:
    s, a = report["static"], report["adaptive"]
    rows = [
        ("energy (J)", "energy_j", "{:.1f}"),
        ("carbon (g CO2e)", "carbon_g", "{:.4f}"),
        ("SLO attainment", "slo_attainment", "{:.1%}"),
        ("p90 TTFT (s)", "ttft_p90_s", "{:.2f}"),
        ("p90 TPOT (s)", "tpot_p90_s", "{:.3f}"),
        ("tokens per J", "tokens_per_j", "{:.2f}"),
        ("mean KLD served", "mean_kld_served", "{:.4f}"),
        ("requests / errors", None, None),
        ("decisions", "decisions", "{}"),
    ]
    out = [
        f"Compressed day: {report['day_s']:g} s, {s['requests']} requests, SLO TTFT <= {report['slo']['ttft_s']:g} s "
        f"and TPOT <= {report['slo']['tpot_s']:g} s, quality budget mean KLD <= {report['max_kld']:g}; energy "
        f"{s['meter']} ({s['energy_source']}).",
        "",
        "| | static (" + report["static_variant"] + ") | adaptive | change |",
        "|---|---|---|---|",
    ]
    for label, key, form in rows:
        if key is None:
            out.append(f"| {label} | {s['requests']} / {s['errors']} | {a['requests']} / {a['errors']} | |")
            continue
        out.append(_trace_row(label, s.get(key), a.get(key), form))
    split_s, split_a = s.get("energy_split"), a.get("energy_split")
    if split_s and split_a:
        for label, key in (
            ("static, allotted cores (J)", "static_j"),
            ("dynamic, busy core-seconds (J)", "dynamic_j"),
            ("memory (J)", "memory_j"),
        ):
            out.append(_trace_row(f"- {label}", split_s[key], split_a[key], "{:.1f}"))
    out.append("")
    change = report.get("energy_split_change")
    if change:
        out.append(
            f"Energy saving as charged (static power only for the cores a server holds): "
            f"{_f(change['as_charged'], '+.1%')}; without the static charge of the cores the adaptive server "
            f"released ({change['released_core_s']:.0f} core-seconds, {change['released_static_j']:.0f} J at "
            f"{split_a['idle_watts_per_core']:.2f} W per core): {_f(change['without_release_credit'], '+.1%')}; "
            f"dynamic energy alone: {_f(change['dynamic_only'], '+.1%')}. The split: the cpu-model formula on each "
            f"server's process from outside, every {split_a['interval_s']:g} s (its total "
            f"{_f(split_s['gap_rel'], '+.1%')} / {_f(split_a['gap_rel'], '+.1%')} of the servers' own meters)."
        )
        out.append("")
    ladder = report.get("ladder") or []
    if ladder:
        out += [
            "The ladder (the optimize search's front):",
            "",
            "| member | KLD | decode J/token | inside the budget |",
            "|---|---:|---:|---|",
        ]
        out += [
            f"| {m.get('name')} | {_f(m.get('kld'), '.4f')} | {_f(m.get('decode_j_per_token'), '.4f')} | "
            f"{'yes' if m.get('inside_budget') else 'no'} |"
            for m in ladder
        ]
    return "\n".join(out).rstrip() + "\n"


def _trace_row(label: str, sv, av, form: str) -> str:
    change = (
        f"{(av / sv - 1):+.1%}"
        if isinstance(sv, (int, float)) and isinstance(av, (int, float)) and sv
        else ""
    )
    cells = [form.format(v) if v is not None else "n/a" for v in (sv, av)]
    return f"| {label} | {cells[0]} | {cells[1]} | {change} |"


# ---- bench/gpu_check.py -----------------------------------------------------------------------------------

STEP_FIGURES = {  # step -> (label, key in its JSON output, format)
    "measure": [
        ("decode J/token", "decode_j_per_token", ".4f"),
        ("decode tok/s", "decode_tokens_per_s", ".1f"),
    ],
    "eval": [("PPL", "ppl", ".3f"), ("KLD", "kld", ".5f")],
    "distill": [("steps", "steps", "d"), ("training J", "energy_j", ".1f")],
}


def gpu_check_markdown(result: dict) -> str:
    gpu = result["gpu"]
    lines = [
        f"{'Passed' if result['passed'] else 'FAILED'} on {gpu['device']} (driver {gpu['gpus'][0]['driver']}, "
        f"torch {gpu['torch']}, CUDA {gpu['cuda']}) in {result['wall_s'] / 60:.1f} min; every step the `greenlm` "
        "CLI in a subprocess with --json.",
        "",
        "| step | result | wall s | figures | failed checks |",
        "|---|---|---:|---|---|",
    ]
    for s in result["steps"]:
        out = s.get("output") or {}
        figures = ", ".join(
            f"{label} {format(out[key], spec)}"
            for label, key, spec in STEP_FIGURES.get(s["step"], [])
            if isinstance(out, dict) and isinstance(out.get(key), (int, float))
        )
        failed = [name for name, ok in (s.get("checks") or {}).items() if not ok]
        if s.get("error"):
            failed.append(s["error"])
        lines.append(
            f"| {s['step']} | {'ok' if s['ok'] else 'FAILED'} | {_f(s.get('wall_s'), '.1f')} | {figures} | "
            f"{'; '.join(failed)} |"
        )
    c = result.get("power_check")
    if c:
        lines += [
            "",
            f"NVML energy counter {_f(c['counter_j'], '.1f')} J against the integral of sampled power "
            f"{_f(c['power_integral_j'], '.1f')} J over the {_f(c['window_s'], '.1f')} s of `greenlm measure` "
            f"({c['samples']} samples every {c['interval_s'] * 1000:g} ms): {_f(c['relative_difference'], '+.1%')} "
            f"(tolerance {c['tolerance']:.0%}: {'within' if c['within_tolerance'] else 'OUTSIDE'}).",
        ]
    return "\n".join(lines)
