"""The optimization loop: both baselines first (float32 transformers, and the model as given on its natural
engine), then candidates (screened, skipped only when a measured member running the same way is clearly
better and cheaper, fully measured otherwise) until the space, the candidate budget or the time budget runs
out; then a final round re-measures the best feasible candidates and the baselines interleaved and chooses on
those medians.

Every finished candidate is one store row, written at once, so an interrupted search loses at most the
candidates in flight and `resume` continues from the rows already there. The summary is a row too (kind
"search"), so the report shows the choice the search made.

`optimize` reads as its phases: check everything cheap, plan the search (resume, baselines, what is left),
run the candidates, choose (final round, notes, ratios), save the chosen and the summary.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from greenlm.data.sources import load_text
from greenlm.data.split import split_text
from greenlm.energy.payback import payback_tokens
from greenlm.errors import GreenlmError
from greenlm.io import noop, refuse_existing
from greenlm.models.spec import ModelSpec, resolve_model
from greenlm.optimize.candidate import evaluate_candidate
from greenlm.optimize.chosen import save_chosen
from greenlm.optimize.config import OptimizeConfig
from greenlm.optimize.executors import LocalExecutor, RayExecutor, make_executor
from greenlm.optimize.final import final_round, within_noise
from greenlm.optimize.pareto import COST, QualityBudget, closest_misses, pareto_front
from greenlm.optimize.row import CANDIDATE_FIELDS, CandidateRow, latest_search_id, load_rows, save_row
from greenlm.optimize.space import Candidate, SearchSpace, load_space
from greenlm.paths import cache_dir
from greenlm.progress import Progress, ProgressEvent, no_progress

BASELINE = Candidate()  # float32 transformers: what a user gets with no greenlm
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
Work = Callable[[Candidate, list[CandidateRow] | None], CandidateRow]
Final = Callable[..., dict[str, dict]]


def natural_baseline(spec) -> Candidate:
    """The model as the user has it, on its natural engine: a GGUF on llama.cpp at the engine's default
    threads; anything else is the float32 transformers baseline itself."""
    return Candidate(engine="llamacpp") if spec.is_gguf else BASELINE


def _summary_of(row: CandidateRow | None) -> dict | None:
    if row is None:
        return None
    figures = row.to_dict()
    return {k: figures.get(k) for k in SUMMARY_FIELDS}


@dataclass
class OptimizeResult:
    search_id: str
    baseline: CandidateRow
    natural: CandidateRow
    chosen: CandidateRow | None
    rows: list[CandidateRow]
    pareto: list[CandidateRow]
    budget_met: bool
    closest: list[CandidateRow] = field(default_factory=list)
    variant_dir: str | None = None
    wall_s: float = 0.0
    stopped_by: str = "space exhausted"
    final_round: list[dict] = field(default_factory=list)  # finalists and baselines with final figures
    notes: list[str] = field(default_factory=list)
    comparable: bool = True  # baseline and chosen figures share meter and host

    def ratio(self, base: CandidateRow, key: str = COST) -> float | None:
        """`base` over the chosen (decode J/token: how many times less the chosen costs; other figures: the
        chosen over `base`), from the final round when it ran; None without a comparable choice."""
        if self.chosen is None or not self.comparable:
            return None
        if key == COST:
            return base.cost / self.chosen.cost
        return self.chosen.figure(key) / base.figure(key)

    def to_dict(self) -> dict:
        best = self.chosen
        statuses = sorted({r.status.value for r in self.rows})
        return {
            "search_id": self.search_id,
            "baseline": _summary_of(self.baseline),
            "natural_baseline": _summary_of(self.natural),
            "chosen": _summary_of(best),
            # decode J/token of each baseline over the chosen's: from the final round when it ran
            "j_per_token_ratio": self.ratio(self.baseline),
            "j_per_token_ratio_natural": self.ratio(self.natural),
            "tokens_per_s_ratio": self.ratio(self.baseline, "decode_tokens_per_s"),
            "tokens_per_s_ratio_natural": self.ratio(self.natural, "decode_tokens_per_s"),
            "comparable": self.comparable,
            "ppl_increase_pct": best.ppl_increase_pct if best else None,
            "budget_met": self.budget_met,
            "candidates_evaluated": len(self.rows),
            "candidates_measured": sum(r.measured for r in self.rows),
            "statuses": {s: sum(r.status.value == s for r in self.rows) for s in statuses},
            "final_round": self.final_round,
            "pareto": [_summary_of(r) for r in self.pareto],
            "closest": [_summary_of(r) for r in self.closest],
            "variant_dir": self.variant_dir,
            "notes": self.notes,
            "wall_s": self.wall_s,
            "stopped_by": self.stopped_by,
        }


@dataclass
class _Search:
    """One search between its phases: what it is judged on, what is done and what is left."""

    config: OptimizeConfig
    spec: ModelSpec
    fingerprint: str  # the model's, on every row: what `--resume` finds the search by
    search_id: str
    baselines: list[Candidate]
    natural: Candidate
    rows: list[CandidateRow]
    pending: list[Candidate]
    todo_baselines: list[Candidate]
    total: int  # rows the search will have when it runs to the end
    store: object
    announce: Callable[[str], None]
    progress: Progress
    start: float
    durations: list[float] = field(default_factory=list)
    stopped_by: str = "space exhausted"

    @property
    def baseline_keys(self) -> set[str]:
        return {b.key for b in self.baselines}

    def by_key(self) -> dict[str, CandidateRow]:
        return {r.key: r for r in self.rows}

    def measured(self) -> list[CandidateRow]:
        return [r for r in self.rows if r.measured]


# --- check: everything cheap before the first heavy step -------------------------------------------------------


def _check(config: OptimizeConfig) -> tuple[ModelSpec, SearchSpace, LocalExecutor | RayExecutor]:
    """Output, model, carbon settings, text, space and executor: a mistake fails before any candidate runs."""
    settings = config.settings
    if config.out:
        refuse_existing(Path(config.out).expanduser())
    spec = resolve_model(settings.model)
    settings.energy.intensity()
    split_text(load_text(settings.text))
    space = load_space(config.space, config.time_budget_s)
    executor = make_executor(
        config.executor,
        config.ray_address,
        cpus_per_task=config.ray_cpus_per_task,
        gpus_per_task=config.ray_gpus_per_task,
    )
    return spec, space, executor


# --- plan: which search, what is stored already, what is left -------------------------------------------------


def _latest_search(store, model_fingerprint: str) -> str:
    search_id = latest_search_id(store, model_fingerprint)
    if search_id is not None:
        return search_id
    raise GreenlmError(
        "nothing to resume: the store has no earlier search for this model (run without --resume)"
    )


def _plan(
    config: OptimizeConfig, spec: ModelSpec, space: SearchSpace, store, announce, progress, start: float
) -> _Search:
    """Name the search (or find the one to resume), keep the rows already stored, and list the baselines and
    candidates still to judge within the candidate budget."""
    settings = config.settings
    fingerprint = spec.fingerprint()
    search_id = config.search_id or (
        _latest_search(store, fingerprint) if config.resume else uuid.uuid4().hex[:10]
    )
    if not settings.workdir:
        settings.workdir = str(cache_dir() / "optimize" / search_id)
    previous: dict[str, CandidateRow] = {}
    for row in load_rows(store, search_id):
        previous.setdefault(row.key, row)
    if config.resume:
        announce(f"resuming search {search_id}: {len(previous)} candidate(s) already stored, not redone")
    natural = natural_baseline(spec)
    baselines = [BASELINE] + ([natural] if natural.key != BASELINE.key else [])
    keys = {b.key for b in baselines}
    rows = list(previous.values())
    pending = [c for c in space.candidates if c.key not in previous and c.key not in keys]
    if config.max_candidates is not None:
        done = len([r for r in rows if r.key not in keys])
        pending = pending[: max(0, config.max_candidates - done)]
    todo_baselines = [b for b in baselines if b.key not in previous]
    total = len(rows) + len(pending) + len(todo_baselines)
    return _Search(
        config, spec, fingerprint, search_id, baselines, natural, rows, pending, todo_baselines, total, store,
        announce, progress, start,
    )  # fmt: skip


# --- run: the baselines, then the candidates on the executor -----------------------------------------------------


def _num(value, spec: str) -> str:
    """A figure for the log line: a missing one must not crash the search after the work."""
    return "n/a" if value is None else format(value, spec)


def _record(search: _Search, row: CandidateRow) -> None:
    """Store a finished row at once (the search's own fields added) and tell the user."""
    settings = search.config.settings
    row.search_id, row.model_fingerprint = search.search_id, search.fingerprint
    row.budget = asdict(settings.budget)
    if row.key in search.baseline_keys:
        row.role = "baseline" if row.key == BASELINE.key else "natural-baseline"
    save_row(search.store, row, parent=search.spec.name)
    search.rows.append(row)
    search.durations.append(row.wall_s or 0.0)
    figures = (
        f"decode {_num(row.decode_j_per_token, '.4g')} J/token, KLD {_num(row.kld, '.4f')}, "
        f"PPL {_num(row.ppl_increase_pct, '+.2f')}%"
        if row.measured
        else row.reason or ""
    )
    search.announce(f"[{len(search.rows)}/{search.total}] {row.label}: {row.status} ({figures})")
    search.progress(ProgressEvent("candidates", len(search.rows), search.total, "candidates"))


def _keep_going(search: _Search) -> bool:
    """Start another candidate only when the time budget holds one more of the average duration."""
    elapsed = time.perf_counter() - search.start
    expected = sum(search.durations) / len(search.durations) if search.durations else 0.0
    if elapsed + expected > search.config.time_budget_s:
        search.stopped_by = "time budget"
        return False
    return True


def _run(search: _Search, work: Work, executor, space: SearchSpace) -> None:
    """Both baselines in the driver, on this host, never screened out or skipped (every ratio is to them);
    then the candidates, each judged against the measured front so far."""
    search.progress(ProgressEvent("candidates", len(search.rows), search.total, "candidates"))
    for candidate in search.todo_baselines:
        _record(search, work(candidate, None))
    by_key = search.by_key()
    for candidate in search.baselines:
        if not by_key[candidate.key].measured:
            reason = by_key[candidate.key].reason or "unknown error"
            raise GreenlmError(f"the baseline {candidate.label} could not be measured: {reason}")
    executor.run(
        search.pending,
        work,
        lambda: pareto_front(search.measured()),
        functools.partial(_record, search),
        functools.partial(_keep_going, search),
    )
    config = search.config
    searchable = [c for c in space.candidates if c.key not in search.baseline_keys]
    searched = [r for r in search.rows if r.key not in search.baseline_keys]
    if (
        config.max_candidates is not None
        and len(searched) >= config.max_candidates
        and len(searchable) > config.max_candidates
        and search.stopped_by == "space exhausted"
    ):
        search.stopped_by = "candidate budget"


# --- choose: the final round, then the cheapest feasible candidate that beats the baseline ------------------------


def _feasible(rows: list[CandidateRow], budget: QualityBudget, exclude: set[str]) -> list[CandidateRow]:
    """Measured real rows inside the budget, cheapest first. The float32 baseline is not a candidate to
    choose; the model as given on its natural engine is: when nothing in the space beats it, keeping it is
    the honest answer, and a choice that costs more than it is no saving."""
    ok = [
        r
        for r in rows
        if r.measured
        and r.real
        and budget.admits(r)
        and r.decode_j_per_token is not None
        and r.key not in exclude
    ]
    return sorted(ok, key=lambda r: (r.decode_j_per_token, r.kld))


def _final_round(search: _Search, finalists: list[CandidateRow], baselines: list[CandidateRow], final: Final):
    """Re-measure the finalists and the baselines interleaved on this host; the finalists re-sorted on those
    medians. Returns the final-round table and its note when the top two are within noise."""
    config = search.config
    group = list({r.key: r for r in finalists + baselines}.values())
    search.announce(
        f"final round: {len(finalists)} finalist(s) and the baseline(s), {config.final_rounds} interleaved "
        "rounds on this host"
    )
    figures = final(config.settings, group, config.final_rounds, progress=search.progress)
    for row in group:
        row.final = figures[row.key]
    finalists.sort(key=lambda r: (r.cost, r.kld))
    table = [
        {
            "key": r.key,
            "label": r.label,
            "role": r.role or "finalist",
            **{k: r.final[k] for k in (COST, "spread", "decode_tokens_per_s", "meter", "host", "rounds")},
        }
        for r in sorted(group, key=lambda r: r.cost)
    ]
    notes = []
    if len(finalists) > 1 and within_noise(finalists[0].final, finalists[1].final):
        a, b = finalists[0], finalists[1]
        notes.append(
            f"the two best finalists are within noise: {a.label} ({a.cost:.4g} J/token, range "
            f"{a.final['spread']['min']:.4g}-{a.final['spread']['max']:.4g}) and {b.label} ({b.cost:.4g}, range "
            f"{b.final['spread']['min']:.4g}-{b.final['spread']['max']:.4g}) overlap over {config.final_rounds} "
            "rounds; either is a fair choice"
        )
    return table, notes


def _add_payback(rows: list[CandidateRow], base: CandidateRow, nat: CandidateRow) -> None:
    """For candidates made with training energy: served tokens until their per-token saving against each
    baseline repays it (None when they save nothing against that baseline)."""
    for row in rows:
        training_j = row.training_energy_j
        if not row.measured or not training_j:
            continue
        row.payback_tokens = payback_tokens(training_j, base.cost, row.cost)
        row.payback_tokens_natural = payback_tokens(training_j, nat.cost, row.cost)


def _comparability(base: CandidateRow, best: CandidateRow) -> str | None:
    """Why the ratio of `base` to `best` is not a like-for-like figure, or None when it is."""
    if base.figure("meter") != best.figure("meter"):
        return f"baseline measured by meter {base.figure('meter')}, the chosen by {best.figure('meter')}"
    if base.figure("host") != best.figure("host"):
        return f"baseline measured on host {base.figure('host')}, the chosen on {best.figure('host')}"
    return None


def _verdict(best: CandidateRow | None, base: CandidateRow, nat: CandidateRow, notes: list[str]):
    """The choice as it stands against the baselines: None when it is no saving; notes on why."""
    if best is not None and best is nat and nat is not base:
        notes.append(
            f"nothing in the space cost less than the model as given, {nat.label}: it is the choice "
            "(keep serving it as it is)"
        )
    # The chosen must cost less than the float32 baseline to be worth choosing.
    if best is not None and best.cost >= base.cost:
        notes.append(
            f"the cheapest candidate inside the budget, {best.label}, costs no less than the baseline"
        )
        best = None
    comparable = True
    for reference in (base, nat) if best is not None else ():
        why = _comparability(reference, best)
        if why:
            comparable = False
            notes.append(f"ratio not comparable: {why} (re-run with the final round on, or one host)")
    return best, comparable


def _choose(search: _Search, final: Final) -> OptimizeResult:
    """The final round over the best feasible candidates, then the choice, its notes and the front."""
    config = search.config
    by_key = search.by_key()
    base, nat = by_key[BASELINE.key], by_key[search.natural.key]
    finalists = _feasible(search.rows, config.settings.budget, {BASELINE.key})[: config.final_candidates]
    table, notes = [], []
    if finalists and config.final_rounds > 0:
        table, notes = _final_round(search, finalists, [base, nat], final)
    _add_payback(search.rows, base, nat)
    best, comparable = _verdict(finalists[0] if finalists else None, base, nat, notes)
    measured = search.measured()
    searched = [r for r in measured if r.key not in search.baseline_keys]
    return OptimizeResult(
        search_id=search.search_id,
        baseline=base,
        natural=nat,
        chosen=best,
        rows=search.rows,
        pareto=pareto_front(measured),
        budget_met=best is not None,
        stopped_by=search.stopped_by,
        closest=[] if best is not None else closest_misses(searched, config.settings.budget),
        final_round=table,
        notes=notes,
        comparable=comparable,
    )


# --- save: the chosen variant where the user asked, and the summary row -------------------------------------------


def _save(search: _Search, result: OptimizeResult) -> None:
    """Copy the chosen where `--out` asks (with how it ran), then store the summary row (kind "search")."""
    if result.chosen is not None and search.config.out:
        result.variant_dir = save_chosen(result.chosen, search.config.out, search.config.settings)
    result.wall_s = time.perf_counter() - search.start
    summary = {**result.to_dict(), "model": search.spec.name, "model_identity": search.spec.identity()}
    search.store.add("search", summary)


def optimize(
    config: OptimizeConfig,
    *,
    store,
    work: Work | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
    final: Final | None = None,
) -> OptimizeResult:
    """Search `config`'s space for the least decode J/token inside the quality budget. `work` judges one
    candidate and `final` re-measures the finalists (tests pass stand-ins; the defaults measure for real)."""
    start = time.perf_counter()
    spec, space, executor = _check(config)
    search = _plan(config, spec, space, store, announce or noop, progress or no_progress, start)
    _run(search, work or functools.partial(evaluate_candidate, config.settings), executor, space)
    result = _choose(search, final or final_round)
    _save(search, result)
    return result
