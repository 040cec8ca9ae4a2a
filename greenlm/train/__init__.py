"""Training with its energy in view: the distillation loop, per-step meter windows and the total-energy
forecast, the transformers Trainer callback, and `track` for any block of code, function or command.

Exports load lazily, so `from greenlm.train import track` does not import torch or transformers:

    from greenlm.train import EnergyCallback          # any transformers Trainer
    from greenlm.train import track                   # energy of a block of code, a function or a command
"""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "EnergyCallback": "greenlm.train.callback",
        "Forecast": "greenlm.train.forecast",
        "forecast_energy": "greenlm.train.forecast",
        "TrackResult": "greenlm.train.tracker",
        "Tracker": "greenlm.train.tracker",
        "TrainJob": "greenlm.train.loop",
        "TrainSettings": "greenlm.train.settings",
        "TrainingEnergy": "greenlm.train.energy",
        "track": "greenlm.train.tracker",
        "track_command": "greenlm.train.tracker",
        "train": "greenlm.train.loop",
    },
)
