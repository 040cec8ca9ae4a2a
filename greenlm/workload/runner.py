"""Run the generation workload with prefill and decode each inside its own energy window."""

from __future__ import annotations

from collections.abc import Callable

from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.engines.base import Engine
from greenlm.engines.factory import create_engine
from greenlm.engines.saved import apply_saved_run
from greenlm.engines.speculative import resolve_draft
from greenlm.errors import GreenlmError
from greenlm.io import noop
from greenlm.models.spec import resolve_model
from greenlm.progress import Progress, ProgressEvent, no_progress
from greenlm.workload.config import MeasureConfig
from greenlm.workload.memory import peak_gpu_mb, peak_rss_mb, reset_peak_gpu, reset_peak_rss
from greenlm.workload.prompts import read_prompt_file, workload_prompts
from greenlm.workload.result import MeasureResult, RepeatRecord

WARMUP_NEW_TOKENS = 4


def engine_for(config: MeasureConfig, spec) -> Engine:
    """The engine `config` asks for on model `spec` (config as apply_saved_run left it)."""
    return create_engine(
        config.engine,
        spec,
        threads=config.threads,
        device=config.device,
        dtype=config.dtype,
        speculative=config.speculative,
    )


def run_measure(
    config: MeasureConfig,
    *,
    store=None,
    engine: Engine | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> MeasureResult:
    """Measure `config.model` on `config.engine`. With a `store`, the result is saved and gets a `run_id`.

    `engine` reuses a model the caller has already loaded (the caller keeps and closes it); the load phase
    is then not measured (`load_j` is None).
    """
    progress = progress or no_progress
    announce = announce or noop
    # Validate everything cheap before loading anything heavy.
    carbon = config.energy.carbon()  # the grid and PUE, resolved: a typo fails before any model loads
    spec = resolve_model(config.model)
    config = apply_saved_run(config, spec, announce)  # a model optimize saved runs as it was chosen
    # The user's files before any model loads: a binary, non-UTF-8 or malformed file is one line, at once.
    file_prompts = read_prompt_file(config.prompts) if config.prompts else None
    split = None if config.prompts else split_text(load_text(config.text))
    if config.speculative is not None and config.speculative.kind == "draft":
        resolve_draft(config.speculative)  # a missing draft file fails before the target loads
    if engine is not None and config.speculative is not None and engine.speculative != config.speculative:
        raise GreenlmError(
            "the engine passed to run_measure decodes with speculative setting "
            f"{engine.speculative_summary()}, the config asks for {config.speculative.to_dict()}: load the "
            "engine with the config's setting (create_engine(..., speculative=...))"
        )
    meter = config.energy.open_meter()
    owned = engine is None
    load = None
    try:
        if owned:
            load_start = meter.begin_window()
            engine = engine_for(config, spec)
            engine.sync()
            load = meter.end_window(load_start)
        announce(meter.selection_note)  # once, after the model loaded, so a load error prints alone

        prompts, text_label = workload_prompts(
            engine,
            prompts_file=config.prompts,
            file_prompts=file_prompts,
            text=split,
            count=config.num_prompts,
            prompt_tokens=config.prompt_tokens,
            max_new_tokens=config.max_new_tokens,
        )
        batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
        if config.warmup:  # first calls pay for allocator growth and kernel selection
            engine.decode(engine.prefill(batches[0]), WARMUP_NEW_TOKENS)
        reset_peak_rss()
        reset_peak_gpu(engine.device)

        decode_steps = config.max_new_tokens - 1
        records: list[RepeatRecord] = []
        origins: dict[str, dict] = {}
        total = config.repeats * len(batches)
        for repeat in range(config.repeats):
            sums = dict(
                prefill_s=0.0,
                prefill_j=0.0,
                prefill_tokens=0,
                decode_s=0.0,
                decode_j=0.0,
                decode_tokens=0,
                decode_steps=0,
                generated_tokens=0,
                drafted_tokens=0,
                accepted_tokens=0,
                target_passes=0,
            )
            domains_j: dict[str, dict[str, float]] = {"prefill_domains_j": {}, "decode_domains_j": {}}
            for index, batch in enumerate(batches):
                engine.sync()
                start = meter.begin_window()
                pre = engine.prefill(batch)
                engine.sync()
                pre_m = meter.end_window(start)
                start = meter.begin_window()
                dec = engine.decode(pre, decode_steps)
                engine.sync()
                dec_m = meter.end_window(start)
                sums["prefill_s"] += pre_m.duration_s
                sums["prefill_j"] += pre_m.total_j
                sums["prefill_tokens"] += pre.prompt_tokens
                sums["decode_s"] += dec_m.duration_s
                sums["decode_j"] += dec_m.total_j
                sums["decode_tokens"] += dec.decode_tokens
                sums["decode_steps"] += dec.steps
                sums["generated_tokens"] += sum(len(t) for t in dec.token_ids)
                # A draft model runs inside the decode window, so its energy is in decode_j already.
                sums["drafted_tokens"] += dec.drafted_tokens
                sums["accepted_tokens"] += dec.accepted_tokens
                sums["target_passes"] += dec.target_passes
                for key, m in (("prefill_domains_j", pre_m), ("decode_domains_j", dec_m)):
                    for domain, info in m.domains().items():
                        domains_j[key][domain] = domains_j[key].get(domain, 0.0) + info["energy_j"]
                        origins[domain] = {k: info[k] for k in ("meter", "energy_source", "additive")}
                progress(ProgressEvent("measuring", repeat * len(batches) + index + 1, total, "batches"))
            records.append(RepeatRecord(ttft_s=sums["prefill_s"] / len(batches), **sums, **domains_j))
        peak_mb = peak_rss_mb()
        if any(r.prefill_j + r.decode_j <= 0 for r in records):
            raise GreenlmError(
                f"meter {meter.name} saw no energy in a repeat: the workload is shorter than its resolution; "
                "raise --max-new-tokens or --num-prompts"
            )

        result = MeasureResult(
            model=spec.name,
            engine=engine.name,
            meter=meter.name,
            energy_source=meter.energy_source,
            threads=engine.threads,
            batch_size=config.batch_size,
            device=engine.device,
            intensity_g_per_kwh=carbon.grid.intensity_g_per_kwh,
            intensity_location=carbon.grid.location,
            intensity_source=carbon.grid.source,
            pue=carbon.pue,
            peak_rss_mb=peak_mb,
            peak_gpu_mem_mb=peak_gpu_mb(engine.device),
            repeats=records,
            text=text_label,
            num_prompts=len(prompts),
            mean_prompt_tokens=sum(len(p) for p in prompts) / len(prompts),
            max_new_tokens=config.max_new_tokens,
            load_s=load.duration_s if load else engine.describe().get("load_s", 0.0),
            load_source=engine.describe().get("load_source", ""),
            load_j=load.total_j if load else None,
            meter_note=meter.selection_note,
            meter_details=meter.describe(),
            engine_details=engine.describe(),
            model_identity=spec.identity(),
            config=config.to_dict(),
            speculative=engine.speculative_summary(),
            energy_origins=origins,
        )
    finally:
        meter.close()
        if owned and engine is not None:
            engine.close()
    if store is not None:
        result.run_id = store.add_measurement(result)
    return result
