"""`greenlm report`: one self-contained HTML file from an optimization search in the store."""

from __future__ import annotations

import typer

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import emit_json, out


@app.command()
def report(
    out_path: str = typer.Option("report.html", "--out", help="HTML file to write."),
    search_id: str | None = typer.Option(None, "--search-id", help="Which search (default: the latest)."),
    db: str | None = options.DbOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """Write the Pareto plot, energy by phase, candidate table and provenance as one HTML file."""
    from greenlm.report import write_report
    from greenlm.store import Store

    with Store(db) as store:
        path = write_report(store, out_path, search_id)
    if as_json:
        emit_json({"report": str(path), "bytes": path.stat().st_size})
        return
    out.print(f"report written to {path}", markup=False)
