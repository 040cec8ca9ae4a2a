"""Mixed per-tensor GGUF types chosen for energy: the fewest bytes read per decoded token within a KLD budget.

At batch-1 decode a CPU streams every weight matrix once per token (the token embedding only one row, unless it
is also the output head), so bytes read per token is what the energy of decoding follows. Every weight matrix
gets one type from a candidate set:

- llama.cpp's own quantization of it to each candidate type (one file per type, the embedding and output head
  forced to it too; a matrix llama.cpp gave another type, by its per-tensor rules or because its rows do not
  fit the type's blocks, e.g. a k-quant on 576-wide rows, is not offered that type);
- `f16` (written by numpy);
- greenlm's own codes from quantized variants of the same model (`codes_from`: e.g. a GPTQ Q4_0 and a GPTQ
  Q4_1 variant), labelled `gptq:q4_0`.

The cost of each choice in KLD comes from `sensitivity.py` (Fisher estimate or measured); the choice minimises
bytes read per token subject to the summed cost staying within the budget (a Lagrangian sweep over the
multiple-choice knapsack, then a greedy fill of the slack). The file is then written, run through llama.cpp on
the calibration windows and its KLD measured against the float model: llama.cpp's kernels add their own error
(8-bit activations, f16 KV cache) that no per-matrix estimate sees, so the budget given to the chooser is
scaled by measured/predicted and the choice redone, a few rounds at most. The smallest file whose measured KLD
is within `max_kld` is kept; if none is, nothing is written and the error says what the closest one measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from greenlm.data.calibration import calibration_windows
from greenlm.engines.llamacpp_engine import LlamaCppEngine
from greenlm.errors import GreenlmError
from greenlm.export.codes import coded_blocks, collect_codes
from greenlm.export.config import CANDIDATE_FILE_TYPES, FLOAT_CANDIDATES, check_candidates
from greenlm.export.sensitivity import (
    fisher_diagonal,
    fisher_kld,
    measured_kld,
    reference_logprobs,
    window_kld,
)
from greenlm.io import noop
from greenlm.llamacpp.blocks import dequantize_blocks
from greenlm.llamacpp.gguf_writer import Blocks, TensorPlan, plan_tensors, write_model_gguf
from greenlm.llamacpp.quantize import quantize_gguf, rows_fit
from greenlm.models.loader import load_model
from greenlm.models.manifest import read_manifest
from greenlm.models.spec import resolve_model
from greenlm.progress import Progress, ProgressEvent

MAX_ROUNDS = 4
MEASURED_WINDOWS = 4  # windows the `measured` sensitivity runs per (matrix, type): it runs that many passes

Announce = Callable[[str], None]


@dataclass
class Option:
    """One way to store one matrix."""

    label: str  # q4_0, f16, gptq:q4_0
    source: str  # who made the values: "llama.cpp q4_0", "greenlm gptq codes (variants/gptq4)", "numpy f16"
    qtype: gguf.GGMLQuantizationType
    data: np.ndarray  # what the file holds: uint8 blocks [rows, bytes] or float16 [rows, cols]
    kld: float = math.nan  # estimated KL cost of this option alone (nats per token)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def values(self) -> np.ndarray:
        if self.data.dtype == np.uint8:
            return dequantize_blocks(self.data, self.qtype)
        return self.data.astype(np.float32)

    def blocks(self) -> Blocks:
        return Blocks(self.data, self.qtype, self.source)


@dataclass
class Matrix:
    plan: TensorPlan
    options: list[Option]
    read_share: float  # share of the matrix read per decoded token (1, or one row of an input embedding)

    def read_bytes(self, option: Option) -> float:
        return option.nbytes * self.read_share


@dataclass
class Choice:
    picks: dict[str, Option]  # GGUF name -> option
    predicted_kld: float
    read_bytes: float
    feasible: bool


@dataclass
class MixedResult:
    max_kld: float
    sensitivity: str
    calibration: dict
    candidates: list[str]
    predicted_kld: float
    measured_kld: float  # the written file through llama.cpp, on the calibration windows
    read_bytes_per_token: float
    file_bytes: int
    bits_per_weight: float  # over the weight matrices
    rounds: list[dict]
    choice: dict[str, str]  # GGUF tensor -> option label
    by_option: dict[str, dict]  # option label -> matrices, params, MB
    uniform: dict[str, dict]  # each llama.cpp candidate everywhere it fits: read bytes and predicted KLD
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:

        return asdict(self)


# --- choosing ----------------------------------------------------------------------------------------------


def _pick(matrices: list[Matrix], lam: float) -> dict[str, Option]:
    """Each matrix's option minimising read bytes + lam * KLD (lam in bytes per nat)."""
    return {
        m.plan.gguf_name: min(m.options, key=lambda o, m=m: (m.read_bytes(o) + lam * o.kld, o.kld))
        for m in matrices
    }


def _total(matrices: list[Matrix], picks: dict[str, Option]) -> tuple[float, float]:
    kld = sum(picks[m.plan.gguf_name].kld for m in matrices)
    return kld, sum(m.read_bytes(picks[m.plan.gguf_name]) for m in matrices)


def choose(matrices: list[Matrix], budget: float) -> Choice:
    """The options with the fewest read bytes whose summed KLD stays within `budget`."""
    safest = {m.plan.gguf_name: min(m.options, key=lambda o, m=m: (o.kld, m.read_bytes(o))) for m in matrices}
    kld, read = _total(matrices, safest)
    if kld > budget:
        return Choice(safest, kld, read, False)
    # Lagrangian sweep: total KLD falls as lam grows; find the smallest lam within budget.
    low, high = 0.0, 1.0
    while _total(matrices, _pick(matrices, high))[0] > budget:
        high *= 4.0
        if high > 1e30:
            break
    best = _pick(matrices, high)
    for _step in range(60):
        mid = math.sqrt(low * high) if low > 0 else high / 1e6
        picks = _pick(matrices, mid)
        if _total(matrices, picks)[0] <= budget:
            high, best = mid, picks
        else:
            low = mid
        if high / max(low, 1e-300) < 1.0001:
            break
    # Greedy fill of the slack the sweep leaves: single-matrix moves to fewer bytes, best ratio first.
    picks = dict(best)
    kld, read = _total(matrices, picks)
    while True:
        moves = []
        for m in matrices:
            now = picks[m.plan.gguf_name]
            for o in m.options:
                saved = m.read_bytes(now) - m.read_bytes(o)
                extra = o.kld - now.kld
                if saved > 0 and kld + extra <= budget:
                    moves.append((extra / saved, -saved, m.plan.gguf_name, o))
        if not moves:
            break
        _ratio, _saved, name, option = min(moves, key=lambda t: (t[0], t[1]))
        picks[name] = option
        kld, read = _total(matrices, picks)
    return Choice(picks, kld, read, True)


# --- candidates --------------------------------------------------------------------------------------------


def _llama_candidates(
    f32: Path, scratch: Path, names, config, imatrix, announce: Announce
) -> dict[str, dict]:
    """candidate -> {GGUF name: reader tensor} of a uniform llama.cpp file of that type."""
    tensors = {}
    embedding_width = next(
        int(t.shape[0]) for t in gguf.GGUFReader(str(f32)).tensors if t.name == "token_embd.weight"
    )
    for name in names:
        if name in FLOAT_CANDIDATES:
            continue
        out = scratch / f"uniform-{name}.gguf"
        announce(f"llama.cpp: every matrix as {name} (a candidate)")
        # the embedding too, where its rows fit the type (llama.cpp applies a forced type without falling back)
        fits = rows_fit(embedding_width, gguf.GGMLQuantizationType[name.upper()])
        quantize_gguf(
            f32,
            out,
            CANDIDATE_FILE_TYPES[name],
            threads=config.threads,
            imatrix=imatrix,
            embedding_type=name if fits else None,
        )
        tensors[name] = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    return tensors


def _codes_candidates(
    spec, dirs, plans: list[TensorPlan], announce: Announce
) -> dict[str, dict[str, Option]]:
    """label -> {GGUF name: option} from the codes of quantized variants of the same model."""
    found: dict[str, dict[str, Option]] = {}
    for directory in dirs:
        variant_spec = resolve_model(str(directory))
        if variant_spec.kind != "variant":
            raise GreenlmError(f"--codes-from {directory} is not a greenlm variant directory")
        parent = read_manifest(variant_spec.path).parent
        if parent.get("fingerprint") and parent["fingerprint"] != spec.fingerprint():
            raise GreenlmError(
                f"--codes-from {directory} was made from {parent.get('name')}, not from {spec.name}: its codes "
                "are another model's"
            )
        announce(f"reading greenlm codes from {directory}")
        variant = load_model(variant_spec, dtype="float32")
        codes = collect_codes(variant_spec, variant.model)
        if not codes.layers:
            raise GreenlmError(
                f"--codes-from {directory} holds no codes on a GGUF format's grid (quantize with gguf: auto and "
                "group_size 32)"
            )
        source = f"greenlm {codes.method or 'quantization'} codes ({directory})"
        blocks = coded_blocks(codes, plans, source)
        for gguf_name, block in blocks.items():
            fmt = block.qtype.name.lower()
            label = f"{codes.method or 'codes'}:{fmt}"
            found.setdefault(label, {})[gguf_name] = Option(label, source, block.qtype, block.data)
    return found


def build_matrices(plans: list[TensorPlan], llama: dict[str, dict], floats, coded) -> list[Matrix]:
    has_output = any(p.gguf_name == "output.weight" for p in plans)
    matrices = []
    for plan in plans:
        if not plan.is_matrix:
            continue
        options = []
        for name, tensors in llama.items():
            t = tensors.get(plan.gguf_name)
            if t is not None and t.tensor_type.name.lower() == name:  # the rows fit this type: no fallback
                options.append(Option(name, f"llama.cpp {name}", t.tensor_type, np.array(t.data)))
        for name in floats:
            options.append(
                Option(name, "numpy f16", gguf.GGMLQuantizationType.F16, plan.data.astype(np.float16))
            )
        for entries in coded.values():
            if plan.gguf_name in entries:
                options.append(entries[plan.gguf_name])
        if not options:
            raise GreenlmError(
                f"no candidate type fits {plan.gguf_name} (rows {plan.data.shape[1]} wide): add q8_0 or f16 to --candidates"
            )
        # an input-only embedding is read one row per token; tied, it is also the output head
        share = 1.0 / plan.data.shape[0] if plan.gguf_name == "token_embd.weight" and has_output else 1.0
        matrices.append(Matrix(plan, options, share))
    return matrices


# --- sensitivities -----------------------------------------------------------------------------------------


def _hf_order(plan: TensorPlan, values: np.ndarray) -> np.ndarray:
    if plan.row_order is None:
        return values
    inverse = np.argsort(plan.row_order)
    return values[inverse]


def score_fisher(model, matrices: list[Matrix], windows, progress: Progress) -> None:
    fisher = fisher_diagonal(model, windows, progress=progress)
    for m in matrices:
        f = fisher[m.plan.hf_name].numpy()
        if m.plan.row_order is not None:
            f = f[m.plan.row_order]
        f = torch.from_numpy(np.ascontiguousarray(f))
        base = torch.from_numpy(m.plan.data)
        for o in m.options:
            o.kld = fisher_kld(f, torch.from_numpy(o.values()) - base)


def score_measured(model, matrices: list[Matrix], windows, progress: Progress) -> None:
    windows = windows[:MEASURED_WINDOWS]
    refs = reference_logprobs(model, windows)
    params = dict(model.named_parameters())
    total = sum(len(m.options) for m in matrices)
    done = 0
    for m in matrices:
        param = params[m.plan.hf_name]
        for o in m.options:
            value = torch.from_numpy(_hf_order(m.plan, o.values()))
            o.kld = measured_kld(model, param, value, windows, refs)
            done += 1
            progress(ProgressEvent("measured sensitivity", done, total, "passes"))


# --- the whole step ----------------------------------------------------------------------------------------


def file_kld(path: Path, model, windows, threads: int | None) -> float:
    """Mean KL(float model || GGUF file through llama.cpp) over the windows' positions."""
    engine = LlamaCppEngine(path, model_name="mixed-check", threads=threads)
    try:
        per = []
        for window in windows:
            with torch.inference_mode():
                ref = torch.log_softmax(model(input_ids=window[None]).logits[0].float(), -1)
            per.append(window_kld(ref, engine.logits([window.tolist()])[0]))
        return float(torch.cat(per).mean())
    finally:
        engine.close()


def _summary(matrices: list[Matrix], picks: dict[str, Option]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for m in matrices:
        o = picks[m.plan.gguf_name]
        entry = out.setdefault(
            o.label, {"matrices": 0, "params": 0, "mb": 0.0, "source": o.source.split(" (")[0]}
        )
        entry["matrices"] += 1
        entry["params"] += int(m.plan.data.size)
        entry["mb"] += o.nbytes / 1e6
    for entry in out.values():
        entry["mb"] = round(entry["mb"], 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["params"]))


def export_mixed(
    config,
    loaded,
    spec,
    target: Path,
    scratch: Path,
    *,
    f32: Path,
    imatrix,
    progress: Progress = noop,
    announce: Announce = noop,
) -> MixedResult:
    """Choose every matrix's type and write the file to `target`; `f32` is the model's f32 GGUF."""
    model = loaded.model
    plans = plan_tensors(model)[4]
    candidates = check_candidates(config.candidates)
    llama = _llama_candidates(f32, scratch, candidates, config, imatrix, announce)
    floats = [c for c in candidates if c in FLOAT_CANDIDATES]
    coded = _codes_candidates(spec, config.codes_from, plans, announce)
    matrices = build_matrices(plans, llama, floats, coded)
    windows = calibration_windows(
        loaded.tokenizer, config.text, samples=config.calibration_samples, tokens=config.calibration_tokens
    )
    announce(
        f"{config.sensitivity} sensitivity of {len(matrices)} matrices x their candidate types on calibration text"
    )
    if config.sensitivity == "measured":
        score_measured(model, matrices, windows, progress)
    else:
        score_fisher(model, matrices, windows, progress)

    uniform = {}
    for name in [*llama, *floats, *coded]:
        fits = [m for m in matrices if any(o.label == name for o in m.options)]
        uniform[name] = {
            "matrices": len(fits),
            "of": len(matrices),
            "read_mb": round(
                sum(m.read_bytes(next(o for o in m.options if o.label == name)) for m in fits) / 1e6, 3
            ),
            "predicted_kld": sum(next(o for o in m.options if o.label == name).kld for m in fits),
        }
    budget = config.max_kld
    rounds: list[dict] = []
    best: tuple[float, Path, Choice, float] | None = None
    closest: tuple[float, Choice] | None = None
    cheapest = sum(min(m.read_bytes(o) for o in m.options) for m in matrices)
    previous: dict | None = None
    for index in range(MAX_ROUNDS):
        choice = choose(matrices, budget)
        labels = {name: option.label for name, option in choice.picks.items()}
        if labels == previous:
            break  # the chooser settled: measuring the same file again tells nothing new
        previous = labels
        path = scratch / f"mixed-{index}.gguf"
        blocks = {name: option.blocks() for name, option in choice.picks.items()}
        write_model_gguf(loaded, spec, path, outtype="f32", blocks=blocks, file_type=None)
        measured = file_kld(path, model, windows, config.threads)
        rounds.append(
            {
                "chooser_budget": budget,
                "predicted_kld": choice.predicted_kld,
                "measured_kld": measured,
                "read_mb": round(choice.read_bytes / 1e6, 3),
                "within": measured <= config.max_kld,
            }
        )
        announce(
            f"round {index + 1}: predicted KLD {choice.predicted_kld:.4g}, measured {measured:.4g} through llama.cpp, "
            f"{choice.read_bytes / 1e6:.1f} MB read per token"
        )
        if closest is None or measured < closest[0]:
            closest = (measured, choice)
        if measured <= config.max_kld and (best is None or choice.read_bytes < best[0]):
            best = (choice.read_bytes, path, choice, measured)
        if not choice.feasible or choice.predicted_kld <= 0:
            break
        if measured <= config.max_kld and choice.read_bytes <= cheapest:
            break  # the smallest file the candidates allow is within budget
        if measured <= config.max_kld and measured >= 0.9 * config.max_kld:
            break  # close enough to the budget: another round would gain little
        # llama.cpp adds error no estimate sees: aim the chooser's budget so the measured KLD lands just under
        budget = choice.predicted_kld * 0.95 * config.max_kld / max(measured, 1e-12)
    if best is None:
        assert closest is not None
        raise GreenlmError(
            f"no mix of {', '.join(candidates)} kept the KLD within --max-kld {config.max_kld:g}: the closest "
            f"measured {closest[0]:.4g} on calibration text through llama.cpp; raise --max-kld or add "
            "higher-precision candidates (q8_0, f16)"
        )
    _read, path, choice, measured = best
    path.replace(target)
    weights = sum(m.plan.data.size for m in matrices)
    stored = sum(choice.picks[m.plan.gguf_name].nbytes for m in matrices)
    notes = []
    if "token_embd.weight" in choice.picks and not any(p.gguf_name == "output.weight" for p in plans):
        notes.append("the token embedding is also the output head (tied): it is read in full every token")
    return MixedResult(
        max_kld=config.max_kld,
        sensitivity=(
            "fisher: diagonal Fisher of the model's own next-token distribution, 1 backward pass per window"
            if config.sensitivity == "fisher"
            else f"measured: KLD with one matrix replaced at a time, on {min(len(windows), MEASURED_WINDOWS)} windows"
        ),
        calibration={
            "text": "calibration split",
            "samples": int(windows.shape[0]),
            "tokens_per_sample": int(windows.shape[1]),
        },
        candidates=[*llama, *floats, *coded],
        predicted_kld=choice.predicted_kld,
        measured_kld=measured,
        read_bytes_per_token=choice.read_bytes,
        file_bytes=target.stat().st_size,
        bits_per_weight=8.0 * stored / weights,
        rounds=rounds,
        choice={name: option.label for name, option in choice.picks.items()},
        by_option=_summary(matrices, choice.picks),
        uniform=uniform,
        notes=notes,
    )
