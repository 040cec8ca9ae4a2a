"""How a saved model was chosen to run: the engine, threads, device and decoding stored beside it.

`greenlm optimize --out DIR` saves the winner with these settings; `serve` (and later `measure` and `eval`)
start it the same way unless a flag says otherwise. This is the one place that knows where they are kept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from greenlm.errors import GreenlmError

SETTINGS_FILE = "greenlm-optimize.json"  # written by optimize's save_chosen
ENGINES = ("transformers", "llamacpp")
SPECULATIVE_KINDS = ("prompt-lookup", "draft")


@dataclass(frozen=True)
class RunSettings:
    source: str  # the file they came from
    engine: str | None = None
    threads: int | None = None
    device: str | None = None
    speculative: str | None = None  # the decoding it was measured with; None: plain greedy

    def to_dict(self) -> dict:
        return asdict(self)


def _speculative(value) -> str | None:
    """The manifest's decoding: a kind name, {"kind": ...}, or {"speculative": ...}; None or "greedy": plain."""
    if isinstance(value, dict):
        value = value.get("speculative", value.get("kind"))
        if isinstance(value, dict):
            value = value.get("kind")
    if value in (None, "", "greedy", "plain"):
        return None
    if value not in SPECULATIVE_KINDS:
        raise ValueError(f"unknown decoding {value!r}")
    return value


def saved_run_settings(model: str | None) -> RunSettings | None:
    """The run settings saved with model directory `model`, or None when it has none (a built-in name, a
    file, a directory without them). A settings file that exists but cannot be read is an error."""
    if not model:
        return None
    directory = Path(model).expanduser()
    path = directory / SETTINGS_FILE
    if not directory.is_dir() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        engine, threads, device = data.get("engine"), data.get("threads"), data.get("device")
        if engine is not None and engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads {threads!r} is not a whole number >= 1")
        if device is not None and not isinstance(device, str):
            raise ValueError(f"device {device!r} is not a string")
        speculative = _speculative(data.get("decoding", data.get("speculative")))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise GreenlmError(
            f"{path} is unreadable ({exc}): restore it from the optimize run, or delete it and pass --engine "
            "and --threads yourself"
        ) from None
    return RunSettings(str(path), engine, threads, device, speculative)
