"""Energy meters: hardware counters (RAPL, NVML) read at window edges, or a CPU-time estimate.

Nothing else in greenlm touches energy hardware. Typical use:

    meter = get_meter("auto")          # meter.selection_note says what was chosen and why
    meter = EnergySettings(meter="auto", country="FR").open_meter()   # the settings every verb takes
    with meter.window() as w:
        run()
    w.measurement.total_j, w.measurement.energy_source
"""

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, Window
from greenlm.energy.detect import METER_NAMES, MeterStatus, get_meter, probe_meters
from greenlm.energy.settings import EnergySettings

__all__ = [
    "METER_NAMES",
    "EnergySettings",
    "EnergySource",
    "Measurement",
    "Meter",
    "MeterStatus",
    "Reading",
    "Window",
    "get_meter",
    "probe_meters",
]
