"""Build the HTML report: Pareto plot, energy by phase for baseline vs chosen, the candidate table, and
where every figure came from. One file, inline CSS and SVG, no scripts, nothing fetched at view time."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

from greenlm.energy.payback import payback_tokens
from greenlm.errors import GreenlmError
from greenlm.io import write_text_atomic
from greenlm.optimize.pareto import QualityBudget, choose, pareto_front
from greenlm.optimize.row import CandidateRow, latest_search_id, load_rows
from greenlm.report.plots import pareto_svg, phase_svg

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.chosen{background:#fde8ea}tr.baseline{background:#eef}
.note{color:#555;font-size:.9rem}.estimated{color:#a15c00;font-weight:600}
.figure{margin:1rem 0}
"""
COLUMNS = [
    ("candidate", "label", None),
    ("status", "status", None),
    ("decode J/token", "decode_j_per_token", 4),
    ("decode tok/s", "decode_tokens_per_s", 1),
    ("prefill J/token", "prefill_j_per_token", 4),
    ("PPL", "ppl", 3),
    ("PPL +%", "ppl_increase_pct", 2),
    ("KLD", "kld", 4),
    ("top-1", "top1_agreement", 3),
    ("gCO2e/1k tok", "carbon_g_per_1k_tokens", 4),
    ("size MB", "size_mb", 1),
    ("execution", "execution", None),
    ("host", "host", None),
]


def _cell(value, digits):
    if value is None:
        return ""
    if digits is None or not isinstance(value, (int, float)):
        return html.escape(str(value))
    return f"{value:.{digits}f}"


def _search_rows(store, search_id: str | None) -> tuple[str, list[CandidateRow]]:
    latest = latest_search_id(store)
    if latest is None:
        raise GreenlmError(
            "the store has no optimization results yet: run `greenlm optimize` first (or pass --db)"
        )
    search_id = search_id or latest
    rows = load_rows(store, search_id)
    if not rows:
        raise GreenlmError(f"no search '{search_id}' in the store: `greenlm runs` lists what is there")
    rows.reverse()  # oldest first: the order they were evaluated
    return search_id, rows


def _summary(store, search_id: str) -> dict | None:
    """The search's own summary (its choice after the final round), None for a search that did not finish."""
    for row in store.runs(limit=100_000, kind="search"):
        record = json.loads(row["record_json"])
        if record.get("search_id") == search_id:
            return record
    return None


def _is_float_baseline(r: CandidateRow) -> bool:
    if r.role:
        return r.role == "baseline"
    c = r.candidate
    return not c.recipe and c.engine == "transformers" and not c.quant_type and not c.threads


def build_report(store, search_id: str | None = None) -> str:
    search_id, rows = _search_rows(store, search_id)
    measured = [r for r in rows if r.measured]
    baseline = next((r for r in rows if _is_float_baseline(r)), None)
    if baseline is None or not baseline.measured:
        raise GreenlmError(
            f"search '{search_id}' has no measured baseline: it was interrupted before it began"
        )
    budget = QualityBudget(**(rows[-1].budget or {}))
    summary = _summary(store, search_id)
    by_key = {r.key: r for r in rows}
    if summary is not None:  # what the search chose, on its final-round figures
        chosen = by_key.get((summary.get("chosen") or {}).get("key"))
    else:  # an interrupted search: the best figures it stored, without a final round
        chosen = choose(measured, budget)
        if chosen is not None and chosen.key == baseline.key:
            chosen = None
    front = pareto_front(measured)

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>greenlm report {search_id}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>greenlm optimization report <small>search {html.escape(search_id)}</small></h1>",
    ]
    model = baseline.model or ""
    parts.append(
        f"<p>Model <b>{html.escape(str(model))}</b>; budget: PPL increase ≤ {budget.max_ppl_increase_pct:g}%, "
        f"KLD ≤ {budget.max_kld:g}; {len(rows)} candidates ({len(measured)} fully measured).</p>"
    )
    if chosen:
        parts.append(_chosen_paragraph(chosen, baseline, summary))
    else:
        parts.append("<p><b>No candidate met the budget</b> while costing less than the baseline.</p>")
    if summary and summary.get("final_round"):
        parts.append(_final_round_table(summary))
    for note in (summary or {}).get("notes", []):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("<h2>Pareto front: decode energy against quality loss</h2>")
    parts.append(
        f"<div class='figure' id='pareto-plot'>{pareto_svg(measured, front, chosen, baseline, budget.max_kld)}</div>"
    )
    bars = [("baseline", _phases(baseline))]
    if chosen:
        bars.append(("chosen", _phases(chosen)))
    parts.append("<h2>Energy by phase (J per generated token)</h2>")
    parts.append(f"<div class='figure' id='phase-plot'>{phase_svg(bars)}</div>")

    columns = list(COLUMNS)
    if any(r.training_energy_j for r in rows):  # healed cuts: what training cost and when it is repaid
        _add_payback(rows, baseline)
        columns += [("training J", "training_energy_j", 0), ("payback tokens", "payback_tokens", 0)]
    parts.append("<h2>Candidates</h2><table id='candidates'><tr>")
    parts += [f"<th>{name}</th>" for name, _, _ in columns]
    parts.append("</tr>")
    for r in rows:
        cls = "chosen" if chosen and r.key == chosen.key else "baseline" if r.key == baseline.key else ""
        figures = r.to_dict()
        cells = "".join(f"<td>{_cell(figures.get(key), digits)}</td>" for _, key, digits in columns)
        reason = f" title='{html.escape(r.reason)}'" if r.reason else ""
        parts.append(f"<tr class='{cls}'{reason}>{cells}</tr>")
    parts.append("</table>")

    parts.append("<h2>Provenance</h2><ul class='note'>")
    meters = sorted({(r.energy.meter, r.energy.energy_source) for r in measured})
    for meter, source in meters:
        label = (
            "<span class='estimated'>estimated by a model, not a hardware counter</span>"
            if source == "estimated"
            else "measured by hardware counters"
        )
        parts.append(f"<li>Energy: meter <b>{html.escape(str(meter))}</b>, {label}.</li>")
    for key, what in (
        ("text", "Workload prompts"),
        ("eval_text", "Quality (PPL, KLD, top-1)"),
        ("intensity_source", "Carbon intensity"),
    ):
        values = sorted({str(r.figure(key)) for r in measured if r.figure(key)})
        if values:
            parts.append(f"<li>{what}: {html.escape('; '.join(values))}.</li>")
    if any(r.training_energy_j for r in rows):
        parts.append(
            "<li>Payback tokens: training J / (baseline decode J/token - candidate decode J/token), the served "
            "tokens after which a trained (distilled) candidate has repaid its training energy; empty when it "
            "saves nothing per token or was not measured.</li>"
        )
    engines = sorted({str(r.candidate.engine) for r in measured})
    hosts = sorted({str(r.host) for r in measured})
    parts.append(
        f"<li>Engines: {html.escape(', '.join(engines))}; hosts: {html.escape(', '.join(hosts))}.</li>"
    )
    parts.append(
        "<li>Quality is measured against the unmodified reference model on evaluation text the "
        "calibration never saw; `simulated` rows model quality only and claim no saving.</li>"
    )
    parts.append(
        f"<li>Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by greenlm.</li></ul>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _phases(row: CandidateRow) -> dict[str, float]:
    return (row.energy.phase_j_per_token if row.energy else None) or {}


def _chosen_paragraph(chosen: CandidateRow, baseline: CandidateRow, summary: dict | None) -> str:
    ratios = []
    if summary is None:
        ratios.append(f"<b>{baseline.cost / chosen.cost:.2f}x less</b> than float32 transformers")
    elif summary.get("comparable", True):
        ratios.append(f"<b>{summary['j_per_token_ratio']:.2f}x less</b> than float32 transformers")
        natural = summary.get("natural_baseline") or {}
        if natural.get("key") and natural["key"] != baseline.key:
            ratios.append(
                f"<b>{summary['j_per_token_ratio_natural']:.2f}x less</b> than the model as given "
                f"({html.escape(natural['label'])})"
            )
    else:
        ratios.append("ratios not comparable (see the note below)")
    source = "final-round median" if chosen.final else "search-time median"
    return (
        f"<p><b>Chosen:</b> {html.escape(chosen.label)}: decode {chosen.cost:.4f} J/token ({source}); "
        f"{'; '.join(ratios)}; PPL +{chosen.ppl_increase_pct:.2f}%, KLD {chosen.kld:.4f}.</p>"
    )


def _final_round_table(summary: dict) -> str:
    parts = [
        "<h2>Final round: finalists and baselines re-measured interleaved</h2><table id='final-round'>",
        "<tr><th>candidate</th><th>role</th><th>decode J/token (median)</th><th>min</th><th>max</th>"
        "<th>decode tok/s</th><th>meter</th><th>host</th></tr>",
    ]
    for r in summary["final_round"]:
        parts.append(
            f"<tr><td>{html.escape(r['label'])}</td><td>{html.escape(r['role'])}</td>"
            f"<td>{r['decode_j_per_token']:.4f}</td><td>{r['spread']['min']:.4f}</td>"
            f"<td>{r['spread']['max']:.4f}</td><td>{r['decode_tokens_per_s']:.1f}</td>"
            f"<td>{html.escape(str(r['meter']))}</td><td>{html.escape(str(r['host']))}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def _add_payback(rows: list[CandidateRow], baseline: CandidateRow) -> None:
    """Served tokens until a trained candidate's saving against the baseline repays its training energy."""
    for r in rows:
        if r.training_energy_j and r.measured:
            r.payback_tokens = payback_tokens(r.training_energy_j, baseline.cost, r.cost)


def write_report(store, out: str | Path, search_id: str | None = None) -> Path:
    """Render and write atomically: a reader never sees half a report."""
    return write_text_atomic(out, build_report(store, search_id))
