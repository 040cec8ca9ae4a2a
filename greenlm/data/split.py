"""Deterministic calibration / evaluation split that never overlaps.

Units are paragraphs (blank-line separated). Each goes to one side by a hash of its own content, so the split
is stable across runs and machines, identical paragraphs always land on the same side, and adding text to a
file does not move the paragraphs already there.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from greenlm.data.sources import TextSource
from greenlm.errors import GreenlmError

DEFAULT_EVAL_FRACTION = 0.4
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class TextSplit:
    source: str
    fingerprint: str
    calibration: tuple[str, ...]
    evaluation: tuple[str, ...]
    eval_fraction: float

    def describe(self, side: str) -> str:
        """How a figure names its text, e.g. 'builtin:pydoc-topics/evaluation'."""
        return f"{self.source}/{side}"

    def text(self, side: str) -> str:
        parts = self.evaluation if side == "evaluation" else self.calibration
        return "\n\n".join(parts)


def _bucket(paragraph: str) -> float:
    digest = hashlib.sha256(paragraph.strip().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_text(source: TextSource, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> TextSplit:
    if not 0.0 < eval_fraction < 1.0:
        raise GreenlmError(f"eval fraction must be between 0 and 1, got {eval_fraction}")
    calibration: list[str] = []
    evaluation: list[str] = []
    for doc in source.documents:
        for paragraph in _PARAGRAPH_BREAK.split(doc):
            if paragraph.strip():
                (evaluation if _bucket(paragraph) < eval_fraction else calibration).append(paragraph)
    if not evaluation or not calibration:
        raise GreenlmError(
            f"text '{source.name}' is too short to split into calibration and evaluation text "
            f"({len(calibration) + len(evaluation)} paragraph(s)): give it several blank-line separated paragraphs"
        )
    return TextSplit(source.name, source.fingerprint(), tuple(calibration), tuple(evaluation), eval_fraction)
