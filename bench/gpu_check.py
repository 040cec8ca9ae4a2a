"""The GPU paths for real, on the day an NVIDIA GPU is lent (issue 23): every other test of them uses fakes.

Each step runs the `greenlm` CLI in a subprocess with --json, as a user would, on CUDA with the NVML meter, and
checks what it prints:
  1. `greenlm meters`: NVML available, measured.
  2. `greenlm measure` on CUDA (transformers, float32) with `--meter nvml`, and around it the power check:
     greenlm's NvmlMeter (the energy counter, nvmlDeviceGetTotalEnergyConsumption, at the edges) against an
     independent integral of nvmlDeviceGetPowerUsage sampled every 20 ms in a thread of this process, over
     the same seconds. Tolerance TOLERANCE (10%): on Ampere and newer the power reading is a one-second
     average, which lags the counter at every change of load, and the window's two edges lag in opposite
     directions; over a window of tens of seconds the two agree within a few percent where both are sound.
     Also: the energy measure reports (its prefill and decode windows) cannot exceed the counter's delta
     over the whole subprocess.
  3. `greenlm eval` on CUDA against the float32 reference: KLD near zero (the same weights; TF32 and kernel
     order differ from the CPU).
  4. `greenlm serve --engine transformers --device cuda --meter nvml`: real HTTP, the official openai client,
     a few completions (one streamed); every response's usage carries energy_j; /energy says nvml, measured,
     and its invariant (requests + idle + load = the meter's total) holds.
  5. `greenlm distill`: a few optimizer steps of a two-layer cut on CUDA, training energy from NVML.
At most about 10 minutes on a lent GPU (each step has its own time limit; a global deadline skips what is left).

    .venv/bin/python bench/gpu_check.py                       # writes bench/results/gpu_check.json
    .venv/bin/python bench/gpu_check.py --out /tmp/gpu_check.json

Needs: an NVIDIA GPU and driver, and in the venv the project's dependencies (pip install -e '.[dev]') with a
CUDA build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu124). With no GPU, or a
torch without CUDA, or a package missing, it says so in one line and exits 2, running and writing nothing.
Exit 0: every check passed; 1: a check failed (the JSON says which).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a copied repo, greenlm not installed: import it from here
    sys.path.insert(0, str(ROOT))
from tables import gpu_check_markdown  # noqa: E402 (standard library only; bench/ is the script's directory)

TOLERANCE = 0.10
POWER_INTERVAL_S = 0.02
DEADLINE_S = 600.0
NEEDED = {  # module -> what to install
    "torch": "torch (a CUDA build: pip install torch --index-url https://download.pytorch.org/whl/cu124)",
    "transformers": "the project: pip install -e '.[dev]'",
    "typer": "the project: pip install -e '.[dev]'",
    "psutil": "the project: pip install -e '.[dev]'",
    "openai": "openai (pip install -e '.[dev]', or pip install openai)",
    "httpx": "httpx (pip install -e '.[dev]', or pip install httpx)",
}
CUDA_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cu124"


class Unavailable(Exception):
    """What this machine lacks for the check, in one line."""


# ---- what the machine has ---------------------------------------------------------------------------------


def find_gpus(nvml) -> list[dict]:
    """[{index, name}] of the NVIDIA GPUs NVML sees; Unavailable (one line) when there is none."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise Unavailable(
            f"no NVIDIA GPU here (NVML: {exc}): bench/gpu_check.py needs an NVIDIA GPU and its driver; "
            "nothing was run"
        ) from None
    try:
        count = nvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(count):
            name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name)})
        driver = nvml.nvmlSystemGetDriverVersion()
    except nvml.NVMLError as exc:
        raise Unavailable(f"NVML started but cannot list the GPUs ({exc}): see nvidia-smi") from None
    finally:
        nvml.nvmlShutdown()
    if not gpus:
        raise Unavailable(
            "no NVIDIA GPU here (NVML sees none): bench/gpu_check.py needs one; nothing was run"
        )
    for g in gpus:
        g["driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
    return gpus


def check_packages(find_spec: Callable = importlib.util.find_spec) -> None:
    missing = [what for module, what in NEEDED.items() if find_spec(module) is None]
    if missing:
        raise Unavailable("missing Python packages: " + "; ".join(dict.fromkeys(missing)))


def check_torch_cuda(torch) -> dict:
    """{torch, cuda, device} when torch can use the GPU; Unavailable with the install line when it cannot."""
    if torch.version.cuda is None:
        raise Unavailable(
            f"torch {torch.__version__} is a CPU build (no CUDA): install a CUDA build, e.g. {CUDA_TORCH}"
        )
    if not torch.cuda.is_available():
        raise Unavailable(
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU "
            "(torch.cuda.is_available() is False): a driver older than this CUDA build? See nvidia-smi"
        )
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
    }


def preflight(import_module: Callable = importlib.import_module) -> dict:
    """The GPU, driver and torch this check will use; Unavailable (one line) for the first thing missing."""
    try:
        nvml = import_module("pynvml")
    except ImportError:
        raise Unavailable(
            "cannot look for an NVIDIA GPU: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
        ) from None
    gpus = find_gpus(nvml)
    check_packages()
    return {"gpus": gpus, **check_torch_cuda(import_module("torch"))}


# ---- the power check: NVML's counter against its sampled power ------------------------------------------


class PowerSampler:
    """nvmlDeviceGetPowerUsage of every GPU, summed, every `interval_s` in a thread: [(time_s, power_w)]."""

    def __init__(self, nvml, interval_s: float = POWER_INTERVAL_S):
        self.nvml = nvml
        self.interval_s = interval_s
        nvml.nvmlInit()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self.samples: list[tuple[float, float]] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-check-power", daemon=True)

    def sample(self) -> None:
        try:
            power_w = sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.handles) / 1000.0
        except self.nvml.NVMLError:  # counted; the trapezoid spans the gap
            self.failed += 1
            return
        self.samples.append((time.perf_counter(), power_w))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        self.nvml.nvmlShutdown()
        return self.samples


def integrate_j(samples: list[tuple[float, float]]) -> float:
    """Trapezoid integral of (time_s, power_w) samples, in joules."""
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:], strict=False))


def compare_energy(counter_j: float, integral_j: float, tolerance: float = TOLERANCE) -> dict:
    """The counter's delta against the power integral over the same seconds."""
    relative = (integral_j - counter_j) / counter_j if counter_j > 0 else None
    return {
        "counter_j": counter_j,
        "power_integral_j": integral_j,
        "relative_difference": relative,
        "tolerance": tolerance,
        "within_tolerance": relative is not None and abs(relative) <= tolerance,
    }


def power_check(nvml, meter, run: Callable[[], dict], tolerance: float = TOLERANCE) -> tuple[dict, dict]:
    """Run `run()` (a CLI step) inside one NvmlMeter window while sampling power: (its step record, the check)."""
    sampler = PowerSampler(nvml)
    start = meter.read()
    sampler.start()
    try:
        step = run()
    finally:
        samples = sampler.stop()
        end = meter.read()
    m = meter.measure(start, end)
    check = compare_energy(m.total_j, integrate_j(samples), tolerance)
    reported = (step.get("output") or {}).get("energy_j")
    check.update(
        window_s=m.duration_s,
        samples=len(samples),
        failed_samples=sampler.failed,
        interval_s=sampler.interval_s,
        counter=meter.describe()["domains"],
        # measure's own windows lie inside the subprocess's seconds: their energy cannot exceed the counter's
        measure_energy_j=reported,
        measure_within_counter=reported is not None and reported <= m.total_j * 1.001,
        what="greenlm's NvmlMeter (energy counter at the edges) against a trapezoid integral of "
        "nvmlDeviceGetPowerUsage sampled in this process, over the whole `greenlm measure` subprocess",
    )
    return step, check


# ---- the CLI steps ----------------------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "greenlm", *args]


def child_env() -> dict:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_cli(name: str, args: list[str], timeout_s: float, checks: Callable[[dict], dict]) -> dict:
    """One CLI step: its command, exit code, wall time, JSON output and named checks."""
    command = cli(*args)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env=child_env()
        )
    except subprocess.TimeoutExpired:
        return _step(name, command, start, error=f"timed out after {timeout_s:.0f} s")
    if proc.returncode != 0:
        return _step(name, command, start, rc=proc.returncode, error=_last_line(proc.stderr))
    try:
        output = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        return _step(name, command, start, rc=0, error=f"no JSON on stdout ({exc})")
    return _step(name, command, start, rc=0, output=output, checks=checks(output))


def _step(name, command, start, rc=None, output=None, checks=None, error=None) -> dict:
    checks = checks or {}
    return {
        "step": name,
        "command": " ".join(command[1:]),
        "rc": rc,
        "wall_s": time.perf_counter() - start,
        "ok": error is None and bool(checks) and all(checks.values()),
        "checks": checks,
        "error": error,
        "output": output,
    }


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(nothing on stderr)"


def meters_checks(out) -> dict:
    nvml = next((m for m in out if m["name"] == "nvml"), {})
    return {
        "nvml available": bool(nvml.get("available")),
        "nvml measured": nvml.get("energy_source") == "measured",
    }


def measure_checks(device: str, meter: str) -> Callable[[dict], dict]:
    def checks(out: dict) -> dict:
        domains = out.get("energy_domains") or {}
        return {
            f"device is {device}": str(out.get("device", "")).startswith(device),
            f"meter {meter}": out.get("meter") == meter,
            "gpu energy domain": any(d.startswith("gpu-") for d in domains),
            "decode J/token > 0": (out.get("decode_j_per_token") or 0) > 0,
            "peak GPU memory reported": (out.get("peak_gpu_mem_mb") or 0) > 0,
        }

    return checks


def eval_checks(device: str) -> Callable[[dict], dict]:
    def checks(out: dict) -> dict:
        return {
            f"device is {device}": str(out.get("device", "")).startswith(device),
            "perplexity finite": 1 < (out.get("ppl") or 0) < 1e4,
            "KLD vs the float32 reference < 0.01": out.get("kld") is not None and out["kld"] < 0.01,
        }

    return checks


def distill_checks(steps: int, meter: str) -> Callable[[dict], dict]:
    def checks(out: dict) -> dict:
        energy = out.get("energy") or {}
        return {
            f"{steps} steps": out.get("steps") == steps,
            f"meter {meter}": out.get("meter") == meter,
            "gpu energy domain": any(d.startswith("gpu-") for d in energy.get("energy_by_domain_j") or {}),
            "training energy > 0": (out.get("energy_j") or 0) > 0,
        }

    return checks


class _Lines:
    """A subprocess's stdout lines through a queue (None at its end), and its stderr kept."""

    def __init__(self, proc: subprocess.Popen):
        self.queue: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(proc.stderr), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def record(self, timeout_s: float) -> dict | None:
        """The next JSON line within `timeout_s`; None at the end of output or on time out."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            try:
                line = self.queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                return None
            if line.strip().startswith("{"):
                return json.loads(line)
        return None


def serve_step(db: Path, timeout_s: float, device: str, meter: str, requests: int = 3) -> dict:
    """`greenlm serve` on the transformers engine, driven over real HTTP by the openai client (completions,
    the last one streamed); stopped with SIGTERM as a user stops it."""
    import httpx
    from openai import OpenAI

    command = cli(
        "serve", "--engine", "transformers", "--device", device, "--meter", meter, "--port", "0", "--json",
        "--max-batch", "4", "--served-model-name", "gpu-check", "--db", str(db),
    )  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env()
    )
    out = _Lines(proc)
    ready: dict = {}
    usages: list[dict] = []
    energy: dict = {}
    error = None
    try:
        ready = out.record(timeout_s) or {}
        if ready.get("event") != "ready":
            proc.kill()
            proc.wait(10)
            return _step("serve", command, start, rc=proc.returncode, error=_last_line("".join(out.stderr)))
        client = OpenAI(base_url=ready["url"] + "/v1", api_key="unused", timeout=120, max_retries=0)
        for i in range(requests - 1):
            r = client.completions.create(
                model="gpu-check", prompt=f"The number {i} is", max_tokens=16, temperature=0
            )
            usages.append(r.usage.model_dump())
        chunks = client.completions.create(
            model="gpu-check",
            prompt="A GPU",
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        usages += [c.usage.model_dump() for c in chunks if c.usage is not None]
        energy = httpx.get(ready["url"] + "/energy", timeout=30).json()
    except Exception as exc:  # a failed request is this step's finding, reported in the JSON
        error = f"{type(exc).__name__}: {exc}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    stopped = out.record(10)
    output = {"ready": ready, "usages": usages, "energy": energy, "stopped": stopped}
    checks = {
        f"device is {device}": str(ready.get("device", "")).startswith(device),
        f"meter {meter}": ready.get("meter") == meter,
        f"{requests} responses with energy_j > 0": len(usages) == requests
        and all((u.get("energy_j") or 0) > 0 for u in usages),
        "/energy: requests_j > 0": energy.get("requests_j", 0) > 0,
        "/energy: invariant gap < 0.1%": energy.get("invariant_gap_rel", 1) < 0.001,
        "stopped on SIGTERM (exit 0)": proc.returncode == 0,
    }
    return _step("serve", command, start, rc=proc.returncode, output=output, checks=checks, error=error)


def plan(work: Path, device: str, meter: str) -> dict[str, Callable[[float], dict]]:
    """{step: run(timeout_s)} for the steps after `meters`, in order; `measure` first (the power check)."""
    db = str(work / "gpu_check.db")
    recipe = work / "drop2.yaml"
    recipe.write_text("steps:\n  - method: drop_layers\n    count: 2\n")
    return {
        "measure": lambda t: run_cli(
            "measure",
            [
                "measure",
                "--engine",
                "transformers",
                "--device",
                device,
                "--meter",
                meter,
                "--json",
                "--num-prompts",
                "4",
                "--max-new-tokens",
                "64",
                "--repeats",
                "3",
                "--db",
                db,
            ],  # fmt: skip
            t,
            measure_checks(device, meter),
        ),
        "eval": lambda t: run_cli(
            "eval",
            [
                "eval",
                "--device",
                device,
                "--reference",
                "smollm2-135m",
                "--max-eval-tokens",
                "2048",
                "--json",
                "--db",
                db,
            ],  # fmt: skip
            t,
            eval_checks(device),
        ),
        "serve": lambda t: serve_step(Path(db), t, device, meter),
        "distill": lambda t: run_cli(
            "distill",
            [
                "distill",
                "--student-recipe",
                str(recipe),
                "--steps",
                "5",
                "--device",
                device,
                "--meter",
                meter,
                "--no-eval",
                "--calibration-samples",
                "8",
                "--out",
                str(work / "distilled"),
                "--json",
                "--db",
                db,
            ],  # fmt: skip
            t,
            distill_checks(5, meter),
        ),
    }


LIMITS_S = {"meters": 60, "measure": 240, "eval": 180, "serve": 180, "distill": 240}


def run_steps(work: Path, deadline: float, nvml, meter, tolerance: float) -> tuple[list[dict], dict | None]:
    def left(name: str) -> float:
        return max(1.0, min(LIMITS_S[name], deadline - time.perf_counter()))

    steps = plan(work, "cuda", "nvml")
    done = [run_cli("meters", ["meters", "--json"], left("meters"), meters_checks)]
    step, check = power_check(nvml, meter, lambda: steps.pop("measure")(left("measure")), tolerance)
    step["checks"]["counter within tolerance of the power integral"] = check["within_tolerance"]
    step["checks"]["measure's energy within the counter's"] = check["measure_within_counter"]
    step["ok"] = step["error"] is None and all(step["checks"].values())
    done.append(step)
    for name, run in steps.items():
        if deadline - time.perf_counter() < 30:
            done.append({"step": name, "ok": False, "error": "skipped: the check's time limit was reached"})
            continue
        done.append(run(left(name)))
    return done, check


def summary(gpu: dict, steps: list[dict], check: dict | None, wall_s: float, tolerance: float) -> dict:
    return {
        "benchmark": "gpu_check",
        "issue": 23,
        "gpu": gpu,
        "passed": all(s["ok"] for s in steps),
        "steps": steps,
        "power_check": check,
        "wall_s": wall_s,
        "notes": [
            f"power check tolerance {tolerance:.0%}: on Ampere and newer nvmlDeviceGetPowerUsage is a one-second "
            "average that lags the energy counter at each change of load; a GPU with no energy counter "
            "(before Volta) has its 'counter' integrated from the same power readings, so there the check "
            "says nothing"
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="where the JSON goes (default bench/results/gpu_check.json)")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="power check: largest relative gap")
    args = ap.parse_args(argv)
    try:
        machine_gpu = preflight()
    except Unavailable as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    import pynvml
    from benchlib import Recorder, log

    from greenlm.energy.nvml import NvmlMeter
    from greenlm.errors import GreenlmError

    try:
        meter = NvmlMeter()
    except GreenlmError as exc:
        print(f"gpu_check: greenlm's NVML meter cannot start: {exc}", file=sys.stderr)
        return 2
    rec = Recorder("gpu_check")
    start = time.perf_counter()
    log(f"gpu_check on {machine_gpu['device']} (torch {machine_gpu['torch']}, CUDA {machine_gpu['cuda']})")
    try:
        with tempfile.TemporaryDirectory(prefix="greenlm-gpu-check-") as scratch:
            steps, check = run_steps(Path(scratch), start + DEADLINE_S, pynvml, meter, args.tolerance)
    finally:
        meter.close()
    result = summary(machine_gpu, steps, check, time.perf_counter() - start, args.tolerance)
    result["markdown"] = gpu_check_markdown(result)
    rec.finish(result, out=args.out)
    for s in steps:
        log(f"{s['step']}: {'ok' if s['ok'] else 'FAILED'}" + (f" ({s['error']})" if s.get("error") else ""))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
