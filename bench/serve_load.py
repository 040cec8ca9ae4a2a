"""greenlm serve against llama.cpp's own llama-server and llama-cpp-python's server, load from GuideLLM, one run.

The three servers run the built-in GGUF (SmolLM2-135M-Instruct Q4_1) on the same llama.cpp source (llama-server
is compiled from the source the installed llama-cpp-python wheel was built from; see bench/peers.py), with the
same threads, slots, context per slot and flash attention (off). The load is GuideLLM 0.8.1, a tool vLLM's users
know, in a venv of its own: closed-loop concurrency 1, 4 and 8 and a Poisson rate on text completions (128
prompt tokens, 64 output tokens, end-of-text ignored, each server's default sampling: GuideLLM sends no
temperature), and a chat workload whose prompts share a 400-token system prompt (prefix reuse). Levels are
interleaved: every level runs on every server before the next level starts.

Energy for every server comes from one formula applied from outside: greenlm's cpu-model meter on the server's
process (static power of its allotted cores x wall seconds + dynamic power x busy core-seconds + memory),
sampled every 0.2 s and taken over GuideLLM's own start and end of each benchmark. greenlm's own /metrics
(its per-request split of the same formula, read inside) is reported beside it.

Also measured in the same run: `greenlm measure --engine llamacpp` (decode tok/s, same file and threads, in a
fresh process), llama.cpp's own batched decode (`llama-batched-bench`, 1..8 sequences: the ceiling a server on
this file and these threads can reach), and greenlm with `--no-prefix-cache` on the chat workload, with a greedy
check that prefix reuse changes no output.

    .venv/bin/python bench/serve_load.py           # about 25 minutes once the peers are built (bench/peers.py)
    .venv/bin/python bench/serve_load.py --quick   # a smoke run

Writes bench/results/serve_load.json (--quick: a temporary file, unless --out says otherwise). Run it on an
otherwise idle machine: llama.cpp's threads wait for each other, so any other work slows every row.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from benchlib import Recorder, log
from peers import guidellm, llama_build_info, llama_tools
from prometheus_client.parser import text_string_to_metric_families
from servers import CpuSampler, start_greenlm, start_llama_cpp_python, start_llama_server

from greenlm.data import load_text, split_text
from greenlm.engines.llamacpp_engine import default_threads
from greenlm.models import DEFAULT_MODEL, resolve_model

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "serve_load.json"
GREENLM, LLAMA_SERVER, LCP = "greenlm", "llama-server", "llama-cpp-python"
NO_CACHE = "greenlm --no-prefix-cache"
SYSTEM_PROMPT_TOKENS = 400


@dataclass(frozen=True)
class Level:
    name: str
    profile: str  # GuideLLM --profile
    requests: int
    prompt_tokens: int = 128
    output_tokens: int = 64
    prefix_tokens: int = 0  # a shared prefix (GuideLLM's synthetic prefix bucket): a system prompt
    chat: bool = False
    servers: tuple[str, ...] = (GREENLM, LLAMA_SERVER, LCP)
    extra_servers: tuple[str, ...] = field(default=())

    def data(self) -> str:
        spec = f"kind=synthetic_text,prompt_tokens={self.prompt_tokens},output_tokens={self.output_tokens}"
        if self.prefix_tokens:
            spec += f",prefix_tokens={self.prefix_tokens},prefix_count=1"
        return spec


def levels(args) -> list[Level]:
    n = args.requests
    return [
        Level("c1", "kind=concurrent,streams=1", max(4, n // 2)),
        Level("c4", "kind=concurrent,streams=4", n),
        Level("c8", "kind=concurrent,streams=8", n),
        Level(f"poisson {args.rate:g}/s", f"kind=poisson,rate={args.rate}", n),
        Level(
            "chat, shared system prompt, c4",
            "kind=concurrent,streams=4",
            n,
            prompt_tokens=64,
            output_tokens=32,
            prefix_tokens=SYSTEM_PROMPT_TOKENS,
            chat=True,
            extra_servers=(NO_CACHE,),
        ),
    ]


# ---- GuideLLM ---------------------------------------------------------------------------------------------
def run_guidellm(tool: Path, url: str, model: str, level: Level, tokenizer: Path, out: Path) -> dict:
    fmt = "/v1/chat/completions" if level.chat else "/v1/completions"
    cmd = [
        str(tool), "run",
        "--backend", f"kind=openai_http,target={url},model={model},request_format={fmt},stream=true,validate_backend=false",
        "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
        "--data", level.data(),
        # a seed of the level's own: GuideLLM's default (42) sends every level the same prompts, which a server
        # that keeps earlier prompts' KV (llama-server's --cache-ram) answers from its cache at the next level
        "--seed", f"kind=static,value={zlib.crc32(level.name.encode())}",
        "--profile", level.profile,
        "--constraint", f"kind=max_requests,count={level.requests}",
        "--output", f"kind=json,path={out}",
        "--disable-console",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"guidellm failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    bench = json.loads(out.read_text())["benchmarks"][0]
    m = bench["metrics"]

    def pct(name: str) -> dict:
        s = m[name]["successful"]
        return {"p50": s["percentiles"]["p50"], "p99": s["percentiles"]["p99"], "mean": s["mean"]}

    ok = bench["requests"]["successful"]
    output_tokens = sum(r["output_tokens"] or 0 for r in ok)
    duration = bench["duration"]
    return {
        "start_time": bench["start_time"],
        "end_time": bench["end_time"],
        "duration_s": duration,
        "requests": len(ok),
        "errors": len(bench["requests"]["errored"]) + len(bench["requests"]["incomplete"]),
        "output_tokens": output_tokens,
        "prompt_tokens": sum(r["prompt_tokens"] or 0 for r in ok),
        "output_tokens_per_s": output_tokens / duration if duration > 0 else None,
        "ttft_ms": pct("time_to_first_token_ms"),
        "itl_ms": pct("inter_token_latency_ms"),
        "error_examples": sorted({str(r["info"].get("error"))[:160] for r in bench["requests"]["errored"]})[
            :3
        ],
    }


# ---- greenlm's own account ----------------------------------------------------------------------------------
def scrape(url: str) -> dict:
    values: dict = {"energy": {}, "success": 0.0}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for s in family.samples:
            if s.name == "greenlm:energy_joules_total":
                values["energy"][s.labels["phase"]] = s.value
            elif s.name == "greenlm:request_success_total":
                values["success"] += s.value
            elif s.name in (
                "greenlm:prefix_cache_hit_tokens_total",
                "greenlm:prefix_cache_queries_tokens_total",
                "greenlm:prefix_cache_energy_avoided_joules_total",
                "greenlm:generation_tokens_total",
            ):
                values[s.name.removeprefix("greenlm:").removesuffix("_total")] = s.value
    return values


def own_account(before: dict, after: dict) -> dict:
    energy = {p: after["energy"][p] - before["energy"].get(p, 0.0) for p in after["energy"]}
    requests = after["success"] - before["success"]
    diff = {k: after[k] - before.get(k, 0.0) for k in after if k not in ("energy", "success")}
    requests_j = energy["prefill"] + energy["decode"]
    return {
        "requests": requests,
        "requests_energy_j": requests_j,
        "prefill_j": energy["prefill"],
        "decode_j": energy["decode"],
        "prefill_j_per_request": energy["prefill"] / requests if requests else None,
        "j_per_output_token": requests_j / diff["generation_tokens"]
        if diff.get("generation_tokens")
        else None,
        "prefix_cache_hit_tokens": diff.get("prefix_cache_hit_tokens"),
        "prefix_cache_query_tokens": diff.get("prefix_cache_queries_tokens"),
        "prefix_cache_energy_avoided_j": diff.get("prefix_cache_energy_avoided_joules"),
    }


# ---- references: measure and the batched-decode ceiling -----------------------------------------------------
def measure_decode(args) -> dict:
    cmd = [
        sys.executable, "-m", "greenlm", "measure", "--engine", "llamacpp", "--threads", str(args.threads),
        "--prompt-tokens", "128", "--max-new-tokens", "64", "--num-prompts", "4", "--repeats", "3",
        "--meter", "cpu-model", "--json", "--db", str(Path(tempfile.mkdtemp()) / "measure.db"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"greenlm measure failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    return {
        "decode_tokens_per_s": result["decode_tokens_per_s"],  # median over repeats
        "decode_tokens_per_s_spread": result["spread"]["decode_tokens_per_s"],
        "engine": result.get("engine"),
        "threads": result.get("threads"),
        "command": " ".join(cmd[1:]),
    }


ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|" + r"\s*([\d.]+)\s*\|" * 6)


def batched_ceiling(binary: Path, gguf: Path, args) -> dict:
    """llama.cpp's own batched decode on this file and threads: B sequences of 128 prompt tokens, 64 generated
    each, one llama_decode per step over all of them. S_TG: generated tokens per second over all sequences."""
    npl = ",".join(str(c) for c in sorted({1, *args.levels_c}))
    cmd = [
        str(binary), "-m", str(gguf), "-c", str(args.slots * args.context), "-npp", "128", "-ntg", "64",
        "-npl", npl, "-t", str(args.threads), "-tb", str(args.threads), "-fa", "off", "-b", "2048", "-ub", "512",
        *(["--no-repack"] if os.environ.get("GREENLM_LLAMACPP_EXTRA_BUFFERS", "0") != "1" else []),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    rows = {}
    for line in done.stdout.splitlines():
        match = ROW.match(line)
        if match:
            pp, tg, b, n_kv, t_pp, s_pp, t_tg, s_tg, t, s = match.groups()
            rows[int(b)] = {"prefill_tokens_per_s": float(s_pp), "decode_tokens_per_s": float(s_tg),
                            "all_tokens_per_s": float(s),
                            # the same work as a server's request (128 prompt + 64 output tokens): output tokens
                            # over the time of both phases, the ceiling for a server's output tokens/s
                            "output_tokens_per_s_with_prompts": int(b) * int(tg) / float(t)}  # fmt: skip
    if not rows:
        raise SystemExit(
            f"llama-batched-bench printed no table (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    return {"by_sequences": rows, "command": " ".join(cmd)}


# ---- the greedy check of prefix reuse ----------------------------------------------------------------------
def greedy_outputs(url: str, model: str, system: str, questions: list[str], at_once: bool) -> list[dict]:
    def ask(question: str) -> dict:
        body = {
            "model": model, "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        }  # fmt: skip
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600).json()
        return {
            "text": r["choices"][0]["message"]["content"],
            "cached_tokens": r["usage"]["prompt_tokens_details"]["cached_tokens"],
            "prompt_tokens": r["usage"]["prompt_tokens"],
            "prefill_energy_j": r["usage"]["prefill_energy_j"],
        }

    if not at_once:
        return [ask(q) for q in questions]
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(ask, questions))


# ---- the run -----------------------------------------------------------------------------------------------
def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few requests per level")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--context", type=int, default=2048, help="tokens per slot")
    ap.add_argument("--requests", type=int, default=32, help="requests per level (c1: half)")
    ap.add_argument("--rate", type=float, default=0.5, help="Poisson arrivals per second")
    ap.add_argument(
        "--llama-server", type=Path, help="llama.cpp's llama-server (default: built once, cached)"
    )
    ap.add_argument(
        "--batched-bench", type=Path, help="llama.cpp's llama-batched-bench (default: built, cached)"
    )
    ap.add_argument("--guidellm", type=Path, help="the guidellm command (default: installed once, cached)")
    ap.add_argument("--out", help=f"where the JSON goes (default {RESULT.relative_to(ROOT)})")
    args = ap.parse_args()
    if args.quick:
        args.requests = 8
    args.levels_c = [1, 4, 8]
    out = (
        Path(args.out)
        if args.out
        else (Path(tempfile.gettempdir()) / "serve_load.quick.json" if args.quick else RESULT)
    )

    rec = Recorder("serve_load")
    started = time.perf_counter()
    tools = llama_tools() if not (args.llama_server and args.batched_bench) else {}
    server_bin = args.llama_server or tools["llama-server"]
    batched_bin = args.batched_bench or tools["llama-batched-bench"]
    load_tool = args.guidellm or guidellm()
    spec = resolve_model(DEFAULT_MODEL)
    gguf = spec.path
    workdir = Path(tempfile.mkdtemp(prefix="greenlm-serve-load-"))
    tokenizer = workdir / "tokenizer"
    from transformers import AutoTokenizer  # GuideLLM counts tokens with the model's own tokenizer

    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tokenizer)

    log("references: greenlm measure --engine llamacpp, llama-batched-bench")
    measured = measure_decode(args)
    ceiling = batched_ceiling(batched_bin, gguf, args)

    shape = {"threads": args.threads, "slots": args.slots, "context_per_slot": args.context}
    procs, urls, commands = {}, {}, {}
    try:
        procs[GREENLM], urls[GREENLM], ready = start_greenlm(workdir, **shape)
        commands[GREENLM] = " ".join(procs[GREENLM].args[1:])
        procs[NO_CACHE], urls[NO_CACHE], _ = start_greenlm(
            workdir, **shape, extra=("--no-prefix-cache",), name="greenlm-no-cache"
        )
        commands[NO_CACHE] = " ".join(procs[NO_CACHE].args[1:])
        procs[LLAMA_SERVER], urls[LLAMA_SERVER], cmd = start_llama_server(server_bin, gguf, workdir, **shape)
        commands[LLAMA_SERVER] = " ".join(cmd)
        procs[LCP], urls[LCP], cmd = start_llama_cpp_python(
            gguf, workdir, threads=args.threads, context_per_slot=args.context, model_alias=spec.name
        )
        commands[LCP] = " ".join(cmd[:1] + ["<launcher: extra buffers off>"] + cmd[3:])
        sampler = CpuSampler({name: p.pid for name, p in procs.items()})
        rows = run_levels(args, load_tool, tokenizer, spec.name, urls, sampler, workdir)
        greedy = check_greedy(urls, spec.name, split_text(load_text(None)).text("evaluation"))
        energy = httpx.get(urls[GREENLM] + "/energy", timeout=30).json()
        sampler.close()
    finally:
        for p in procs.values():
            p.stop()

    report = {
        "benchmark": "serve_load",
        "quick": args.quick,
        "model": spec.name,
        "gguf_name": gguf.name,
        **shape,
        "load_tool": f"GuideLLM (guidellm {load_tool})",
        "energy_formula": "cpu-model from outside: idle W per allotted core x cores x wall s + (busy - idle) W x "
        "busy core-s + memory; each server's own process, over GuideLLM's start and end of the benchmark",
        "servers": commands,
        "greenlm_startup": {
            k: ready.get(k) for k in ("stepper", "warmup", "prefix_cache", "meter", "energy_source")
        },
        "llama_cpp": llama_build_info(),
        "measure": measured,
        "ceiling": ceiling,
        "rows": rows,
        "greedy_check": greedy,
        "greenlm_energy_account": {
            k: energy.get(k) for k in ("invariant_gap_rel", "meter_total_j", "requests_j")
        },
        "wall_s": time.perf_counter() - started,
    }
    report["targets"] = targets(report)
    report["markdown"] = markdown(report)
    log(report["markdown"])
    rec.finish(report, out=out)


def file_name(label: str) -> str:
    """A label as a file name GuideLLM's `--output kind=json,path=...` can carry (no comma, space or slash)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_")


def run_levels(args, tool, tokenizer, model, urls, sampler, workdir) -> list[dict]:
    rows = []
    for name, url in urls.items():  # one short warm-up run each, not counted
        warm = Level("warm-up", "kind=concurrent,streams=1", 2, output_tokens=8)
        run_guidellm(tool, url, model, warm, tokenizer, workdir / f"warm-{file_name(name)}.json")
    for index, level in enumerate(levels(args)):
        servers = [s for s in (*level.servers, *level.extra_servers) if s in urls]
        servers = servers[index % len(servers) :] + servers[: index % len(servers)]  # rotate who goes first
        for server in servers:
            own = server in (GREENLM, NO_CACHE)
            before = scrape(urls[server]) if own else None
            path = workdir / f"{file_name(level.name)}-{file_name(server)}.json"
            row = {
                "server": server,
                "level": level.name,
                **run_guidellm(tool, urls[server], model, level, tokenizer, path),
            }
            row["energy"] = sampler.window(server, row["start_time"], row["end_time"])
            e = row["energy"]
            row["tokens_per_j"] = ratio(row["output_tokens"], e["energy_j"])
            row["tokens_per_cpu_s"] = ratio(row["output_tokens"], e["cpu_s"])
            if own:
                row["own_account"] = own_account(before, scrape(urls[server]))
            rows.append(row)
            log(
                f"{server} {level.name}: {fmt(row['output_tokens_per_s'])} tok/s, TTFT p50 {fmt(row['ttft_ms']['p50'])} "
                f"ms, ITL p50 {fmt(row['itl_ms']['p50'])} ms, {fmt(row['tokens_per_j'])} tok/J, errors {row['errors']}"
            )
    return rows


def check_greedy(urls: dict, model: str, text: str) -> dict:
    """Greedy chat answers with and without prefix reuse, one at a time and all at once: identical?"""
    system = text[: SYSTEM_PROMPT_TOKENS * 4]  # about 400 tokens of the documentation
    questions = [
        "Summarize this.", "What is the first topic?", "Name one keyword.", "Give an example.",
        "What is an exception?", "Explain a loop.", "What is a module?", "Define a class.",
    ]  # fmt: skip
    plain = greedy_outputs(urls[NO_CACHE], model, system, questions, at_once=False)
    reused = greedy_outputs(urls[GREENLM], model, system, questions, at_once=False)
    together = greedy_outputs(urls[GREENLM], model, system, questions, at_once=True)
    same = [p["text"] for p in plain] == [r["text"] for r in reused] == [t["text"] for t in together]
    return {
        "requests": len(questions),
        "identical": same,
        "distinct_answers": len({p["text"] for p in plain}),
        "cached_tokens_sequential": [r["cached_tokens"] for r in reused],
        "cached_tokens_concurrent": [t["cached_tokens"] for t in together],
        "prompt_tokens": [p["prompt_tokens"] for p in plain],
        "prefill_j_per_request_no_cache": sum(p["prefill_energy_j"] for p in plain) / len(plain),
        "prefill_j_per_request_cache_sequential": sum(r["prefill_energy_j"] for r in reused) / len(reused),
    }


def targets(r: dict) -> dict:
    def row(server: str, level: str) -> dict | None:
        return next((x for x in r["rows"] if x["server"] == server and x["level"] == level), None)

    out: dict = {}
    for level in ("c1", "c4", "c8"):
        g, ls = row(GREENLM, level), row(LLAMA_SERVER, level)
        if not (g and ls):
            continue
        c = int(level[1:])
        ceiling = r["ceiling"]["by_sequences"].get(c) or r["ceiling"]["by_sequences"].get(str(c))
        entry = {
            "throughput_vs_llama_server": ratio(g["output_tokens_per_s"], ls["output_tokens_per_s"]),
            "tokens_per_j_vs_llama_server": ratio(g["tokens_per_j"], ls["tokens_per_j"]),
            "fraction_of_ceiling": ratio(
                g["output_tokens_per_s"], ceiling and ceiling["decode_tokens_per_s"]
            ),
            "llama_server_fraction_of_ceiling": ratio(
                ls["output_tokens_per_s"], ceiling and ceiling["decode_tokens_per_s"]
            ),
            "fraction_of_ceiling_with_prompts": ratio(
                g["output_tokens_per_s"], ceiling and ceiling.get("output_tokens_per_s_with_prompts")
            ),
        }
        need = 0.9 if c == 1 else 1.0
        entry["met"] = all(
            v is not None and v >= need
            for v in (entry["throughput_vs_llama_server"], entry["tokens_per_j_vs_llama_server"])
        )
        if c > 1:
            entry["met"] = entry["met"] and (entry["fraction_of_ceiling"] or 0) >= 0.85
        else:
            serve_decode = 1000 / g["itl_ms"]["p50"] if g["itl_ms"]["p50"] else None
            entry["decode_tokens_per_s"] = serve_decode
            entry["decode_vs_measure"] = ratio(serve_decode, r["measure"]["decode_tokens_per_s"])
            entry["met"] = entry["met"] and abs((entry["decode_vs_measure"] or 0) - 1) <= 0.10
        out[level] = entry
    chat = next((x for x in r["rows"] if x["server"] == GREENLM and x["level"].startswith("chat")), None)
    plain = next((x for x in r["rows"] if x["server"] == NO_CACHE and x["level"].startswith("chat")), None)
    if chat and plain:
        reduction = ratio(
            plain["own_account"]["prefill_j_per_request"], chat["own_account"]["prefill_j_per_request"]
        )
        out["prefix_reuse"] = {
            "prefill_j_per_request_reduction": reduction,
            "greedy_identical": r["greedy_check"]["identical"],
            "met": reduction is not None and reduction >= 3 and r["greedy_check"]["identical"],
        }
    return out


def markdown(r: dict) -> str:
    lines = [
        "| level | server | out tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | server CPU s | tok per CPU-s | "
        "energy J (static + dynamic) | tok/J | errors |",
        "|---|---|---:|---|---|---:|---:|---|---:|---:|",
    ]
    for x in r["rows"]:
        e = x["energy"]
        lines.append(
            f"| {x['level']} | {x['server']} | {fmt(x['output_tokens_per_s'])} | {fmt(x['ttft_ms']['p50'])} / "
            f"{fmt(x['ttft_ms']['p99'])} | {fmt(x['itl_ms']['p50'])} / {fmt(x['itl_ms']['p99'])} | {fmt(e['cpu_s'])} | "
            f"{fmt(x['tokens_per_cpu_s'])} | {fmt(e['energy_j'])} ({fmt(e['static_j'])} + {fmt(e['dynamic_j'])}) | "
            f"{fmt(x['tokens_per_j'])} | {x['errors']} |"
        )
    c = r["ceiling"]["by_sequences"]
    lines += [
        "",
        "llama.cpp's batched decode on the same file and threads (`llama-batched-bench`, 128 prompt + 64 generated "
        "tokens per sequence): "
        + ", ".join(
            f"{b} seq {fmt(v['decode_tokens_per_s'])} tok/s"
            + (
                f" ({fmt(v['output_tokens_per_s_with_prompts'])} output tok/s with the prompts' time)"
                if v.get("output_tokens_per_s_with_prompts")
                else ""
            )
            for b, v in sorted(c.items(), key=lambda kv: int(kv[0]))
        )
        + f"; `greenlm measure --engine llamacpp`: {fmt(r['measure']['decode_tokens_per_s'])} decode tok/s.",
        "",
    ]
    t = r["targets"]
    for level in ("c1", "c4", "c8"):
        if level in t:
            e = t[level]
            extra = (
                f", serve decode {fmt(e['decode_tokens_per_s'])} tok/s = {fmt(e['decode_vs_measure'])}x measure"
                if level == "c1"
                else f", {fmt(e['fraction_of_ceiling'])} of the batched decode ceiling (llama-server "
                f"{fmt(e['llama_server_fraction_of_ceiling'])}), {fmt(e['fraction_of_ceiling_with_prompts'])} of "
                "the ceiling for the same work with its prompts"
            )
            lines.append(
                f"- {level}: greenlm/llama-server output tok/s {fmt(e['throughput_vs_llama_server'])}x, tok/J "
                f"{fmt(e['tokens_per_j_vs_llama_server'])}x{extra}; target met: {e['met']}"
            )
    if "prefix_reuse" in t:
        p = t["prefix_reuse"]
        g = r["greedy_check"]
        lines.append(
            f"- shared {SYSTEM_PROMPT_TOKENS}-token system prompt: prefill J per request {fmt(p['prefill_j_per_request_reduction'])}x "
            f"lower with reuse (greenlm's own account); greedy answers identical with and without reuse, one at a "
            f"time and {g['requests']} at once: {g['identical']} ({g['distinct_answers']} distinct answers); "
            f"target met: {p['met']}"
        )
    lines += [
        "",
        f"Load: GuideLLM 0.8.1, levels interleaved; {r['model']} ({r['gguf_name']}), {r['threads']} threads, "
        f"{r['slots']} slots of {r['context_per_slot']} tokens, flash attention off in all. Energy: estimated, one "
        "formula for every server (the cpu-model meter applied to each server process from outside); tok/J = "
        "output tokens / that energy. llama-cpp-python's server serves one request at a time and ignores "
        "`ignore_eos`.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
