"""Files and directories appear whole or not at all: written under a unique temporary name beside the target,
then renamed. Every writer in greenlm (exports, variants, caches, reports, manifests) goes through here.

The staging name is unique (`mkstemp`/`mkdtemp`), so two processes writing the same target never share a
half-written file, and it is removed on any exception or interrupt.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from greenlm.errors import GreenlmError

PARTIAL_SUFFIX = ".partial"


def noop(*_args, **_kwargs) -> None:
    """The progress and announce callback of a caller that wants none."""


def said_once(announce=None) -> tuple[list[str], Callable[[str], None]]:
    """What a long run told its user, each message once: the list of messages, and `say(message)`, which keeps
    a message and passes it to `announce` the first time only."""
    announce = announce or noop
    notes: list[str] = []

    def say(message: str) -> None:
        if message not in notes:
            notes.append(message)
            announce(message)

    return notes, say


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def check_file_target(target: Path, *, overwrite: bool) -> None:
    """Refuse before any work: `target` is a folder, exists (without `overwrite`), or cannot be written."""
    if target.is_dir():
        raise GreenlmError(f"--out {target} is a directory: give a file name")
    if target.exists() and not overwrite:
        raise GreenlmError(
            f"{target} already exists: choose another --out, or pass --force to replace it (nothing was written)"
        )
    # The nearest folder that exists must take new entries (missing ones below it are made when writing).
    existing = next(p for p in (target.absolute().parent, *target.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise GreenlmError(
            f"cannot write {target}: {existing} is not a writable folder (nothing was written)"
        )


def refuse_existing(target: Path) -> None:
    if target.exists():
        raise GreenlmError(
            f"output directory {target} already exists: choose another --out or remove it first (nothing was written)"
        )


@contextmanager
def atomic_file(target: str | Path, *, overwrite: bool = False, check: bool = True) -> Iterator[Path]:
    """Yield a temporary path in `target`'s directory; rename it to `target` when the block succeeds, remove it
    on any failure or interrupt. `check=False` skips the user-facing checks (caches and internal files)."""
    target = Path(target).expanduser()
    if check:
        check_file_target(target, overwrite=overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise GreenlmError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        yield tmp
        if check:
            check_file_target(target, overwrite=overwrite)  # someone may have made it while we worked
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; what we write should not be
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | Path, text: str, *, overwrite: bool = True) -> Path:
    """Write `text` (UTF-8) to `target` atomically; by default replacing what was there."""
    target = Path(target).expanduser()
    with atomic_file(target, overwrite=overwrite, check=not overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def write_json_atomic(target: str | Path, payload: Any) -> Path:
    return write_text_atomic(target, json.dumps(payload, indent=2, default=str) + "\n")


@contextmanager
def atomic_directory(target: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success rename it to `target`, on any failure or
    interrupt remove it, so `target` is never seen half-written. An existing `target` is refused, unless
    `replace` (caches), where a whole directory another process finished first is kept."""
    target = Path(target).expanduser()
    if not replace:
        refuse_existing(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; what we write should not be
    except OSError as exc:
        raise GreenlmError(f"cannot create the output directory {target}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if replace:
            if target.exists():  # another process finished the same cache entry first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return
        else:
            refuse_existing(target)  # someone may have made it while we worked: never overwrite
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
