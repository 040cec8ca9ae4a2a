"""Where greenlm serve's Python time goes under load: py-spy samples of a live server driven by GuideLLM.

For each concurrency level a fresh `greenlm serve` (the built-in GGUF, llama.cpp) runs under `py-spy record`
(samples of threads py-spy sees active; a leaf that waits on a lock, a queue or a selector, which py-spy still
samples on some machines, is counted apart as waiting and left out of the shares), GuideLLM sends
completions (128 prompt tokens, 64 output tokens), and the samples are sorted by thread and by what the frame
nearest the leaf belongs to: the engine step (`llama_decode`, whose C code shows as its Python caller), sampling,
the meter and energy account, detokenizing and stop strings, the scheduler's own bookkeeping, and in the HTTP
thread the event loop's request handling and SSE framing. The share of the scheduler thread's samples outside
the engine step is the per-step overhead.

    .venv/bin/python bench/serve_profile.py            # writes bench/results/serve_profile.json
    .venv/bin/python bench/serve_profile.py --label before --out /tmp/before.json   # e.g. on an older checkout
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Recorder, log
from peers import guidellm
from serve_load import Level, run_guidellm
from servers import START_TIMEOUT_S, Proc

from greenlm.engines.llamacpp_engine import default_threads
from greenlm.models import DEFAULT_MODEL, resolve_model

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "serve_profile.json"

# (category, a test on one frame "function (file:line)"), first match from the leaf wins
CATEGORIES = [
    ("engine step (llama_decode)", lambda f: "llama_decode" in f or ("_forward" in f and "stepper" in f)),
    ("sampling", lambda f: "sampling.py" in f),
    ("meter and energy account", lambda f: any(m in f for m in ("cpu_model.py", "ledger.py", "attribution.py", "psutil"))),
    ("detokenize and stop strings", lambda f: "text.py" in f or "detokenize" in f),
    ("metrics", lambda f: "prometheus_client" in f),
    ("SSE framing and responses", lambda f: any(m in f for m in ("streaming.py", "pydantic", "app.py", "routes.py"))),
    ("HTTP server (uvicorn, starlette)", lambda f: any(m in f for m in ("uvicorn", "starlette", "h11", "httptools"))),
    ("tokenizing and request checks", lambda f: any(m in f for m in ("intake.py", "tokenize", "chat.py", "server.py"))),
    ("event loop", lambda f: "asyncio" in f),
    ("scheduler bookkeeping", lambda f: "scheduler.py" in f or "stepper.py" in f),
]  # fmt: skip


# Leaf frames of a thread that waits (a lock, a queue, a selector, a sleep). py-spy counts some of these as
# active on this VM, so they are set apart: shares are of the samples where the thread ran Python or C code.
# (a concurrent.futures worker idles in its `_worker` frame: the queue it blocks on is C code)
WAITS = (
    "Condition.wait",
    "Event.wait",
    "Queue.get",
    "Thread.join",
    "EpollSelector.select",
    "select (selectors",
    "_worker (",
)


def classify(frames: list[str]) -> str:
    if frames and frames[-1].startswith(WAITS):
        return "waiting"
    for frame in reversed(frames):
        for name, test in CATEGORIES:
            if test(frame):
                return name
    return "other"


def thread_of(first: str) -> str:
    if "greenlm-scheduler" in first:
        return "scheduler"
    if "MainThread" in first or "(pid" in first:
        return "main (HTTP event loop)"
    return "other threads"


def summarize(raw: Path) -> dict:
    by_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = thread_of(frames[0] + (frames[1] if len(frames) > 1 else ""))
        if any("Scheduler._loop" in f for f in frames):
            thread = "scheduler"
        by_thread[thread][classify(frames)] += int(count)
    out = {}
    for thread, counts in by_thread.items():
        waiting = counts.pop("waiting", 0)
        total = sum(counts.values())
        out[thread] = {
            "samples": total,
            "waiting_samples": waiting,
            "share": {k: round(v / total, 4) for k, v in counts.most_common()} if total else {},
        }
    sched = by_thread.get("scheduler", collections.Counter())
    total = sum(sched.values())
    engine = sched.get("engine step (llama_decode)", 0)
    out["scheduler_outside_engine_step"] = round(1 - engine / total, 4) if total else None
    return out


def profile_level(args, level: Level, tool: Path, tokenizer: Path, workdir: Path) -> dict:
    raw = workdir / f"{level.name}.raw.txt"
    cmd = [
        str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", str(args.rate_hz), "--threads", "-o", str(raw), "--",
        sys.executable, "-m", "greenlm", "serve", "--json", "--port", "0", "--threads", str(args.threads),
        "--max-batch", "8", "--meter", "cpu-model",
    ]  # fmt: skip
    proc = Proc(f"greenlm-{level.name}", cmd, workdir)
    ready = proc.wait_ready(START_TIMEOUT_S)
    try:
        warm = Level("warm-up", "kind=concurrent,streams=1", 2, output_tokens=8)
        run_guidellm(tool, ready["url"], ready["model"], warm, tokenizer, workdir / f"warm-{level.name}.json")
        load = run_guidellm(
            tool, ready["url"], ready["model"], level, tokenizer, workdir / f"{level.name}.json"
        )
    finally:
        # py-spy writes its file when the profiled server exits: stop the server (py-spy's child) first
        for child in _children(proc.pid):
            os.kill(child, signal.SIGTERM)
        try:
            proc.proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.stop()
    if not raw.exists():
        raise SystemExit(f"py-spy wrote no profile; its stderr:\n{proc.err_path.read_text()[-2000:]}")
    return {
        "level": level.name,
        "output_tokens_per_s": load["output_tokens_per_s"],
        "ttft_ms_p50": load["ttft_ms"]["p50"],
        "itl_ms_p50": load["itl_ms"]["p50"],
        "profile": summarize(raw),
    }


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--rate-hz", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--label", default="current", help="what ran (e.g. before, after)")
    ap.add_argument("--out", help=f"where the JSON goes (default {RESULT.relative_to(ROOT)})")
    args = ap.parse_args()
    rec = Recorder("serve_profile")
    tool = guidellm()
    gguf = resolve_model(DEFAULT_MODEL).path
    workdir = Path(tempfile.mkdtemp(prefix="greenlm-serve-profile-"))
    tokenizer = workdir / "tokenizer"
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tokenizer)
    started = time.perf_counter()
    levels = [
        Level("c1", "kind=concurrent,streams=1", max(4, args.requests // 2)),
        Level("c8", "kind=concurrent,streams=8", args.requests),
    ]
    rows = []
    for level in levels:
        log(f"profiling at {level.name}")
        rows.append(profile_level(args, level, tool, tokenizer, workdir))
        log(f"{level.name}: {rows[-1]}")
    rec.finish(
        {
            "benchmark": "serve_profile",
            "label": args.label,
            "threads": args.threads,
            "sampler": f"py-spy record --rate {args.rate_hz} (on-CPU samples of Python threads; llama.cpp's own "
            "worker threads are native and not sampled)",
            "levels": rows,
            "wall_s": time.perf_counter() - started,
        },
        out=args.out or RESULT,
    )


if __name__ == "__main__":
    main()
