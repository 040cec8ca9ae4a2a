"""Payback: how many served tokens a variant must generate before its per-token saving repays the energy
spent making it (training, for a distilled variant):

    payback tokens = training J / (parent J/token - variant J/token)

Both per-token figures are decode J/token from stored `greenlm measure` rows of the two models, measured on
the same engine with the same meter, so the difference is a like-for-like saving. Nothing is estimated here:
without both rows, or when the variant saves nothing, the answer says so instead of a number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass


def payback_tokens(training_j: float, parent_j_per_token: float, variant_j_per_token: float) -> float | None:
    """Served tokens until the saving repays `training_j`; None when the variant saves nothing per token."""
    for name, value in (
        ("training energy", training_j),
        ("parent J/token", parent_j_per_token),
        ("variant J/token", variant_j_per_token),
    ):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    saving = parent_j_per_token - variant_j_per_token
    if saving <= 0:
        return None
    return training_j / saving


def training_energy_j(manifest: dict | None) -> float | None:
    """The energy a variant's making spent on training (its manifest's `training` summary), if any."""
    training = (manifest or {}).get("training")
    if not isinstance(training, dict):
        return None
    value = training.get("energy_j")
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Payback:
    status: str  # "ok" | "no saving" | "unmeasured"
    training_j: float
    message: str
    tokens: float | None = None
    parent_j_per_token: float | None = None
    variant_j_per_token: float | None = None
    engine: str | None = None
    meter: str | None = None
    energy_source: str | None = None
    parent_run_id: str | None = None
    variant_run_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _latest_by_engine(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Newest measure row per (engine, meter); `rows` come newest first."""
    found: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row.get("engine") or "", row.get("meter") or "")
        found.setdefault(key, row)
    return found


def payback_from_rows(
    training_j: float,
    parent_rows: list[dict],
    variant_rows: list[dict],
    *,
    parent_name: str,
    variant_name: str,
) -> Payback:
    """Payback from stored measure rows (store row dicts, newest first) of the parent and the variant: the
    newest pair measured on the same engine and meter."""
    parents = _latest_by_engine(parent_rows)
    variants = _latest_by_engine(variant_rows)
    shared = [
        k
        for k in variants
        if k in parents and variants[k].get("decode_j_per_token") and parents[k].get("decode_j_per_token")
    ]
    if not shared:
        missing = [
            name for name, rows in ((parent_name, parent_rows), (variant_name, variant_rows)) if not rows
        ]
        why = (
            f"no stored measurement of {' or '.join(missing)}"
            if missing
            else "no measurements of both on the same engine and meter"
        )
        return Payback(
            status="unmeasured",
            training_j=training_j,
            message=f"payback unknown ({why}): measure both to get payback, e.g. "
            f"`greenlm measure --model {parent_name}` and `greenlm measure --model {variant_name}`",
        )
    key = shared[0]  # variants are newest first: the engine the variant was measured on last
    parent, variant = parents[key], variants[key]
    p_j, v_j = float(parent["decode_j_per_token"]), float(variant["decode_j_per_token"])
    tokens = payback_tokens(training_j, p_j, v_j)
    common = dict(
        training_j=training_j,
        parent_j_per_token=p_j,
        variant_j_per_token=v_j,
        engine=key[0],
        meter=key[1],
        energy_source=variant.get("energy_source"),
        parent_run_id=parent.get("run_id"),
        variant_run_id=variant.get("run_id"),
    )
    where = f"decode on {key[0]}, meter {key[1]}, runs {parent.get('run_id')} and {variant.get('run_id')}"
    if tokens is None:
        return Payback(
            status="no saving",
            message=f"never pays back: the variant spends {v_j:.4g} J/token, not less than the parent's {p_j:.4g} ({where})",
            **common,
        )
    return Payback(
        status="ok",
        tokens=tokens,
        message=f"{training_j:.0f} J of training repaid after {tokens:,.0f} served tokens "
        f"({p_j:.4g} - {v_j:.4g} J/token saved; {where})",
        **common,
    )


def payback_from_store(
    store,
    training_j: float,
    parent_fingerprint: str,
    variant_fingerprint: str,
    *,
    parent_name: str,
    variant_name: str,
) -> Payback:
    """Payback from the newest `measure` rows the store holds for the two models (matched by fingerprint)."""

    def rows(fingerprint: str) -> list[dict]:
        return [
            {
                **json.loads(r["record_json"]),
                "run_id": r["run_id"],
                "engine": r["engine"],
                "meter": r["meter"],
            }
            for r in store.runs_for_model(fingerprint, kind="measure")
        ]

    return payback_from_rows(
        training_j,
        rows(parent_fingerprint),
        rows(variant_fingerprint),
        parent_name=parent_name,
        variant_name=variant_name,
    )
