"""The optimization loop: both baselines first (float32 transformers, and the model as given on its natural
engine), then candidates (screened, skipped only when a measured member running the same way is clearly
better and cheaper, fully measured otherwise) until the space, the candidate budget or the time budget runs
out; then a final round re-measures the best feasible candidates and the baselines interleaved and chooses on
those medians.

Every finished candidate is one store row, written at once, so an interrupted search loses at most the
candidates in flight and `resume` continues from the rows already there. The summary is a row too (kind
"search"), so the report shows the choice the search made.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.energy.carbon import resolve_intensity, validate_pue
from greenlm.energy.payback import payback_tokens
from greenlm.errors import GreenlmError
from greenlm.io import refuse_existing
from greenlm.models.spec import resolve_model
from greenlm.optimize.candidate import CANDIDATE_FIELDS, evaluate_candidate, save_chosen
from greenlm.optimize.config import OptimizeConfig
from greenlm.optimize.executors import make_executor
from greenlm.optimize.final import final_round, within_noise
from greenlm.optimize.pareto import COST, QualityBudget, closest_misses, pareto_front, real
from greenlm.optimize.space import Candidate, load_space
from greenlm.paths import cache_dir
from greenlm.progress import Progress, ProgressEvent, no_progress

BASELINE = Candidate()  # float32 transformers: what a user gets with no greenlm
MEASURED = "measured"
SUMMARY_FIELDS = (
    "key",
    *CANDIDATE_FIELDS,
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
    "final",
    "training_energy_j",  # healing (a distill step) spent this making the candidate
    "payback_tokens",  # served tokens until its saving over the float32 baseline repays that energy
    "payback_tokens_natural",  # the same against the model as given on its natural engine
)


def natural_baseline(spec) -> Candidate:
    """The model as the user has it, on its natural engine: a GGUF on llama.cpp at the engine's default
    threads; anything else is the float32 transformers baseline itself."""
    return Candidate(engine="llamacpp") if spec.is_gguf else BASELINE


@dataclass
class OptimizeResult:
    search_id: str
    baseline: dict
    natural: dict
    chosen: dict | None
    rows: list[dict]
    pareto: list[dict]
    budget_met: bool
    closest: list[dict] = field(default_factory=list)
    variant_dir: str | None = None
    wall_s: float = 0.0
    stopped_by: str = "space exhausted"
    final_round: list[dict] = field(default_factory=list)  # finalists and baselines with final figures
    notes: list[str] = field(default_factory=list)
    comparable: bool = True  # baseline and chosen figures share meter and host

    @staticmethod
    def cost(row: dict) -> float:
        """The figure a row is judged on: its final-round median when it was a finalist."""
        final = row.get("final")
        return final[COST] if final else row[COST]

    def ratio(self, base: dict, key: str = COST) -> float | None:
        if self.chosen is None or not self.comparable:
            return None
        if key == COST:
            return self.cost(base) / self.cost(self.chosen)
        pick = lambda r: (r.get("final") or r)[key]  # noqa: E731
        return pick(self.chosen) / pick(base)

    def to_dict(self) -> dict:
        pick = lambda r: {k: r.get(k) for k in SUMMARY_FIELDS} if r else None  # noqa: E731
        best = self.chosen
        return {
            "search_id": self.search_id,
            "baseline": pick(self.baseline),
            "natural_baseline": pick(self.natural),
            "chosen": pick(best),
            # decode J/token of each baseline over the chosen's: from the final round when it ran
            "j_per_token_ratio": self.ratio(self.baseline),
            "j_per_token_ratio_natural": self.ratio(self.natural),
            "tokens_per_s_ratio": self.ratio(self.baseline, "decode_tokens_per_s"),
            "tokens_per_s_ratio_natural": self.ratio(self.natural, "decode_tokens_per_s"),
            "comparable": self.comparable,
            "ppl_increase_pct": best.get("ppl_increase_pct") if best else None,
            "budget_met": self.budget_met,
            "candidates_evaluated": len(self.rows),
            "candidates_measured": sum(r["status"] == MEASURED for r in self.rows),
            "statuses": {
                s: sum(r["status"] == s for r in self.rows) for s in sorted({r["status"] for r in self.rows})
            },
            "final_round": self.final_round,
            "pareto": [pick(r) for r in self.pareto],
            "closest": [pick(r) for r in self.closest],
            "variant_dir": self.variant_dir,
            "notes": self.notes,
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


def _feasible(rows: list[dict], budget: QualityBudget, exclude: set[str]) -> list[dict]:
    """Measured real rows inside the budget, cheapest first. The float32 baseline is not a candidate to
    choose; the model as given on its natural engine is: when nothing in the space beats it, keeping it is
    the honest answer, and a choice that costs more than it is no saving."""
    ok = [
        r
        for r in rows
        if r["status"] == MEASURED and real(r) and budget.admits(r) and r.get(COST) is not None
        and r["key"] not in exclude
    ]  # fmt: skip
    return sorted(ok, key=lambda r: (r[COST], r["kld"]))


def _comparability(base: dict, best: dict) -> str | None:
    """Why the ratio of `base` to `best` is not a like-for-like figure, or None when it is."""
    b, c = base.get("final") or base, best.get("final") or best
    if b.get("meter") != c.get("meter"):
        return f"baseline measured by meter {b.get('meter')}, the chosen by {c.get('meter')}"
    if b.get("host") != c.get("host"):
        return f"baseline measured on host {b.get('host')}, the chosen on {c.get('host')}"
    return None


def _add_payback(rows: list[dict], base: dict, nat: dict) -> None:
    """For candidates made with training energy: served tokens until their per-token saving against each
    baseline repays it (None when they save nothing against that baseline)."""
    for row in rows:
        training_j = row.get("training_energy_j")
        if row["status"] != MEASURED or not training_j:
            continue
        cost = OptimizeResult.cost(row)
        row["payback_tokens"] = payback_tokens(training_j, OptimizeResult.cost(base), cost)
        row["payback_tokens_natural"] = payback_tokens(training_j, OptimizeResult.cost(nat), cost)


def optimize(
    config: OptimizeConfig,
    *,
    store,
    work: Callable[[Candidate, list[dict]], dict] | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
    final: Callable[..., dict[str, dict]] | None = None,
) -> OptimizeResult:
    """Search `config`'s space for the least decode J/token inside the quality budget. `work` judges one
    candidate and `final` re-measures the finalists (tests pass stand-ins; the defaults measure for real)."""
    start = time.perf_counter()
    final = final or final_round
    announce = announce or (lambda _msg: None)
    settings = config.settings
    # Every cheap check before the first heavy step: output, model, carbon settings, space, executor.
    if config.out:
        refuse_existing(Path(config.out).expanduser())
    spec = resolve_model(settings.model)
    resolve_intensity(settings.country, settings.region, settings.carbon_intensity)
    validate_pue(settings.pue)
    split_text(load_text(settings.text))
    space = load_space(config.space, config.time_budget_s)
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

    natural = natural_baseline(spec)
    baselines = [BASELINE] + ([natural] if natural.key != BASELINE.key else [])
    baseline_keys = {b.key for b in baselines}
    rows = list(previous.values())
    pending = [c for c in space.candidates if c.key not in previous and c.key not in baseline_keys]
    if config.max_candidates is not None:
        done = len([r for r in rows if r["key"] not in baseline_keys])
        pending = pending[: max(0, config.max_candidates - done)]
    todo_baselines = [b for b in baselines if b.key not in previous]
    total = len(rows) + len(pending) + len(todo_baselines)
    durations: list[float] = []
    stopped = ["space exhausted"]

    def on_result(record: dict) -> None:
        record.update(search_id=search_id, model_fingerprint=fingerprint, budget=asdict(settings.budget))
        if record["key"] in baseline_keys:
            record["role"] = "baseline" if record["key"] == BASELINE.key else "natural-baseline"
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
            progress(ProgressEvent("candidates", len(rows), total, "candidates"))

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
        progress(ProgressEvent("candidates", len(rows), total, "candidates"))
    for candidate in todo_baselines:  # in the driver, on this host, never screened out or skipped
        on_result(work(candidate, None))
    by_key = {r["key"]: r for r in rows}
    for candidate in baselines:
        if by_key[candidate.key]["status"] != MEASURED:
            reason = by_key[candidate.key].get("reason", "unknown error")
            raise GreenlmError(f"the baseline {candidate.label} could not be measured: {reason}")
    executor.run(pending, work, front, on_result, keep_going)
    searchable = [c for c in space.candidates if c.key not in baseline_keys]
    searched = [r for r in rows if r["key"] not in baseline_keys]
    if (
        config.max_candidates is not None
        and len(searched) >= config.max_candidates
        and len(searchable) > config.max_candidates
        and stopped[0] == "space exhausted"
    ):
        stopped[0] = "candidate budget"

    by_key = {r["key"]: r for r in rows}
    base, nat = by_key[BASELINE.key], by_key[natural.key]
    feasible = _feasible(rows, settings.budget, {BASELINE.key})
    notes: list[str] = []
    finalists = feasible[: config.final_candidates]
    final_rows: list[dict] = []
    if finalists and config.final_rounds > 0:
        group = finalists + [b for b in (base, nat) if b not in finalists]
        group = list({r["key"]: r for r in group}.values())
        announce(
            f"final round: {len(finalists)} finalist(s) and the baseline(s), {config.final_rounds} interleaved "
            "rounds on this host"
        )
        figures = final(settings, group, config.final_rounds, progress=progress or no_progress)
        for row in group:
            row["final"] = figures[row["key"]]
        finalists.sort(key=lambda r: (r["final"][COST], r["kld"]))
        final_rows = [
            {
                "key": r["key"],
                "label": r["label"],
                "role": r.get("role", "finalist"),
                **{
                    k: r["final"][k]
                    for k in (COST, "spread", "decode_tokens_per_s", "meter", "host", "rounds")
                },
            }
            for r in sorted(group, key=lambda r: r["final"][COST])
        ]
        if len(finalists) > 1 and within_noise(finalists[0]["final"], finalists[1]["final"]):
            notes.append(
                f"the two best finalists are within noise: {finalists[0]['label']} "
                f"({finalists[0]['final'][COST]:.4g} J/token, range {finalists[0]['final']['spread']['min']:.4g}-"
                f"{finalists[0]['final']['spread']['max']:.4g}) and {finalists[1]['label']} "
                f"({finalists[1]['final'][COST]:.4g}, range {finalists[1]['final']['spread']['min']:.4g}-"
                f"{finalists[1]['final']['spread']['max']:.4g}) overlap over {config.final_rounds} rounds; "
                "either is a fair choice"
            )
    _add_payback(rows, base, nat)
    best = finalists[0] if finalists else None
    if best is not None and best is nat and nat is not base:
        notes.append(
            f"nothing in the space cost less than the model as given, {nat['label']}: it is the choice "
            "(keep serving it as it is)"
        )
    # The chosen must cost less than the float32 baseline to be worth choosing.
    if best is not None and OptimizeResult.cost(best) >= OptimizeResult.cost(base):
        notes.append(
            f"the cheapest candidate inside the budget, {best['label']}, costs no less than the baseline"
        )
        best = None
    comparable = True
    if best is not None:
        for reference in (base, nat):
            why = _comparability(reference, best)
            if why:
                comparable = False
                notes.append(f"ratio not comparable: {why} (re-run with the final round on, or one host)")
    measured = [r for r in rows if r["status"] == MEASURED]
    result = OptimizeResult(
        search_id=search_id,
        baseline=base,
        natural=nat,
        chosen=best,
        rows=rows,
        pareto=pareto_front(measured),
        budget_met=best is not None,
        stopped_by=stopped[0],
        closest=[]
        if best is not None
        else closest_misses([r for r in measured if r["key"] not in baseline_keys], settings.budget),
        final_round=final_rows,
        notes=notes,
        comparable=comparable,
    )
    if best is not None and config.out:
        result.variant_dir = save_chosen(best, config.out, settings)
    result.wall_s = time.perf_counter() - start
    store.add("search", {**result.to_dict(), "model": spec.name, "model_identity": spec.identity()})
    return result
