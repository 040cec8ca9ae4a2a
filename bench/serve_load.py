"""Load levels against `greenlm serve` and llama-cpp-python's own OpenAI server, same GGUF, same threads, one run.

Both servers run the built-in model's GGUF (SmolLM2-135M-Instruct Q4_1) on llama.cpp with the same thread
count, context and flash-attention setting; the peer is configured as a careful user would (logits for the
last token only, requests queued rather than interrupting each other). Each is driven over HTTP by the same
async client (httpx, streaming completions, greedy, end-of-text suppressed so every request generates
exactly --max-tokens tokens) at closed-loop concurrency 1, 2, 4, 8 (c clients sending back to back) and at
one Poisson open-loop rate. Per level: output tokens/s, TTFT, TPOT and end-to-end p50/p90/p99, errors; for
greenlm, tokens per joule, joules per request and idle energy from its /metrics, and the energy invariant
(per-request + idle vs the meter's total) over the whole run. With the cpu-model meter, both servers'
processes are also estimated by the same formula from outside (`external_*`), so the two compare per joule.
`greenlm measure --engine llamacpp` runs on the same file and threads in the same run (decode tok/s target).

    .venv/bin/python bench/serve_load.py --markdown serve_load.md   # about 10 minutes; JSON in bench/results/serve_load.json
    .venv/bin/python bench/serve_load.py --quick                                     # smoke run, 2-3 minutes

Writes the result to bench/results/serve_load.json (--quick: a temporary file, unless --out says otherwise).
Run it on an otherwise idle machine: llama.cpp's threads wait for each other, so other work slows every row.
Targets (issue 9): greenlm tokens/J at concurrency 8 >= 2.5x its own at 1; greenlm output tok/s at 8 >= 2x
the peer's at 8; greenlm decode tok/s at 1 within 15% of `measure`; invariant gap < 0.1%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from benchlib import Recorder, log
from prometheus_client.parser import text_string_to_metric_families

from greenlm.data import load_text, split_text
from greenlm.energy.cpu_model import CpuModelMeter
from greenlm.energy.settings import EnergySettings
from greenlm.engines.llamacpp_engine import EXTRA_BUFFERS_ENV, default_threads
from greenlm.models import DEFAULT_MODEL, resolve_model
from greenlm.workload import MeasureConfig, run_measure

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "serve_load.json"
EOG_TOKENS = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>: the peer's way to ignore EOS
PROMPT_CHARS = 400  # about 100 tokens of documentation text per prompt
START_TIMEOUT_S = 300


# ---- servers ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A server subprocess with its stderr in a file; stopped with SIGTERM, then killed if it hangs."""

    def __init__(self, name: str, args: list[str], workdir: Path):
        self.name = name
        self.err_path = workdir / f"{name}.stderr.txt"
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self.err_path.open("w"),
            text=True,
            cwd=ROOT,
            env=os.environ.copy(),
        )
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


def start_greenlm(args, workdir: Path) -> tuple[Proc, str, dict]:
    cmd = [
        sys.executable, "-m", "greenlm", "serve", "--json", "--port", "0", "--threads", str(args.threads),
        "--max-batch", str(args.max_batch), "--meter", args.meter, "--context", "2048",
    ]  # fmt: skip
    proc = Proc("greenlm", cmd, workdir)
    record = proc.wait_ready(START_TIMEOUT_S)
    return proc, record["url"], record


# llama-cpp-python's server has no flag for llama.cpp's extra buffer types (weights repacked for AMX at load),
# which crash llama_decode on this project's Xeon VM (see EXTRA_BUFFERS_ENV in greenlm's llama.cpp engine);
# greenlm runs with them off, so the peer is started with them off too, through this launcher.
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


def start_peer(args, gguf: Path, workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    launcher = (
        ["-c", PEER_LAUNCHER] if os.environ.get(EXTRA_BUFFERS_ENV, "0") != "1" else ["-m", "llama_cpp.server"]
    )
    cmd = [
        sys.executable, *launcher, "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "2048",
        "--flash_attn", "False", "--logits_all", "False", "--interrupt_requests", "False", "--verbose", "False",
    ]  # fmt: skip
    proc = Proc("llama-cpp-python", cmd, workdir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            proc.fail("exited before it was ready (is the `server` extra installed?)")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.fail("was not ready in time")


class ProcessEnergy:
    """The cpu-model meter's formula applied to another process (its CPU seconds and memory), from outside."""

    def __init__(self, pid: int):
        self.meter = CpuModelMeter(pid=pid)

    def read(self):
        return self.meter.read()

    def joules(self, start, end) -> float:
        return self.meter.measure(start, end).total_j


# ---- load -------------------------------------------------------------------------------------------------
async def one_request(client: httpx.AsyncClient, payload: dict, max_tokens: int) -> dict:
    start = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    finish = None
    try:
        async with client.stream("POST", "/v1/completions", json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")[:200]
                return {"ok": False, "error": f"HTTP {response.status_code}: {body}"}
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                data = json.loads(line[5:])
                if "error" in data:
                    return {"ok": False, "error": str(data["error"])[:200]}
                if data.get("usage"):
                    usage = data["usage"]
                for choice in data.get("choices") or []:
                    if choice.get("text"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter()
                    finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    end = time.perf_counter()
    if usage:
        tokens = usage["completion_tokens"]
    elif finish == "length":
        tokens = max_tokens  # generation ran to max_tokens: exactly that many tokens
    else:
        tokens = chunks  # one streamed chunk per token (an approximation, flagged by finish_reason)
    if first is None:
        return {"ok": False, "error": "no text streamed"}
    return {
        "ok": True,
        "ttft_s": first - start,
        "e2e_s": end - start,
        "tokens": tokens,
        "tpot_s": (end - first) / (tokens - 1) if tokens > 1 else None,
        "finish_reason": finish,
        "energy_j": usage.get("energy_j") if usage else None,
    }


async def closed_loop(
    url: str, payloads: list[dict], concurrency: int, max_tokens: int
) -> tuple[list, float]:
    todo = list(payloads)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def worker():
            while todo:
                results.append(await one_request(client, todo.pop(0), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - start


async def open_loop(
    url: str, payloads: list[dict], rate: float, seed: int, max_tokens: int
) -> tuple[list, float]:
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in payloads:
        t += rng.expovariate(rate)
        arrivals.append(t)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=httpx.Limits()) as client:
        start = time.perf_counter()

        async def at(delay: float, payload: dict):
            await asyncio.sleep(max(0.0, start + delay - time.perf_counter()))
            return await one_request(client, payload, max_tokens)

        results = await asyncio.gather(*(at(d, p) for d, p in zip(arrivals, payloads, strict=True)))
        return list(results), time.perf_counter() - start


def percentiles(values: list[float]) -> dict:
    values = sorted(v for v in values if v is not None)
    if not values:
        return {"p50": None, "p90": None, "p99": None}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    return {"p50": statistics.median(values), "p90": pick(0.9), "p99": pick(0.99)}


def summarize(results: list[dict], wall_s: float) -> dict:
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_examples": sorted({r["error"] for r in results if not r["ok"]})[:3],
        "wall_s": wall_s,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall_s if wall_s > 0 else None,
        "ttft_s": percentiles([r["ttft_s"] for r in ok]),
        "tpot_s": percentiles([r["tpot_s"] for r in ok]),
        "e2e_s": percentiles([r["e2e_s"] for r in ok]),
        "decode_tokens_per_s_median": (1 / percentiles([r["tpot_s"] for r in ok])["p50"]) if ok else None,
    }


# ---- greenlm's own figures --------------------------------------------------------------------------------
def scrape(url: str) -> dict:
    values: dict = {"energy": {}, "success": 0.0}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for s in family.samples:
            if s.name == "greenlm:energy_joules_total":
                values["energy"][s.labels["phase"]] = s.value
            elif s.name == "greenlm:generation_tokens_total":
                values["tokens"] = s.value
            elif s.name == "greenlm:request_success_total":
                values["success"] += s.value
            elif s.name == "greenlm:meter_energy_joules_total":
                values["meter_total_j"] = s.value
    return values


def server_side(before: dict, after: dict) -> dict:
    energy = {p: after["energy"][p] - before["energy"].get(p, 0.0) for p in after["energy"]}
    requests_j = energy["prefill"] + energy["decode"]
    total_j = requests_j + energy["idle"]
    tokens = after["tokens"] - before["tokens"]
    requests = after["success"] - before["success"]
    return {
        "energy_j": total_j,
        "requests_energy_j": requests_j,
        "idle_j": energy["idle"],
        "tokens_per_j": tokens / total_j if total_j > 0 else None,
        "j_per_request": requests_j / requests if requests else None,
        "generated_tokens": tokens,
    }


# ---- one server through every level -------------------------------------------------------------------------
def run_levels(
    name: str, url: str, payload, args, prompts: list[str], pid: int, own_metrics: bool, estimate: bool
) -> list[dict]:
    """Every level against one server. `estimate`: also apply the cpu-model formula to its process."""
    external = ProcessEnergy(pid) if estimate else None
    asyncio.run(closed_loop(url, [payload(prompts[0])], 1, args.max_tokens))  # warm-up, not counted
    levels: list[tuple[str, object]] = [(f"c{c}", c) for c in args.levels] + [("poisson", args.rate)]
    rows = []
    for index, (label, setting) in enumerate(levels):
        count = args.requests * (setting if isinstance(setting, int) and setting > 1 else 1)
        if label == "poisson":
            count = args.poisson_requests
        offset = index * 7
        payloads = [payload(prompts[(offset + i) % len(prompts)]) for i in range(count)]
        before = scrape(url) if own_metrics else None
        ext_start = external.read() if external else None
        if label == "poisson":
            results, wall = asyncio.run(open_loop(url, payloads, setting, 1234, args.max_tokens))
        else:
            results, wall = asyncio.run(closed_loop(url, payloads, setting, args.max_tokens))
        row = {"server": name, "level": label, "concurrency": setting if label != "poisson" else None}
        if label == "poisson":
            row["rate_per_s"] = setting
        row.update(summarize(results, wall))
        if external:
            joules = external.joules(ext_start, external.read())
            row["external_energy_j"] = joules
            row["external_tokens_per_j"] = row["output_tokens"] / joules if joules > 0 else None
        if own_metrics:
            row["server_side"] = server_side(before, scrape(url))
        rows.append(row)
        extra = f", {fmt(row['server_side']['tokens_per_j'])} tok/J" if own_metrics else ""
        log(
            f"{name} {label}: {fmt(row['output_tokens_per_s'])} tok/s, TTFT p50 {fmt(row['ttft_s']['p50'])} s, "
            f"errors {row['errors']} {row['error_examples']}{extra}"
        )
    return rows


# ---- the report -------------------------------------------------------------------------------------------
def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown(report: dict) -> str:
    lines = [
        "| server | level | out tok/s | TTFT p50 / p90 / p99 (s) | TPOT p50 / p90 / p99 (s) | e2e p50 / p90 / p99 (s) "
        "| errors | tokens/J | J/request | idle J | tokens/J, process estimate |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        side = r.get("server_side") or {}
        lines.append(
            f"| {r['server']} | {r['level']} | {fmt(r['output_tokens_per_s'])} | "
            + " / ".join(fmt(r["ttft_s"][q]) for q in ("p50", "p90", "p99"))
            + " | "
            + " / ".join(fmt(r["tpot_s"][q]) for q in ("p50", "p90", "p99"))
            + " | "
            + " / ".join(fmt(r["e2e_s"][q]) for q in ("p50", "p90", "p99"))
            + f" | {r['errors']} | {fmt(side.get('tokens_per_j'))} | {fmt(side.get('j_per_request'))} | "
            f"{fmt(side.get('idle_j'))} | {fmt(r.get('external_tokens_per_j'))} |"
        )
    t = report["targets"]
    lines += [
        "",
        f"{report['workload']['requests_note']}; {report['model']} ({report['gguf_name']}), {report['threads']} threads, "
        f"energy meter {report['meter']} ({report['energy_source']}); {report['machine']['cpu']}, "
        f"{report['machine']['cpus_allowed']} CPUs, load average {report['load_average_1m']['start']:.2f} -> "
        f"{report['load_average_1m']['end']:.2f}; commit {(report['machine']['commit'] or 'unknown')[:10]}.",
        "",
        f"- tokens/J at concurrency {t['tokens_per_j_ratio']['high']} vs 1: {fmt(t['tokens_per_j_ratio']['value'])}x "
        f"(target >= 2.5x: {t['tokens_per_j_ratio']['met']})",
        f"- output tok/s vs llama-cpp-python at concurrency {t['throughput_vs_peer']['concurrency']}: "
        f"{fmt(t['throughput_vs_peer']['value'])}x (target >= 2x: {t['throughput_vs_peer']['met']})",
        f"- decode tok/s at concurrency 1 vs `greenlm measure --engine llamacpp` ({fmt(t['decode_vs_measure']['measure'])}"
        f" tok/s): {fmt(t['decode_vs_measure']['value'])} (target within 15%: {t['decode_vs_measure']['met']})",
        f"- energy invariant over the run: gap {fmt(t['invariant']['gap_rel'])} of the meter total "
        f"(target < 0.1%: {t['invariant']['met']})",
        "",
        "tokens/J, J/request, idle J: greenlm's own /metrics (generated tokens over all energy in the level, idle "
        "included). Process estimate: the cpu-model formula applied from outside to each server's process "
        "(CPU seconds x W per core + memory), the same for both servers; absent unless greenlm's meter is cpu-model.",
    ]
    return "\n".join(lines)


def _load(rec: Recorder) -> dict:
    return {"start": rec.load_start, "end": os.getloadavg()[0]}


def ratio(a, b):
    return a / b if a is not None and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: two levels, few short requests")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--levels", default="1,2,4,8", help="closed-loop concurrencies")
    ap.add_argument("--requests", type=int, default=8, help="requests per client at each closed-loop level")
    ap.add_argument("--rate", type=float, default=1.0, help="Poisson open-loop arrivals per second")
    ap.add_argument("--poisson-requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--markdown", help="also write the markdown table here")
    ap.add_argument("--out", help=f"where the JSON result goes (default {RESULT.relative_to(ROOT)})")
    ap.add_argument("--no-peer", action="store_true", help="skip llama-cpp-python's server")
    args = ap.parse_args()
    args.levels = [int(c) for c in args.levels.split(",")]
    if args.quick:
        args.levels, args.requests, args.max_tokens = [1, 4], 2, 16
        args.poisson_requests, args.rate = 4, 2.0
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.gettempdir()) / "serve_load.quick.json" if args.quick else RESULT)
    )

    rec = Recorder("serve_load")
    started = time.perf_counter()
    spec = resolve_model(DEFAULT_MODEL)
    split = split_text(load_text(None))
    text = split.text("evaluation")
    prompts = [text[i : i + PROMPT_CHARS] for i in range(0, min(len(text), PROMPT_CHARS * 64), PROMPT_CHARS)]
    workdir = Path(tempfile.mkdtemp(prefix="greenlm-serve-load-"))

    log(f"greenlm measure --engine llamacpp --threads {args.threads} (decode tok/s reference)")
    measured = run_measure(
        MeasureConfig(
            engine="llamacpp",
            threads=args.threads,
            max_new_tokens=args.max_tokens,
            batch_size=1,
            num_prompts=4,
            prompt_tokens=100,
            repeats=3,
            energy=EnergySettings(meter=args.meter),
        )  # fmt: skip
    )

    def greenlm_payload(prompt: str) -> dict:
        return {
            "model": DEFAULT_MODEL, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
        }  # fmt: skip

    def peer_payload(prompt: str) -> dict:
        return {
            "model": DEFAULT_MODEL, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
            "stream": True, "logit_bias": EOG_TOKENS,
        }  # fmt: skip

    rows: list[dict] = []
    log("starting greenlm serve")
    proc, url, ready = start_greenlm(args, workdir)
    try:
        external = ready["meter"] == "cpu-model"
        rows += run_levels("greenlm", url, greenlm_payload, args, prompts, proc.proc.pid, True, external)
        energy = httpx.get(url + "/energy", timeout=30).json()
    finally:
        code = proc.stop()
    if code != 0:
        log(f"note: greenlm serve exited with {code} on SIGTERM")
    if not args.no_peer:
        log("starting llama-cpp-python's server")
        peer, peer_url = start_peer(args, spec.path, workdir)
        try:
            rows += run_levels(
                "llama-cpp-python", peer_url, peer_payload, args, prompts, peer.proc.pid, False, external
            )
        finally:
            peer.stop()

    def row(server: str, level: str) -> dict | None:
        return next((r for r in rows if r["server"] == server and r["level"] == level), None)

    high = max(args.levels)
    g1, gh, ph = row("greenlm", "c1"), row("greenlm", f"c{high}"), row("llama-cpp-python", f"c{high}")
    tpj = ratio(gh and gh["server_side"]["tokens_per_j"], g1 and g1["server_side"]["tokens_per_j"])
    vs_peer = ratio(gh and gh["output_tokens_per_s"], ph and ph["output_tokens_per_s"])
    serve_decode = g1["decode_tokens_per_s_median"] if g1 else None
    measure_decode = measured.summary()["decode_tokens_per_s"]["median"]
    vs_measure = ratio(serve_decode, measure_decode)
    gap = energy["invariant_gap_rel"]
    report = {
        "benchmark": "serve_load",
        "quick": args.quick,
        "model": spec.name,
        "gguf_name": spec.path.name,
        "threads": args.threads,
        "meter": energy["meter"],
        "energy_source": energy["energy_source"],
        "workload": {
            "text": split.describe("evaluation"),
            "prompt_chars": PROMPT_CHARS,
            "max_tokens": args.max_tokens,
            "levels": args.levels,
            "requests_per_client": args.requests,
            "poisson": {"rate_per_s": args.rate, "requests": args.poisson_requests, "seed": 1234},
            "requests_note": (
                f"closed loop: c clients x {args.requests} requests each (c=1: {args.requests}); Poisson: "
                f"{args.poisson_requests} requests at {args.rate:g}/s; completions of ~{PROMPT_CHARS} characters of "
                f"builtin:pydoc-topics/evaluation, greedy, {args.max_tokens} tokens each (end-of-text suppressed)"
            ),
            "greenlm": {
                "max_batch": args.max_batch,
                "startup": {k: ready.get(k) for k in ("stepper", "warmup")},
            },
            "peer": "llama-cpp-python server: --logits_all False --interrupt_requests False --flash_attn False, "
            "same --n_threads/--n_threads_batch and n_ctx 2048, llama.cpp extra buffer types off as in greenlm "
            f"(unless {EXTRA_BUFFERS_ENV}=1)",
        },
        "measure": {
            "decode_tokens_per_s": measure_decode,
            "decode_tokens_per_s_spread": measured.summary()["decode_tokens_per_s"],
            "meter": measured.meter,
            "engine": measured.engine,
            "threads": measured.threads,
        },
        "rows": rows,
        "energy_account": energy,
        "targets": {
            "tokens_per_j_ratio": {"high": high, "value": tpj, "met": tpj is not None and tpj >= 2.5},
            "throughput_vs_peer": {
                "concurrency": high,
                "value": vs_peer,
                "met": vs_peer is not None and vs_peer >= 2,
            },
            "decode_vs_measure": {
                "serve": serve_decode,
                "measure": measure_decode,
                "value": vs_measure,
                "met": vs_measure is not None and abs(vs_measure - 1) <= 0.15,
            },
            "invariant": {"gap_rel": gap, "met": gap < 1e-3},
        },
        "wall_s": time.perf_counter() - started,
    }
    # the table states the machine, load and commit: the same record finish() stores
    report["markdown"] = markdown({**report, "machine": rec.machine, "load_average_1m": _load(rec)})
    if args.markdown:
        Path(args.markdown).write_text(report["markdown"] + "\n")
    log(report["markdown"])
    rec.finish(report, out=out)


if __name__ == "__main__":
    main()
