"""Token counts the gateway makes itself when an upstream reports none: a Hugging Face tokenizer directory or a
GGUF's vocabulary, a chat through the model's own template; and the whole-host meter the meter agent uses."""

from __future__ import annotations

import time

import pytest

from greenlm.energy.host_model import HostCpuModelMeter
from greenlm.gateway.agent import MeterAgent, MeterAgentConfig
from greenlm.gateway.tokens import TokenCounter, by_characters, prompt_chars
from tests.helpers import needs_llamacpp

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]


def test_a_tokenizer_directory_counts_chats_through_its_template(tiny_chat_dir):
    from transformers import AutoTokenizer

    counter = TokenCounter(str(tiny_chat_dir))
    reference = AutoTokenizer.from_pretrained(tiny_chat_dir)
    rendered = reference.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    expected = len(reference(rendered, add_special_tokens=False)["input_ids"])
    assert counter.prompt_tokens({"messages": MESSAGES}) == expected
    text = "The with statement wraps a block"
    assert counter.prompt_tokens({"prompt": text}) == len(
        reference(text, add_special_tokens=False)["input_ids"]
    )
    assert counter.prompt_tokens({"prompt": [5, 6, 7]}) == 3  # token ids: their count


@needs_llamacpp
def test_a_gguf_counts_as_its_directory_does(tiny_chat_dir, tiny_gguf):
    from_dir, from_gguf = TokenCounter(str(tiny_chat_dir)), TokenCounter(str(tiny_gguf))
    text = "Exceptions are raised when something goes wrong"
    assert from_gguf.count(text) == from_dir.count(text)
    assert from_gguf.chat_template is not None


def test_estimates_without_a_tokenizer():
    assert prompt_chars({"messages": MESSAGES}) == len("Be brief.") + len("What is a list?")
    assert prompt_chars({"prompt": ["ab", "cde"]}) == 5
    assert by_characters(9) == 3 and by_characters(0) == 0


def test_whole_host_cpu_model_and_the_agent_without_a_pid():
    meter = HostCpuModelMeter()
    a = meter.read()
    time.sleep(0.2)
    m = meter.measure(a, meter.read())
    assert m.energy_source == "estimated" and m.detail_j["cpu-static"] > 0
    assert "whole machine" in meter.describe()["scope"]
    agent = MeterAgent(MeterAgentConfig())
    try:
        if agent.meter.name.startswith("rapl"):
            pytest.skip("this machine has RAPL: the agent counts the host by its package counter")
        assert agent.scope == "host" and "whole machine" in agent.note
        first = agent.read_total()
        time.sleep(0.1)
        assert agent.read_total() > first >= 0
    finally:
        agent.close()
