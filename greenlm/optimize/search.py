"""The optimization loop: baseline first, then candidates (screened, skipped when they cannot beat the
front, fully measured otherwise) until the space, the candidate budget or the time budget runs out.

Every finished candidate is one store row, written at once, so an interrupted search loses at most the
candidates in flight and `resume` continues from the rows already there.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from greenlm.energy.carbon import resolve_intensity, validate_pue
from greenlm.errors import GreenlmError
from greenlm.models.spec import resolve_model
from greenlm.optimize.candidate import evaluate_candidate, save_chosen
from greenlm.optimize.config import OptimizeConfig
from greenlm.optimize.executors import make_executor
from greenlm.optimize.pareto import choose, closest_misses, pareto_front
from greenlm.optimize.space import Candidate, load_space
from greenlm.paths import cache_dir

BASELINE = Candidate()
MEASURED = "measured"
SUMMARY_FIELDS = (
    "label",
    "recipe",
    "engine",
    "quant_type",
    "threads",
    "decode_j_per_token",
    "decode_tokens_per_s",
    "prefill_j_per_token",
    "ppl",
    "kld",
    "ppl_increase_pct",
    "top1_agreement",
    "carbon_g_per_1k_tokens",
    "size_mb",
    "execution",
    "meter",
    "energy_source",
    "host",
    "status",
)


@dataclass
class OptimizeResult:
    search_id: str
    baseline: dict
    chosen: dict | None
    rows: list[dict]
    pareto: list[dict]
    budget_met: bool
    closest: list[dict] = field(default_factory=list)
    variant_dir: str | None = None
    wall_s: float = 0.0
    stopped_by: str = "space exhausted"

    def to_dict(self) -> dict:
        pick = lambda r: {k: r.get(k) for k in SUMMARY_FIELDS} if r else None  # noqa: E731
        base, best = self.baseline, self.chosen
        return {
            "search_id": self.search_id,
            "baseline": pick(base),
            "chosen": pick(best),
            "j_per_token_ratio": base["decode_j_per_token"] / best["decode_j_per_token"] if best else None,
            "tokens_per_s_ratio": best["decode_tokens_per_s"] / base["decode_tokens_per_s"] if best else None,
            "ppl_increase_pct": best.get("ppl_increase_pct") if best else None,
            "budget_met": self.budget_met,
            "candidates_evaluated": len(self.rows),
            "candidates_measured": sum(r["status"] == MEASURED for r in self.rows),
            "statuses": {
                s: sum(r["status"] == s for r in self.rows) for s in sorted({r["status"] for r in self.rows})
            },
            "pareto": [pick(r) for r in self.pareto],
            "closest": [pick(r) for r in self.closest],
            "variant_dir": self.variant_dir,
            "wall_s": self.wall_s,
            "stopped_by": self.stopped_by,
        }


def _previous_rows(store, search_id: str) -> dict[str, dict]:
    rows = {}
    for row in store.runs(limit=100_000, kind="candidate"):
        record = json.loads(row["record_json"])
        if record.get("search_id") == search_id:
            rows.setdefault(record["key"], record)
    return rows


def _latest_search(store, model_fingerprint: str) -> str:
    for row in store.runs(limit=100_000, kind="candidate"):
        record = json.loads(row["record_json"])
        if record.get("model_fingerprint") == model_fingerprint and record.get("search_id"):
            return record["search_id"]
    raise GreenlmError(
        "nothing to resume: the store has no earlier search for this model (run without --resume)"
    )


def optimize(
    config: OptimizeConfig,
    *,
    store,
    work: Callable[[Candidate, list[dict]], dict] | None = None,
    progress: Callable[[int, int], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Search `config`'s space for the least decode J/token inside the quality budget."""
    start = time.perf_counter()
    announce = announce or (lambda _msg: None)
    settings = config.settings
    spec = resolve_model(settings.model)  # fail fast on bad input, before any work
    resolve_intensity(settings.country, settings.region, settings.carbon_intensity)
    validate_pue(settings.pue)
    space = load_space(config.space)
    executor = make_executor(
        config.executor,
        config.ray_address,
        cpus_per_task=config.ray_cpus_per_task,
        gpus_per_task=config.ray_gpus_per_task,
    )

    fingerprint = spec.fingerprint()
    search_id = config.search_id or (
        _latest_search(store, fingerprint) if config.resume else uuid.uuid4().hex[:10]
    )
    if not settings.workdir:
        settings.workdir = str(cache_dir() / "optimize" / search_id)
    previous = _previous_rows(store, search_id)
    if config.resume:
        announce(f"resuming search {search_id}: {len(previous)} candidate(s) already stored, not redone")
    if work is None:
        work = functools.partial(evaluate_candidate, settings)

    rows = list(previous.values())
    pending = [c for c in space.candidates if c.key not in previous and c.key != BASELINE.key]
    if config.max_candidates is not None:
        pending = pending[: max(0, config.max_candidates - (len(rows) - (BASELINE.key in previous)))]
    total = len(rows) + len(pending) + (BASELINE.key not in previous)
    durations: list[float] = []
    stopped = ["space exhausted"]

    def on_result(record: dict) -> None:
        record.update(search_id=search_id, model_fingerprint=fingerprint, budget=asdict(settings.budget))
        store.add(
            "candidate",
            record,
            parent=spec.name,
            variant_id=record.get("key"),
            recipe_json=json.dumps(record.get("recipe", [])),
            execution=record.get("execution"),
        )
        rows.append(record)
        durations.append(record.get("wall_s", 0.0))

        def num(key: str, spec: str) -> str:  # a missing figure must not crash the search after the work
            value = record.get(key)
            return "n/a" if value is None else format(value, spec)

        figures = (
            f"decode {num('decode_j_per_token', '.4g')} J/token, KLD {num('kld', '.4f')}, "
            f"PPL {num('ppl_increase_pct', '+.2f')}%"
            if record["status"] == MEASURED
            else record.get("reason", "")
        )
        announce(f"[{len(rows)}/{total}] {record['label']}: {record['status']} ({figures})")
        if progress:
            progress(len(rows), total)

    def keep_going() -> bool:
        elapsed = time.perf_counter() - start
        expected = sum(durations) / len(durations) if durations else 0.0
        if elapsed + expected > config.time_budget_s:
            stopped[0] = "time budget"
            return False
        return True

    def front() -> list[dict]:
        return pareto_front([r for r in rows if r["status"] == MEASURED])

    if progress:
        progress(len(rows), total)
    if BASELINE.key not in previous:
        on_result(work(BASELINE, []))
    baseline = next(r for r in rows if r["key"] == BASELINE.key)
    if baseline["status"] != MEASURED:
        raise GreenlmError(f"the baseline could not be measured: {baseline.get('reason', 'unknown error')}")
    executor.run(pending, work, front, on_result, keep_going)
    if (
        config.max_candidates is not None
        and len(rows) >= config.max_candidates + 1
        and stopped[0] == "space exhausted"
    ):
        stopped[0] = "candidate budget"

    measured = [r for r in rows if r["status"] == MEASURED]
    best = choose(measured, settings.budget)
    budget_met = best is not None and best["key"] != BASELINE.key
    result = OptimizeResult(
        search_id=search_id,
        baseline=baseline,
        chosen=best if budget_met else None,
        rows=rows,
        pareto=pareto_front(measured),
        budget_met=budget_met,
        stopped_by=stopped[0],
        closest=[]
        if budget_met
        else closest_misses([r for r in measured if r["key"] != BASELINE.key], settings.budget),
    )
    if budget_met and config.out:
        result.variant_dir = save_chosen(best, config.out, settings)
    result.wall_s = time.perf_counter() - start
    return result
