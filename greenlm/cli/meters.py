"""`greenlm meters`: which energy meters this machine has, and why the others are absent."""

from __future__ import annotations

from rich.table import Table

from greenlm.cli import options
from greenlm.cli.app import app
from greenlm.cli.common import emit_json, fmt, out


@app.command()
def meters(
    watts_per_core: float | None = options.WattsOpt,
    idle_watts_per_core: float | None = options.IdleWattsOpt,
    as_json: bool = options.JsonOpt,
) -> None:
    """Which energy meters this machine has, why the others are absent, and the CPU model's constants."""
    from greenlm.energy import probe_meters

    statuses = probe_meters(watts_per_core=watts_per_core, idle_watts_per_core=idle_watts_per_core)
    if as_json:
        emit_json([s.to_dict() for s in statuses])
        return
    table = Table(title="energy meters (auto: the CPU by rapl, else cpu-model; plus nvml when present)")
    for col in ("meter", "available", "kind", "why / details"):
        table.add_column(col)
    for s in statuses:
        if not s.available:
            about = s.reason
        elif s.name == "cpu-model":
            about = _cpu_model_summary(s.details)
        else:
            about = ", ".join(
                f"{k}: {v}" for k, v in s.details.items() if k not in ("meter", "energy_source")
            )
        table.add_row(s.name, "yes" if s.available else "no", s.energy_source, about)
    out.print(table)


def _cpu_model_summary(d: dict) -> str:
    static, dynamic = d["static"], d["dynamic"]
    return "\n".join(
        [
            f"cpu: {d['cpu']}{' (virtual machine)' if d['virtual_machine'] else ''}",
            f"formula: {d['formula']}",
            f"static: {fmt(static['idle_watts_per_core'])} W per allotted core x {fmt(static['allotted_cores'])} "
            f"cores ({static['allotted_cpus']} CPUs) = {fmt(static['power_w'])} W for every second; "
            f"source: {static['source']}",
            f"dynamic: {fmt(dynamic['watts_per_busy_core'])} W per busy core; source: {dynamic['source']}",
            f"memory: {fmt(d['memory_w_per_gb'])} W per GB; source: {d['memory_source']}",
            f"scope: {d['scope']}",
        ]
    )
