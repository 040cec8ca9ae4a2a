"""The search space as data: each candidate is a compression recipe plus how it is executed.

A space is a YAML file (or the built-in default) listing candidates; `expand` turns compact grids into
candidates. Keys are content hashes, so a resumed search recognises candidates it already measured.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from greenlm.data.sources import read_yaml_file
from greenlm.errors import GreenlmError

ENGINES = ("transformers", "llamacpp")
SPECULATIVE = ("prompt-lookup",)
# quant_type values greenlm writes itself rather than asking llama.cpp's quantizer for
CODES = "codes"  # the recipe's own quantization codes as GGUF blocks (GPTQ / RTN / AWQ on a GGUF grid)
MIXED = "mixed"  # per-tensor types chosen for the fewest bytes per token within mixed_max_kld
# Healing (a distill step after a cut) costs minutes of training per candidate: the default space offers it only
# when the search's time budget holds it several times over.
HEAL_MIN_BUDGET_S = 60 * 60
HEAL_MAX_MINUTES = 15


@dataclass(frozen=True)
class Candidate:
    recipe: tuple[dict, ...] = ()  # compression steps (greenlm compress), applied to the parent first
    engine: str = "transformers"
    quant_type: str | None = None  # llama.cpp quantization of the exported GGUF; None = the engine's float
    threads: int | None = None
    # Decoding that keeps greedy output unchanged: "prompt-lookup" (n-gram drafts, llamacpp). None = plain.
    speculative: str | None = None
    # quant_type "mixed": the file's KLD budget (vs the float parent, on calibration text) and the recipes whose
    # GGUF codes are candidate types beside llama.cpp's
    mixed_max_kld: float | None = None
    codes_from: tuple[tuple[dict, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise GreenlmError(
                f"candidate engine '{self.engine}' is unknown: use one of {', '.join(ENGINES)}"
            )
        if self.quant_type and self.engine != "llamacpp":
            raise GreenlmError(
                f"quant_type '{self.quant_type}' needs engine llamacpp (it is a llama.cpp file type)"
            )
        if self.speculative is not None:
            if self.speculative not in SPECULATIVE:
                raise GreenlmError(
                    f"candidate speculative '{self.speculative}' is unknown: use {', '.join(SPECULATIVE)}"
                )
            if self.engine != "llamacpp":
                raise GreenlmError("speculative decoding candidates need engine llamacpp")
        if self.threads is not None and self.threads < 1:
            raise GreenlmError(f"candidate threads must be at least 1, got {self.threads}")
        self._check_greenlm_types()

    def _check_greenlm_types(self) -> None:
        if self.quant_type == CODES and not any(s.get("method") in QUANT_METHODS for s in self.recipe):
            raise GreenlmError(
                "quant_type codes writes a recipe's quantization codes: add a gptq, rtn or awq step to its recipe"
            )
        if self.quant_type == MIXED:
            if self.recipe:
                raise GreenlmError(
                    "quant_type mixed is chosen over the float parent: move the recipe to codes_from"
                )
            kld = self.mixed_max_kld
            if isinstance(kld, bool) or not isinstance(kld, (int, float)) or not kld > 0:
                raise GreenlmError(f"quant_type mixed needs mixed_max_kld > 0 (nats per token), got {kld!r}")
        elif self.mixed_max_kld is not None or self.codes_from:
            raise GreenlmError("mixed_max_kld and codes_from apply to quant_type mixed only")
        for recipe in self.codes_from:
            if not any(isinstance(s, dict) and s.get("method") in QUANT_METHODS for s in recipe):
                raise GreenlmError(f"codes_from recipe {list(recipe)!r} has no gptq, rtn or awq step")

    @classmethod
    def from_row(cls, row: dict) -> Candidate:
        """The candidate a stored row (to_dict plus figures) was made from."""
        return cls(
            recipe=tuple(row.get("recipe") or ()),
            engine=row["engine"],
            quant_type=row.get("quant_type"),
            threads=row.get("threads"),
            speculative=row.get("speculative"),
            mixed_max_kld=row.get("mixed_max_kld"),
            codes_from=tuple(tuple(r) for r in row.get("codes_from") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "recipe": [dict(s) for s in self.recipe]}
        # Fields left at their defaults are dropped: keys stay those of searches stored before the fields.
        if d["speculative"] is None:
            del d["speculative"]
        if d["mixed_max_kld"] is None:
            del d["mixed_max_kld"]
        if self.codes_from:
            d["codes_from"] = [[dict(s) for s in r] for r in self.codes_from]
        else:
            del d["codes_from"]
        return d

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def recipe_key(self) -> str:
        """Candidates that share a recipe share one compressed variant."""
        return hashlib.sha256(
            json.dumps([dict(s) for s in self.recipe], sort_keys=True).encode()
        ).hexdigest()[:12]

    @property
    def label(self) -> str:
        steps = "+".join(_step_label(s) for s in self.recipe) or "base"
        if self.quant_type == MIXED:
            codes = "".join(f"+{'+'.join(_step_label(s) for s in r)}" for r in self.codes_from)
            engine = f"llamacpp:mixed(kld<={self.mixed_max_kld:g}{codes})"
        elif self.engine == "llamacpp":
            # No quant type: the parent's own GGUF when nothing else changes it, else an f16 export.
            engine = f"llamacpp:{self.quant_type or ('as-is' if not self.recipe else 'f16')}"
        else:
            engine = self.engine
        threads = f"@{self.threads}t" if self.threads else ""
        decoding = f" +{self.speculative}" if self.speculative else ""
        return f"{steps} / {engine}{threads}{decoding}"


QUANT_METHODS = ("gptq", "rtn", "awq")


def _step_label(step: dict) -> str:
    extras = ",".join(f"{k}={v}" for k, v in step.items() if k != "method")
    return f"{step['method']}({extras})" if extras else step["method"]


@dataclass
class SearchSpace:
    candidates: list[Candidate] = field(default_factory=list)
    source: str = "default"

    def __post_init__(self) -> None:
        seen: set[str] = set()
        unique = []
        for c in self.candidates:
            if c.key not in seen:
                seen.add(c.key)
                unique.append(c)
        self.candidates = unique


def expand(grid: dict[str, Any]) -> list[Candidate]:
    """`{recipes: [...], engine: transformers|llamacpp, quant_types: [...], threads: [...]}` → candidates;
    `mixed_max_kld` and `codes_from` (a list of recipes) go with quant type mixed."""
    keys = ("recipes", "engine", "quant_types", "threads", "speculative", "mixed_max_kld", "codes_from")
    unknown = set(grid) - set(keys)
    if unknown:
        raise GreenlmError(f"search space entry has unknown key(s) {sorted(unknown)}: use {', '.join(keys)}")
    recipes = grid.get("recipes", [[]])
    if not isinstance(recipes, list) or not all(isinstance(r, list) for r in recipes):
        raise GreenlmError(
            "search space 'recipes' must be a list of step lists, e.g. [[], [{method: drop_layers, count: 2}]]"
        )
    for recipe in recipes:
        for step in recipe:
            if not isinstance(step, dict) or "method" not in step:
                raise GreenlmError(f"search space step {step!r} needs a 'method' key")
    quant_types = grid.get("quant_types", [None])
    threads = grid.get("threads", [None])
    speculative = grid.get("speculative", [None])
    engine = grid.get("engine", "transformers")
    codes_from = grid.get("codes_from", [])
    if not isinstance(codes_from, list) or not all(isinstance(r, list) for r in codes_from):
        raise GreenlmError("search space 'codes_from' must be a list of recipes (step lists)")
    mixed = {"mixed_max_kld": grid.get("mixed_max_kld"), "codes_from": tuple(tuple(r) for r in codes_from)}
    return [
        Candidate(tuple(recipe), engine, quant, thr, spec, **(mixed if quant == MIXED else {}))
        for recipe, quant, thr, spec in itertools.product(recipes, quant_types, threads, speculative)
    ]


def load_space(path: str | None, time_budget_s: float | None = None) -> SearchSpace:
    if path is None:
        return default_space(time_budget_s)
    _, data = read_yaml_file(
        path, "search space file", "give a YAML file with a 'grids:' list", "a YAML file with a 'grids:' list"
    )
    if not isinstance(data, dict) or not isinstance(data.get("grids"), list):
        raise GreenlmError(f"search space file '{path}' needs a top-level 'grids:' list")
    return SearchSpace([c for grid in data["grids"] for c in expand(grid)], source=str(path))


def default_space(time_budget_s: float | None = None) -> SearchSpace:
    """Sensible defaults for a small model on a CPU: llama.cpp file types first (on a CPU the engine matters as
    much as the compression, and decode cost follows bytes per token), then greenlm's own files in that engine
    (GPTQ codes as Q4_0 blocks, and a per-tensor mix with those codes among the candidates), the types again at
    all threads, cut layers, and structured cuts on transformers. When `time_budget_s` holds at least an hour,
    a cut healed by distillation too (a sixth of the budget, at most 15 minutes of training). The baseline
    (transformers float32) always runs."""
    drop = [[{"method": "drop_layers", "count": n}] for n in (2, 4)]
    gptq = [{"method": "gptq"}]  # int4, groups of 32, symmetric: Q4_0's grid
    uniform = ["q8_0", "q6_k", "q5_k_m", "q4_k_m"]
    grids = [
        {
            "engine": "llamacpp",
            "recipes": [[]],
            "quant_types": [None],
            "threads": [1],
        },  # the parent's own GGUF
        {"engine": "llamacpp", "recipes": [[]], "quant_types": uniform, "threads": [1]},
        {"engine": "llamacpp", "recipes": [gptq], "quant_types": [CODES], "threads": [1]},
        {
            "engine": "llamacpp",
            "recipes": [[]],
            "quant_types": [MIXED],
            "mixed_max_kld": 0.01,
            "codes_from": [gptq],
            "threads": [1],
        },
        {"engine": "llamacpp", "recipes": [[]], "quant_types": uniform, "threads": [None]},
        {"engine": "llamacpp", "recipes": drop[:1], "quant_types": ["q8_0", "q5_k_m"], "threads": [1]},
        {  # same output as plain greedy decoding: only speed and energy can change
            "engine": "llamacpp",
            "recipes": [[]],
            "quant_types": ["q8_0"],
            "threads": [1],
            "speculative": ["prompt-lookup"],
        },
        {"engine": "transformers", "recipes": drop},
    ]
    if time_budget_s is not None and time_budget_s >= HEAL_MIN_BUDGET_S:
        minutes = min(HEAL_MAX_MINUTES, round(time_budget_s / 60 / 6))
        healed = [drop[0][0], {"method": "distill", "minutes": minutes}]
        grids.append({"engine": "llamacpp", "recipes": [healed], "quant_types": ["q8_0"], "threads": [1]})
    return SearchSpace([c for g in grids for c in expand(g)], source="default")
