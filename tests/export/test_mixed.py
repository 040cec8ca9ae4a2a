"""`greenlm export --mixed`: per-tensor types chosen for the fewest bytes read per decoded token within a KLD
budget. The chooser against brute force, the Fisher estimate against the measured KLD, and the written file
through llama.cpp against the budget."""

from __future__ import annotations

import itertools

import gguf
import numpy as np
import pytest

from greenlm.errors import GreenlmError
from greenlm.export.config import ExportConfig
from greenlm.export.mixed import Matrix, Option, choose
from greenlm.llamacpp.gguf_writer import TensorPlan
from tests.helpers import needs_llamacpp

SMALL = dict(calibration_samples=4, calibration_tokens=64)


def _matrix(name: str, options: list[tuple[str, int, float]], share: float = 1.0) -> Matrix:
    plan = TensorPlan(name, name, np.zeros((2, 2), np.float32), None)
    opts = [
        Option(label, label, gguf.GGMLQuantizationType.Q8_0, np.zeros(size, np.uint8), kld)
        for label, size, kld in options
    ]
    return Matrix(plan, opts, share)


def _brute_force(matrices, budget):
    best = None
    for combo in itertools.product(*(m.options for m in matrices)):
        kld = sum(o.kld for o in combo)
        read = sum(m.read_bytes(o) for m, o in zip(matrices, combo, strict=True))
        if kld <= budget and (best is None or read < best):
            best = read
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_chooser_finds_the_fewest_bytes_within_budget(seed):
    rng = np.random.default_rng(seed)
    matrices = []
    for i in range(6):
        sens = rng.uniform(0.1, 5.0)
        sizes = sorted(rng.choice(np.arange(10, 100), size=3, replace=False), reverse=True)
        options = [
            (f"t{k}", int(size), sens * (k + rng.uniform(0, 0.5)) ** 2) for k, size in enumerate(sizes)
        ]
        matrices.append(_matrix(f"m{i}", options, share=1.0 if i else 0.1))
    total_safe = sum(min(o.kld for o in m.options) for m in matrices)
    for budget in (total_safe + 1.0, total_safe + 5.0, total_safe + 20.0):
        choice = choose(matrices, budget)
        assert choice.feasible and choice.predicted_kld <= budget
        optimum = _brute_force(matrices, budget)
        # the Lagrangian sweep plus greedy fill is near-optimal on a multiple-choice knapsack
        assert choice.read_bytes <= optimum * 1.15


def test_an_impossible_budget_returns_the_safest_choice_marked_infeasible():
    m = _matrix("a", [("q8_0", 100, 0.01), ("q4_0", 50, 0.1)])
    choice = choose([m], 0.001)
    assert not choice.feasible and choice.picks["a"].label == "q8_0"


def test_an_input_only_embedding_costs_one_row_per_token():
    """Untied, the embedding is read one row per token: shrinking it saves almost no energy, so the budget
    goes to matrices that are read in full."""
    embed = _matrix("token_embd.weight", [("q8_0", 1000, 0.0), ("q4_0", 500, 1.0)], share=1 / 1000)
    ffn = _matrix("blk.0.ffn_up.weight", [("q8_0", 1000, 0.0), ("q4_0", 500, 1.0)])
    choice = choose([embed, ffn], 1.0)
    assert choice.picks["blk.0.ffn_up.weight"].label == "q4_0"
    assert choice.picks["token_embd.weight"].label == "q8_0"


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_kld=0.02), "--max-kld applies to --mixed"),
        (dict(candidates=("q4_0",)), "--candidates applies to --mixed"),
        (dict(mixed=True, quant="q4_0"), "drop --quant q4_0"),
        (dict(mixed=True, max_kld=0), "--max-kld must be a positive number"),
        (dict(mixed=True, max_kld=float("nan")), "--max-kld must be a positive number"),
        (dict(mixed=True, candidates=("q4_0", "q9_9")), "unknown candidate type 'q9_9'"),
        (dict(mixed=True, candidates=()), "--candidates is empty"),
        (dict(mixed=True, sensitivity="guess"), "unknown --sensitivity 'guess'"),
        (dict(mixed=True, codes_from=("/nonexistent/variant",)), "--codes-from /nonexistent/variant is not"),
        (dict(mixed=True, calibration_tokens=1), "--calibration-tokens must be a whole number of at least 2"),
    ],
)
def test_bad_mixed_settings_are_one_line(settings, message):
    with pytest.raises(GreenlmError, match=message):
        ExportConfig(out="x.gguf", **settings)


def test_candidates_may_be_given_as_one_comma_list():
    assert ExportConfig(out="x.gguf", mixed=True, candidates="Q8_0, q4_0").candidates == ("q8_0", "q4_0")


# --- on a tiny model, through llama.cpp ----------------------------------------------------------------


def _measured_file_kld(path, loaded, windows):
    from greenlm.export.mixed import file_kld

    return file_kld(path, loaded.model, windows, None)


@needs_llamacpp
def test_mixed_file_meets_its_budget_through_llama_cpp(tiny_model_dir, tiny_loaded, tmp_path):
    from greenlm.data.calibration import calibration_windows
    from greenlm.export import export_model
    from greenlm.llamacpp.inspect import tensor_type_report

    candidates = ("q8_0", "q5_0", "q4_0")
    loose = export_model(
        ExportConfig(
            out=str(tmp_path / "loose.gguf"),
            model=str(tiny_model_dir),
            mixed=True,
            max_kld=1e-3,
            candidates=candidates,
            **SMALL,
        )
    )
    tight = export_model(
        ExportConfig(
            out=str(tmp_path / "tight.gguf"),
            model=str(tiny_model_dir),
            mixed=True,
            max_kld=1e-4,
            candidates=candidates,
            **SMALL,
        )
    )
    windows = calibration_windows(tiny_loaded.tokenizer, None, samples=4, tokens=64)
    for result, budget in ((loose, 1e-3), (tight, 1e-4)):
        m = result.mixed
        assert result.quant_type == "mixed" and m["measured_kld"] <= budget
        assert _measured_file_kld(result.out, tiny_loaded, windows) == pytest.approx(
            m["measured_kld"], rel=1e-3
        )
        assert len(m["choice"]) == 15  # every weight matrix, each with its type reported
        held = {k: v["tensors"] for k, v in tensor_type_report(result.out).by_type.items() if k != "f32"}
        assert held == {label: e["matrices"] for label, e in m["by_option"].items()}
    # a tighter budget costs bytes, never the other way round
    assert tight.mixed["read_bytes_per_token"] > loose.mixed["read_bytes_per_token"]
    assert loose.mixed["read_bytes_per_token"] <= loose.mixed["uniform"]["q8_0"]["read_mb"] * 1e6


@needs_llamacpp
def test_an_unreachable_budget_writes_nothing(tiny_model_dir, tmp_path):
    from greenlm.export import export_model

    with pytest.raises(GreenlmError, match="no mix of q4_0 kept the KLD within --max-kld 1e-09"):
        export_model(
            ExportConfig(
                out=str(tmp_path / "m.gguf"),
                model=str(tiny_model_dir),
                mixed=True,
                max_kld=1e-9,
                candidates=("q4_0",),
                **SMALL,
            )
        )
    assert list(tmp_path.iterdir()) == []


@needs_llamacpp
def test_greenlm_codes_are_candidates(tiny_model_dir, tmp_path):
    from greenlm.compress.pipeline import CompressConfig, compress
    from greenlm.export import export_model

    compress(
        CompressConfig(
            recipe=[{"method": "gptq", "kernel": "dense"}],
            out=str(tmp_path / "gptq"),
            model=str(tiny_model_dir),
            evaluate=False,
            **SMALL,
        )
    )
    result = export_model(
        ExportConfig(
            out=str(tmp_path / "m.gguf"),
            model=str(tiny_model_dir),
            mixed=True,
            max_kld=1e-3,
            candidates=("q8_0", "q4_0"),
            codes_from=(str(tmp_path / "gptq"),),
            **SMALL,
        )
    )
    uniform = result.mixed["uniform"]
    assert uniform["gptq:q4_0"]["matrices"] == 14  # every linear layer; the tied embedding has no GPTQ codes
    # GPTQ's codes are predicted to cost less KLD than llama.cpp's own Q4_0 rounding at the same size
    assert uniform["gptq:q4_0"]["predicted_kld"] < uniform["q4_0"]["predicted_kld"]


@needs_llamacpp
def test_a_low_bit_variant_is_refused_for_mixed(tiny_model_dir, tmp_path):
    from greenlm.compress.pipeline import CompressConfig, compress
    from greenlm.export import export_model

    compress(
        CompressConfig(
            recipe=[{"method": "rtn", "bits": 4, "group_size": 32, "kernel": "dequant_eager"}],
            out=str(tmp_path / "v"),
            model=str(tiny_model_dir),
            evaluate=False,
            **SMALL,
        )
    )
    with pytest.raises(GreenlmError, match="--mixed chooses types for a float model"):
        export_model(
            ExportConfig(out=str(tmp_path / "m.gguf"), model=str(tmp_path / "v"), mixed=True, **SMALL)
        )


def test_fisher_ranks_matrices_like_the_measured_kld(tiny_loaded):
    """The cheap estimate must order the matrices' sensitivities as the measured KLD does."""
    import torch

    from greenlm.data.calibration import calibration_windows
    from greenlm.export.sensitivity import fisher_diagonal, fisher_kld, measured_kld, reference_logprobs
    from greenlm.kernels.quant_grid import GGUF_GRIDS, rtn

    model = tiny_loaded.model
    windows = calibration_windows(tiny_loaded.tokenizer, None, samples=4, tokens=64)
    fisher = fisher_diagonal(model, windows)
    refs = reference_logprobs(model, windows)
    params = {n: p for n, p in model.named_parameters() if p.ndim == 2}
    estimated, measured = [], []
    for name, param in params.items():
        rounded = rtn(param.detach(), 4, 32, True, GGUF_GRIDS["q4_0"]).dequantize()
        estimated.append(fisher_kld(fisher[name], rounded - param.detach()))
        measured.append(measured_kld(model, param, rounded, windows, refs))
    # q and k move the KL by ~4e-9 nats: measured in float64, far above its rounding, so every value is a
    # divergence (positive) whatever the host's SIMD width; in float32 they were rounding noise of either sign
    assert min(measured) > 0, measured
    rank = lambda v: torch.tensor(v).argsort().argsort().float()  # noqa: E731
    rho = float(torch.corrcoef(torch.stack([rank(estimated), rank(measured)]))[0, 1])
    assert rho > 0.8, (rho, estimated, measured)
    # and the per-matrix estimate is the right size: most within 25% of the measurement (the diagonal misses
    # the cross terms between weights; seen here: every matrix within 15%)
    ratio = torch.tensor(estimated) / torch.tensor(measured)
    assert bool(((ratio > 0.1) & (ratio < 10)).all()), ratio
    assert float(((ratio > 0.75) & (ratio < 1.25)).float().mean()) >= 0.6, ratio


@needs_llamacpp
def test_k_quants_are_offered_only_where_rows_fit(wide_model_dir, tiny_model_dir, tmp_path):
    """A k-quant needs rows in multiples of 256: on 64-wide rows it is offered for no matrix (and forcing it on
    the embedding would make llama.cpp write a corrupt tensor); on 256-wide rows it is offered."""
    from greenlm.export import export_model

    narrow = export_model(
        ExportConfig(
            out=str(tmp_path / "n.gguf"),
            model=str(tiny_model_dir),
            mixed=True,
            max_kld=1e-3,
            candidates=("q8_0", "q6_k"),
            **SMALL,
        )
    )
    assert narrow.mixed["uniform"]["q6_k"]["matrices"] == 0
    wide = export_model(
        ExportConfig(
            out=str(tmp_path / "w.gguf"),
            model=str(wide_model_dir),
            mixed=True,
            max_kld=1e-3,
            candidates=("q8_0", "q6_k"),
            **SMALL,
        )
    )
    # every matrix with 256-multiple rows: the down projections (512 wide) and all others (256 wide)
    assert wide.mixed["uniform"]["q6_k"]["matrices"] == wide.mixed["uniform"]["q8_0"]["matrices"] == 15


@needs_llamacpp
def test_an_embedding_type_the_rows_do_not_fit_is_refused(tiny_model_dir, tmp_path):
    from greenlm.export import export_model

    with pytest.raises(
        GreenlmError, match="q6_k stores rows in blocks of 256 and token_embd.weight has rows 64"
    ):
        export_model(
            ExportConfig(
                out=str(tmp_path / "m.gguf"), model=str(tiny_model_dir), quant="q8_0", embedding_type="q6_k"
            )
        )
    assert list(tmp_path.iterdir()) == []


def test_the_kld_of_a_tiny_logit_change_is_measured_not_rounded():
    """A change of 1e-4 in the logits moves the KL by ~1e-9 nats, below what a float32 sum over 32k tokens
    resolves: the KL is computed in float64, matches its second-order value and is never negative."""
    import torch

    from greenlm.export.sensitivity import window_kld

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 32000, generator=gen) * 3
    delta = torch.randn(8, 32000, generator=gen)
    ref = torch.log_softmax(logits, -1)
    eps = 1e-4
    measured = window_kld(ref, logits + eps * delta)
    # KL(p || p shifted by eps*delta) = eps^2/2 Var_p(delta) + O(eps^3)
    p = ref.double().exp()
    d = delta.double()
    second_order = 0.5 * eps**2 * ((p * d**2).sum(-1) - (p * d).sum(-1) ** 2)
    assert torch.allclose(measured, second_order, rtol=0.02), (measured, second_order)
    assert bool((window_kld(ref, logits) >= 0).all())
