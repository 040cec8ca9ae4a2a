"""Text the verbs read: the built-in CPython documentation, or the user's .txt / .jsonl file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from greenlm.errors import GreenlmError

BUILTIN_TEXT = "pydoc-topics"
JSONL_TEXT_KEYS = ("text", "content", "prompt")
_TEXT_HINT = '.txt (plain text) or .jsonl (one {"text": ...} per line)'


@dataclass(frozen=True)
class TextSource:
    name: str  # "builtin:pydoc-topics" or the file path
    documents: tuple[str, ...]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(hashlib.sha256(doc.encode()).digest())
        return h.hexdigest()[:16]


def read_yaml_file(path: str | Path, what: str, not_found: str, expected: str) -> tuple[Path, Any]:
    """A YAML file the user named (a recipe, a policy, a search space): its path and parsed content, or one
    GreenlmError line (`not_found`: what to do when it is missing; a syntax error says where)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise GreenlmError(f"{what} '{path}' not found: {not_found}")
    text = read_text_file(p, what, expected)
    try:
        return p, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GreenlmError(
            f"{what} '{path}' is not valid YAML ({where}{problem}): check indentation, colons and brackets"
        ) from None


def read_text_file(path: str | Path, what: str, expected: str) -> str:
    """A user's file as text, or one GreenlmError line saying it is binary or not UTF-8 (`what`: "prompts
    file", "recipe file"...; `expected`: what to pass instead). Read whole: these files are small."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise GreenlmError(f"cannot read {what} '{path}': {exc.strerror or exc}") from None
    if b"\x00" in data[:65536]:
        raise GreenlmError(f"{what} '{path}' is a binary file, not text: pass {expected}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GreenlmError(
            f"{what} '{path}' is not UTF-8 text (byte {exc.start} cannot be decoded): pass {expected}, saved "
            "as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the text


def _builtin() -> TextSource:
    # The CPython documentation topics ship with every Python: a real, license-clean corpus that needs no download.
    from pydoc_data.topics import topics

    return TextSource(f"builtin:{BUILTIN_TEXT}", tuple(topics[k] for k in sorted(topics)))


def json_line(line: str, where: str) -> Any:
    """One line of a .jsonl file the user gave, or one GreenlmError line saying where it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise GreenlmError(f"{where} is not valid JSON ({exc.msg}): one JSON object per line") from None


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(read_text_file(path, "text file", _TEXT_HINT).splitlines(), 1):
        if not line.strip():
            continue
        row = json_line(line, f"{path}:{lineno}")
        if isinstance(row, str):
            docs.append(row)
            continue
        text = next(
            (row[k] for k in JSONL_TEXT_KEYS if isinstance(row, dict) and isinstance(row.get(k), str)), None
        )
        if text is None:
            raise GreenlmError(f"{path}:{lineno} has no string field among {', '.join(JSONL_TEXT_KEYS)}")
        docs.append(text)
    return docs


def load_text(spec: str | None = None) -> TextSource:
    """`None` or 'builtin' → the CPython docs; a `.txt` file → one document; a `.jsonl` file → one per line."""
    if spec in (None, "builtin", BUILTIN_TEXT, f"builtin:{BUILTIN_TEXT}"):
        return _builtin()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GreenlmError(
            f"text file '{spec}' not found: pass a .txt or .jsonl file, or omit --text for the built-in corpus"
        )
    if path.suffix.lower() == ".jsonl":
        docs = _read_jsonl(path)
    elif path.suffix.lower() in (".txt", ".md", ".text"):
        docs = [read_text_file(path, "text file", _TEXT_HINT)]
    else:
        raise GreenlmError(f"unsupported text file '{spec}': use {_TEXT_HINT}")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise GreenlmError(
            f"text file '{spec}' is empty: it needs some text to calibrate, evaluate or prompt with"
        )
    return TextSource(str(path), tuple(docs))
