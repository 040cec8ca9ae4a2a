"""A variant ladder: several variants of one model that a server may serve, each with how it runs (engine,
threads) and what it costs and loses (decode J/token, KLD against the reference), with where those figures
came from.

A ladder comes from a policy file's `ladder:` list, or from an optimize search in the store
(`ladder_from_search`): the search's Pareto front over decode J/token and KLD, members inside and outside the
quality budget alike (the policies decide how much of the time an outside member may serve). The float32
transformers baseline is the reference the KLD is measured against, not a variant to serve, so it is left out.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from greenlm.errors import GreenlmError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Variant:
    name: str  # what decisions, /v1/models and every response call it
    model: str | None  # model spec: built-in name (None: the built-in model), .gguf, HF or variant dir
    engine: str = "llamacpp"
    threads: int | None = None  # the threads it was measured with (None: the engine's default)
    kld: float | None = None  # mean KL divergence to the reference, per token (None: unknown)
    decode_j_per_token: float | None = None
    decode_tokens_per_s: float | None = None
    source: str = ""  # where kld and decode_j_per_token came from
    label: str = ""  # the optimizer's label, when it came from a search

    def to_dict(self) -> dict:
        return asdict(self)

    def inside(self, max_kld: float | None) -> bool:
        """Inside the quality budget (a variant of unknown KLD never is, unless there is no budget)."""
        if max_kld is None:
            return True
        return self.kld is not None and self.kld <= max_kld


class Ladder:
    """Variants ordered cheapest first (decode J/token; unknown cost last), names unique."""

    def __init__(self, variants: list[Variant], model_name: str | None = None):
        self.model_name = model_name  # the model these are variants of, when known (a search's model)
        if not variants:
            raise GreenlmError("the ladder is empty: list at least one variant (name and model)")
        seen: set[str] = set()
        for v in variants:
            if v.name in seen:
                raise GreenlmError(
                    f"ladder variant name '{v.name}' appears twice: give each variant its own name"
                )
            seen.add(v.name)
        self.variants = sorted(
            variants, key=lambda v: (v.decode_j_per_token is None, v.decode_j_per_token or 0.0, v.kld or 0.0)
        )
        self._by_name = {v.name: v for v in self.variants}

    def __len__(self) -> int:
        return len(self.variants)

    def __iter__(self):
        return iter(self.variants)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def get(self, name: str) -> Variant:
        try:
            return self._by_name[name]
        except KeyError:
            raise GreenlmError(f"unknown variant '{name}': the ladder has {', '.join(self.names)}") from None

    def cheapest(self, max_kld: float | None = None) -> Variant | None:
        """The cheapest variant inside `max_kld` (any variant when None); None when none is inside."""
        inside = [v for v in self.variants if v.inside(max_kld)]
        return inside[0] if inside else None

    def best_quality(self) -> Variant:
        """The least KLD (unknown KLD counts as worst); the cheaper of equals."""
        return min(self.variants, key=lambda v: (v.kld is None, v.kld or 0.0, self.variants.index(v)))

    def fastest(self, allowed: list[Variant]) -> Variant:
        """Most decode tokens/s among `allowed` (unknown speed: the cheaper counts as faster)."""
        known = [v for v in allowed if v.decode_tokens_per_s]
        if known:
            return max(known, key=lambda v: v.decode_tokens_per_s)
        return allowed[0]

    def to_list(self, max_kld: float | None = None) -> list[dict]:
        return [dict(v.to_dict(), inside_budget=v.inside(max_kld)) for v in self.variants]


def variant_name(row: dict) -> str:
    """A short name for an optimizer row: its file type (or 'as-is'), cut layers, and threads."""
    recipe = row.get("recipe") or []
    parts = []
    for step in recipe:
        if step.get("method") == "drop_layers" and "count" in step:
            parts.append(f"drop{step['count']}")
        else:
            parts.append(str(step.get("method", "step")))
    if row.get("engine") == "llamacpp":
        parts.append(row.get("quant_type") or ("as-is" if not recipe else "f16"))
    else:
        parts.append(row.get("engine") or "model")
    if row.get("threads"):
        parts.append(f"{row['threads']}t")
    name = "-".join(parts)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _search_row(store, search: str) -> dict:
    """The `search` summary row `search` names ('latest': the newest one)."""
    rows = store.runs(limit=100_000, kind="search")
    if not rows:
        raise GreenlmError(
            f"the results store {store.path} holds no optimize search: run `greenlm optimize` first, or give "
            "the ladder as a list in the policy file"
        )
    for row in rows:
        record = json.loads(row["record_json"])
        if search == "latest" or record.get("search_id") == search:
            return record
    known = ", ".join(json.loads(r["record_json"]).get("search_id", "?") for r in rows[:5])
    raise GreenlmError(
        f"no search '{search}' in the results store {store.path}: use 'latest' or one of {known}"
    )


def _candidate_rows(store, search_id: str) -> dict[str, dict]:
    rows = {}
    for row in store.runs(limit=100_000, kind="candidate"):
        record = json.loads(row["record_json"])
        if record.get("search_id") == search_id:
            rows.setdefault(record["key"], dict(record, run_id=row["run_id"]))
    return rows


def ladder_from_search(store, search: str = "latest", *, check_files: bool = True) -> Ladder:
    """The Pareto front of optimize search `search` ('latest' or a search id) as a ladder: every member with
    its measured decode J/token and KLD and the store row they came from. Raises when the search has no
    front to serve or (with `check_files`, for a server that loads them) a member's file is gone."""
    summary = _search_row(store, search)
    search_id = summary.get("search_id", "?")
    candidates = _candidate_rows(store, search_id)
    variants: list[Variant] = []
    names: set[str] = set()
    for member in summary.get("pareto") or []:
        row = candidates.get(member.get("key"))
        if row is None or row.get("role") == "baseline":
            continue  # the float32 reference itself
        path = row.get("model_path")
        if check_files and path is not None and not Path(path).exists():
            raise GreenlmError(
                f"search {search_id}'s front member {row.get('label')} was measured from {path}, which no longer "
                "exists (the optimizer's work directory was cleared): re-run `greenlm optimize`, or list the "
                "ladder in the policy file"
            )
        name = variant_name(row)
        while name in names:
            name += "_"
        names.add(name)
        final = row.get("final") or {}
        cost = _finite(final.get("decode_j_per_token")) or _finite(row.get("decode_j_per_token"))
        variants.append(
            Variant(
                name=name,
                model=path if path is not None else row.get("model"),
                engine=row.get("engine") or "llamacpp",
                threads=row.get("threads"),
                kld=_finite(row.get("kld")),
                decode_j_per_token=cost,
                decode_tokens_per_s=_finite(row.get("decode_tokens_per_s")),
                source=(
                    f"store {store.path}: search {search_id}, candidate row {row['run_id']} "
                    f"({'final-round median' if final.get('decode_j_per_token') else 'measured'} decode J/token, "
                    f"meter {row.get('meter')} {row.get('energy_source')}, host {row.get('host')}; KLD on "
                    f"{row.get('eval_text', 'the evaluation text')})"
                ),
                label=row.get("label", ""),
            )
        )
    if not variants:
        raise GreenlmError(
            f"search {search_id} has no front member to serve besides the float32 baseline: run a search "
            "with llama.cpp candidates, or list the ladder in the policy file"
        )
    return Ladder(variants, model_name=summary.get("model"))
