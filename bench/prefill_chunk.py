"""What `--prefill-chunk` does to the streams already running: the gaps between their tokens while new prompts
arrive (issue 20, part 2).

`greenlm serve` on the built-in GGUF (llama.cpp, 8 slots) with each chunk setting in turn, interleaved over
rounds (a fresh server per setting and round). Our client keeps `--concurrency` streams of long prompts (about
`--prompt-tokens` tokens of documentation text, `--output-tokens` each, end-of-text ignored) running, so a new
prompt arrives whenever a stream ends, while the others decode. Every streamed chunk's arrival time is kept: the
gaps between a stream's tokens (its inter-token latency, where a step that carries a prompt chunk shows as a long
gap) pooled over all streams, each stream's longest gap, its time to first token, and the output tokens/s.

    .venv/bin/python bench/prefill_chunk.py         # about 8 minutes; JSON in bench/results/prefill_chunk.json

The rule being measured: while any request decodes, a step carries at most `--prefill-chunk` prompt tokens, so a
new prompt delays each running stream's next token by the time of that many prompt tokens; a smaller chunk keeps
the running streams' gaps short and makes the new prompt's first token later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import servers
from benchlib import Recorder, log

from greenlm.data import load_text, split_text
from greenlm.engines.llamacpp_engine import default_threads

DEFAULT = "default"  # no --prefill-chunk: up to --step-tokens (256)
CHARS_PER_TOKEN = 4  # documentation text, SmolLM2's tokenizer: about 4 characters a token


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def prompts(count: int, tokens: int) -> list[str]:
    text = split_text(load_text(None)).text("evaluation")
    chars = tokens * CHARS_PER_TOKEN
    step = max(1, (len(text) - chars) // max(1, count))
    return [text[i * step : i * step + chars] for i in range(count)]


async def drive(url: str, model: str, texts: list[str], concurrency: int, output_tokens: int) -> list[dict]:
    """Closed loop: `concurrency` streams, each starting the next prompt when its stream ends."""
    todo: asyncio.Queue = asyncio.Queue()
    for text in texts:
        todo.put_nowait(text)
    streams: list[dict] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not todo.empty():
            body = {
                "model": model, "prompt": todo.get_nowait(), "max_tokens": output_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
            }  # fmt: skip
            start = time.perf_counter()
            arrivals: list[float] = []
            prompt_tokens = None
            async with client.stream("POST", url + "/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    if '"text"' in line:
                        arrivals.append(time.perf_counter())
                    if '"usage":{' in line.replace(" ", ""):
                        prompt_tokens = json.loads(line[6:])["usage"]["prompt_tokens"]
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
            streams.append(
                {
                    "ttft_s": arrivals[0] - start if arrivals else None,
                    "gaps_s": gaps,
                    "tokens": len(arrivals),
                    "prompt_tokens": prompt_tokens,
                    "e2e_s": time.perf_counter() - start,
                }
            )

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return streams


def summarize(streams: list[dict], wall_s: float) -> dict:
    gaps = [g for s in streams for g in s["gaps_s"]]
    longest = [max(s["gaps_s"]) for s in streams if s["gaps_s"]]
    ttft = [s["ttft_s"] for s in streams if s["ttft_s"] is not None]
    return {
        "streams": len(streams),
        "prompt_tokens_mean": statistics.mean(s["prompt_tokens"] or 0 for s in streams),
        "itl_ms": {q: 1000 * percentile(gaps, v) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        "longest_gap_ms_mean": 1000 * statistics.mean(longest),
        "ttft_ms": {q: 1000 * percentile(ttft, v) for q, v in (("p50", 0.5), ("p90", 0.9))},
        "output_tokens_per_s": sum(s["tokens"] for s in streams) / wall_s,
        "wall_s": wall_s,
    }


def markdown(r: dict) -> str:
    lines = [
        "| `--prefill-chunk` | ITL p50 / p90 / p99 (ms) | longest gap per stream, mean (ms) | TTFT p50 / p90 (ms) | out tok/s |",
        "|---|---|---:|---|---:|",
    ]
    for name, row in r["settings"].items():
        itl, ttft = row["itl_ms"], row["ttft_ms"]
        lines.append(
            f"| {name} | {itl['p50']:.1f} / {itl['p90']:.1f} / {itl['p99']:.1f} | {row['longest_gap_ms_mean']:.0f} | "
            f"{ttft['p50']:.0f} / {ttft['p90']:.0f} | {row['output_tokens_per_s']:.1f} |"
        )
    lines += [
        "",
        f"{r['concurrency']} streams kept running (closed loop), {r['requests_per_run']} requests per run, prompts of "
        f"about {r['prompt_tokens']} tokens of documentation text, {r['output_tokens']} output tokens each; "
        f"{r['rounds']} interleaved rounds, each setting a fresh server; figures pooled over the rounds. `default`: a "
        f"step takes prompt tokens up to `--step-tokens` (256). Client: httpx, every streamed chunk timed.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--chunks", default=f"{DEFAULT},64,16", help="settings, comma-separated (default: default,64,16)"
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=16, help="requests per run")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    settings = [c.strip() for c in args.chunks.split(",") if c.strip()]
    rec = Recorder("prefill_chunk")
    work = Path(tempfile.mkdtemp(prefix="prefill-chunk-"))
    texts = prompts(args.requests, args.prompt_tokens)
    pooled: dict[str, list[dict]] = {name: [] for name in settings}
    walls: dict[str, float] = dict.fromkeys(settings, 0.0)
    for round_index in range(args.rounds):
        for name in settings:
            extra = () if name == DEFAULT else ("--prefill-chunk", name)
            log(f"round {round_index + 1}/{args.rounds}: --prefill-chunk {name}")
            proc, url, ready = servers.start_greenlm(
                work, threads=args.threads, slots=8, context_per_slot=args.prompt_tokens * 2 + args.output_tokens,
                extra=extra, name=f"greenlm-chunk-{name}",
            )  # fmt: skip
            try:
                start = time.perf_counter()
                found = asyncio.run(drive(url, ready["model"], texts, args.concurrency, args.output_tokens))
                walls[name] += time.perf_counter() - start
                pooled[name] += found
            finally:
                proc.stop()
    result = {
        "benchmark": "prefill_chunk",
        "what": "gaps between the tokens of running streams while new long prompts arrive, by --prefill-chunk",
        "engine": "llamacpp",
        "model": "smollm2-135m (the built-in GGUF)",
        "threads": args.threads,
        "slots": 8,
        "concurrency": args.concurrency,
        "requests_per_run": args.requests,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "rounds": args.rounds,
        "settings": {name: summarize(pooled[name], walls[name]) for name in settings},
    }
    result["markdown"] = markdown(result)
    log(result["markdown"])
    rec.finish(result, out=args.out)


if __name__ == "__main__":
    main()
