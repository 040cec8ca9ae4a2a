"""`greenlm schema`: the JSON Schema of a policy, search-space or recipe file, for editors."""

from __future__ import annotations

import typer

from greenlm.cli.app import app
from greenlm.cli.common import emit_json, out


@app.command()
def schema(
    kind: str = typer.Argument(
        ...,
        metavar="policy|space|recipe",
        help="Which file: policy (serve --policy), space (optimize --space) or recipe (compress --recipe).",
        show_default=False,
    ),
    out_path: str | None = typer.Option(
        None, "--out", help="Write the schema to this file (replacing it) instead of printing it."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the schema (JSON already), also when --out writes it."
    ),
) -> None:
    """Print (or write) the JSON Schema of a greenlm file, so an editor checks it as you type: save it, then
    start the YAML file with '# yaml-language-server: $schema=FILE'. The schema is JSON: --json prints it too."""
    from greenlm.schemas import file_schema, write_schema

    path = write_schema(kind, out_path) if out_path is not None else None
    if path is None or as_json:
        emit_json(file_schema(kind))
        return
    out.print(
        f"wrote the {kind} schema to {path}: start a {kind} file with '# yaml-language-server: $schema={path}'",
        markup=False,
        soft_wrap=True,
    )
