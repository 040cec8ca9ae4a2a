"""`greenlm meters`: which energy meters this machine has, and why the others are absent."""

from __future__ import annotations

from rich.table import Table

from greenlm.cli.app import app
from greenlm.cli.common import JsonOpt, emit_json, out


@app.command()
def meters(as_json: bool = JsonOpt) -> None:
    """Which energy meters this machine has, and why the others are absent."""
    from greenlm.energy import probe_meters

    statuses = probe_meters()
    if as_json:
        emit_json(
            [
                {
                    "name": s.name,
                    "available": s.available,
                    "energy_source": s.energy_source,
                    "reason": s.reason,
                    "details": s.details,
                }
                for s in statuses
            ]
        )
        return
    table = Table(title="energy meters (auto-detection order)")
    for col in ("meter", "available", "kind", "why / details"):
        table.add_column(col)
    for s in statuses:
        about = s.reason if not s.available else ", ".join(f"{k}: {v}" for k, v in s.details.items())
        table.add_row(s.name, "yes" if s.available else "no", s.energy_source, about)
    out.print(table)
