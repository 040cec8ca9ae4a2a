"""What every benchmark records with its figures: the machine, how busy it was, and the code that ran.

`Recorder` notes the load average when a benchmark starts; `finish` adds the machine record and the load at
the end, prints the JSON on stdout and writes it atomically under bench/results/, so a figure in the README
can be traced to the run, the machine and the commit that produced it.
    rec = Recorder("engines"); ...; rec.finish(result, out=args.out)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psutil

from greenlm import __version__
from greenlm.energy.cpuinfo import allowed_cpus, read_cpu_info
from greenlm.io import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The code a figure depends on: the package, the benchmark scripts (not their results) and the dependencies.
CODE_PATHS = ("greenlm", "bench", ":(exclude)bench/results", "pyproject.toml")


def git_commit(root: Path = ROOT) -> dict:
    """The commit, and whether the code that ran differs from it: a tracked file changed, or a file git does
    not track yet under greenlm/ or bench/ (a new module imports the same as a committed one). README or notes
    edited meanwhile do not count, nor do benchmark results."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout

    try:
        # porcelain lines are "XY path": the status in two columns, then the path
        changed = git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS).splitlines()
        return {
            "commit": git("rev-parse", "HEAD").strip() or None,
            "dirty": bool(changed),
            "uncommitted_files": [line[3:] for line in changed[:20]],  # the first few, to say which
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine() -> dict:
    info = read_cpu_info()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": info.brand,
        "virtual_machine": info.virtual,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpus_allowed": len(allowed_cpus()),
        "python": platform.python_version(),
        "greenlm": __version__,
        **git_commit(),
    }


class Recorder:
    def __init__(self, name: str):
        self.name = name
        self.load_start = os.getloadavg()[0]
        self.machine = machine()

    def finish(self, result: dict, out: str | Path | None = None) -> Path:
        """Print `result` with the machine record and write it to `out` (default bench/results/NAME.json)."""
        record = {
            **result,
            "machine": self.machine,
            # other work on a 2-core machine slows runs several-fold: say how busy it was
            "load_average_1m": {"start": self.load_start, "end": os.getloadavg()[0]},
        }
        text = json.dumps(record, indent=2, default=str) + "\n"
        sys.stdout.write(text)
        target = Path(out) if out else RESULTS / f"{self.name}.json"
        write_text_atomic(target, text)
        log(f"written to {target}")
        return target
