"""The gateway's figures against greenlm serve's own, and what the gateway costs (issue 21).

The built-in model's GGUF (SmolLM2-135M-Instruct Q4_1) on llama.cpp, the same threads everywhere; the load is
GuideLLM's (streaming completions, end-of-text ignored so every request generates --output-tokens):

  (a) GuideLLM straight to `greenlm serve`;
  (b) GuideLLM through `greenlm gateway` to the same server: the gateway's added TTFT and ITL, and its own CPU
      seconds against the server's over the run;
  (c) GuideLLM through the gateway to llama.cpp's own `llama-server` (built from the source of the installed
      llama-cpp-python wheel, bench/peers.py), and to llama-cpp-python's own server, unchanged: errors, and
      the energy in every usage. A peer that does not start is recorded (why) and the rest still runs.

Then the per-request comparison, on the same server through the gateway (a client of ours at the same
concurrency: GuideLLM keeps no usage): each response carries the gateway's outside estimate (`usage.energy_j`)
and greenlm serve's own step-level figure (`usage.upstream_energy.energy_j`). Both meters are the cpu-model
estimate of the same process (the gateway's of the server's process tree, found by its port), so the meters'
totals over the phase are compared too.

    .venv/bin/python bench/gateway.py              # a few minutes; JSON in bench/results/gateway.json
    .venv/bin/python bench/gateway.py --quick      # smoke run, about two minutes (no llama-server build)

Targets (issue 21): per-request energy within 10% of serve's for at least 90% of requests; totals within 1%;
TTFT p50 + 5 ms at most; gateway CPU under 5% of the upstream's at concurrency 8; (c) works unchanged.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import peers
import psutil
import serve_load
import servers
from benchlib import Recorder, log

from greenlm.data import load_text, split_text
from greenlm.engines.llamacpp_engine import default_threads
from greenlm.models import resolve_model

ROOT = Path(__file__).resolve().parents[1]
PROMPT_CHARS = 480  # about 128 tokens of documentation text


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and its descendants so far."""
    proc = psutil.Process(pid)
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def start_gateway(upstream: str, args, workdir: Path, tokenizer: Path, name: str = "gateway"):
    """`greenlm gateway` in front of `upstream`, started as a user starts it: (process, url, ready record). With
    the model's GGUF as its tokenizer, the prompts of requests still running are counted, not estimated."""
    cmd = [
        sys.executable, "-m", "greenlm", "gateway", "--json", "--port", "0", "--upstream", upstream,
        "--meter", "cpu-model", "--scrape-interval-s", str(args.scrape_interval_s), "--tokenizer", str(tokenizer),
    ]  # fmt: skip
    proc = servers.Proc(name, cmd, workdir)
    record = proc.wait_ready(servers.START_TIMEOUT_S)
    return proc, record["url"], record


# ---- our client: both figures of each request ---------------------------------------------------------------
def prompts(count: int) -> list[str]:
    text = split_text(load_text(None)).text("evaluation")
    step = max(1, (len(text) - PROMPT_CHARS) // max(1, count))
    return [text[i * step : i * step + PROMPT_CHARS] for i in range(count)]


async def pairs(url: str, model: str, args) -> list[dict]:
    """Streamed completions at the same concurrency; per request: the gateway's energy and serve's own."""
    todo: asyncio.Queue = asyncio.Queue()
    for p in prompts(args.requests):
        todo.put_nowait(p)
    found: list[dict] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not todo.empty():
            prompt = todo.get_nowait()
            body = {
                "model": model, "prompt": prompt, "max_tokens": args.output_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
            }  # fmt: skip
            usage = None
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"usage":{' in line.replace(" ", ""):
                        usage = json.loads(line[6:]).get("usage") or usage
            if usage and usage.get("energy_j") is not None and usage.get("upstream_energy"):
                found.append(
                    {
                        "gateway_j": usage["energy_j"],
                        "serve_j": usage["upstream_energy"]["energy_j"],
                        "prompt_tokens": usage["prompt_tokens"],
                        "completion_tokens": usage["completion_tokens"],
                    }
                )

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    return found


def energy_of(url: str) -> dict:
    return httpx.get(url + "/energy", timeout=30).json()


def compare(found: list[dict], before: dict, after: dict) -> dict:
    rel = [(p["gateway_j"] - p["serve_j"]) / p["serve_j"] for p in found if p["serve_j"] > 0]
    gateway_j = sum(p["gateway_j"] for p in found)
    serve_j = sum(p["serve_j"] for p in found)
    within = sum(abs(r) <= 0.10 for r in rel)
    g_meter = after["gateway"]["meter_total_j"] - before["gateway"]["meter_total_j"]
    s_meter = after["serve"]["meter_total_j"] - before["serve"]["meter_total_j"]
    ordered = sorted(abs(r) for r in rel)
    return {
        "requests": len(found),
        "within_10pct": within,
        "within_10pct_share": within / len(rel) if rel else None,
        "rel_diff_median": statistics.median(rel) if rel else None,
        "abs_rel_diff_p90": ordered[int(0.9 * (len(ordered) - 1))] if ordered else None,
        "gateway_requests_j": gateway_j,
        "serve_requests_j": serve_j,
        "requests_total_rel_diff": (gateway_j - serve_j) / serve_j if serve_j else None,
        "gateway_meter_j": g_meter,
        "serve_meter_j": s_meter,
        "meter_total_rel_diff": (g_meter - s_meter) / s_meter if s_meter else None,
        "gateway_invariant_gap_j": after["gateway"]["invariant_gap_j"],
        "gateway_phase_costs": after["gateway"]["meters"][0]["phase_costs"],
        "serve_phase_costs": after["serve"]["phase_costs"],
        "gateway_idle_j": after["gateway"]["idle_j"] - before["gateway"]["idle_j"],
        "serve_idle_j": after["serve"]["idle_j"] - before["serve"]["idle_j"],
        "pairs": found,
    }


def guidellm_run(
    tool,
    url: str,
    model: str,
    tokenizer: Path,
    args,
    out: Path,
    concurrency: int | None = None,
    requests=None,
) -> dict:
    """GuideLLM at the benchmark's concurrency, or `concurrency` (serve_load's run: streaming completions,
    synthetic text, the level's own seed: the same prompts straight and through the gateway)."""
    streams = concurrency or args.concurrency
    level = serve_load.Level(
        f"c{streams}", f"kind=concurrent,streams={streams}", requests or args.requests,
        prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
    )  # fmt: skip
    return serve_load.run_guidellm(tool, url, model, level, tokenizer, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few requests; llama-server only if it is built")
    ap.add_argument("--requests", type=int, default=None, help="requests per phase (default 160; --quick 24)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--probe-requests", type=int, default=24, help="requests of the concurrency-1 phases")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--context-per-slot", type=int, default=512)
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--scrape-interval-s", type=float, default=1.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.requests = args.requests or (24 if args.quick else 160)
    rec = Recorder("gateway")
    spec = resolve_model(None)
    gguf = spec.path
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    tokenizer = work / "tokenizer"
    from transformers import AutoTokenizer  # noqa: PLC0415 (GuideLLM counts tokens with the model's tokenizer)

    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tokenizer)
    tool = peers.guidellm()
    shape = dict(threads=args.threads, slots=args.concurrency, context_per_slot=args.context_per_slot)
    result: dict = {
        "what": "per-request energy from greenlm gateway (outside: windows of the upstream's meter split by tokens "
        "seen) against greenlm serve's own step-level split on the same requests; the gateway's added latency "
        "and CPU; the gateway in front of llama.cpp's llama-server and llama-cpp-python's server",
        "model": spec.name,
        "engine": "llamacpp",
        **shape,
        "concurrency": args.concurrency,
        "requests_per_phase": args.requests,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "scrape_interval_s": args.scrape_interval_s,
        "load_tool": f"GuideLLM {peers.GUIDELLM_VERSION} (streaming /v1/completions, synthetic text)",
        "meters": "cpu-model (estimated) on both sides: serve of its own process, the gateway of the server's "
        "process tree found by its port",
        "gateway_flags": "--meter cpu-model --scrape-interval-s S --tokenizer GGUF (the model's own file)",
    }
    serve, serve_url, ready = servers.start_greenlm(work, **shape)
    model = ready["model"]
    gateway = None
    try:
        log(f"(a) GuideLLM straight to greenlm serve ({serve_url})")
        result["a_direct"] = guidellm_run(tool, serve_url, model, tokenizer, args, work / "a.json")
        gateway, gateway_url, _ = start_gateway(serve_url, args, work, gguf)
        log(f"(b) GuideLLM through the gateway ({gateway_url}) to greenlm serve")
        g0, s0 = cpu_s(gateway.pid), cpu_s(serve.pid)
        b = guidellm_run(tool, gateway_url, model, tokenizer, args, work / "b.json")
        g1, s1 = cpu_s(gateway.pid), cpu_s(serve.pid)
        b.update(gateway_cpu_s=g1 - g0, upstream_cpu_s=s1 - s0, gateway_cpu_share=(g1 - g0) / (s1 - s0))
        result["b_gateway_to_serve"] = b
        log("per-request energy: our client through the gateway, both figures in each usage")
        time.sleep(args.scrape_interval_s * 2.5)
        before = {"gateway": energy_of(gateway_url), "serve": energy_of(serve_url)}
        found = asyncio.run(pairs(gateway_url, model, args))
        time.sleep(
            args.scrape_interval_s * 2.5
        )  # a window closes on the gateway's meter after the last request
        after = {"gateway": energy_of(gateway_url), "serve": energy_of(serve_url)}
        result["energy"] = compare(found, before, after)
        # one stream at a time: the gateway's own latency, without the arrival pattern a loaded server sees
        log(
            f"(a1, b1) GuideLLM at concurrency 1, {args.probe_requests} requests: straight, then through the gateway"
        )
        result["a1_direct_c1"] = guidellm_run(
            tool,
            serve_url,
            model,
            tokenizer,
            args,
            work / "a1.json",
            concurrency=1,
            requests=args.probe_requests,
        )
        result["b1_gateway_c1"] = guidellm_run(
            tool,
            gateway_url,
            model,
            tokenizer,
            args,
            work / "b1.json",
            concurrency=1,
            requests=args.probe_requests,
        )
    finally:
        if gateway is not None:
            gateway.stop()
        serve.stop()

    def llama_server():
        binary = (
            peers.cache_dir() / f"llama_cpp_python-{version('llama_cpp_python')}" / "vendor" / "llama.cpp"
        )
        binary = binary / "build" / "bin" / "llama-server"
        if args.quick and not binary.exists():
            raise SystemExit(f"--quick: llama-server is not built yet ({binary})")
        proc, url, cmd = servers.start_llama_server(peers.llama_tools()["llama-server"], gguf, work, **shape)
        return proc, url, {"command": " ".join(cmd), "build": peers.llama_build_info()}

    def llama_cpp_python():
        proc, url, cmd = servers.start_llama_cpp_python(
            gguf, work, threads=args.threads, context_per_slot=args.context_per_slot * args.concurrency,
            model_alias=spec.name,
        )  # fmt: skip
        return (
            proc,
            url,
            {"command": " ".join(cmd), "server": f"llama-cpp-python {version('llama_cpp_python')}"},
        )

    result["c_gateway_to_llama_server"] = run_peer(
        "llama-server", llama_server, args, tool, tokenizer, work, gguf
    )
    result["c_gateway_to_llama_cpp_python_server"] = run_peer(
        "llama-cpp-python", llama_cpp_python, args, tool, tokenizer, work, gguf
    )
    a, b, e = result["a_direct"], result["b_gateway_to_serve"], result["energy"]
    a1, b1 = result["a1_direct_c1"], result["b1_gateway_c1"]
    result["overhead"] = {
        "ttft_p50_added_ms_c1": b1["ttft_ms"]["p50"] - a1["ttft_ms"]["p50"],
        "itl_p50_added_ms_c1": b1["itl_ms"]["p50"] - a1["itl_ms"]["p50"],
        "ttft_p50_added_ms": b["ttft_ms"]["p50"] - a["ttft_ms"]["p50"],
        "itl_p50_added_ms": b["itl_ms"]["p50"] - a["itl_ms"]["p50"],
        "gateway_cpu_share_of_upstream": b["gateway_cpu_share"],
    }
    c, c2 = result["c_gateway_to_llama_server"], result["c_gateway_to_llama_cpp_python_server"]
    result["targets"] = {
        "per_request_within_10pct_for_90pct": (e["within_10pct_share"] or 0) >= 0.9,
        "requests_total_within_1pct": abs(e["requests_total_rel_diff"] or 1) <= 0.01,
        "meter_total_within_1pct": abs(e["meter_total_rel_diff"] or 1) <= 0.01,
        "ttft_p50_added_at_most_5ms_c1": result["overhead"]["ttft_p50_added_ms_c1"] <= 5.0,
        "ttft_p50_added_at_most_5ms": result["overhead"]["ttft_p50_added_ms"] <= 5.0,
        "gateway_cpu_under_5pct": b["gateway_cpu_share"] < 0.05,
        "llama_server_unchanged": c.get("errors") == 0 and c.get("energy_in_usage") is True,
        "llama_cpp_python_server_unchanged": c2.get("errors") == 0 and c2.get("energy_in_usage") is True,
    }
    rec.finish(result, out=args.out or (work / "gateway.json" if args.quick else None))


def run_peer(name: str, start, args, tool, tokenizer: Path, work: Path, gguf: Path) -> dict:
    """GuideLLM through the gateway to a peer server, and one request's usage: does it carry the energy? A peer
    that fails (to start, or under the load) is recorded with why; the rest of the benchmark still runs."""
    server = gateway = None
    try:
        server, url, about = start()
        gateway, gateway_url, ready = start_gateway(url, args, work, gguf, name=f"gateway-{name}")
        log(f"GuideLLM through the gateway to {name} ({url})")
        model = ready["model"]
        result = guidellm_run(tool, gateway_url, model, tokenizer, args, work / f"{name}.json")
        body = {"model": model, "prompt": "The with statement", "max_tokens": 8}
        usage = httpx.post(gateway_url + "/v1/completions", json=body, timeout=120).json().get("usage") or {}
        energy = usage.get("energy_j")
        return {
            **about,
            **result,
            "energy_in_usage": energy is not None and energy > 0,
            "usage_example": usage,
        }
    except SystemExit as exc:  # a peer that would not start, or GuideLLM failing against it
        log(f"{name}: {exc}")
        return {"failed": str(exc)[-1500:]}
    finally:
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
