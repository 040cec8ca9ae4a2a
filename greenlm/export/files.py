"""Output files appear whole or not at all: written under a temporary name beside the target, then renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from greenlm.errors import GreenlmError

PARTIAL_SUFFIX = ".partial"


def check_target(target: Path, *, overwrite: bool) -> None:
    if target.is_dir():
        raise GreenlmError(f"--out {target} is a directory: give a file name ending in .gguf")
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


@contextmanager
def atomic_file(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in `target`'s directory; rename it to `target` when the block succeeds, remove it
    on any failure or interrupt."""
    target = Path(target).expanduser()
    check_target(target, overwrite=overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise GreenlmError(f"cannot write to {target.parent}: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        yield tmp
        check_target(target, overwrite=overwrite)  # someone may have made it while we worked
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; an exported model should not be
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
