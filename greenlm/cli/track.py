"""`greenlm track -- CMD`: energy and carbon of any command and the processes it starts."""

from __future__ import annotations

import sys

import typer

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import emit_json, err, fmt


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[OPTIONS] -- CMD [ARGS]...",
)
@options.energy_options
def track(
    ctx: typer.Context,
    name: str | None = typer.Option(None, "--name", help="Name of the stored row (default: the command)."),
    energy: options.EnergyFlags = options.EnergyOpts,
    db: str | None = options.DbOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """Run a command (after --) and report the energy and carbon of it and its child processes.

    The command's output is untouched; greenlm's summary goes to stderr (with --json, one JSON document to
    stdout after the command's own output). The exit code is the command's.
    """
    from greenlm.train.tracker import check_command, track_command

    argv = list(ctx.args)
    check_command(argv)
    try:
        result = track_command(
            argv,
            name=name,
            energy=energy,
            db=db,
        )
    except KeyboardInterrupt:
        # the command got Ctrl-C too and has stopped; its row is stored (interrupted). Abort reaches greenlm's
        # main, which says "interrupted" and exits 130
        raise typer.Abort() from None
    record = result.to_dict()
    if as_json:
        emit_json(record)
    else:
        source = (
            "ESTIMATED by a model" if result.energy_source == "estimated" else "measured by hardware counters"
        )
        err.print(
            f"greenlm track: {result.name}: exit {result.exit_code}, {result.duration_s:.2f} s, "
            f"{fmt(result.energy_j)} J ({result.avg_power_w:.3g} W), {result.carbon_g:.3g} gCO2e; "
            f"meter {result.meter} ({source}), {result.intensity_g_per_kwh:g} g/kWh ({result.intensity_source}); "
            f"stored as run {result.run_id}",
            markup=False,
            soft_wrap=True,
        )
    sys.stdout.flush()
    raise typer.Exit(result.exit_code)
