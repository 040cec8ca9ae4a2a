"""Pure arithmetic: the energy forecast, the learning-rate schedule, the losses, payback, token counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from greenlm.energy.payback import payback_from_rows, payback_tokens, training_energy_j
from greenlm.errors import GreenlmError
from greenlm.train.forecast import (
    Forecast,
    forecast_energy,
    forecast_error_pct,
    forecast_step,
    quantile,
    steps_within,
)
from greenlm.train.losses import TeacherTopK, bucketed, distill_loss, generalized_jsd, kl, teacher_topk
from greenlm.train.schedule import lr_factor, warmup_steps_for
from greenlm.train.settings import TrainSettings, parse_count

# --- forecast -------------------------------------------------------------------------------------------------


def test_quantile_interpolates_like_numpy():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.0) == 1.0 and quantile(values, 1.0) == 5.0
    assert quantile(values, 0.1) == pytest.approx(1.4)
    assert quantile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_forecast_is_energy_so_far_plus_remaining_times_median():
    steps = [10.0, 12.0, 11.0, 30.0]  # one slow step: the median ignores it
    f = forecast_energy(
        steps, energy_so_far_j=100.0, steps_done=4, total_steps=40, step_durations_s=[1, 1, 2, 1]
    )
    assert f.step_energy_median_j == pytest.approx(11.5)
    assert f.total_j == pytest.approx(100.0 + 36 * 11.5)
    assert f.total_low_j == pytest.approx(100.0 + 36 * quantile(steps, 0.1))
    assert f.total_high_j == pytest.approx(100.0 + 36 * quantile(steps, 0.9))
    assert f.total_low_j <= f.total_j <= f.total_high_j
    assert f.eta_s == pytest.approx(36 * 1.0) and f.remaining_steps == 36
    assert Forecast.from_dict(f.to_dict()) == f


def test_forecast_of_a_finished_run_is_what_was_spent():
    f = forecast_energy([3.0, 4.0], energy_so_far_j=50.0, steps_done=2, total_steps=2)
    assert f.total_j == f.total_low_j == f.total_high_j == 50.0 and f.eta_s is None


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(step_energies_j=[], energy_so_far_j=1.0, steps_done=1, total_steps=2),
        dict(step_energies_j=[-1.0], energy_so_far_j=1.0, steps_done=1, total_steps=2),
        dict(step_energies_j=[1.0], energy_so_far_j=math.nan, steps_done=1, total_steps=2),
        dict(step_energies_j=[1.0], energy_so_far_j=1.0, steps_done=3, total_steps=2),
    ],
)
def test_forecast_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        forecast_energy(**kwargs)


def test_forecast_step_and_error_and_plan():
    assert forecast_step(100, 0.1) == 10 and forecast_step(5, 0.1) == 1 and forecast_step(3, 1.0) == 3
    assert forecast_error_pct(110.0, 100.0) == pytest.approx(10.0)
    assert forecast_error_pct(90.0, 100.0) == pytest.approx(-10.0)
    assert forecast_error_pct(1.0, 0.0) is None
    assert steps_within(10.0, 3.0) == 3 and steps_within(-1.0, 3.0) == 0


# --- schedule ---------------------------------------------------------------------------------------------------


def test_warmup_then_cosine_to_the_floor():
    total, warm = 100, warmup_steps_for(100, 0.05)
    assert warm == 5
    factors = [lr_factor(s, warmup_steps=warm, total_steps=total, min_ratio=0.1) for s in range(total + 3)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)  # the first step learns
    assert factors[5] == pytest.approx(1.0) and factors[total - 1] == pytest.approx(0.1)
    assert all(
        a >= b for a, b in zip(factors[5 : total - 1], factors[6:total], strict=True)
    )  # decays monotonically
    assert factors[total + 2] == pytest.approx(0.1)  # past the plan: the floor
    assert lr_factor(0, warmup_steps=0, total_steps=1) == 1.0


# --- losses -----------------------------------------------------------------------------------------------------


def _logits(seed, shape=(2, 5, 11)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2


def test_forward_and_reverse_kl_match_torch():
    s, t = _logits(0), _logits(1)
    s_logp, t_logp = F.log_softmax(s, -1), F.log_softmax(t, -1)
    torch_fkl = F.kl_div(s_logp, t_logp, log_target=True, reduction="none").sum(-1).mean()
    torch_rkl = F.kl_div(t_logp, s_logp, log_target=True, reduction="none").sum(-1).mean()
    assert distill_loss(s, t, loss="forward-kl") == pytest.approx(float(torch_fkl), rel=1e-5)
    assert distill_loss(s, t, loss="reverse-kl") == pytest.approx(float(torch_rkl), rel=1e-5)
    # temperature: logits scaled, loss times T^2
    hot = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="none")
    assert distill_loss(s, t, loss="forward-kl", temperature=2.0) == pytest.approx(
        float(hot.sum(-1).mean() * 4), rel=1e-5
    )


def test_generalized_jsd():
    p, q = F.log_softmax(_logits(2), -1), F.log_softmax(_logits(3), -1)
    half = generalized_jsd(p, q, 0.5)
    assert torch.allclose(half, generalized_jsd(q, p, 0.5), atol=1e-6)  # symmetric at beta 0.5
    assert float(half.max()) <= math.log(2) + 1e-6 and float(half.min()) >= 0  # JSD is bounded by ln 2
    assert float(generalized_jsd(p, p, 0.3).abs().max()) < 1e-6
    m = torch.log(0.5 * p.exp() + 0.5 * q.exp())
    assert torch.allclose(half, 0.5 * kl(p, m) + 0.5 * kl(q, m), atol=1e-6)
    with pytest.raises(ValueError):
        generalized_jsd(p, q, 1.0)


def test_topk_buckets_are_a_distribution_and_a_lower_bound():
    s, t = _logits(4), _logits(5)
    top = teacher_topk(t, 3, 1.0)
    assert top.ids.shape == (2, 5, 3)
    buckets = bucketed(F.log_softmax(s, -1), top.ids)
    assert torch.allclose(buckets.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    for loss in ("forward-kl", "reverse-kl", "jsd"):
        coarse = distill_loss(s, TeacherTopK(top.ids, top.logp), loss=loss)
        full = distill_loss(s, t, loss=loss)
        assert 0 <= float(coarse) <= float(full) + 1e-6, loss  # data-processing inequality
    everything = teacher_topk(t, 11, 1.0)  # k = vocabulary: nothing is lost
    assert distill_loss(s, TeacherTopK(everything.ids, everything.logp), loss="forward-kl") == pytest.approx(
        float(distill_loss(s, t, loss="forward-kl")), rel=1e-4
    )


# --- payback ----------------------------------------------------------------------------------------------------


def test_payback_tokens():
    assert payback_tokens(1000.0, 0.5, 0.3) == pytest.approx(5000.0)
    assert payback_tokens(1000.0, 0.3, 0.3) is None and payback_tokens(1000.0, 0.3, 0.4) is None
    with pytest.raises(ValueError):
        payback_tokens(-1.0, 0.5, 0.3)
    assert training_energy_j({"training": {"energy_j": 12.5}}) == 12.5
    assert training_energy_j({"steps": []}) is None and training_energy_j(None) is None


def test_payback_pairs_rows_on_the_same_engine_and_meter():
    parent = [
        {"engine": "llamacpp", "meter": "cpu-model", "decode_j_per_token": 0.2, "run_id": "p2"},
        {"engine": "transformers", "meter": "cpu-model", "decode_j_per_token": 0.5, "run_id": "p1"},
    ]
    variant = [{"engine": "transformers", "meter": "cpu-model", "decode_j_per_token": 0.4, "run_id": "v1"}]
    p = payback_from_rows(100.0, parent, variant, parent_name="p", variant_name="v")
    assert p.status == "ok" and p.tokens == pytest.approx(1000.0) and p.engine == "transformers"
    assert p.parent_run_id == "p1" and "1,000" in p.message
    worse = [{"engine": "transformers", "meter": "cpu-model", "decode_j_per_token": 0.6, "run_id": "v2"}]
    assert payback_from_rows(100.0, parent, worse, parent_name="p", variant_name="v").status == "no saving"
    none = payback_from_rows(100.0, parent, [], parent_name="p", variant_name="v")
    assert none.status == "unmeasured" and none.tokens is None and "measure both" in none.message
    other_meter = [{"engine": "transformers", "meter": "rapl", "decode_j_per_token": 0.1, "run_id": "v3"}]
    assert (
        payback_from_rows(100.0, parent, other_meter, parent_name="p", variant_name="v").status
        == "unmeasured"
    )


# --- settings ---------------------------------------------------------------------------------------------------


def test_token_counts_and_budgets():
    assert parse_count("2M", "--tokens") == 2_000_000 and parse_count("500k", "--tokens") == 500_000
    assert parse_count("1.5m", "--tokens") == 1_500_000 and parse_count("1234", "--tokens") == 1234
    with pytest.raises(GreenlmError, match="--tokens"):
        parse_count("lots", "--tokens")
    with pytest.raises(GreenlmError, match="no training budget"):
        TrainSettings().validate()
    with pytest.raises(GreenlmError, match="--steps and --minutes"):
        TrainSettings(steps=3, minutes=1.0).validate()
    for bad in (dict(steps=0), dict(steps=-2), dict(minutes=0.0), dict(minutes=-1.0), dict(tokens=0)):
        with pytest.raises(GreenlmError, match="must be"):
            TrainSettings(**bad).validate()
    assert TrainSettings(tokens=10, batch_size=2, seq_len=4, grad_accum=3).tokens_per_step == 24
