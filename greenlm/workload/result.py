"""The measurement record: per-repeat phase figures, derived per-token costs, and where each came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from greenlm.energy.carbon import carbon_g
from greenlm.energy.cpu_model import DYNAMIC_DOMAIN, STATIC_DOMAIN
from greenlm.workload.stats import summarize

SPLIT_NOTE = (
    "static: idle power of the cores the process may use, for every wall-clock second of the window; dynamic: "
    "power per busy core-second (cpu-model estimate; a hardware counter measures the package whole, so its "
    "rows have no split: null)"
)


def _part_j(domains_j: dict[str, float], part: str) -> float | None:
    """Joules of one cpu-model part in a window's domains (named "cpu-static", or "<meter>:cpu-static" when
    a composite had to prefix it); None when no member of the meter splits CPU energy."""
    found = [j for d, j in domains_j.items() if d == part or d.endswith(f":{part}")]
    return sum(found) if found else None


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
    # Every domain's joules in this repeat's windows, additive ones and their details ("cpu-static", ...).
    prefill_domains_j: dict[str, float] = field(default_factory=dict)
    decode_domains_j: dict[str, float] = field(default_factory=dict)

    def split(self) -> dict[str, float | None]:
        """Static and dynamic CPU joules per phase, in total and per token; None without a cpu-model part."""
        out: dict[str, float | None] = {}
        for phase, domains, tokens in (
            ("prefill", self.prefill_domains_j, self.prefill_tokens),
            ("decode", self.decode_domains_j, self.decode_tokens),
        ):
            for name, part in (("static", STATIC_DOMAIN), ("dynamic", DYNAMIC_DOMAIN)):
                joules = _part_j(domains, part)
                out[f"{phase}_{name}_j"] = joules
                out[f"{phase}_{name}_j_per_token"] = None if joules is None else joules / tokens
        return out

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
SPLIT = (
    "prefill_static_j",
    "prefill_dynamic_j",
    "decode_static_j",
    "decode_dynamic_j",
    "prefill_static_j_per_token",
    "prefill_dynamic_j_per_token",
    "decode_static_j_per_token",
    "decode_dynamic_j_per_token",
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
    # domain -> {"meter", "energy_source", "additive"}: which meter produced each energy domain, and how
    energy_origins: dict = field(default_factory=dict)
    run_id: str | None = None

    def summary(self) -> dict[str, dict[str, float]]:
        per_repeat = [{**r.metrics(self.intensity_g_per_kwh, self.pue), **r.split()} for r in self.repeats]
        keys = [*HEADLINE, *(k for k in SPLIT if all(m[k] is not None for m in per_repeat))]
        return {k: summarize([m[k] for m in per_repeat]) for k in keys}

    def domain_record(self) -> dict[str, dict]:
        """Per energy domain: where it came from, and its median joules (and J/token) per phase."""
        record = {}
        for domain, origin in self.energy_origins.items():
            entry = dict(origin)
            for phase, tokens in (("prefill", "prefill_tokens"), ("decode", "decode_tokens")):
                values = [getattr(r, f"{phase}_domains_j").get(domain, 0.0) for r in self.repeats]
                per_token = [v / getattr(r, tokens) for v, r in zip(values, self.repeats, strict=True)]
                entry[f"{phase}_j"] = summarize(values)["median"]
                entry[f"{phase}_j_per_token"] = summarize(per_token)["median"]
            record[domain] = entry
        return record

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
        out.update({k: v["median"] for k, v in summary.items() if k in HEADLINE})
        # The CPU estimate's static and dynamic parts per phase (medians over repeats; null when measured).
        out.update({k: summary[k]["median"] if k in summary else None for k in SPLIT})
        out["energy_split"] = SPLIT_NOTE
        out["energy_domains"] = self.domain_record()
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
