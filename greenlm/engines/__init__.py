"""Execution backends behind one interface; `create_engine` picks one by name."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "ENGINE_NAMES": "greenlm.engines.names",
        "DecodeResult": "greenlm.engines.base",
        "Engine": "greenlm.engines.base",
        "PrefillResult": "greenlm.engines.base",
        "SpeculativeConfig": "greenlm.engines.speculative",
        "available_engines": "greenlm.engines.available",
        "check_device": "greenlm.engines.names",
        "check_speculative_engine": "greenlm.engines.names",
        "create_engine": "greenlm.engines.factory",
        "device_kind_for": "greenlm.engines.factory",
        "open_stepper": "greenlm.engines.factory",
    },
)
