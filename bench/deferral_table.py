"""The deferral benchmark's table and summary lines, from its JSON alone (no greenlm, no torch: the README's
renderer imports it)."""

from __future__ import annotations


def markdown(r: dict) -> str:
    runs = r["runs"]
    head = "| run | deferred carbon g | deferred energy J | J/token | batches met | lost / dup | SLO attainment | static g | dynamic g |"
    lines = [head, "|" + "---|" * 9]
    for name, run in runs.items():
        p, b, sd = run["parts"], run["batches"], run["static_dynamic"]
        slo = run["slo"]["attainment"]
        lines.append(
            f"| {name} ({run['forecast']}) | {p['deferred']['carbon_g']:.4g} | {p['deferred']['energy_j']:.1f} | "
            f"{run['deferred_j_per_token'] or 0:.3g} | {b['deadlines_met']}/{b['count']} | {b['lines_lost']} / {b['lines_duplicated']} | "
            f"{slo if slo is None else f'{slo:.1%}'} | {sd['static_carbon_g']:.4g} | {sd['dynamic_carbon_g']:.4g} |"
        )
    s = r["summary"]

    def change(pct: float) -> str:
        return f"{abs(pct):.1f}% {'less' if pct >= 0 else 'more'} carbon per deferred token than on arrival"

    share = (
        f"the forecast gets {s['fraction_of_perfect']:.0%} of what perfect foresight saves"
        if s["fraction_of_perfect"] is not None
        else "perfect foresight saved nothing here, so the forecast's share of it is undefined"
    )
    modelled = s.get("modelled") or {}
    lines += [
        "",
        f"forecast ({r['forecast']}): {change(s['saving_forecast_pct'])}; perfect foresight: "
        f"{change(s['saving_perfect_pct'])}; {share}.",
    ]
    if modelled.get("saving_pct") is not None:
        lines.append(
            f"The planner's own model of the same jobs on the trace (measured J/token and throughput, perfect "
            f"foresight) expects {modelled['saving_pct']:.1f}% less carbon than on arrival."
        )
    lines += [
        f"batch J/token vs one at a time: {r['calibration']['batch_vs_single_j_per_token']:.2f}x; kill -9: "
        f"{r['kill']['lost']} lost, {r['kill']['duplicated']} answered twice",
    ]
    return "\n".join(lines)
