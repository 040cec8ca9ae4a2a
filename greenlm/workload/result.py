"""The measurement record: per-repeat phase figures, derived per-token costs, and where each came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from greenlm.energy.carbon import carbon_g
from greenlm.workload.stats import summarize


@dataclass
class RepeatRecord:
    """One pass over every prompt batch. Times and energies are sums over the batches' windows."""

    prefill_s: float
    prefill_j: float
    prefill_tokens: int  # real prompt tokens (padding excluded)
    decode_s: float
    decode_j: float
    decode_tokens: (
        int  # tokens produced in decode windows (the first token of each sequence comes from prefill)
    )
    decode_steps: int
    generated_tokens: int  # every output token, first ones included
    ttft_s: float  # mean prefill window per batch: the time to each sequence's first token
    # Speculative decoding (0 otherwise): drafted and accepted tokens, target passes in the decode windows.
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    target_passes: int = 0

    def metrics(self, intensity_g_per_kwh: float, pue: float) -> dict[str, float]:
        total_j = self.prefill_j + self.decode_j
        return {
            "prefill_tokens_per_s": self.prefill_tokens / self.prefill_s,
            "decode_tokens_per_s": self.decode_tokens / self.decode_s,
            "ttft_s": self.ttft_s,
            "tpot_s": self.decode_s / self.decode_steps,
            "prefill_j_per_token": self.prefill_j / self.prefill_tokens,
            "decode_j_per_token": self.decode_j / self.decode_tokens,
            # End-to-end efficiency: output tokens per joule of prefill plus decode.
            "tokens_per_j": self.generated_tokens / total_j,  # the runner refuses zero-energy repeats
            "carbon_g_per_1k_tokens": carbon_g(total_j, intensity_g_per_kwh, pue)
            / self.generated_tokens
            * 1000,
            "energy_j": total_j,
        }


HEADLINE = (
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "ttft_s",
    "tpot_s",
    "prefill_j_per_token",
    "decode_j_per_token",
    "tokens_per_j",
    "carbon_g_per_1k_tokens",
    "energy_j",
)


@dataclass
class MeasureResult:
    model: str
    engine: str
    meter: str
    energy_source: str  # "measured" (hardware counter) | "estimated" (model)
    threads: int
    batch_size: int
    device: str
    intensity_g_per_kwh: float
    intensity_location: str
    intensity_source: str
    pue: float
    peak_rss_mb: float
    peak_gpu_mem_mb: float | None
    repeats: list[RepeatRecord]
    text: str  # where the prompts came from
    num_prompts: int
    mean_prompt_tokens: float
    max_new_tokens: int
    load_s: float
    load_source: str
    load_j: float | None  # None when the caller loaded the engine outside the meter
    meter_note: str
    meter_details: dict = field(default_factory=dict)
    engine_details: dict = field(default_factory=dict)
    model_identity: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    speculative: dict | None = None  # the engine's speculative setting and draft model; None: plain greedy
    run_id: str | None = None

    def summary(self) -> dict[str, dict[str, float]]:
        per_repeat = [r.metrics(self.intensity_g_per_kwh, self.pue) for r in self.repeats]
        return {k: summarize([m[k] for m in per_repeat]) for k in HEADLINE}

    def speculative_record(self) -> tuple[dict | None, float | None]:
        """(`speculative` with the drafted/accepted counts of the measured repeats, acceptance rate), or
        (None, None) for plain greedy decoding; the rate is None when nothing was drafted."""
        if self.speculative is None:
            return None, None
        drafted = sum(r.drafted_tokens for r in self.repeats)
        accepted = sum(r.accepted_tokens for r in self.repeats)
        passes = sum(r.target_passes for r in self.repeats)
        decoded = sum(r.decode_tokens for r in self.repeats)
        record = {
            **self.speculative,
            "drafted_tokens": drafted,
            "accepted_tokens": accepted,
            "target_passes": passes,
            "decode_tokens_per_target_pass": decoded / passes if passes else None,  # plain decoding: 1.0
            "output": "identical to plain greedy decoding: a draft is kept only where it equals the target's "
            "argmax",
            # The draft model reads the prompt in the first decode pass, so that work counts as decode too.
            "energy": "the draft model runs in this process, inside the decode windows: decode_j includes it",
        }
        return record, accepted / drafted if drafted else None

    def to_dict(self) -> dict:
        """Flat headline fields (medians over repeats), then the spread and per-repeat raw figures."""
        summary = self.summary()
        out = {
            "run_id": self.run_id,
            "model": self.model,
            "engine": self.engine,
            "meter": self.meter,
            "energy_source": self.energy_source,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "device": self.device,
        }
        # Engine-specific row fields (llama.cpp: the file's quant type and size).
        out.update({k: self.engine_details[k] for k in ("quant_type", "file_mb") if k in self.engine_details})
        out.update({k: v["median"] for k, v in summary.items()})
        out.update(
            {
                "intensity_g_per_kwh": self.intensity_g_per_kwh,
                "intensity_location": self.intensity_location,
                "intensity_source": self.intensity_source,
                "pue": self.pue,
                "peak_rss_mb": round(self.peak_rss_mb, 1),
                "peak_gpu_mem_mb": self.peak_gpu_mem_mb,
                "repeats": len(self.repeats),
                "statistic": "median over repeats",
                "token_basis": "tokens_per_j and carbon_g_per_1k_tokens count generated tokens against prefill+decode energy",
                "text": self.text,
                "num_prompts": self.num_prompts,
                "mean_prompt_tokens": self.mean_prompt_tokens,
                "max_new_tokens": self.max_new_tokens,
                "load_s": round(self.load_s, 3),
                "load_source": self.load_source,
                "load_j": self.load_j,
                "meter_note": self.meter_note,
                "meter_details": self.meter_details,
                "engine_details": self.engine_details,
                "model_identity": self.model_identity,
                "spread": {
                    k: {s: v[s] for s in ("min", "max", "stdev", "rel_spread")} for k, v in summary.items()
                },
                "per_repeat": [asdict(r) for r in self.repeats],
                "config": self.config,
            }
        )
        out["speculative"], out["acceptance_rate"] = self.speculative_record()
        return out
