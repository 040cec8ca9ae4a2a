"""The grid signal a grid section asks for (serve's and the gateway's policy files share the section: see
`greenlm.serve.policy_file.GridConfig`): a replayed CSV, a live provider, or the fixed figure the flags
resolved when there is no section."""

from __future__ import annotations

from greenlm.energy.carbon import GridIntensity
from greenlm.grid.electricitymaps import ElectricityMaps
from greenlm.grid.reading import FixedIntensity, GridSignal
from greenlm.grid.replay import CsvIntensity


def grid_signal(grid, intensity: GridIntensity) -> GridSignal:
    """`grid`: a grid section (csv, speed, loop; or zone, url, token_env, poll_s), or None."""
    if grid is None:
        return FixedIntensity(intensity)
    if grid.csv is not None:
        return CsvIntensity(grid.csv, speed=grid.speed, loop=grid.loop)
    kwargs = {"url": grid.url} if grid.url else {}
    return ElectricityMaps(
        grid.zone, fallback=intensity, token_env=grid.token_env, poll_s=grid.poll_s, **kwargs
    )
