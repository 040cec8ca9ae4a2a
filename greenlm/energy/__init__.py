"""Energy meters: hardware counters (RAPL, NVML) read at window edges, or a CPU-time estimate.

Nothing else in greenlm touches energy hardware. Typical use:

    meter = get_meter("auto")          # meter.selection_note says what was chosen and why
    with meter.window() as w:
        run()
    w.measurement.total_j, w.measurement.energy_source
"""

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, Window
from greenlm.energy.detect import METER_NAMES, MeterStatus, get_meter, probe_meters

__all__ = [
    "METER_NAMES",
    "EnergySource",
    "Measurement",
    "Meter",
    "MeterStatus",
    "Reading",
    "Window",
    "get_meter",
    "probe_meters",
]
