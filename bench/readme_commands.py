"""Run the README's command block top to bottom, as a new user pastes it, and record what happened.

The block is the first fenced block after the README's `## Commands` heading. It runs in one `bash -e` shell
(a failing command stops it) in the directory given, normally a fresh clone after `make install`; each line's
exit status and seconds are recorded.

    git clone . /tmp/fresh && make -C /tmp/fresh install && .venv/bin/python bench/readme_commands.py --workdir /tmp/fresh

Writes bench/results/readme_commands.json (the figures the README's "ran top to bottom" line comes from).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from pathlib import Path

from benchlib import Recorder, log

ROOT = Path(__file__).resolve().parents[1]
MARKER = "__greenlm_readme_step__"


def command_block(readme: str) -> list[str]:
    """The commands of the first fenced block after `## Commands` (continuation lines joined)."""
    after = readme.split("\n## Commands", 1)[1]
    block = re.search(r"```[^\n]*\n(.*?)```", after, re.S).group(1)
    commands, pending = [], ""
    for line in block.splitlines():
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1].rstrip()
            continue
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.rstrip())
    return commands


def script(commands: list[str]) -> str:
    """One bash script: each command, then a marker line with its exit status and the time."""
    lines = ["set -e", "exec 3>&1"]
    for index, command in enumerate(commands):
        lines.append(f'echo "{MARKER} start {index} $(date +%s.%N)" >&3')
        lines.append(command)
        lines.append(f'echo "{MARKER} end {index} $(date +%s.%N)" >&3')
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a fresh clone, installed (make install)")
    ap.add_argument("--out", help="where the JSON goes (default bench/results/readme_commands.json)")
    args = ap.parse_args()
    commands = command_block((args.workdir / "README.md").read_text(encoding="utf-8"))
    rec = Recorder("readme_commands")
    started = time.perf_counter()
    log(f"running {len(commands)} commands in {args.workdir}")
    proc = subprocess.Popen(
        ["bash", "-c", script(commands)],
        cwd=args.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    starts: dict[int, float] = {}
    steps: list[dict] = []
    tail: list[str] = []
    for line in proc.stdout:
        # a command's last output line may lack its newline (curl's JSON): the marker then follows it
        if MARKER in line:
            head, line = line[: line.index(MARKER)], line[line.index(MARKER) :]
            if head:
                tail = (tail + [head])[-40:]
            _, what, index, stamp = line.split()
            index = int(index)
            if what == "start":
                starts[index] = float(stamp)
                log(f"$ {commands[index]}")
            else:
                steps.append({"command": commands[index], "exit": 0, "seconds": float(stamp) - starts[index]})
            continue
        tail = (tail + [line.rstrip()])[-40:]
    code = proc.wait()
    if code != 0:
        failed = len(steps)
        steps.append({"command": commands[failed], "exit": code, "output_tail": tail})
        log(f"stopped at command {failed + 1}/{len(commands)} (exit {code}): {commands[failed]}")
    rec.finish(
        {
            "benchmark": "readme_commands",
            "commands": len(commands),
            "completed": sum(1 for s in steps if s["exit"] == 0),
            "exit": code,
            "wall_s": time.perf_counter() - started,
            "steps": steps,
            "markdown": (
                f"The README's command block ran top to bottom in a fresh clone: {len(commands)} commands, exit "
                f"{code}, {(time.perf_counter() - started) / 60:.1f} minutes."
            ),
        },
        out=args.out,
    )


if __name__ == "__main__":
    main()
