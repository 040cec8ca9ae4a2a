"""Text sources, their deterministic calibration / evaluation split, and the calibration-capture helper."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {
        "BUILTIN_TEXT": "greenlm.data.sources",
        "TextSource": "greenlm.data.sources",
        "TextSplit": "greenlm.data.split",
        "calibration_windows": "greenlm.data.calibration",
        "load_text": "greenlm.data.sources",
        "read_text_file": "greenlm.data.sources",
        "split_text": "greenlm.data.split",
    },
)
