"""Text sources and their deterministic calibration / evaluation split."""

from greenlm.data.sources import BUILTIN_TEXT, TextSource, load_text
from greenlm.data.split import TextSplit, split_text

__all__ = ["BUILTIN_TEXT", "TextSource", "TextSplit", "load_text", "split_text"]
