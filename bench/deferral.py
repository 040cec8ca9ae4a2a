"""Work that can wait, run when the grid is clean: a compressed stretch of days of the GB 2020 carbon-intensity
trace (bench/data/gb-2020-ci.csv, Wiesner et al., Middleware 2021) replayed by `greenlm serve` on the built-in
model, with interactive traffic, flex requests and Batch API submissions (windows 1h to 24h) arriving over it.

Phases, each a real server over HTTP:
1. Calibrate: the same requests one at a time (default tier) and as one batch (a full batch): batch energy per
   token against one at a time, and the server's throughput at a full batch (which sizes the workload).
2. Durability: a batch, the server killed with -9 mid-batch, restarted on the same --state-dir: custom_ids
   lost or answered twice.
3. The stretch, four times on the same trace and the same arrivals (seeded): interactive traffic alone (the SLO
   reference); everything on arrival (`--forecast persistence`: a flat forecast, nothing gained by waiting, so
   the planner runs every job as soon as capacity allows); the stated forecast (`--forecast yesterday`: the same
   half hour a day earlier, the present observed); perfect foresight (`--forecast perfect`: the trace itself).

Reported per run: carbon and energy of the deferred work (batch lines and flex requests: each request's
energy from the server's meter, split by its attribution rule, at the grid intensity of the steps it ran in);
per part (interactive, flex, batch, idle); the server's energy split into static and dynamic power (the
cpu-model formula applied to the server process from outside every half second: estimated), each window at
its grid intensity; batch deadlines met; flex waits; interactive SLO attainment (TTFT and TPOT under the
SLO, measured by the client); requests lost or answered twice. Then: the forecast's carbon saving on deferred
work as a fraction of the perfect-foresight run's, and a modelled reference (the planner on the same jobs with
the trace as its forecast, the measured J/token and throughput).

    .venv/bin/python bench/deferral.py                 # 3 days at 2 minutes a day, four runs: about 30 minutes
    .venv/bin/python bench/deferral.py --quick         # half a day (noon to midnight), windows 1h-4h: minutes

Writes bench/results/deferral.json (--quick: a temporary file unless --out says otherwise). Run it on an
otherwise idle machine. Targets (issue 22): deferred carbon saving >= 80% of the perfect-foresight saving with
the forecast stated; batch energy per token <= 0.5x one at a time; interactive SLO attainment no lower than
with no deferred work; 0 lost or duplicated requests, including across a kill -9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from benchlib import Recorder, log
from deferral_table import markdown
from servers import Proc

from greenlm.data import load_text, split_text
from greenlm.defer.forecast import TraceForecaster
from greenlm.defer.planner import Job, plan, plan_asap
from greenlm.defer.settings import parse_duration_s
from greenlm.energy.carbon import carbon_g
from greenlm.energy.cpu_model import DYNAMIC_DOMAIN, STATIC_DOMAIN, CpuModelMeter
from greenlm.grid.replay import read_intensity_csv

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "deferral.json"
TRACE = ROOT / "bench" / "data" / "gb-2020-ci.csv"
START_TIMEOUT_S = 600
LEAD_WALL_S = 6.0  # the workload starts this long (wall) after the replay's first row: room for the start
SAMPLE_S = 0.5
WINDOWS = ("1h", "4h", "8h", "24h")
DAY_S = 86400.0


def docs_prompts(count: int, seed: int) -> list[str]:
    words = " ".join(split_text(load_text(None)).evaluation).split()
    rng = random.Random(seed)
    return [
        " ".join(words[(start := rng.randrange(0, len(words) - 60)) : start + rng.randint(15, 40)])
        for _ in range(count)
    ]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="minutes")


# ---- servers ------------------------------------------------------------------------------------------------
def serve_cmd(args, state_dir: Path, grid: list[str]) -> list[str]:
    cmd = [
        sys.executable, "-m", "greenlm", "serve", "--json", "--port", "0", "--max-batch", str(args.max_batch),
        "--meter", args.meter, "--context", "2048", "--state-dir", str(state_dir), "--served-model-name", "m",
        "--flex-max-wait", "10m", *grid,
    ]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def start(name: str, cmd: list[str], workdir: Path) -> tuple[Proc, str, dict]:
    proc = Proc(name, cmd, workdir)
    ready = proc.wait_ready(START_TIMEOUT_S)
    return proc, ready["url"], ready


def completion(prompt: str, max_tokens: int, **extra) -> dict:
    return {
        "model": "m",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


def batch_file(lines: list[dict]) -> bytes:
    return "".join(
        json.dumps({"custom_id": c, "method": "POST", "url": "/v1/completions", "body": b}) + "\n"
        for c, b in lines
    ).encode()


async def submit_batch(client: httpx.AsyncClient, content: bytes, window: str) -> str:
    up = await client.post(
        "/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", content, "application/jsonl")}
    )
    up.raise_for_status()
    created = await client.post(
        "/v1/batches",
        json={"input_file_id": up.json()["id"], "endpoint": "/v1/completions", "completion_window": window},
    )
    created.raise_for_status()
    return created.json()["id"]


async def wait_batch(client: httpx.AsyncClient, batch_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
            return batch
        await asyncio.sleep(0.2)


async def batch_lines(client: httpx.AsyncClient, batch: dict) -> list[dict]:
    rows = []
    for key in ("output_file_id", "error_file_id"):
        if batch.get(key):
            text = (await client.get(f"/v1/files/{batch[key]}/content")).text
            rows += [json.loads(x) for x in text.splitlines() if x.strip()]
    return rows


def usage_of(row: dict) -> dict:
    response = row.get("response") or {}
    return (response.get("body") or {}).get("usage") or {} if response.get("status_code") == 200 else {}


# ---- phase 1: one at a time vs a batch ----------------------------------------------------------------------
async def calibrate(url: str, args, prompts: list[str]) -> dict:
    count = 2 * args.max_batch
    requests = [completion(prompts[i], args.calib_tokens) for i in range(count)]
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        single = {"energy_j": 0.0, "tokens": 0}
        t0 = time.monotonic()
        for body in requests:
            usage = (await client.post("/v1/completions", json=body)).json()["usage"]
            single["energy_j"] += usage["energy_j"]
            single["tokens"] += usage["prompt_tokens"] + usage["completion_tokens"]
        single["wall_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        batch_id = await submit_batch(
            client, batch_file([(f"c{i}", b) for i, b in enumerate(requests)]), "24h"
        )
        batch = await wait_batch(client, batch_id, 600)
        wall = time.monotonic() - t0
        rows = await batch_lines(client, batch)
        measured = (await client.get("/dashboard/data")).json()["defer"]["capacity_tokens_per_s"]
    usages = [usage_of(r) for r in rows]
    tokens = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usages)
    batched = {"energy_j": sum(u.get("energy_j", 0.0) for u in usages), "tokens": tokens, "wall_s": wall}
    for side in (single, batched):
        side["j_per_token"] = side["energy_j"] / side["tokens"] if side["tokens"] else None
        side["tokens_per_s"] = side["tokens"] / side["wall_s"]
    return {
        "requests": count,
        "max_tokens": args.calib_tokens,
        "one_at_a_time": single,
        "batch": batched,
        "batch_vs_single_j_per_token": batched["j_per_token"] / single["j_per_token"],
        "capacity_tokens_per_s": measured,  # the deferral's own figure: deferred tokens per busy second
        "meter": usages[0].get("meter") if usages else None,
        "energy_source": usages[0].get("energy_source") if usages else None,
        "note": "the same requests (end of text suppressed, so the same tokens), each one's attributed energy",
    }


# ---- phase 2: kill -9 mid-batch ----------------------------------------------------------------------------
async def kill_and_resume(args, workdir: Path, prompts: list[str]) -> dict:
    state = workdir / "kill-state"
    cmd = serve_cmd(args, state, [])
    count = 4 * args.max_batch
    ids = [f"k{i}" for i in range(count)]
    content = batch_file(
        [(c, completion(prompts[i % len(prompts)], args.kill_tokens)) for i, c in enumerate(ids)]
    )
    proc, url, _ = start("kill-1", cmd, workdir)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        batch_id = await submit_batch(client, content, "24h")
        while (await client.get(f"/v1/batches/{batch_id}")).json()["request_counts"][
            "completed"
        ] < count // 4:
            await asyncio.sleep(0.05)
        done_before = (await client.get(f"/v1/batches/{batch_id}")).json()["request_counts"]["completed"]
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(30)
    proc2, url2, _ = start("kill-2", cmd, workdir)
    try:
        async with httpx.AsyncClient(base_url=url2, timeout=600) as client:
            batch = await wait_batch(client, batch_id, 900)
            rows = await batch_lines(client, batch)
    finally:
        proc2.stop()
    seen = [r["custom_id"] for r in rows]
    return {
        "requests": count,
        "completed_before_kill": done_before,
        "status": batch["status"],
        "lost": len(set(ids) - set(seen)),
        "duplicated": len(seen) - len(set(seen)),
        "failed": batch["request_counts"]["failed"],
    }


# ---- phase 3: the stretch -----------------------------------------------------------------------------------
def profile(hour: float) -> float:
    """Interactive load by hour of day (a working day: quiet nights, busy daytime)."""
    if 8 <= hour < 20:
        return 1.0
    if 6 <= hour < 8 or 20 <= hour < 23:
        return 0.5
    return 0.15


def workload(args, capacity_tokens_per_s: float, prompts: list[str]) -> list[dict]:
    """The same arrivals for every run (seeded), as offsets in trace seconds from the stretch's start."""
    rng = random.Random(args.seed)
    span = args.days * DAY_S
    trace_capacity = capacity_tokens_per_s / args.speed  # tokens per trace second at a full batch
    events: list[dict] = []
    # interactive: a Poisson process following the daily profile, interactive_share of capacity on average
    mean_rps = (
        args.interactive_share * capacity_tokens_per_s / (40 + args.interactive_tokens)
    )  # per wall second
    peak = mean_rps / (sum(profile(h + 0.5) for h in range(24)) / 24) / args.speed  # per trace second
    t = 0.0
    while t < span:
        t += rng.expovariate(peak)
        if t < span and rng.random() < profile((t % DAY_S) / 3600):
            events.append({"t": t, "kind": "interactive", "prompt": rng.choice(prompts)})
    for _ in range(round(args.flex_per_day * args.days)):
        events.append({"t": rng.uniform(0, span), "kind": "flex", "prompt": rng.choice(prompts)})
    # batches until the deferred work is deferred_share of the capacity over the stretch; each job about
    # job_hours of a full batch's compute (at most job_fill of its window), as the trace's facts assume
    per_line = 40 + args.batch_tokens
    total, b = 0.0, 0
    while total < args.deferred_share * trace_capacity * span:
        window = rng.choice(args.windows)
        compute_s = min(
            rng.uniform(0.5, 1.5) * args.job_hours * 3600, args.job_fill * parse_duration_s(window, "w")
        )
        count = max(1, min(args.max_lines, round(compute_s * trace_capacity / per_line)))
        lines = [(f"b{b}-{i}", rng.choice(prompts)) for i in range(count)]
        events.append({"t": rng.uniform(0, span), "kind": "batch", "window": window, "lines": lines, "id": b})
        total += count * per_line
        b += 1
    return sorted(events, key=lambda e: e["t"])


class Sampler:
    """The server process's energy every half second (the cpu-model formula from outside), static and dynamic
    apart, each window at the trace's intensity of its middle."""

    def __init__(self, pid: int, trace: TraceForecaster, grid_at_wall):
        self.meter, self.trace, self.grid_at_wall = CpuModelMeter(pid=pid), trace, grid_at_wall
        self.totals = {
            "static_j": 0.0,
            "dynamic_j": 0.0,
            "memory_j": 0.0,
            "static_carbon_g": 0.0,
            "dynamic_carbon_g": 0.0,
        }
        self._last = self.meter.read()
        self._last_wall = time.monotonic()

    def sample(self) -> None:
        reading, now = self.meter.read(), time.monotonic()
        m = self.meter.measure(self._last, reading)
        g = self.trace.actual(self.grid_at_wall((self._last_wall + now) / 2))
        static, dynamic = m.detail_j.get(STATIC_DOMAIN, 0.0), m.detail_j.get(DYNAMIC_DOMAIN, 0.0)
        self.totals["static_j"] += static
        self.totals["dynamic_j"] += dynamic
        self.totals["memory_j"] += m.energy_j.get("memory", 0.0)
        self.totals["static_carbon_g"] += carbon_g(static, g)
        self.totals["dynamic_carbon_g"] += carbon_g(dynamic, g)
        self._last, self._last_wall = reading, now


async def interactive(client, prompt, args, out: list) -> None:
    body = completion(prompt, args.interactive_tokens, stream=True, stream_options={"include_usage": True})
    t0 = time.perf_counter()
    first = last = None
    usage = None
    tokens = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                out.append({"ok": False, "error": f"HTTP {response.status_code}"})
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                data = json.loads(line[5:])
                if "error" in data:
                    out.append({"ok": False, "error": str(data["error"])[:200]})
                    return
                usage = data.get("usage") or usage
                if any(c.get("text") for c in data.get("choices") or []):
                    now = time.perf_counter()
                    first, last, tokens = first or now, now, tokens + 1
    except httpx.HTTPError as exc:
        out.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    ttft = (first - t0) if first else None
    tpot = (last - first) / (tokens - 1) if first and tokens > 1 else 0.0
    out.append({"ok": usage is not None, "ttft_s": ttft, "tpot_s": tpot, "usage": usage or {}})


async def flex(client, prompt, args, out: list) -> None:
    t0 = time.perf_counter()
    try:
        response = await client.post(
            "/v1/completions", json=completion(prompt, args.flex_tokens, service_tier="flex")
        )
        body = response.json()
    except httpx.HTTPError as exc:
        out.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    if response.status_code != 200:
        out.append({"ok": False, "error": str(body)[:200]})
        return
    out.append(
        {
            "ok": True,
            "wall_s": time.perf_counter() - t0,
            "usage": body["usage"],
            "tier": body.get("service_tier"),
        }
    )


def part(usages: list[dict]) -> dict:
    return {
        "requests": len(usages),
        "energy_j": sum(u.get("energy_j", 0.0) for u in usages),
        "carbon_g": sum(u.get("carbon_g", 0.0) for u in usages),
        "tokens": sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usages),
    }


async def run_stretch(
    name: str, forecast: str, events: list[dict], args, workdir: Path, trace: TraceForecaster
) -> dict:
    grid = [
        "--grid-csv",
        str(TRACE),
        "--replay-speed",
        str(args.speed),
        "--replay-from",
        args.replay_from,
        "--forecast",
        forecast,
    ]
    proc, url, ready = start(name, serve_cmd(args, workdir / f"{name}-state", grid), workdir)
    log(f"{name}: serving at {url} (forecast {forecast})")
    t0_trace = datetime.fromisoformat(args.replay_from).replace(tzinfo=timezone.utc).timestamp()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
            grid_now = (await client.get("/dashboard/data")).json()["defer"]["now_s"]
            wall_now = time.monotonic()

            def wall_at(t: float) -> float:
                return wall_now + (t - grid_now) / args.speed

            def grid_at(wall: float) -> float:
                return grid_now + (wall - wall_now) * args.speed

            begin = t0_trace + LEAD_WALL_S * args.speed
            lag_wall_s = (grid_now - t0_trace) / args.speed
            if grid_now >= begin:
                raise SystemExit(
                    f"{name}: the server took {lag_wall_s:.1f} s to be ready, past the workload's start"
                )
            sampler = Sampler(proc.proc.pid, trace, grid_at)
            results = {"interactive": [], "flex": []}
            batches: list[dict] = []
            pending: list[asyncio.Task] = []

            async def sample_loop():
                while True:
                    await asyncio.sleep(SAMPLE_S)
                    sampler.sample()

            sampling = asyncio.create_task(sample_loop())
            for e in events:
                delay = wall_at(begin + e["t"]) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if e["kind"] == "interactive":
                    pending.append(
                        asyncio.create_task(interactive(client, e["prompt"], args, results["interactive"]))
                    )
                elif e["kind"] == "flex":
                    pending.append(asyncio.create_task(flex(client, e["prompt"], args, results["flex"])))
                else:
                    content = batch_file([(c, completion(p, args.batch_tokens)) for c, p in e["lines"]])
                    bid = await submit_batch(client, content, e["window"])
                    batches.append({"id": bid, "event": e, "submitted_s": grid_at(time.monotonic())})
            await asyncio.gather(*pending)
            longest = max((parse_duration_s(b["event"]["window"], "w") for b in batches), default=0.0)
            finished = [await wait_batch(client, b["id"], longest / args.speed + 120) for b in batches]
            sampling.cancel()
            sampler.sample()
            account = (await client.get("/energy")).json()
            view = (await client.get("/dashboard/data")).json()["defer"]
            rows_by_batch = [await batch_lines(client, f) for f in finished]
    finally:
        proc.stop()
    batch_usages, lost, duplicated, met = [], 0, 0, 0
    jobs = []
    for b, f, rows in zip(batches, finished, rows_by_batch, strict=True):
        expected = {c for c, _ in b["event"]["lines"]}
        seen = [r["custom_id"] for r in rows]
        lost += len(expected - set(seen))
        duplicated += len(seen) - len(set(seen))
        met += f["status"] == "completed" and f["completed_at"] <= f["expires_at"]
        usages = [usage_of(r) for r in rows]
        batch_usages += [u for u in usages if u]
        jobs.append({
            "submitted_s": b["submitted_s"], "submitted": iso(b["submitted_s"]), "window": b["event"]["window"],
            "window_s": parse_duration_s(b["event"]["window"], "w"), "lines": len(b["event"]["lines"]),
            "status": f["status"], "tokens": sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usages),
            "carbon_g": f.get("greenlm_carbon_g"), "carbon_if_run_at_submission_g": f.get("greenlm_carbon_if_run_at_submission_g"),
        })  # fmt: skip
    inter = [r for r in results["interactive"] if r["ok"]]
    flexes = [r for r in results["flex"] if r["ok"]]
    slo = [
        r
        for r in inter
        if r["ttft_s"] is not None and r["ttft_s"] <= args.slo_ttft_s and r["tpot_s"] <= args.slo_tpot_s
    ]
    deferred = part(batch_usages + [r["usage"] for r in flexes])
    return {
        "forecast": forecast,
        "start_lag_wall_s": lag_wall_s,
        "parts": {
            "interactive": part([r["usage"] for r in inter]),
            "flex": part([r["usage"] for r in flexes]),
            "batch": part(batch_usages),
            "deferred": deferred,
            "idle_j": account["idle_j"],
            "server_total_j": account["meter_total_j"],
            "server_carbon_g": account["carbon_g"],
            "meter": account["meter"],
            "energy_source": account["energy_source"],
        },
        "deferred_j_per_token": deferred["energy_j"] / deferred["tokens"] if deferred["tokens"] else None,
        "static_dynamic": {
            **sampler.totals,
            "source": "the cpu-model formula applied to the server process from outside every 0.5 s (estimated), each window at the trace's intensity",
        },
        "slo": {
            "requests": len(results["interactive"]),
            "ok": len(inter),
            "attainment": len(slo) / len(results["interactive"]) if results["interactive"] else None,
            "ttft_p50_s": statistics.median(r["ttft_s"] for r in inter) if inter else None,
            "ttft_p90_s": sorted(r["ttft_s"] for r in inter)[int(0.9 * (len(inter) - 1))] if inter else None,
        },
        "batches": {
            "count": len(batches),
            "deadlines_met": met,
            "lines_lost": lost,
            "lines_duplicated": duplicated,
            "statuses": sorted({f["status"] for f in finished}),
        },  # fmt: skip
        "flex": {
            "count": len(results["flex"]),
            "ok": len(flexes),
            "latency_max_trace_min": max((r["wall_s"] * args.speed / 60 for r in flexes), default=0.0),
            "errors": [r["error"] for r in results["flex"] if not r["ok"]][:5],
        },  # fmt: skip
        "interactive_errors": [r["error"] for r in results["interactive"] if not r["ok"]][:5],
        "decisions": {
            "count": view["decision_count"],
            "by_reason": _count(f"{d['kind']} {d['action']} {d['reason']}" for d in view["decisions"]),
            "capacity_tokens_per_s": view["capacity_tokens_per_s"],
            "batch_requests_preempted": view["preemptions"],
            "log": [
                {k: d[k] for k in ("time", "job", "kind", "action", "reason", "detail", "tokens")}
                for d in view["decisions"]
                if d["kind"] == "batch"
            ],
            "j_per_token": view["j_per_token"],
        },
        "jobs": jobs,
    }


def _count(items) -> dict:
    out: dict = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def modelled(
    jobs: list[dict], trace: TraceForecaster, capacity_tokens_per_s: float, j_per_token: float, speed: float
) -> dict:
    """The planner on the same batch jobs with the trace as its forecast (perfect foresight, arrivals known as
    release times) and with every job run on arrival: the reference the measured runs read against."""
    if not jobs:
        return {}
    start = min(j["submitted_s"] for j in jobs)
    end = max(j["submitted_s"] + j["window_s"] for j in jobs)
    slots = trace.forecast(start, end - start).slots(start, end)
    as_jobs = [
        Job(f"j{i}", j["tokens"], j["submitted_s"] + j["window_s"], release_s=j["submitted_s"])
        for i, j in enumerate(jobs)
    ]
    kwargs = dict(now_s=start, capacity_tokens_per_s=capacity_tokens_per_s / speed, j_per_token=j_per_token)
    best, asap = plan(as_jobs, slots, **kwargs), plan_asap(as_jobs, slots, **kwargs)
    return {
        "rule": "EDF-cleanest planner with release times on the trace itself; J/token and throughput as measured",
        "carbon_on_arrival_g": asap.carbon_g(),
        "carbon_perfect_g": best.carbon_g(),
        "saving_pct": 100 * (1 - best.carbon_g() / asap.carbon_g()) if asap.carbon_g() else None,
    }


def pct(a: float, b: float) -> float | None:
    return 100.0 * (1 - a / b) if b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="half a day at 2 minutes a day, small batches: a smoke run"
    )
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--day-s", type=float, default=120.0, help="wall seconds per day of trace")
    parser.add_argument(
        "--replay-from",
        default="2020-09-28T00:00",
        help="where the stretch starts (default: 2020's median 3-day stretch by what perfect foresight saves a "
        "one-hour job in a 24-hour window, 22.7%%; the year's mean is 22.3%%)",
    )
    parser.add_argument("--forecast", default="yesterday", choices=("yesterday", "persistence"))
    parser.add_argument("--model", default=None, help="default: the built-in model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--meter", default="cpu-model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--job-hours", type=float, default=1.0, help="a batch's compute at a full batch (trace hours)"
    )
    parser.add_argument(
        "--job-fill", type=float, default=0.3, help="a batch's compute at most this share of its window"
    )
    parser.add_argument("--flex-per-day", type=int, default=24)
    parser.add_argument(
        "--deferred-share", type=float, default=0.25, help="deferred work / capacity over the stretch"
    )
    parser.add_argument(
        "--interactive-share", type=float, default=0.2, help="interactive work / capacity on average"
    )
    parser.add_argument("--max-lines", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=96)
    parser.add_argument("--flex-tokens", type=int, default=32)
    parser.add_argument("--interactive-tokens", type=int, default=32)
    parser.add_argument("--calib-tokens", type=int, default=64)
    parser.add_argument("--kill-tokens", type=int, default=128)
    parser.add_argument("--slo-ttft-s", type=float, default=2.0)
    parser.add_argument("--slo-tpot-s", type=float, default=0.25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.windows = WINDOWS
    if args.quick:
        args.days, args.day_s, args.max_batch = 0.5, 120.0, 4
        args.replay_from = args.replay_from[:10] + "T12:00"  # the same day's second half: evening into night
        args.flex_per_day, args.max_lines, args.windows = 16, 8, ("1h", "4h")
        args.batch_tokens, args.calib_tokens, args.kill_tokens = 32, 32, 64
    args.speed = DAY_S / args.day_s
    out = args.out or (Path(tempfile.mkdtemp()) / "deferral.json" if args.quick else RESULT)
    rec = Recorder("deferral")
    times, values = read_intensity_csv(TRACE)
    trace = TraceForecaster(times, values, "perfect", name=str(TRACE.relative_to(ROOT)))
    prompts = docs_prompts(200, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="greenlm-deferral-"))

    log("calibrating: the same requests one at a time and as one batch")
    proc, url, ready = start("calibrate", serve_cmd(args, workdir / "calibrate-state", []), workdir)
    try:
        calibration = asyncio.run(calibrate(url, args, prompts))
    finally:
        proc.stop()
    capacity = calibration["capacity_tokens_per_s"] or calibration["batch"]["tokens_per_s"]
    log(
        f"a full batch: {capacity:.0f} tokens/s; {calibration['batch_vs_single_j_per_token']:.2f}x the J/token of one at a time"
    )
    log("kill -9 mid-batch, then restart on the same state")
    kill = asyncio.run(kill_and_resume(args, workdir, prompts))

    events = workload(args, capacity, prompts)
    log(f"the stretch: {args.days} day(s) from {args.replay_from} at {args.speed:g}x, {len(events)} arrivals")
    runs = {}
    for name, forecast, only_interactive in (
        ("interactive_only", "persistence", True),
        ("on_arrival", "persistence", False),
        ("forecast", args.forecast, False),
        ("perfect", "perfect", False),
    ):
        chosen = [e for e in events if e["kind"] == "interactive"] if only_interactive else events
        runs[name] = asyncio.run(run_stretch(name, forecast, chosen, args, workdir, trace))
        log(
            f"{name}: deferred {runs[name]['parts']['deferred']['carbon_g']:.4g} g, SLO {runs[name]['slo']['attainment']}"
        )

    # carbon per deferred token, so a run that lost work to an expired window is not read as a saving
    base, fc, pf = (
        runs[k]["parts"]["deferred"]["carbon_g"] / max(1, runs[k]["parts"]["deferred"]["tokens"])
        for k in ("on_arrival", "forecast", "perfect")
    )
    j_per_token = runs["on_arrival"]["deferred_j_per_token"] or 0.0
    summary = {
        "saving_forecast_pct": pct(fc, base),
        "saving_perfect_pct": pct(pf, base),
        "fraction_of_perfect": (base - fc) / (base - pf) if base > pf else None,
        "deferred_energy_change_pct": {
            k: -pct(
                runs[k]["parts"]["deferred"]["energy_j"], runs["on_arrival"]["parts"]["deferred"]["energy_j"]
            )
            for k in ("forecast", "perfect")
        },
        "slo_attainment": {k: v["slo"]["attainment"] for k, v in runs.items()},
        "lost": sum(v["batches"]["lines_lost"] for v in runs.values()) + kill["lost"],
        "duplicated": sum(v["batches"]["lines_duplicated"] for v in runs.values()) + kill["duplicated"],
        "modelled": modelled(runs["on_arrival"]["jobs"], trace, capacity, j_per_token, args.speed),
    }
    summary["targets"] = {
        "saving_at_least_80pct_of_perfect": summary["fraction_of_perfect"] is not None
        and summary["fraction_of_perfect"] >= 0.8,
        "batch_j_per_token_at_most_half": calibration["batch_vs_single_j_per_token"] <= 0.5,
        "slo_no_lower": all(
            (runs[k]["slo"]["attainment"] or 0) >= (runs["interactive_only"]["slo"]["attainment"] or 0)
            for k in ("forecast", "perfect")
        ),
        "nothing_lost_or_duplicated": summary["lost"] == 0 and summary["duplicated"] == 0,
    }
    result = {
        "benchmark": "deferral",
        "trace": {
            "file": str(TRACE.relative_to(ROOT)),
            "source": "Wiesner et al., Let's Wait Awhile, Middleware 2021 (bench/data/README.md)",
            "from": args.replay_from,
            "days": args.days,
            "speed": args.speed,
            "wall_s_per_day": args.day_s,
        },  # fmt: skip
        "forecast": args.forecast,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "calibration": calibration,
        "kill": kill,
        "runs": runs,
        "summary": summary,
        "notes": [
            "savings are of carbon per deferred token (batch lines and flex requests), so work lost to an expired "
            "window never reads as a saving; deadlines met are reported beside them",
            "deferred work = batch lines + flex requests; each request's energy is the server meter's (see parts.meter), "
            "split among the requests of each step by tokens processed, at the grid intensity of that step's time",
            "on_arrival = the same server with a flat forecast (persistence): the planner runs each job as soon as capacity allows",
            "runs ran one after another on the same machine; other load on it changes every figure",
        ],
    }
    rec.finish(result, out=out)
    log(markdown(result))


if __name__ == "__main__":
    main()
