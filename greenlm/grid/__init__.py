"""Grid carbon intensity that changes while something runs (a server, a gateway, deferred work): a fixed
figure, a replayed time series, or a live provider. Below serve, gateway and defer; above energy only.

    FixedIntensity     the one figure `--country/--region/--carbon-intensity` resolved (what `measure` uses)
    CsvIntensity       a CSV of (timestamp, g/kWh) rows replayed from a moment the caller sets (`start`),
                       at `speed` trace seconds per wall second; each row holds until the next one
    ElectricityMaps    Electricity Maps' latest-intensity API for a zone, polled in the background with the
                       token from an environment variable; until it first answers, and whenever it fails, the
                       last good figure (or the fallback) stands, and the failure is said once

`grid_signal(section, intensity)` builds the one a policy file's grid section asks for. Every signal
(`GridSignal`) answers `now()` with a `GridReading` (intensity, where it came from, trace time),
never blocking on the network in the caller's thread.
"""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "GridReading": "greenlm.grid.reading",
        "GridSignal": "greenlm.grid.reading",
        "FixedIntensity": "greenlm.grid.reading",
        "MAX_INTENSITY_G_PER_KWH": "greenlm.grid.reading",
        "CsvIntensity": "greenlm.grid.replay",
        "read_intensity_csv": "greenlm.grid.replay",
        "ElectricityMaps": "greenlm.grid.electricitymaps",
        "grid_signal": "greenlm.grid.signal",
    },
)
