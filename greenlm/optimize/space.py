"""The search space as data: each candidate is a compression recipe plus how it is executed.

A space is a YAML file (or the built-in default) of grids; `expand` turns each compact grid into candidates.
Keys are content hashes, so a resumed search recognises candidates it already measured. The file, its grids
and the candidates are pydantic models (greenlm.fileformat; `greenlm schema space` writes the file's JSON
Schema): a grid's steps are checked as recipe steps, yet kept as written, so keys stay those of earlier runs.

```yaml
grids:
  - {engine: llamacpp, quant_types: [q8_0, q4_k_m], threads: [1]}
  - {engine: transformers, recipes: [[{method: drop_layers, count: 2}]]}
```
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, WrapValidator, model_validator

from greenlm.compress.recipe import Step, step_error_line
from greenlm.data.sources import read_yaml_file
from greenlm.errors import GreenlmError
from greenlm.fileformat import (
    FileModel,
    Fix,
    Number,
    Says,
    Whole,
    first_error,
    json_schema,
    key_path,
    one_line,
    parse,
)

ENGINES = ("transformers", "llamacpp")
SPECULATIVE = ("prompt-lookup",)
# quant_type values greenlm writes itself rather than asking llama.cpp's quantizer for
CODES = "codes"  # the recipe's own quantization codes as GGUF blocks (GPTQ / RTN / AWQ on a GGUF grid)
MIXED = "mixed"  # per-tensor types chosen for the fewest bytes per token within mixed_max_kld
QUANT_METHODS = ("gptq", "rtn", "awq")
# Healing (a distill step after a cut) costs minutes of training per candidate: the default space offers it only
# when the search's time budget holds it several times over.
HEAL_MIN_BUDGET_S = 60 * 60
HEAL_MAX_MINUTES = 15

Engine = Annotated[
    Literal["transformers", "llamacpp"],
    Says("'{value}' is unknown", " or ".join(ENGINES), on=("literal_error",)),
]
Speculative = Annotated[
    Literal["prompt-lookup"] | None,
    Says("'{value}' is unknown", ", ".join(SPECULATIVE), on=("literal_error",)),
]


class Candidate(FileModel):
    """One thing the search measures: a recipe applied to the parent, and the engine, file type, threads and
    decoding it runs with."""

    what = "candidate"
    recipe: tuple[dict[str, Any], ...] = Field(
        (), description="Compression steps (greenlm compress), applied to the parent first."
    )
    engine: Engine = "transformers"
    quant_type: str | None = Field(
        None, description="llama.cpp quantization of the exported GGUF; null: the engine's float."
    )
    threads: Whole | None = Field(None, ge=1)
    speculative: Speculative = Field(
        None,
        description="Decoding that keeps greedy output unchanged: prompt-lookup (n-gram drafts, llamacpp).",
    )
    # quant_type "mixed": the file's KLD budget (vs the float parent, on calibration text) and the recipes whose
    # GGUF codes are candidate types beside llama.cpp's
    mixed_max_kld: Number | None = None
    codes_from: tuple[tuple[dict[str, Any], ...], ...] = ()

    @model_validator(mode="after")
    def _runnable(self) -> Candidate:
        if self.quant_type and self.engine != "llamacpp":
            raise Fix(
                f"'{self.quant_type}' needs engine llamacpp (it is a llama.cpp file type)", "'engine: llamacpp'",
                ("quant_type",),
            )  # fmt: skip
        if self.speculative is not None and self.engine != "llamacpp":
            raise Fix("decoding needs engine llamacpp", "'engine: llamacpp'", ("speculative",))
        if self.quant_type == CODES and not any(s.get("method") in QUANT_METHODS for s in self.recipe):
            raise Fix(
                "quant_type codes writes a recipe's quantization codes: add a gptq, rtn or awq step to its recipe"
            )
        if self.quant_type == MIXED:
            if self.recipe:
                raise Fix("quant_type mixed is chosen over the float parent: move the recipe to codes_from")
            if self.mixed_max_kld is None or not self.mixed_max_kld > 0:
                raise Fix(
                    f"quant_type mixed needs mixed_max_kld > 0 (nats per token), got {self.mixed_max_kld!r}"
                )
        elif self.mixed_max_kld is not None or self.codes_from:
            raise Fix("mixed_max_kld and codes_from apply to quant_type mixed only")
        for recipe in self.codes_from:
            if not any(s.get("method") in QUANT_METHODS for s in recipe):
                raise Fix(f"codes_from recipe {list(recipe)!r} has no gptq, rtn or awq step")
        return self

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
        d = {**self.model_dump(), "recipe": [dict(s) for s in self.recipe]}
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


def _step_label(step: dict) -> str:
    extras = ",".join(f"{k}={v}" for k, v in step.items() if k != "method")
    return f"{step['method']}({extras})" if extras else step["method"]


def _as_written(value, handler):
    handler(value)  # checked as a recipe step (its method, settings and values)...
    return value  # ...and kept as written: a candidate's key hashes the step as the file gives it


# A grid's step: checked as `greenlm compress` would read it, kept as the mapping the file holds.
GridStep = Annotated[Step, WrapValidator(_as_written)]
GridRecipe = Annotated[
    list[GridStep],
    Says(
        "must be a recipe: a list of steps, got {value!r}",
        "e.g. '[{method: drop_layers, count: 2}]'",
        on=("list_type",),
    ),
]
RECIPES_SAYS = Says(
    "must be a list of recipes (step lists)",
    "e.g. '[[], [{method: drop_layers, count: 2}]]' ([] is the parent as given)",
    on=("list_type", "dict_type", "model_attributes_type"),
)


class Grid(FileModel):
    """Every combination of its recipes, quantization types, threads and decodings, run on one engine."""

    example = {"engine": "llamacpp", "quant_types": ["q8_0", "q4_k_m"], "threads": [1]}
    recipes: Annotated[list[GridRecipe], RECIPES_SAYS] = Field(
        [[]],
        min_length=1,
        description="Recipes (step lists, as in a recipe file); [] is the parent as given.",
    )
    engine: Engine = Field("transformers", description="What runs the candidates.")
    quant_types: list[str | None] = Field(
        [None],
        min_length=1,
        examples=[["q8_0", "q4_k_m"]],
        description="llama.cpp file types (q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ...), 'codes' (the recipe's own "
        "codes as GGUF blocks), 'mixed' (per-tensor types within mixed_max_kld); null: the engine's float.",
    )
    threads: list[Annotated[Whole, Field(ge=1)] | None] = Field(
        [None], min_length=1, examples=[[1]], description="CPU threads; null: every core."
    )
    speculative: list[Speculative] = Field(
        [None], min_length=1, examples=[["prompt-lookup"]], description="Decodings; null: plain greedy."
    )
    mixed_max_kld: Number | None = Field(
        None, gt=0, examples=[0.01], description="quant_type mixed: the file's KLD budget (nats/token)."
    )
    codes_from: Annotated[list[GridRecipe], RECIPES_SAYS] = Field(
        [],
        examples=[[[{"method": "gptq"}]]],
        description="quant_type mixed: recipes (with a gptq, rtn or awq step) whose codes are candidate types.",
    )

    @model_validator(mode="after")
    def _candidates_build(self) -> Grid:
        try:
            self.candidates()
        except GreenlmError as exc:
            raise Fix(f"gives a candidate that cannot run: {str(exc).removeprefix('candidate: ')}") from None
        return self

    def candidates(self) -> list[Candidate]:
        mixed = {"mixed_max_kld": self.mixed_max_kld, "codes_from": tuple(tuple(r) for r in self.codes_from)}
        return [
            Candidate(
                recipe=tuple(recipe),
                engine=self.engine,
                quant_type=quant,
                threads=threads,
                speculative=spec,
                **(mixed if quant == MIXED else {}),
            )
            for recipe, quant, threads, spec in itertools.product(
                self.recipes, self.quant_types, self.threads, self.speculative
            )
        ]

    @classmethod
    def error_line(cls, exc: ValidationError, data: Any, where: str) -> str:
        return _space_error(exc, cls, data, where)


GRIDS_EXAMPLE = "e.g. 'grids: [{engine: llamacpp, quant_types: [q8_0]}]'"


class SpaceFile(FileModel):
    """A search space for greenlm optimize --space: grids of candidates, measured in this order."""

    grids: Annotated[
        list[Grid],
        Says(
            "must be a non-empty list of grids, got {value!r}", GRIDS_EXAMPLE, on=("list_type", "too_short")
        ),
        Says(write=GRIDS_EXAMPLE, on=("missing",)),
    ] = Field(min_length=1, description="Each grid expands to every combination of its lists.")

    @classmethod
    def error_line(cls, exc: ValidationError, data: Any, where: str) -> str:
        return _space_error(exc, cls, data, where)


def _space_error(exc: ValidationError, root: type, data: Any, where: str) -> str:
    """A step's mistake reads as in a recipe file; the rest as in the policy file."""
    err = first_error(exc)
    loc = tuple(err["loc"])
    at = next((i for i, part in enumerate(loc) if part in ("recipes", "codes_from")), None)
    if at is not None and len(loc) > at + 2:  # inside a step: (..., recipes, i, j, method, setting)
        raw: Any = data
        for part in loc[: at + 3]:
            raw = raw[part] if isinstance(raw, (dict, list)) else None
        return step_error_line(err, loc[at + 3 :], raw, f"{where}: {key_path(root, loc[: at + 3])}")
    return one_line(exc, root, f"{where}: ")


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
    return parse(Grid, grid, "search space grid").candidates()


def load_space(path: str | None, time_budget_s: float | None = None) -> SearchSpace:
    if path is None:
        return default_space(time_budget_s)
    _, data = read_yaml_file(
        path, "search space file", "give a YAML file with a 'grids:' list", "a YAML file with a 'grids:' list"
    )
    if not isinstance(data, dict):
        raise GreenlmError(f"search space file '{path}' needs a top-level 'grids:' list")
    space = parse(SpaceFile, data, f"search space {path}")
    return SearchSpace([c for grid in space.grids for c in grid.candidates()], source=str(path))


def space_schema() -> dict:
    """The search-space file's JSON Schema, for editors (`greenlm schema space`)."""
    return json_schema(SpaceFile, "greenlm search space", SpaceFile.__doc__)


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
