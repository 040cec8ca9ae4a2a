"""`greenlm batch run`: a Batch API input file run offline, on the same engines and with the same planner as
`greenlm serve` (a `Server` with no HTTP, its `Deferral` with no interactive load beside it), into one output
file of OpenAI result lines in input order.

The run is durable: its state (the batch, every finished line) is kept in OUT.state beside the output, so the
same command after a crash or Ctrl-C continues where it stopped; the state is removed once OUT is written.

`dry_run`: nothing is answered; the server's throughput and J/token are measured on a probe of one full batch
of the file's first requests (their answers discarded), and the plan is printed with its expected carbon
against running everything now.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from greenlm.defer.batchfile import parse_batch_file
from greenlm.defer.clock import iso
from greenlm.defer.planner import Job, plan, plan_asap
from greenlm.defer.settings import duration_text
from greenlm.errors import GreenlmError
from greenlm.io import check_file_target, noop, write_text_atomic
from greenlm.progress import Progress, ProgressEvent, no_progress
from greenlm.serve.batch_config import BatchRunConfig
from greenlm.serve.deferred import ServeRunner
from greenlm.serve.preflight import preflight
from greenlm.serve.server import Server

POLL_S = 0.2


def _read_input(path: str) -> bytes:
    p = Path(path).expanduser()
    if not p.is_file():
        raise GreenlmError(f"batch input file {path} not found: give a JSONL file of requests")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise GreenlmError(f"cannot read {path}: {exc.strerror}") from None


def run_batch(
    config: BatchRunConfig, *, progress: Progress | None = None, announce: Callable[[str], None] | None = None
) -> dict:
    """Run `config.input` into `config.out` within `config.deadline` (or, with `dry_run`, print its plan)."""
    progress, announce = progress or no_progress, announce or noop
    content = _read_input(config.input)
    try:
        lines = parse_batch_file(content, max_bytes=len(content) + 1)
    except GreenlmError as exc:
        raise GreenlmError(f"{config.input}: {exc}") from None
    urls = {line.url for line in lines}
    if len(urls) > 1:
        raise GreenlmError(
            f"{config.input} mixes endpoints ({', '.join(sorted(urls))}): one endpoint per batch file"
        )
    out = Path(config.out).expanduser() if config.out else None
    if out is not None and not config.dry_run:
        check_file_target(out, overwrite=config.force)
    scratch = None
    if config.dry_run:  # nothing to keep: a scratch state directory
        scratch = tempfile.mkdtemp(prefix="greenlm-batch-dry-run-")
    name = config.served_model_name
    named = {line.body.get("model") for line in lines}
    if name is None and len(named) == 1 and isinstance(next(iter(named)), str):
        name = next(iter(named))  # a file written for another API runs unchanged on the model given here
        announce(f"answering as model {name!r}, the name the file's requests give")
    serve_config = config.serve_config(scratch or str(config.state_dir), name)
    try:
        checked = preflight(serve_config, announce)
        server = Server(serve_config, announce=announce, checked=checked)
        try:
            deferral = server.deferral
            deferral.headroom_slots = 0  # offline: no interactive load to leave slots for
            deferral.max_file_bytes = len(content) + 1
            if config.dry_run:
                return _dry_run(config, server, lines)
            result = _run(config, server, content, lines, out, progress, announce)
        finally:
            server.close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(config.state_dir, ignore_errors=True)  # OUT is written: nothing left to resume
    return result


def _run(config, server, content: bytes, lines, out: Path, progress, announce) -> dict:
    deferral = server.deferral
    fingerprint = hashlib.sha256(content).hexdigest()
    batch_id = _resumable(deferral, fingerprint, config)
    if batch_id is None:
        uploaded = deferral.create_file(Path(config.input).name, "batch", content)
        batch_id = deferral.create_batch(
            uploaded["id"],
            lines[0].url,
            duration_text(config.deadline_s),
            {"sha256": fingerprint},
            window_s=config.deadline_s,
        )["id"]
    else:
        announce(f"continuing batch {batch_id} from {config.state_dir}")
    started = time.monotonic()
    while True:
        batch = deferral.batch(batch_id)
        counts = batch["request_counts"]
        progress(
            ProgressEvent("requests", counts["completed"] + counts["failed"], counts["total"], "requests")
        )
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(POLL_S)
    if batch["status"] == "failed":
        raise GreenlmError(f"the batch failed: {batch['errors']}")
    rows = [r["result"] for r in deferral.state.results(batch_id)]
    write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in rows), overwrite=True)
    view = deferral.view()
    return {
        "out": str(out),
        "status": batch["status"],
        "requests": batch["request_counts"],
        "usage": batch["usage"],
        "energy_j": batch["greenlm_energy_j"],
        "carbon_g": batch["greenlm_carbon_g"],
        "carbon_if_run_at_submission_g": batch["greenlm_carbon_if_run_at_submission_g"],
        "intensity_at_submission_g_per_kwh": batch["greenlm_intensity_at_submission_g_per_kwh"],
        "meter": batch["greenlm_meter"],
        "energy_source": batch["greenlm_energy_source"],
        "deadline": batch["greenlm_deadline"],
        "grid": deferral.grid.describe(),
        "decisions": view["decision_count"],
        "wall_s": time.monotonic() - started,
        "model": server.model_id,
        "batch": batch,
    }


def _resumable(deferral, fingerprint: str, config) -> str | None:
    """An unfinished batch of this same input in the state directory (a run stopped before it finished)."""
    for record in deferral.state.unfinished_batches():
        if (record.get("metadata") or {}).get("sha256") == fingerprint:
            return record["id"]
    return None


def _dry_run(config, server, lines) -> dict:
    """Measure a full batch, then plan the file against the forecast (nothing answered)."""
    runner = ServeRunner(server)
    probe = lines[: server.config.max_batch]

    async def run_probe():
        started = time.perf_counter()
        results = await asyncio.gather(*(runner.run(b.url, b.body, tier="batch") for b in probe))
        return results, time.perf_counter() - started

    results, probe_s = asyncio.run(run_probe())
    ok = [r for r in results if r.ok]
    if not ok:
        first = results[0].body.get("error", {}).get("message") if results else "no requests"
        raise GreenlmError(f"the probe's requests all failed ({first}): fix the input file")
    tokens = sum(r.usage["prompt_tokens"] + r.usage["completion_tokens"] for r in ok)
    energy_j = sum(r.usage["energy_j"] for r in ok)
    capacity, j_per_token = tokens / probe_s, energy_j / tokens
    work = float(sum(runner.work_tokens(b.url, b.body) for b in lines))
    clock, forecaster = server.deferral.clock, server.deferral.grid.forecaster
    now_s = clock.now_s()
    deadline_s = now_s + config.deadline_s
    forecast = forecaster.forecast(now_s, config.deadline_s)
    slots = forecast.slots(now_s, deadline_s)
    jobs = [Job("batch", work, deadline_s)]
    rate = capacity / clock.speed
    kwargs = dict(now_s=now_s, capacity_tokens_per_s=rate, j_per_token=j_per_token, pue=server.pue)
    best, now = plan(jobs, slots, **kwargs), plan_asap(jobs, slots, **kwargs)
    runs = [s for s in best.to_dict()["slots"] if s["tokens"] > 0]
    return {
        "dry_run": True,
        "requests": len(lines),
        "work_tokens_at_most": work,
        "deadline": iso(deadline_s),
        "grid_now": iso(now_s),
        "forecast": {
            "source": forecast.source,
            "model": forecast.model,
            "beyond_horizon": forecast.beyond_horizon(deadline_s),
        },
        "probe": {
            "requests": len(probe),
            "tokens": tokens,
            "seconds": probe_s,
            "capacity_tokens_per_s": capacity,
            "j_per_token": j_per_token,
            "meter": ok[0].usage.get("meter"),
            "energy_source": ok[0].usage.get("energy_source"),
            "note": "measured on the file's first requests at a full batch; their answers were discarded",
        },
        "plan": [
            {
                "start": iso(s["start_s"]),
                "end": iso(s["end_s"]),
                "intensity_g_per_kwh": s["intensity_g_per_kwh"],
                "tokens": s["tokens"],
            }
            for s in runs
        ],
        "late": bool(best.late_jobs),
        "expected_energy_j": best.energy_j(),
        "expected_carbon_g": best.carbon_g(),
        "expected_carbon_if_run_now_g": now.carbon_g(),
        "expected_saving_pct": 100.0 * (1 - best.carbon_g() / now.carbon_g()) if now.carbon_g() > 0 else 0.0,
        "model": server.model_id,
    }
