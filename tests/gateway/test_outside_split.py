"""The gateway's outside split against greenlm serve's inside split, request by request, on a simulated
continuous-batching server (tests/gateway/serve_sim.py: serve's own split_step and update_costs on every step;
the gateway sees only chunk arrivals, counts at each end and meter readings): the issue's target, 90% of
requests within 10%, on the shapes the benchmark runs and on harder ones."""

from __future__ import annotations

import pytest

from greenlm.gateway.ledger import OutsideLedger
from tests.gateway.serve_sim import ServerShape, agreement, replay, simulate


def outside(meter, first):
    return OutsideLedger(meter, first, intensity_g_per_kwh=400.0, pue=1.0)


SHAPES = {
    "the benchmark's (c8, 128 + 64 tokens)": ServerShape(),
    "prompts of different lengths": ServerShape(prompt_jitter=60),
    "concurrency 4, short answers": ServerShape(concurrency=4, output_tokens=32),
    "slow decode steps": ServerShape(decode_s=0.008, base_s=0.02),
    "prefill steps drawing more power": ServerShape(prefill_w=18.0),
    "the gateway's loop held up mid-step": ServerShape(stall=0.3, stall_s=(0.003, 0.015)),
    "tokens with no text (partial characters)": ServerShape(empty_token=0.05),
    "a shared system prompt from the prefix cache": ServerShape(
        cached_prompt=1.0, prompt_tokens=464, concurrency=4, output_tokens=32
    ),
    "some prompts from the prefix cache": ServerShape(cached_prompt=0.3, prompt_jitter=30),
}
# a step's tokens capped (serve's --step-tokens): a burst of prompts is processed over several steps, and the
# gateway sees only the step that ends each
CHUNKED = ServerShape(step_tokens=256, prompt_jitter=40)


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("interval_s", [1.0, 0.25])
def test_nine_in_ten_requests_within_ten_percent_of_serves_own_split(shape, interval_s):
    for seed in (0, 1):
        trace = simulate(shape, requests=96, seed=seed)
        charged = replay(trace, outside, interval_s)
        got = agreement(trace, charged)
        assert got["within_10pct"] >= 0.9, got
        assert abs(got["total_rel"]) < 1e-3, got  # the same energy, split differently at most


@pytest.mark.parametrize("serve_costs", [True, False], ids=["serve's costs", "its own costs"])
def test_prompts_processed_over_several_steps(serve_costs):
    for seed in (0, 1):
        trace = simulate(CHUNKED, requests=96, seed=seed)
        got = agreement(trace, replay(trace, outside, 1.0, serve_costs=serve_costs))
        # its own costs are learned from the steps it sees, which bursts of prompts blur: the weaker case
        assert got["within_10pct"] >= (0.9 if serve_costs else 0.8), got


def test_serves_published_costs_are_used_when_given():
    trace = simulate(ServerShape(), requests=48, seed=3)
    books: list[OutsideLedger] = []

    def keep(meter, first):
        books.append(outside(meter, first))
        return books[-1]

    charged = replay(trace, keep, 1.0, serve_costs=True)
    assert books[0].costs_source == "test"  # given at every tick while requests ran
    assert agreement(trace, charged)["within_10pct"] >= 0.9
