"""`greenlm schema`: the JSON Schema of a policy, search-space or recipe file, for editors."""

from __future__ import annotations

import sys

import typer

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import out


@app.command()
def schema(
    kind: str = typer.Argument(
        ...,
        help="Which file: policy (serve --policy), space (optimize --space) or recipe (compress --recipe).",
        show_default=False,
    ),
    out_path: str | None = typer.Option(
        None, "--out", help="Write the schema to this file (replacing it) instead of printing it."
    ),
    as_json: bool = options.JsonOpt,
) -> None:
    """Print (or write) the JSON Schema of a greenlm file, so an editor checks it as you type: save it, then
    start the YAML file with '# yaml-language-server: $schema=FILE'. The schema is JSON: --json prints it too."""
    from greenlm.schemas import schema_text, write_schema

    if out_path is None:
        sys.stdout.write(schema_text(kind))
        return
    path = write_schema(kind, out_path)
    if as_json:
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return
    out.print(
        f"wrote the {kind} schema to {path}: start a {kind} file with '# yaml-language-server: $schema={path}'",
        markup=False,
        soft_wrap=True,
    )
