"""The search space as data: each candidate is a compression recipe plus how it is executed.

A space is a YAML file (or the built-in default) listing candidates; `expand` turns compact grids into
candidates. Keys are content hashes, so a resumed search recognises candidates it already measured.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from greenlm.data.sources import read_text_file
from greenlm.errors import GreenlmError

ENGINES = ("transformers", "llamacpp")
SPECULATIVE = ("prompt-lookup",)


@dataclass(frozen=True)
class Candidate:
    recipe: tuple[dict, ...] = ()  # compression steps (greenlm compress), applied to the parent first
    engine: str = "transformers"
    quant_type: str | None = None  # llama.cpp quantization of the exported GGUF; None = the engine's float
    threads: int | None = None
    # Decoding that keeps greedy output unchanged: "prompt-lookup" (n-gram drafts, llamacpp). None = plain.
    speculative: str | None = None

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

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "recipe": [dict(s) for s in self.recipe]}
        if d["speculative"] is None:  # plain decoding: keys stay those of searches stored before the field
            del d["speculative"]
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
        if self.engine == "llamacpp":
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
    """`{recipes: [...], engine: transformers|llamacpp, quant_types: [...], threads: [...]}` → candidates."""
    unknown = set(grid) - {"recipes", "engine", "quant_types", "threads", "speculative"}
    if unknown:
        raise GreenlmError(
            f"search space entry has unknown key(s) {sorted(unknown)}: use recipes, engine, quant_types, "
            "threads, speculative"
        )
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
    return [
        Candidate(tuple(recipe), engine, quant, thr, spec)
        for recipe, quant, thr, spec in itertools.product(recipes, quant_types, threads, speculative)
    ]


def load_space(path: str | None) -> SearchSpace:
    if path is None:
        return default_space()
    p = Path(path)
    if not p.is_file():
        raise GreenlmError(f"search space file '{path}' not found")
    try:
        data = yaml.safe_load(read_text_file(p, "search space file", "a YAML file with a 'grids:' list"))
    except yaml.YAMLError as exc:
        raise GreenlmError(
            f"search space file '{path}' is not valid YAML: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("grids"), list):
        raise GreenlmError(f"search space file '{path}' needs a top-level 'grids:' list")
    return SearchSpace([c for grid in data["grids"] for c in expand(grid)], source=str(path))


def default_space() -> SearchSpace:
    """Sensible defaults for a small model on a CPU: llama.cpp file types first (on a CPU the engine matters as
    much as the compression, and decode cost follows bytes per token), with and without cut layers, at one and
    at all threads; then structured cuts on transformers. The baseline (transformers float32) always runs."""
    drop = [[{"method": "drop_layers", "count": n}] for n in (2, 4)]
    grids = [
        {
            "engine": "llamacpp",
            "recipes": [[]],
            "quant_types": [None],
            "threads": [1],
        },  # the parent's own GGUF
        {
            "engine": "llamacpp",
            "recipes": [[]],
            "quant_types": ["q8_0", "q6_k", "q5_k_m", "q4_k_m"],
            "threads": [1, None],
        },
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
    return SearchSpace([c for g in grids for c in expand(g)], source="default")
