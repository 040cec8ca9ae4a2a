"""The report's figures as inline SVG (matplotlib's object API, no pyplot state): nothing is fetched when the
page is viewed."""

from __future__ import annotations

import io

from matplotlib.figure import Figure


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog: the SVG is embedded in HTML


def pareto_svg(rows: list, front: list, chosen, baseline, max_kld: float) -> str:
    """Decode J/token against KLD of measured candidate rows (`optimize.row.CandidateRow`), by engine."""
    fig = Figure(figsize=(7.5, 4.6))
    ax = fig.subplots()
    floor = 1e-5  # KLD of the baseline is 0: plot on a log axis with a floor
    by_engine: dict[str, list] = {}
    for r in rows:
        by_engine.setdefault(r.candidate.engine, []).append(r)
    for engine, group in sorted(by_engine.items()):
        ax.scatter(
            [r.decode_j_per_token for r in group],
            [max(r.kld, floor) for r in group],
            label=f"{engine} candidates",
            alpha=0.75,
            s=36,
        )
    if front:
        ax.plot(
            [r.decode_j_per_token for r in front],
            [max(r.kld, floor) for r in front],
            "--",
            color="gray",
            label="Pareto front",
        )

    def mark(row, **style) -> None:
        ax.scatter([row.decode_j_per_token], [max(row.kld, floor)], **style)

    mark(baseline, marker="s", s=90, facecolors="none", edgecolors="black", label="baseline")
    if chosen:
        mark(chosen, marker="*", s=260, color="crimson", label="chosen")
    ax.axhline(max(max_kld, floor), color="crimson", lw=0.8, ls=":", label=f"KLD budget {max_kld:g}")
    ax.set_yscale("log")
    ax.set_xlabel("decode energy (J/token)")
    ax.set_ylabel(f"KL divergence vs reference (log; baseline plotted at {floor:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    svg = _svg(fig)
    return svg


def phase_svg(bars: list[tuple[str, dict[str, float]]]) -> str:
    """Stacked bars of energy per phase (J per generated token) for each named row."""
    phases = ["prefill", "decode"]
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    names = [name for name, _ in bars]
    bottom = [0.0] * len(bars)
    for phase in phases:
        values = [energy.get(phase, 0.0) for _, energy in bars]
        ax.barh(names, values, left=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("energy per generated token (J), by phase")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    svg = _svg(fig)
    return svg
