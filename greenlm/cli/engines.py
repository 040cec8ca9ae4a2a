"""`greenlm engines`: which execution engines are installed and usable here, and why not."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import emit_json, out


@app.command()
def engines(as_json: bool = options.JsonOpt) -> None:
    """Which execution engines are installed and usable, their versions, and why not."""
    from greenlm.engines import available_engines

    found = available_engines()
    if as_json:
        emit_json(found)
        return
    table = Table(title="execution engines (--engine)")
    for col in ("engine", "package", "version", "usable", "why not / details"):
        table.add_column(col)
    for e in found:
        table.add_row(
            e["engine"],
            e["package"],
            e["version"] or "not installed",
            "yes" if e["usable"] else "no",
            escape(e["reason"] or e.get("detail", "")),  # "pip install 'greenlm[llamacpp]'" is not markup
        )
    out.print(table)
