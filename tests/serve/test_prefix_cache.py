"""Prefix reuse: a request whose prompt shares a prefix with an earlier or running one reuses those KV cells.

The slot choice and eviction rules on a stepper made of plain Python; then greenlm serve on the tiny model
(llama.cpp) over real HTTP against the same server with --no-prefix-cache: identical greedy outputs,
`usage.prompt_tokens_details.cached_tokens`, the /metrics counters, eviction when the slots are full, and a
copy of a running request's cells."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenlm.engines.stepper import SlotFeed, common_prefix
from greenlm.errors import GreenlmError
from tests.helpers import needs_llamacpp
from tests.serve.fakes import CounterMeter, CountingStepper

MODEL = "tiny"
SYSTEM = (
    "You are a careful assistant for the Python documentation. Answer in short sentences, cite the section "
    "you used, and say so when the documentation does not cover the question. "
) * 4


# ---- the rules, on a plain-Python stepper ----------------------------------------------------------------
class ReusingStepper(CountingStepper):
    reuses_prefixes = True

    def __init__(self, **kwargs):
        super().__init__(CounterMeter(), **kwargs)
        self.truncated: list[tuple[int, int]] = []
        self.copied: list[tuple[int, int]] = []

    def _truncate(self, slot, keep_tokens):
        self.truncated.append((slot, keep_tokens))

    def _copy(self, source, target):
        self.copied.append((source, target))


def run(stepper: ReusingStepper, slot: int, tokens: list[int]) -> None:
    stepper.step([SlotFeed(slot, tokens, True)])


def test_common_prefix():
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([1, 2, 3, 4, 5], [1, 2, 9, 4, 5]) == 2
    assert common_prefix(list(range(1000)), list(range(777)) + [-1]) == 777
    assert common_prefix([5], [6]) == 0


def test_a_new_request_takes_the_free_slot_sharing_most_and_computes_at_least_its_last_token():
    s = ReusingStepper(slots=3, step_tokens=32, context_tokens=64)
    prompt_a, prompt_b = [1, 2, 3, 4, 5, 6], [7, 8, 9, 10]
    for slot, prompt in ((0, prompt_a), (1, prompt_b)):
        admission = s.admit([0, 1, 2], prompt) if slot == 0 else s.admit([1, 2], prompt)
        assert admission.slot == slot and admission.cached_tokens == 0  # nothing shared: an empty slot
        run(s, slot, prompt)
        s.release(slot)
    assert s.kept_tokens() == len(prompt_a) + len(prompt_b)
    # a share shorter than min_reuse_tokens is not worth overwriting a kept prefix: the empty slot is taken
    assert s.admit([0, 1, 2], prompt_b + [11, 12]).slot == 2
    s.release(2)
    again = s.admit([0, 1], prompt_b + [11, 12], min_reuse_tokens=1)
    assert (again.slot, again.cached_tokens, again.source) == (1, 4, 1)
    assert s.tokens_in(1) == 4
    run(s, 1, [11, 12])  # fed after the kept cells, at positions 4 and 5
    assert s.tokens_in(1) == 6
    same = s.admit(
        [0, 2], prompt_a, min_reuse_tokens=1
    )  # all of it is kept: its last token is computed again
    assert (same.slot, same.cached_tokens) == (0, len(prompt_a) - 1)
    assert s.truncated[-1] == (0, len(prompt_a) - 1)


def test_when_every_slot_holds_something_the_one_released_longest_ago_is_overwritten():
    s = ReusingStepper(slots=2, step_tokens=32, context_tokens=64)
    for slot, prompt in ((0, [1, 2, 3]), (1, [4, 5, 6])):
        s.admit([0, 1] if slot == 0 else [1], prompt)
        run(s, slot, prompt)
    s.release(1)  # released first: the older one
    s.release(0)
    fresh = s.admit([0, 1], [9, 9, 9])
    assert (fresh.slot, fresh.cached_tokens) == (1, 0)
    assert 1 in s.released  # its cells were dropped (llama_memory_seq_rm), not reused


def test_a_running_slot_that_shares_more_is_copied_in_when_the_gain_is_worth_a_copy():
    s = ReusingStepper(slots=2, step_tokens=64, context_tokens=128)
    shared = list(range(1, 41))
    s.admit([0, 1], shared + [41])
    run(s, 0, shared + [41])  # slot 0 is running
    second = s.admit([1], shared + [42, 43])
    assert (second.slot, second.cached_tokens, second.source) == (1, 40, 0)
    assert s.copied == [(0, 1)] and s.truncated[-1] == (1, 40)
    s.release(1)
    short = ReusingStepper(slots=2, step_tokens=64, context_tokens=128)
    short.admit([0, 1], [1, 2, 3, 4])
    run(short, 0, [1, 2, 3, 4])
    small_gain = short.admit([1], [1, 2, 3, 9], min_copy_tokens=32)
    assert small_gain.cached_tokens == 0 and short.copied == []  # 3 shared tokens: not worth a copy


def test_without_reuse_a_slot_starts_empty_and_a_failed_step_is_never_reused():
    plain = CountingStepper(CounterMeter(), slots=2, step_tokens=16, context_tokens=64)
    assert plain.admit([0, 1], [1, 2, 3]).cached_tokens == 0
    run(plain, 0, [1, 2, 3])
    plain.release(0)
    assert plain.admit([0, 1], [1, 2, 3]).cached_tokens == 0
    with pytest.raises(GreenlmError):
        plain.admit([], [1, 2])
    s = ReusingStepper(slots=2, step_tokens=16, context_tokens=64)
    s.admit([0, 1], [1, 2, 3])
    s.fail_next = True
    with pytest.raises(GreenlmError):
        run(s, 0, [1, 2, 3])
    s.release(0)
    assert s.kept_tokens() == 0 and s.admit([0, 1], [1, 2, 3]).cached_tokens == 0


# ---- over HTTP, on llama.cpp ------------------------------------------------------------------------------
SERVER_ARGS = ("--served-model-name", MODEL, "--meter", "cpu-model", "--threads", "1", "--max-queue", "16")


@pytest.fixture(scope="module")
def cached(start_server, chat_model_dir):
    return start_server("--model", str(chat_model_dir), "--max-batch", "4", *SERVER_ARGS)


@pytest.fixture(scope="module")
def uncached(start_server, chat_model_dir):
    return start_server("--model", str(chat_model_dir), "--max-batch", "4", "--no-prefix-cache", *SERVER_ARGS)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60, max_retries=0)


def chat(
    c: openai.OpenAI, question: str, system: str = SYSTEM, max_tokens: int = 16, seed: int | None = None
):
    """Greedy, or seeded sampling (a random tiny model's greedy text soon repeats one token whatever the
    question; a seeded draw from the same logits differs by question and is as exact a check)."""
    return c.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0 if seed is None else 1.0,
        seed=seed,
        extra_body={"ignore_eos": True},
    )


def metric(server, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(server.url + "/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


QUESTIONS = ["What does the with statement do?", "How are exceptions raised?", "What is a list?"]


@needs_llamacpp
def test_shared_system_prompt_is_reused_with_the_same_greedy_output(cached, uncached):
    assert cached.ready["prefix_cache"] is True and uncached.ready["prefix_cache"] is False
    with client(cached) as c, client(uncached) as u:
        hits_before = metric(cached, "greenlm:prefix_cache_hit_tokens_total")
        reused = [chat(c, q) for q in QUESTIONS] + [chat(c, q, seed=7) for q in QUESTIONS]
        plain = [chat(u, q) for q in QUESTIONS] + [chat(u, q, seed=7) for q in QUESTIONS]
    assert [r.choices[0].message.content for r in reused] == [r.choices[0].message.content for r in plain]
    # the seeded draws come from high-entropy logits (a random model): cells reused at a wrong position or
    # from another prompt would change them
    assert all(len(set(r.choices[0].message.content)) > 5 for r in plain[len(QUESTIONS) :])
    cached_tokens = [r.usage.prompt_tokens_details.cached_tokens for r in reused]
    assert all(r.usage.prompt_tokens_details.cached_tokens == 0 for r in plain)
    prompt_tokens = reused[1].usage.prompt_tokens
    # the system prompt (most of each prompt) is reused from the second request on
    assert cached_tokens[1] > prompt_tokens * 0.8 and cached_tokens[2] > prompt_tokens * 0.8
    hits = metric(cached, "greenlm:prefix_cache_hit_tokens_total") - hits_before
    assert hits == sum(cached_tokens)
    assert metric(cached, "greenlm:prefix_cache_energy_avoided_joules_total") > 0
    assert metric(uncached, "greenlm:prefix_cache_hit_tokens_total") == 0


@needs_llamacpp
def test_a_request_arriving_while_another_runs_copies_its_cells(cached, uncached):
    # a system prompt of its own, so no free slot holds it: only the running request can give its cells
    system = SYSTEM.replace("careful", "patient")
    with client(uncached) as u:
        reference = chat(u, "And iterators?", system, 12).choices[0].message.content
    with client(cached) as c:
        stream = c.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": "Explain generators."},
            ],
            max_tokens=400,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)  # the first chunk opens the message; the first text means the prompt is cached
        assert any(c.choices and c.choices[0].delta.content for c in chunks)  # and it keeps decoding
        second: dict = {}
        worker = threading.Thread(target=lambda: second.update(r=chat(c, "And iterators?", system, 12)))
        worker.start()
        worker.join(60)
        stream.close()
    result = second["r"]
    assert result.usage.prompt_tokens_details.cached_tokens > result.usage.prompt_tokens * 0.8
    assert result.choices[0].message.content == reference


@needs_llamacpp
def test_full_slots_evict_the_prefix_released_longest_ago(start_server, chat_model_dir):
    server = start_server("--model", str(chat_model_dir), "--max-batch", "2", *SERVER_ARGS)
    # the names lead, so the three prompts share only the chat template's first tokens
    prompts = {name: f"{name}. {SYSTEM}" for name in ("Alpha", "Beta", "Gamma")}
    with client(server) as c:

        def reused(name: str) -> bool:
            usage = chat(c, "Hi", prompts[name], 4).usage
            share = usage.prompt_tokens_details.cached_tokens / usage.prompt_tokens
            assert share < 0.1 or share > 0.8, share  # a whole system prompt, or the template's few tokens
            return share > 0.8

        assert not reused("Alpha") and not reused("Beta")
        assert not reused("Gamma")  # both slots hold a prefix: Alpha's (the older) is overwritten
        assert reused("Beta")  # still kept
        assert not reused("Alpha")  # evicted, computed again (and now it evicts Gamma)
        assert reused("Beta")
