"""Servers the serving benchmarks start, the way their users start them, and their energy read from outside.

- `Proc`: a server subprocess with its stderr in a file, stopped with SIGTERM (killed if it hangs).
- `start_greenlm`, `start_llama_server` (llama.cpp's C++ server), `start_llama_cpp_python` (its Python server):
  the same GGUF, threads, context per slot and flash-attention setting for all three.
- `CpuSampler`: every server process's CPU seconds and memory sampled a few times a second, so the energy of
  any span (a GuideLLM benchmark's start and end, in wall-clock time) comes from one formula for every server:
  greenlm's cpu-model meter applied to that process (static power of its allotted cores x wall seconds +
  dynamic power x busy core-seconds + memory), interpolated between samples.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from pathlib import Path

import httpx

from greenlm.energy.base import Reading
from greenlm.energy.cpu_model import DYNAMIC_DOMAIN, STATIC_DOMAIN, CpuModelMeter
from greenlm.engines.llamacpp_engine import EXTRA_BUFFERS_ENV

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A server subprocess with its stderr in a file; stopped with SIGTERM, then killed if it hangs."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict | None = None):
        self.name = name
        self.args = args
        self.err_path = workdir / f"{name}.stderr.txt"
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self.err_path.open("w"),
            text=True,
            cwd=ROOT,
            env=env or os.environ.copy(),
        )
        self.pid = self.proc.pid
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def fail(self, why: str) -> None:
        self.stop()
        raise SystemExit(f"{self.name} {why}; its stderr:\n{self.err_path.read_text()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def wait_ready(self, timeout_s: float) -> dict:
        """The server's JSON `ready` record, or fail when it exits or is not ready within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    self.fail("exited before it was ready")
                continue
            if line is None:
                self.fail("exited before it was ready")
            if line.strip().startswith("{"):
                record = json.loads(line)
                if record.get("event") == "ready":
                    return record
        self.fail("was not ready in time")

    def wait_http(self, url: str, timeout_s: float) -> None:
        """Until `url` answers 200 (servers that print no ready record)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail("exited before it was ready")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.fail("was not ready in time")


def start_greenlm(
    workdir: Path,
    *,
    threads: int,
    slots: int,
    context_per_slot: int,
    extra: tuple[str, ...] = (),
    name="greenlm",
) -> tuple[Proc, str, dict]:
    cmd = [
        sys.executable, "-m", "greenlm", "serve", "--json", "--port", "0", "--threads", str(threads),
        "--max-batch", str(slots), "--context", str(context_per_slot), "--meter", "cpu-model", *extra,
    ]  # fmt: skip
    proc = Proc(name, cmd, workdir)
    record = proc.wait_ready(START_TIMEOUT_S)
    return proc, record["url"], record


def llama_server_args(
    binary: Path, gguf: Path, port: int, *, threads: int, slots: int, context_per_slot: int
):
    """llama-server as a careful user runs it beside greenlm: the same slots and context per slot (-c is the
    total, split evenly between -np slots, each its own KV stream as greenlm's), threads, flash attention off,
    weight repacking (llama.cpp's extra buffer types) off as greenlm runs it; everything else its defaults
    (continuous batching, its prompt cache and slot reuse, its default sampling)."""
    return [
        str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(slots), "-c", str(slots * context_per_slot), "-t", str(threads), "-tb", str(threads),
        "-fa", "off", *(["--no-repack"] if os.environ.get(EXTRA_BUFFERS_ENV, "0") != "1" else []),
        "--metrics",
    ]  # fmt: skip


def start_llama_server(
    binary: Path, gguf: Path, workdir: Path, *, threads: int, slots: int, context_per_slot: int
) -> tuple[Proc, str, list[str]]:
    port = free_port()
    args = llama_server_args(
        binary, gguf, port, threads=threads, slots=slots, context_per_slot=context_per_slot
    )
    proc = Proc("llama-server", args, workdir)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/health", START_TIMEOUT_S)
    return proc, url, args


# llama-cpp-python's server has no flag for llama.cpp's extra buffer types (weights repacked for AMX at load),
# which crash llama_decode on this project's Xeon VM (see EXTRA_BUFFERS_ENV in greenlm's llama.cpp engine);
# greenlm runs with them off, so this peer is started with them off too, through this launcher.
PEER_LAUNCHER = """
import sys
import llama_cpp.llama_cpp as lib
default = lib.llama_model_default_params
def without_extra_buffers():
    params = default()
    params.use_extra_bufts = False
    return params
lib.llama_model_default_params = without_extra_buffers
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


def start_llama_cpp_python(
    gguf: Path, workdir: Path, *, threads: int, context_per_slot: int, model_alias: str
) -> tuple[Proc, str, list[str]]:
    """llama-cpp-python's own OpenAI server: one request at a time (it has no batching across requests)."""
    port = free_port()
    launcher = (
        ["-c", PEER_LAUNCHER] if os.environ.get(EXTRA_BUFFERS_ENV, "0") != "1" else ["-m", "llama_cpp.server"]
    )
    cmd = [
        sys.executable, *launcher, "--model", str(gguf), "--model_alias", model_alias, "--host", "127.0.0.1",
        "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--n_ctx", str(context_per_slot), "--flash_attn", "False", "--logits_all", "False",
        "--interrupt_requests", "False", "--verbose", "False",
    ]  # fmt: skip
    proc = Proc("llama-cpp-python", cmd, workdir)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/v1/models", START_TIMEOUT_S)
    return proc, url, cmd


class CpuSampler:
    """Samples processes' cpu-model readings every `interval_s` in a thread; `energy(pid, t0, t1)` is the
    cpu-model energy of that process between two wall-clock times (time.time()), interpolated."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2):
        self.meters = {name: CpuModelMeter(pid=pid) for name, pid in pids.items()}
        self.samples: dict[str, list[tuple[float, Reading]]] = {name: [] for name in pids}
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, meter in self.meters.items():
                try:
                    reading = meter.read()
                except Exception:  # the process has exited: its samples so far stand
                    continue
                self.samples[name].append((time.time(), reading))
            self._stop.wait(self.interval_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _at(self, name: str, t: float) -> Reading:
        samples = self.samples[name]
        times = [s[0] for s in samples]
        i = bisect_left(times, t)
        if i == 0 or i >= len(samples):
            raise SystemExit(f"no CPU samples of {name} around {t}: the sampler did not cover the run")
        (t0, a), (t1, b) = samples[i - 1], samples[i]
        w = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        values = {k: a.values[k] + w * (b.values[k] - a.values[k]) for k in a.values}
        return Reading(time_s=a.time_s + w * (b.time_s - a.time_s), values=values)

    def window(self, name: str, t0: float, t1: float) -> dict:
        """Energy (J, with its static and dynamic parts) and CPU seconds of process `name` from t0 to t1."""
        start, end = self._at(name, t0), self._at(name, t1)
        m = self.meters[name].measure(start, end)
        return {
            "energy_j": m.total_j,
            "static_j": m.detail_j.get(STATIC_DOMAIN),
            "dynamic_j": m.detail_j.get(DYNAMIC_DOMAIN),
            "cpu_s": end.values["cpu_s"] - start.values["cpu_s"],
            "wall_s": t1 - t0,
        }
