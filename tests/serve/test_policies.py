"""The policies as pure functions: numbers in, decisions out (no server, no clock, no thread)."""

from dataclasses import replace

import pytest

from greenlm.serve.ladder import Ladder, Variant
from greenlm.serve.policies import (
    Memory,
    Observed,
    State,
    credit_tokens,
    decide,
    quality_allowed,
    start_variant,
)
from greenlm.serve.policy_file import CarbonPolicy, IdlePolicy, LoadPolicy, PolicyConfig, QualityPolicy

LADDER = Ladder(
    [
        Variant("q8", "a.gguf", kld=0.004, decode_j_per_token=0.20, decode_tokens_per_s=60),
        Variant("q4", "b.gguf", kld=0.03, decode_j_per_token=0.12, decode_tokens_per_s=80),
        Variant("drop", "c.gguf", kld=0.20, decode_j_per_token=0.08, decode_tokens_per_s=110),
    ]
)
BUDGET = QualityPolicy(max_kld=0.05, window_tokens=1000, margin=0.1)


def policy(**kw) -> PolicyConfig:
    return PolicyConfig(**{"quality": BUDGET, "load": None, **kw})


def obs(now=100.0, variant="q4", cores=2, **kw) -> Observed:
    return Observed(now_s=now, state=State(variant, cores, kw.pop("loaded", True)), max_cores=2, **kw)


def kinds(decisions):
    return [(d.kind, d.from_, d.to, d.reason) for d in decisions]


def test_start_is_the_cheapest_inside_the_budget_unless_named():
    assert start_variant(policy(), LADDER).name == "q4"
    assert start_variant(policy(start="q8"), LADDER).name == "q8"
    assert start_variant(policy(quality=QualityPolicy(max_kld=0.001)), LADDER).name == "q8"  # nothing inside


def test_quality_budget_credit_hysteresis_and_repayment():
    p = policy()  # budget 0.05, margin 0.1: outside members serve up to a mean of 0.045
    drop = LADDER.get("drop")
    # nothing served yet: no credit, so nothing outside the budget may start
    allowed, status, _ = quality_allowed(obs(), p, LADDER, Memory())
    assert status == "tight" and {v.name for v in allowed} == {"q8", "q4"}
    # 100k tokens at 0.004: credit (0.045 x 100k - 400) / (0.2 - 0.045) = 26.5k tokens on drop
    served = dict(served_tokens=100_000, served_kld_sum=400.0)
    assert credit_tokens(obs(**served), p, drop) == pytest.approx(26_451.6, rel=1e-4)
    allowed, status, _ = quality_allowed(obs(**served), p, LADDER, Memory())
    assert status == "room" and [v.name for v in allowed] == ["drop", "q4", "q8"]
    # queued requests count as drop's when it would admit them: 30k queued tokens exhaust the credit
    queued = obs(**served, waiting_tokens=30_000, active_kld=0.03)
    assert credit_tokens(queued, p, drop) < 0
    assert quality_allowed(queued, p, LADDER, Memory())[1] == "tight"
    # little credit left: drop may not start, but keeps serving while it is the active one
    little = dict(served_tokens=100_000, served_kld_sum=4_400.0)
    assert 0 < credit_tokens(obs(**little), p, drop) < p.quality.min_credit_tokens
    assert quality_allowed(obs(**little), p, LADDER, Memory())[1] == "tight"
    assert quality_allowed(obs(variant="drop", **little), p, LADDER, Memory())[1] == "room"
    # over the budget (counting the tokens requests in flight may still generate): best quality only
    over = obs(served_tokens=1000, served_kld_sum=40.0, pending_tokens=200, pending_kld_sum=40.0)
    assert over.mean_kld() == pytest.approx(80 / 1200)
    allowed, status, _ = quality_allowed(over, p, LADDER, Memory())
    assert status == "over" and [v.name for v in allowed] == ["q8"]
    decisions, _ = decide(over, p, LADDER, Memory())
    assert kinds(decisions) == [("variant", "q4", "q8", "quality-budget")]


def test_carbon_high_serves_the_cheapest_allowed_low_the_best_and_keeps_between():
    p = policy(carbon=CarbonPolicy(high_g_per_kwh=400, low_g_per_kwh=250))
    room = dict(served_tokens=100_000, served_kld_sum=400.0)
    decisions, mem = decide(obs(intensity_g_per_kwh=450, **room), p, LADDER, Memory())
    assert kinds(decisions) == [("variant", "q4", "drop", "carbon-high")]  # credit in the budget
    tight = obs(variant="drop", intensity_g_per_kwh=450, served_tokens=1000, served_kld_sum=46.0)
    decisions, mem = decide(tight, p, LADDER, mem)
    assert kinds(decisions) == [("variant", "drop", "q4", "carbon-high")]  # the cheapest inside
    between = obs(variant="q4", intensity_g_per_kwh=300, served_tokens=1000, served_kld_sum=46.0)
    decisions, mem = decide(between, p, LADDER, mem)
    assert decisions == [] and mem.carbon_mode == "high"  # between the thresholds: keep
    decisions, mem = decide(obs(variant="q4", intensity_g_per_kwh=200), p, LADDER, mem)
    assert kinds(decisions) == [("variant", "q4", "q8", "carbon-low")]
    assert "200 g/kWh" in decisions[0].detail


def test_load_steps_up_cores_then_a_faster_variant_and_back_with_hysteresis():
    p = policy(
        load=LoadPolicy(ttft_slo_s=1.0, queue_slo_s=0.5, sustain_s=5, calm_s=20),
        idle=IdlePolicy(low_load_after_s=1),
        start="q4",
    )
    mem = replace(Memory(), low_load=True, quiet_since_s=0)
    slow = dict(ttft_p90_s=3.0, running=1, peak_concurrency=1)  # one long request, over the SLO, on 1 core
    decisions, mem = decide(obs(now=0, cores=1, **slow), p, LADDER, mem)
    assert decisions == [] and mem.over_since_s == 0  # not yet sustained
    decisions, mem = decide(obs(now=5, cores=1, **slow), p, LADDER, mem)
    assert kinds(decisions) == [("cores", "cores:1", "cores:2", "load-slo")] and mem.load_level == 1
    decisions, mem = decide(obs(now=7, **slow), p, LADDER, mem)
    assert decisions == []  # a new sustain window starts at each step
    decisions, mem = decide(obs(now=10, **slow), p, LADDER, mem)
    assert kinds(decisions) == [] and mem.load_level == 2  # no credit in the budget for drop yet
    slow.update(served_tokens=100_000, served_kld_sum=400.0)
    decisions, mem = decide(obs(now=10.5, **slow), p, LADDER, mem)
    assert kinds(decisions) == [("variant", "q4", "drop", "load-slo")] and mem.load_level == 2
    calm = dict(ttft_p90_s=0.2, running=1, peak_concurrency=2, served_tokens=100_000, served_kld_sum=400.0)
    decisions, mem = decide(obs(now=11, variant="drop", **calm), p, LADDER, mem)
    assert decisions == []
    decisions, mem = decide(obs(now=31, variant="drop", **calm), p, LADDER, mem)
    assert kinds(decisions) == [("variant", "drop", "q4", "load-calm")] and mem.load_level == 1
    # a blip over the SLO resets the calm clock: no flapping
    decisions, mem = decide(obs(now=40, **slow), p, LADDER, mem)
    decisions, mem = decide(obs(now=41, **calm), p, LADDER, mem)
    assert decisions == [] and mem.calm_since_s == 41


def test_with_every_core_already_load_goes_straight_to_a_faster_variant():
    p = policy(load=LoadPolicy(ttft_slo_s=1.0, sustain_s=2), start="q8")
    slow = dict(
        ttft_p90_s=3.0, running=8, waiting=4, peak_concurrency=12, served_tokens=10**5, served_kld_sum=400.0
    )
    _, mem = decide(obs(now=0, variant="q8", **slow), p, LADDER, Memory())
    decisions, mem = decide(obs(now=2, variant="q8", **slow), p, LADDER, mem)
    assert (
        kinds(decisions) == [("variant", "q8", "drop", "load-slo")]
        and "p90 TTFT 3.00 s" in decisions[0].detail
    )


def test_idle_shrinks_cores_unloads_and_restores_on_concurrency():
    p = policy(idle=IdlePolicy(unload_after_s=60, low_load_after_s=10, low_load_cores=1))
    mem = Memory()
    decisions, mem = decide(obs(now=0, peak_concurrency=1, running=1), p, LADDER, mem)
    assert decisions == []
    decisions, mem = decide(obs(now=10, peak_concurrency=1), p, LADDER, mem)
    assert kinds(decisions) == [("cores", "cores:2", "cores:1", "low-load")]
    decisions, mem = decide(obs(now=70, cores=1, idle_s=60), p, LADDER, mem)
    assert kinds(decisions) == [("unload", "q4", "unloaded", "idle-unload")]
    decisions, mem = decide(obs(now=71, cores=1, loaded=False, idle_s=61), p, LADDER, mem)
    assert decisions == []  # unloaded already: nothing more to do
    decisions, mem = decide(obs(now=72, cores=1, peak_concurrency=3, running=2, waiting=1), p, LADDER, mem)
    assert kinds(decisions) == [("cores", "cores:1", "cores:2", "load-rising")]
    assert not mem.low_load


def test_no_decision_when_nothing_changes():
    p = policy(load=LoadPolicy(), idle=IdlePolicy())
    decisions, mem = decide(obs(ttft_p90_s=0.1, running=1, peak_concurrency=1), p, LADDER, Memory())
    assert decisions == [] and mem == replace(Memory(), calm_since_s=100.0, quiet_since_s=None)


def test_a_core_cap_says_it_is_the_cap():
    p = policy(load=LoadPolicy(max_cores=1))
    decisions, _ = decide(obs(ttft_p90_s=0.1, running=2, peak_concurrency=2), p, LADDER, Memory())
    assert kinds(decisions) == [("cores", "cores:2", "cores:1", "max-cores")]
    assert decisions[0].detail == "load.max_cores is 1"
