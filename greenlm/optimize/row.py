"""One judged candidate as a record: what it is, how far its judging got (built, loaded, screened, probed,
measured) and with what figures, and its outcome, a `Status` with the reason.

The store keeps a row as the flat JSON object greenlm has always written; `to_dict` and `from_dict` convert at
that boundary only (`save_row`, `load_rows`), so older stores load and new rows read as before. A stage the
judging did not reach is None here and absent from the stored object; a figure a stage measured as None is
stored as null.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the candidate model imports the compression methods (torch): loaded when a row is built
    from greenlm.optimize.space import Candidate


class Status(str, enum.Enum):
    """How a candidate's judging ended (stored as the value string)."""

    MEASURED = "measured"  # quality and energy measured in full
    REJECTED_SCREEN = "rejected-screen"  # the cheap KLD screen was far outside the budget
    SKIPPED_DOMINATED = "skipped-dominated"  # a front member running the same way was better and cheaper
    FAILED = "failed"  # an error, with its reason

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass
class TrainingCost:
    """What making the candidate spent on training (a healed cut), from its variant's manifest."""

    training_energy_j: float | None = None
    training_carbon_g: float | None = None


@dataclass
class Loaded:
    """The file the candidate ran from and the engine's view of it."""

    model_path: str | None = None
    size_mb: float | None = None
    threads_used: int | None = None
    device: str | None = None  # as asked: auto, cpu, cuda
    device_used: str | None = None  # what the engine found


@dataclass
class Screen:
    """The cheap KLD screen on a few held-out tokens."""

    eval_text: str | None = None
    screen_kld: float | None = None


@dataclass
class Probe:
    """The short energy probe after the screen (one prompt, a few repeats)."""

    probe_j_per_token: float | None = None
    probe_spread: dict[str, float] | None = None


@dataclass
class Quality:
    """Full quality against the reference (evaluate.compare)."""

    ppl: float | None = None
    ppl_reference: float | None = None
    ppl_increase_pct: float | None = None
    ppl_increase_pct_stderr: float | None = None
    kld: float | None = None
    kld_stderr: float | None = None
    kld_method: str | None = None
    top1_agreement: float | None = None
    tokens_evaluated: int | None = None


@dataclass
class Energy:
    """The full energy measurement (workload.run_measure): medians over repeats, where they came from."""

    decode_j_per_token: float | None = None
    prefill_j_per_token: float | None = None
    decode_tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    tokens_per_j: float | None = None
    carbon_g_per_1k_tokens: float | None = None
    intensity_g_per_kwh: float | None = None
    intensity_source: str | None = None
    pue: float | None = None
    meter: str | None = None
    energy_source: str | None = None  # measured | estimated
    meter_note: str | None = None
    text: str | None = None
    peak_rss_mb: float | None = None
    repeats: int | None = None
    spread: dict[str, Any] | None = None
    acceptance_rate: float | None = None  # speculative decoding only
    phase_j_per_token: dict[str, float] | None = None  # prefill and decode J per generated token


# The stages in the order the judging reaches them (and the stored object lists their fields).
STAGES = {
    "training": TrainingCost,
    "loaded": Loaded,
    "screen": Screen,
    "probe": Probe,
    "quality": Quality,
    "energy": Energy,
}


def _names(cls) -> tuple[str, ...]:
    """The field names of a stage record (a dataclass) or of a candidate (a declared file-format model)."""
    if hasattr(cls, "model_fields"):
        return tuple(cls.model_fields)
    return tuple(f.name for f in fields(cls))


# set when known, in this order after the status
_AFTER_STATUS = (
    "reason", "wall_s", "search_id", "model_fingerprint", "budget", "role", "run_id", "final", "payback_tokens",
    "payback_tokens_natural",
)  # fmt: skip


@dataclass
class CandidateRow:
    """One candidate as judged: what it is (`candidate`, `key`, `label`), the stages its judging reached with
    their figures, and how it ended (`status`, `reason`)."""

    key: str
    label: str
    candidate: Candidate
    host: str | None = None
    model: str | None = None
    execution: str | None = None  # real | simulated, once built
    training: TrainingCost | None = None  # when built from a variant
    loaded: Loaded | None = None
    screen: Screen | None = None
    probe: Probe | None = None
    quality: Quality | None = None
    energy: Energy | None = None
    status: Status = Status.FAILED
    reason: str | None = None  # why it was not measured
    wall_s: float | None = None
    # set by the search: which search, model and budget it belongs to, and a baseline's role
    search_id: str | None = None
    model_fingerprint: str | None = None
    budget: dict[str, float] | None = None
    role: str | None = None  # baseline | natural-baseline; a finalist in the final round
    run_id: str | None = None  # the store row it was read from
    # after the search: final-round figures of a finalist or baseline, and the payback of a trained one
    final: dict[str, Any] | None = None
    payback_tokens: float | None = None
    payback_tokens_natural: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this greenlm does not know (tests' stand-ins)

    # --- the figures the search and the report judge on -------------------------------------------------

    @property
    def measured(self) -> bool:
        return self.status is Status.MEASURED

    @property
    def real(self) -> bool:
        """Its cost is a real saving: `simulated` variants (fake-quantized float weights) are quality studies,
        never an energy figure to choose or plot as a saving."""
        return self.execution != "simulated"

    @property
    def decode_j_per_token(self) -> float | None:
        """The search-time median (None before the full measurement)."""
        return self.energy.decode_j_per_token if self.energy else None

    @property
    def cost(self) -> float | None:
        """Decode J/token as judged: the final-round median for a finalist, else the search-time one."""
        return self.final["decode_j_per_token"] if self.final else self.decode_j_per_token

    @property
    def kld(self) -> float | None:
        return self.quality.kld if self.quality else None

    @property
    def ppl_increase_pct(self) -> float | None:
        return self.quality.ppl_increase_pct if self.quality else None

    @property
    def training_energy_j(self) -> float | None:
        return self.training.training_energy_j if self.training else None

    def figure(self, name: str) -> Any:
        """A figure by its stored name, the final-round median first where there was one (tables, summaries)."""
        if self.final and name in self.final:
            return self.final[name]
        return self.to_dict().get(name)

    # --- the store boundary ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The flat object the store keeps (and a search summary picks from)."""
        data: dict[str, Any] = {
            **self.candidate.to_dict(),
            "speculative": self.candidate.speculative,
            "key": self.key,
            "label": self.label,
            "host": self.host,
            "model": self.model,
        }
        if self.execution is not None:
            data["execution"] = self.execution
        for name in STAGES:
            stage = getattr(self, name)
            if stage is not None:
                data.update(asdict(stage))
        data["status"] = self.status.value
        for name in _AFTER_STATUS:
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateRow:
        """A row from the store's object (or a stand-in's): a stage is there when any of its fields is."""
        from greenlm.optimize.space import Candidate

        known = {"key", "label", "speculative", *_names(Candidate)}
        stages = {}
        for name, kind in STAGES.items():
            names = _names(kind)
            known.update(names)
            if any(n in data for n in names):
                stages[name] = kind(**{n: data.get(n) for n in names})
        scalars = {
            f.name
            for f in fields(cls)
            if f.name not in STAGES and f.name not in ("key", "label", "candidate", "status", "extra")
        }
        known.update(scalars, {"status"})
        return cls(
            key=data["key"],
            label=data.get("label") or data["key"],
            candidate=Candidate.from_row(data),
            status=Status(data.get("status", Status.FAILED.value)),
            **stages,
            **{n: data.get(n) for n in scalars},
            extra={k: v for k, v in data.items() if k not in known},
        )


def save_row(store, row: CandidateRow, parent: str) -> str:
    """Store `row` (kind "candidate") with the columns the store indexes; its run id."""
    return store.add(
        "candidate",
        row.to_dict(),
        parent=parent,
        variant_id=row.key,
        recipe_json=json.dumps([dict(s) for s in row.candidate.recipe]),
        execution=row.execution,
    )


def _records(store):
    """The stored objects of every candidate row, newest first."""
    for stored in store.runs(limit=100_000, kind="candidate"):
        yield json.loads(stored["record_json"])


def load_rows(store, search_id: str) -> list[CandidateRow]:
    """The rows of search `search_id`, newest first."""
    return [CandidateRow.from_dict(r) for r in _records(store) if r.get("search_id") == search_id]


def latest_search_id(store, model_fingerprint: str | None = None) -> str | None:
    """The newest search (of the model with that fingerprint, when given); None when there is none."""
    for record in _records(store):
        if model_fingerprint in (None, record.get("model_fingerprint")) and record.get("search_id"):
            return record["search_id"]
    return None


# what a candidate is and what it costs: the first fields of both the search summary and the saved choice
CANDIDATE_FIELDS = (
    "label",
    "recipe",
    "engine",
    "quant_type",
    "threads",
    "speculative",
    "device",
    "decode_j_per_token",
    "decode_tokens_per_s",
)
