"""The `greenlm` command: one module per verb, each a thin shell over a library function.

Human output is a rich table on stdout; `--json` prints one JSON document instead. Notes, progress and
errors go to stderr so `--json` output stays clean. A user error is one line and exit code 2.
To add a verb: a module here that decorates its function with `@app.command()`, imported below.
"""

from __future__ import annotations

import importlib
import sys

import typer

# Each module registers its command on `app` when imported.
from greenlm.cli import (  # noqa: F401
    batch,
    compress,
    distill,
    engines,
    export,
    gateway,
    measure,
    meter_agent,
    meters,
    optimize,
    report,
    runs,
    schema,
    serve,
    track,
)
from greenlm.cli import eval as _eval  # noqa: F401  (`eval` would shadow the builtin here)
from greenlm.cli.app import app
from greenlm.cli.common import err
from greenlm.errors import GreenlmError

__all__ = ["app", "main"]


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Flag-parsing errors: recent typer vendors click, older typer raises click's own."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).UsageError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except GreenlmError as exc:
        err.print(f"error: {exc}", markup=False, style="red", soft_wrap=True)
        sys.exit(2)
    except _usage_errors() as exc:
        ctx = getattr(exc, "ctx", None)
        name = ctx.command.name if ctx is not None and ctx.command is not None else None
        where = f"greenlm {name} --help" if name and ctx.parent is not None else "greenlm --help"
        err.print(f"error: {exc.format_message()} (see `{where}`)", markup=False, style="red", soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted", style="red")
        sys.exit(130)
    if code == 130:  # typer turns Ctrl-C inside a command into this exit code, silently
        err.print("interrupted", style="red")
    sys.exit(code if isinstance(code, int) else 0)
