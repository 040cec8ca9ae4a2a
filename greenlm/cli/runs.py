"""`greenlm runs`: the stored result rows, newest first."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import emit_json, fmt, out
from greenlm.errors import GreenlmError


@app.command()
def runs(
    limit: int = typer.Option(20, "--limit", "-n", help="How many rows, newest first."),
    db: str | None = options.DbOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """The stored measurement rows, newest first."""
    from greenlm.store import Store

    if limit < 1:
        raise GreenlmError(f"--limit must be at least 1, got {limit}")
    with Store(db) as store:
        rows = store.runs(limit=limit)
        path = store.path
    if as_json:
        emit_json(
            [json.loads(r["record_json"]) | {"created_at": r["created_at"], "kind": r["kind"]} for r in rows]
        )
        return
    if not rows:
        out.print(f"no runs stored in {path} yet: run `greenlm measure`", markup=False)
        return
    table = Table(title=f"runs in {path}")
    for col in (
        "run_id",
        "when (UTC)",
        "kind",
        "model",
        "engine",
        "meter",
        "decode J/token",
        "decode tok/s",
        "gCO2e/1k tok",
    ):
        table.add_column(col)
    for r in rows:
        meter = f"{r['meter']} ({r['energy_source']})" if r["meter"] else ""
        table.add_row(
            r["run_id"],
            r["created_at"],
            r["kind"],
            r["model"],
            r["engine"] or "",
            meter,
            *(
                fmt(r[c]) if r[c] is not None else ""
                for c in ("decode_j_per_token", "decode_tokens_per_s", "carbon_g_per_1k_tokens")
            ),
        )
    out.print(table)
