"""A compressed day against the built-in model's variant ladder: the best static server vs the adaptive one.

1. The ladder (built once, cached): a small `greenlm optimize` search on the built-in model over llama.cpp
   variants (the built-in Q4_1 GGUF as given, q8_0, q4_k_m, and layer-dropped q4_0 files), every candidate
   measured in full (no screening out, so members outside the quality budget are measured too), its Pareto
   front over decode J/token and KLD. Figures: the optimizer's rows (cpu-model meter unless --meter says).
2. The day: 24 hours compressed into --day-s seconds; requests arrive as a Poisson process whose rate follows
   a working day (quiet nights at a tenth of the peak, bursts of simultaneous requests at 9:00, 13:00 and
   17:00), each a streamed completion of a documentation prompt with a fixed number of output tokens (end of
   text suppressed, so both servers do the same work); the grid's intensity follows a coal-heavy night and a
   sunny noon (a CSV replayed by both servers at the same speed, from the moment each is ready).
3. The static server: the optimizer's choice, the cheapest front member inside the quality budget, on the
   threads it was chosen with, always loaded (`greenlm serve` with a one-variant policy that only replays
   the grid, so its carbon is counted the same way). The adaptive server: the whole front as a ladder with
   the quality budget, load, carbon and idle policies. Same trace, same machine, one after the other.
4. Reported per server: energy (J, the server's own meter over the replay, static power included, so quiet
   hours cost what they cost), carbon (g, each window at the grid intensity of its time), SLO attainment
   (share of requests whose TTFT and TPOT are both under the SLO, measured by the client), token-weighted
   mean KLD served, errors, and the adaptive server's decisions; a markdown table and an SVG plot of the day.
   Energy is also split (cpu-model only), from outside the server's process, into static power of its allotted
   cores, dynamic power of its busy core-seconds and memory, and the saving is stated as charged, without the
   static charge of the cores the adaptive server released, and for the dynamic part alone.

    .venv/bin/python bench/adapt_trace.py --json                 # full: 12-minute day per server, ~35 min
    .venv/bin/python bench/adapt_trace.py --day-s 540            # a 9-minute day per server
    .venv/bin/python bench/adapt_trace.py --quick                # smoke: small ladder build, 2-minute day

Writes bench/results/adapt_trace.json (--quick: a temporary file unless --out says otherwise) and the plot
next to it (adapt_trace.svg). Targets (issue 10): adaptive carbon at least 25% below static at SLO attainment
no lower, mean KLD within the budget; zero failed requests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import queue
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from benchlib import Recorder, log
from matplotlib.figure import Figure
from servers import Proc
from tables import adapt_trace_markdown, energy_split_change

from greenlm.data import load_text, split_text
from greenlm.energy.cpu_model import DYNAMIC_DOMAIN, STATIC_DOMAIN, CpuModelMeter
from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.io import write_text_atomic
from greenlm.optimize import EvalSettings, OptimizeConfig, optimize
from greenlm.optimize.pareto import QualityBudget
from greenlm.paths import cache_dir
from greenlm.serve.ladder import ladder_from_search
from greenlm.store import Store

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "adapt_trace.json"
START_TIMEOUT_S = 600
SPLIT_INTERVAL_S = 0.5  # tiles of the outside static/dynamic split (the adaptive server's control interval)
DROP = [{"method": "drop_layers", "count": 2}]
DROP_MORE = [{"method": "drop_layers", "count": 4}]
SPACE = {
    "grids": [
        {"engine": "llamacpp", "recipes": [[]], "quant_types": [None, "q8_0", "q4_k_m"], "threads": [1]},
        {"engine": "llamacpp", "recipes": [DROP, DROP_MORE], "quant_types": ["q4_0"], "threads": [1]},
    ]
}
QUICK_SPACE = {
    "grids": [
        {"engine": "llamacpp", "recipes": [[]], "quant_types": [None, "q8_0"], "threads": [1]},
        {"engine": "llamacpp", "recipes": [DROP], "quant_types": ["q4_0"], "threads": [1]},
    ]
}
# A coal-heavy night and a sunny noon (g/kWh, one figure an hour, 00:00 to 23:00): the shape of a grid with
# a lot of solar and fossil evening peakers, within the range of hourly figures grids publish.
GRID_G_PER_KWH = [520, 530, 540, 540, 530, 510, 470, 400, 320, 250, 190, 160,
                  150, 160, 200, 270, 360, 450, 520, 560, 570, 560, 550, 540]  # fmt: skip
# Requests per hour relative to the peak: quiet night (0.1), morning ramp, working day, evening tail.
RATE = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.15, 0.3, 0.6, 1.0, 1.0, 0.9,
        0.8, 1.0, 1.0, 0.9, 0.8, 0.6, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1]  # fmt: skip
BURSTS = {9: 8, 13: 8, 17: 6}  # hour -> requests sent at once at the start of it
OUTPUT_TOKENS = (24, 64)  # each request's max_tokens, uniform in this range
# The busiest hour asks for this share of what the static variant decodes alone, one request at a time: a
# server a careful user sized for the day, loaded but not overloaded at its peak (serving adds per-step work
# to the engine's own speed). A fixed 2 requests/s, the first default, asked ~90 tokens/s of this 2-vCPU
# machine: 30% of requests were refused with queue_full and both servers missed the TTFT SLO for most of the
# day, so the comparison said nothing.
PEAK_LOAD = 0.35


# ---- the ladder -------------------------------------------------------------------------------------------
def build_ladder(args) -> tuple[str, str, dict]:
    """(store path, search id, search summary): the cached search when one exists for these settings."""
    space = QUICK_SPACE if args.quick else SPACE
    settings = EvalSettings(
        energy=EnergySettings(meter=args.meter),
        screen_margin=1e6,  # measure every candidate in full: the ladder wants members outside the budget
        budget=QualityBudget(max_ppl_increase_pct=1e6, max_kld=args.max_kld),
        eval_tokens=1024 if args.quick else 4096,
        screen_eval_tokens=512 if args.quick else 1024,
        repeats=2 if args.quick else 3,
        num_prompts=1 if args.quick else 2,
    )
    key = hashlib.sha256(
        json.dumps([space, settings.to_dict()], sort_keys=True, default=str).encode()
    ).hexdigest()[:12]
    home = Path(args.cache or cache_dir() / "bench" / "adapt_trace") / key
    home.mkdir(parents=True, exist_ok=True)
    db = home / "ladder.db"
    with Store(db) as store:
        rows = store.runs(limit=1, kind="search")
        if rows and not args.rebuild:
            summary = json.loads(rows[0]["record_json"])
            log(f"ladder: reusing search {summary['search_id']} in {db} (--rebuild to measure again)")
            return str(db), summary["search_id"], summary
        (home / "space.yaml").write_text(json.dumps(space))  # JSON is YAML
        settings.workdir = str(home / "work")
        config = OptimizeConfig(
            settings=settings, space=str(home / "space.yaml"), time_budget_s=4 * 3600, final_rounds=0
        )
        log(
            f"ladder: an optimize search over {sum(1 for _ in _candidates(space))} llama.cpp candidates (once)"
        )
        result = optimize(config, store=store, announce=log)
        return str(db), result.search_id, result.to_dict()


def _candidates(space):
    for grid in space["grids"]:
        for _ in grid["recipes"]:
            yield from grid["quant_types"]


# ---- the day ----------------------------------------------------------------------------------------------
def peak_rps_for(static, share: float, tokens: tuple[int, int]) -> float:
    """Requests/s at the busiest hour: `share` of the static variant's measured single-stream decode speed, in
    requests of the mean output length."""
    speed = static.decode_tokens_per_s
    if not speed:
        raise SystemExit(
            f"error: the static variant {static.name} has no measured decode speed: pass --peak-rps"
        )
    return share * speed / (sum(tokens) / 2)


def make_trace(
    day_s: float, peak_rps: float, seed: int, prompts: list[str], tokens: tuple[int, int]
) -> list[dict]:
    """Arrival times (seconds from the start) and requests, deterministic for a seed."""
    rng = random.Random(seed)
    hour_s = day_s / 24
    out = []
    for hour, rel in enumerate(RATE):
        t = hour * hour_s
        for _ in range(BURSTS.get(hour, 0)):
            out.append(t)
        rate = peak_rps * rel
        while True:
            t += rng.expovariate(rate)
            if t >= (hour + 1) * hour_s:
                break
            out.append(t)
    out.sort()
    return [
        {
            "at_s": t,
            "prompt": rng.choice(prompts),
            "max_tokens": rng.randint(*tokens),
            "hour": int(t // hour_s),
        }
        for t in out
    ]


def prompts_from_docs(count: int = 200) -> list[str]:
    words = " ".join(split_text(load_text(None)).evaluation).split()
    rng = random.Random(7)
    out = []
    for _ in range(count):
        start = rng.randrange(0, max(1, len(words) - 80))
        out.append(" ".join(words[start : start + rng.randint(20, 60)]))
    return out


# ---- servers ----------------------------------------------------------------------------------------------
def start_server(name: str, policy: Path, args, workdir: Path, db: str) -> tuple[Proc, str, dict]:
    cmd = [
        sys.executable, "-m", "greenlm", "serve", "--json", "--port", "0", "--policy", str(policy),
        "--meter", args.meter, "--max-batch", str(args.max_batch), "--db", db, "--served-model-name", "smollm2",
    ]  # fmt: skip
    proc = Proc(name, cmd, workdir)
    record = proc.wait_ready(START_TIMEOUT_S)
    return proc, record["url"], record


def stop_server(proc: Proc) -> dict | None:
    proc.stop()
    while True:
        try:
            line = proc.lines.get(timeout=5)
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.strip().startswith("{"):
            record = json.loads(line)
            if record.get("event") == "stopped":
                return record


class EnergySplit:
    """The cpu-model formula applied to a server's process from outside, its parts kept apart: static (the
    idle power of the cores in the process's CPU affinity, which the adaptive server shrinks), dynamic (its
    busy core-seconds) and memory. The formula averages the affinity at a window's two edges, so the replay is
    tiled into windows of `interval_s` rather than read as one."""

    def __init__(self, pid: int, interval_s: float = SPLIT_INTERVAL_S):
        self.meter = CpuModelMeter(pid=pid)
        self.interval_s = interval_s
        self.parts_j = {"static_j": 0.0, "dynamic_j": 0.0, "memory_j": 0.0}
        self.core_s = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="energy-split", daemon=True)

    def start(self) -> None:
        self.first = self.last = self.meter.read()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()

    def _tick(self) -> None:
        if self.error:
            return
        try:
            now = self.meter.read()
        except psutil.Error as exc:  # the server went away: the split covers up to its last reading
            self.error = f"{type(exc).__name__}: {exc}"
            return
        m = self.meter.measure(self.last, now)
        self.parts_j["static_j"] += m.detail_j[STATIC_DOMAIN]
        self.parts_j["dynamic_j"] += m.detail_j[DYNAMIC_DOMAIN]
        self.parts_j["memory_j"] += m.energy_j["memory"]
        cores = (self.last.values["core_equivalents"] + now.values["core_equivalents"]) / 2
        self.core_s += cores * m.duration_s
        self.last = now

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=10)
        self._tick()
        return {
            **self.parts_j,
            "total_j": sum(self.parts_j.values()),
            "core_s": self.core_s,
            "duration_s": self.last.time_s - self.first.time_s,
            "idle_watts_per_core": self.meter.idle_watts_per_core,
            "dynamic_watts_per_core": self.meter.dynamic_watts_per_core,
            "interval_s": self.interval_s,
            "error": self.error,
        }


async def one(client: httpx.AsyncClient, req: dict) -> dict:
    payload = {
        "model": "smollm2", "prompt": req["prompt"], "max_tokens": req["max_tokens"], "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    start = time.perf_counter()
    first = usage = None
    try:
        async with client.stream("POST", "/v1/completions", json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")[:200]
                return {"ok": False, "error": f"HTTP {response.status_code}: {body}", **_where(req)}
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                data = json.loads(line[5:])
                if "error" in data:
                    return {"ok": False, "error": str(data["error"])[:200], **_where(req)}
                if data.get("usage"):
                    usage = data["usage"]
                if first is None and any(c.get("text") for c in data.get("choices") or []):
                    first = time.perf_counter()
    except httpx.HTTPError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", **_where(req)}
    end = time.perf_counter()
    if first is None or usage is None:
        return {"ok": False, "error": "no text or no usage streamed", **_where(req)}
    tokens = usage["completion_tokens"]
    return {
        "ok": True,
        **_where(req),
        "ttft_s": first - start,
        "tpot_s": (end - first) / (tokens - 1) if tokens > 1 else 0.0,
        "tokens": tokens,
        "energy_j": usage["energy_j"],
        "carbon_g": usage["carbon_g"],
        "variant": usage.get("variant"),
    }


def _where(req: dict) -> dict:
    return {"at_s": req["at_s"], "hour": req["hour"]}


async def replay(url: str, trace: list[dict]) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(300.0), limits=limits) as client:
        start = time.perf_counter()

        async def at(req):
            delay = req["at_s"] - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            return await one(client, req)

        results = await asyncio.gather(*(at(r) for r in trace))
        return list(results), time.perf_counter() - start


def run_server(
    name: str, policy: Path, args, workdir: Path, db: str, trace: list[dict], day_s: float
) -> dict:
    log(f"{name}: starting")
    proc, url, ready = start_server(name, policy, args, workdir, db)
    # the static and dynamic parts, from outside: only the cpu-model has them
    split = EnergySplit(ready["pid"]) if ready["meter"] == "cpu-model" else None
    try:
        if split:
            split.start()
        before = httpx.get(url + "/energy", timeout=30).json()
        log(f"{name}: replaying {len(trace)} requests over {day_s:g} s")
        results, wall_s = asyncio.run(replay(url, trace))
        time.sleep(max(0.0, day_s - wall_s))  # the day's last quiet minutes cost what they cost
        after = httpx.get(url + "/energy", timeout=30).json()
        parts = split.stop() if split else None
        view = httpx.get(url + "/dashboard/data", timeout=30).json()
    finally:
        stopped = stop_server(proc)
    return {
        "ready": ready,
        "before": before,
        "after": after,
        "view": view,
        "results": results,
        "stopped": stopped,
        "energy_split": parts,
    }


# ---- figures ----------------------------------------------------------------------------------------------
def summarize(name: str, run: dict, slo: dict, ladder: dict) -> dict:
    results, before, after = run["results"], run["before"], run["after"]
    ok = [r for r in results if r["ok"]]
    good = [r for r in ok if r["ttft_s"] <= slo["ttft_s"] and r["tpot_s"] <= slo["tpot_s"]]
    tokens = sum(r["tokens"] for r in ok)
    kld_known = [r for r in ok if ladder.get(r["variant"], {}).get("kld") is not None]
    served_kld = (
        sum(r["tokens"] * ladder[r["variant"]]["kld"] for r in kld_known)
        / sum(r["tokens"] for r in kld_known)
        if kld_known
        else None
    )
    energy_j = after["meter_total_j"] - before["meter_total_j"]
    by_variant: dict[str, int] = {}
    for r in ok:
        by_variant[r["variant"]] = by_variant.get(r["variant"], 0) + r["tokens"]
    decisions = [d for d in run["view"]["decisions"]]
    split = run.get("energy_split")
    if split:  # how far the outside split's total lies from the server's own meter over the replay
        split = {**split, "gap_rel": split["total_j"] / energy_j - 1 if energy_j > 0 else None}
    return {
        "server": name,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r["error"] for r in results if not r["ok"]})[:5],
        "energy_j": energy_j,
        "energy_split": split,
        "requests_j": after["requests_j"] - before["requests_j"],
        "idle_j": after["idle_j"] - before["idle_j"],
        "load_j": (after.get("load_j") or 0) - (before.get("load_j") or 0),
        "carbon_g": after["carbon_g"] - before["carbon_g"],
        "output_tokens": tokens,
        "tokens_per_j": tokens / energy_j if energy_j > 0 else None,
        "slo_attainment": len(good) / len(results) if results else None,
        "ttft_p90_s": _pct([r["ttft_s"] for r in ok], 0.9),
        "tpot_p90_s": _pct([r["tpot_s"] for r in ok], 0.9),
        "mean_kld_served": served_kld,
        "tokens_by_variant": by_variant,
        "decisions": len(decisions),
        "decisions_by_reason": _count(d["reason"] for d in decisions),
        "reloads": [
            {"load_s": d.get("load_s"), "energy_j": d.get("energy_j")}
            for d in decisions
            if d["kind"] == "reload"
        ],
        "meter": after["meter"],
        "energy_source": after["energy_source"],
        "meter_total_basis": after.get("meter_total_basis"),
        "invariant_gap_rel": after["invariant_gap_rel"],
        "by_hour": _by_hour(results, run["view"]["samples"]),
    }


def _count(items) -> dict:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _by_hour(results: list[dict], samples: list[dict]) -> list[dict]:
    hours = []
    for h in range(24):
        rs = [r for r in results if r["hour"] == h]
        hours.append({"hour": h, "requests": len(rs), "errors": sum(not r["ok"] for r in rs)})
    return hours


def plot_day(report: dict, static_run: dict, adaptive_run: dict) -> str:
    fig = Figure(figsize=(10, 6.5))
    ax_rate, ax_power, ax_var = fig.subplots(3, 1, sharex=True, height_ratios=[1, 1.3, 0.7])
    day_s = report["day_s"]
    hour = day_s / 24
    counts = [sum(1 for r in static_run["results"] if r["hour"] == h) for h in range(24)]
    ax_rate.bar(range(24), counts, width=0.9, align="edge", color="#9bb8a6", label="requests per hour")
    ax_rate.set_ylabel("requests")
    grid_ax = ax_rate.twinx()
    grid_ax.step(
        range(25), GRID_G_PER_KWH + GRID_G_PER_KWH[-1:], where="post", color="#b3304f", label="grid g/kWh"
    )
    grid_ax.set_ylabel("g CO2e/kWh")
    ax_rate.set_title(
        "A compressed day: load and grid intensity; power of each server; the adaptive server's state"
    )
    for name, run, color in (("static", static_run, "#c2571a"), ("adaptive", adaptive_run, "#1f7a4a")):
        samples = [p for p in run["view"]["samples"] if p["t_s"] >= 0]
        if samples:
            t0 = samples[0]["time_unix"]
            start = run["view"]["samples"][0]["time_unix"] if run["view"]["samples"] else t0
            ax_power.plot([(p["time_unix"] - start) / hour for p in samples], [p["power_w"] for p in samples],
                          color=color, label=f"{name} power (W)", lw=0.9)  # fmt: skip
    ax_power.set_ylabel("W (meter)")
    ax_power.legend(loc="upper left", fontsize=8)
    samples = adaptive_run["view"]["samples"]
    if samples:
        start = samples[0]["time_unix"]
        names = sorted({p["variant"] for p in samples})
        ys = [names.index(p["variant"]) if p["loaded"] else -1 for p in samples]
        ax_var.step([(p["time_unix"] - start) / hour for p in samples], ys, where="post", color="#2f5fb3")
        ax_var.set_yticks(range(-1, len(names)), ["unloaded", *names], fontsize=7)
        cores = ax_var.twinx()
        cores.step([(p["time_unix"] - start) / hour for p in samples], [p["cores"] for p in samples], where="post",
                   color="#555", lw=0.8, ls="--")  # fmt: skip
        cores.set_ylabel("cores", fontsize=8)
    ax_var.set_xlabel("hour of the compressed day")
    ax_var.set_xlim(0, 24)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()


def write_grid(path: Path) -> None:
    rows = [f"2025-06-01T{h:02d}:00:00Z,{v}" for h, v in enumerate(GRID_G_PER_KWH)]
    path.write_text("timestamp,g_per_kwh\n" + "\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="small ladder build and a 2-minute day (a smoke run)"
    )
    ap.add_argument(
        "--day-s", type=float, default=None, help="seconds the 24 hours take (default 720; quick 120)"
    )
    ap.add_argument(
        "--peak-rps",
        type=float,
        default=None,
        help="requests/s at the busiest hour (default: 0.35 of the static variant's measured decode speed)",
    )
    ap.add_argument(
        "--max-kld", type=float, default=0.05, help="the quality budget (token-weighted mean KLD)"
    )
    ap.add_argument("--slo-ttft", type=float, default=2.0, help="SLO: seconds to the first token")
    ap.add_argument(
        "--slo-tpot", type=float, default=0.2, help="SLO: seconds per output token after the first"
    )
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--meter", default="cpu-model")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--cache", default=None, help="where the ladder search is kept (default: greenlm's cache)"
    )
    ap.add_argument("--rebuild", action="store_true", help="measure the ladder again")
    ap.add_argument("--json", action="store_true", help="JSON on stdout (always printed; kept for symmetry)")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    ap.add_argument(
        "--out", default=None, help="where the JSON goes (default bench/results/adapt_trace.json)"
    )
    args = ap.parse_args()
    day_s = args.day_s or (120.0 if args.quick else 720.0)
    rec = Recorder("adapt_trace")
    try:
        db, search_id, summary = build_ladder(args)
        with Store(db) as store:
            ladder = ladder_from_search(store, search_id)
    except GreenlmError as exc:
        raise SystemExit(f"error: {exc}") from None
    figures = {v.name: v.to_dict() for v in ladder}
    static = ladder.cheapest(args.max_kld)
    if static is None:
        raise SystemExit(f"error: no front member is inside the budget {args.max_kld}: {list(figures)}")
    outside = [v.name for v in ladder if not v.inside(args.max_kld)]
    log(
        f"ladder: {', '.join(f'{v.name} (KLD {v.kld:.4f}, {v.decode_j_per_token:.4g} J/token)' for v in ladder)}"
    )
    log(
        f"static server: {static.name} on {static.threads or 'default'} thread(s); outside the budget: {outside}"
    )
    peak = args.peak_rps or peak_rps_for(static, PEAK_LOAD, OUTPUT_TOKENS)
    log(f"peak rate: {peak:.3g} requests/s")
    trace = make_trace(day_s, peak, args.seed, prompts_from_docs(), OUTPUT_TOKENS)
    hour_s = day_s / 24
    slo = {"ttft_s": args.slo_ttft, "tpot_s": args.slo_tpot}
    with tempfile.TemporaryDirectory(prefix="greenlm-adapt-") as scratch:
        work = Path(scratch)
        write_grid(work / "grid.csv")
        speed = 86400 / day_s
        grid = f"grid: {{csv: {work / 'grid.csv'}, speed: {speed:g}}}\n"
        # on the threads it was measured with: the engine's default (all cores) when the search left them open
        threads = f"threads: {static.threads}, " if static.threads else ""
        variant = (
            f"  - {{name: {static.name}, model: {static.model}, engine: {static.engine}, {threads}"
            f"kld: {static.kld}, decode_j_per_token: {static.decode_j_per_token}}}\n"
        )
        (work / "static.yaml").write_text(f"ladder:\n{variant}load: false\n" + grid)
        (work / "adaptive.yaml").write_text(
            f"ladder_from_search: {search_id}\n"
            f"quality: {{max_kld: {args.max_kld}, window_tokens: 100000, margin: 0.1}}\n" + grid
            + "carbon: {high_g_per_kwh: 450, low_g_per_kwh: 250}\n"
            f"load: {{ttft_slo_s: {args.slo_ttft / 2:g}, queue_slo_s: {args.slo_ttft / 4:g}, sustain_s: 1.5, "
            f"calm_s: {max(5.0, hour_s / 2):g}, recent_s: {max(3.0, hour_s / 4):g}}}\n"
            f"idle: {{unload_after_s: {max(5.0, hour_s):g}, low_load_after_s: {max(2.0, hour_s / 6):g}, low_load_cores: 1}}\n"
            "interval_s: 0.5\n"
        )  # fmt: skip
        static_run = run_server("static", work / "static.yaml", args, work, db, trace, day_s)
        adaptive_run = run_server("adaptive", work / "adaptive.yaml", args, work, db, trace, day_s)
    s = summarize("static", static_run, slo, figures)
    a = summarize("adaptive", adaptive_run, slo, figures)
    report = {
        "day_s": day_s,
        "peak_rps": peak,
        "requests": len(trace),
        "slo": slo,
        "max_kld": args.max_kld,
        "grid_g_per_kwh": GRID_G_PER_KWH,
        "rate_by_hour": RATE,
        "bursts": BURSTS,
        "ladder": ladder.to_list(args.max_kld),
        "search_id": search_id,
        "ladder_store": db,
        "static_variant": static.name,
        "static": s,
        "adaptive": a,
        "adaptive_decisions": adaptive_run["view"]["decisions"],
        "carbon_change": a["carbon_g"] / s["carbon_g"] - 1 if s["carbon_g"] else None,
        "energy_change": a["energy_j"] / s["energy_j"] - 1 if s["energy_j"] else None,
        # the saving as charged, without the static charge of the cores the adaptive server released, and
        # the dynamic part alone (None unless both servers ran the cpu-model meter)
        "energy_split_change": energy_split_change(s, a),
        "targets": {
            "carbon_at_least_25pct_lower": bool(s["carbon_g"] and a["carbon_g"] <= 0.75 * s["carbon_g"]),
            "slo_no_lower": bool(
                a["slo_attainment"] is not None and a["slo_attainment"] >= (s["slo_attainment"] or 0)
            ),
            "kld_within_budget": bool(
                a["mean_kld_served"] is not None and a["mean_kld_served"] <= args.max_kld
            ),
            "zero_errors": s["errors"] == 0 and a["errors"] == 0,
        },
        "notes": [
            "energy: each server's own meter over the replay (cpu-model: static power of the cores in its CPU "
            "affinity every second, dynamic power per busy core-second, memory by RSS): estimated, not measured",
            "the adaptive server's saving in quiet hours comes partly from holding one core instead of two (its "
            "affinity mask); the cpu-model charges static power per allotted core, so that saving is real only "
            "where the freed core idles deeper or serves other work: energy_split_change states the saving "
            "without that charge too",
            "energy_split: the same cpu-model formula applied to each server's process from outside in "
            f"{SPLIT_INTERVAL_S:g} s windows, static (allotted cores), dynamic (busy core-seconds) and memory "
            "kept apart; its total lies within gap_rel of the server's own meter",
            "static and adaptive ran one after the other on the same machine; other load on it changes both",
        ],
    }
    if args.quick and not args.out:
        args.out = str(Path(tempfile.gettempdir()) / "adapt_trace.quick.json")
    target = rec.finish(report, out=args.out)
    svg = plot_day(report, static_run, adaptive_run)
    write_text_atomic(target.with_suffix(".svg"), svg[svg.index("<svg") :])
    log(f"plot: {target.with_suffix('.svg')}")
    table = adapt_trace_markdown(report)
    log(table)
    if args.markdown:
        write_text_atomic(Path(args.markdown), table)


if __name__ == "__main__":
    main()
