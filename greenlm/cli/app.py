"""The typer application every command module registers on."""

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure, compress, optimize and serve language models for less energy and carbon.",
)
