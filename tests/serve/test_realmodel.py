"""greenlm serve on the built-in SmolLM2-135M (llama.cpp, its packaged Q4_1 GGUF), as `greenlm serve` runs it."""

from __future__ import annotations

import concurrent.futures

import openai
import pytest

from tests.helpers import needs_llamacpp

pytestmark = [pytest.mark.realmodel, needs_llamacpp]

PROMPTS = ["The with statement is used", "A list comprehension", "Exceptions in Python", "The import system"]


@pytest.fixture(scope="module")
def client(start_server):
    server = start_server("--max-batch", "4", "--meter", "cpu-model")
    assert server.ready["model"] == "smollm2-135m" and server.ready["engine"] == "llamacpp"
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0) as c:
        yield c


def test_chat_answers_with_its_energy(client):
    reply = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=48, temperature=0,
    )  # fmt: skip
    # the chat template is applied: the model answers and ends its turn with <|im_end|> (finish_reason stop)
    assert "4" in reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.energy_j > 0 and usage.prefill_energy_j > 0 and usage.decode_energy_j > 0
    assert usage.carbon_g > 0 and usage.meter == "cpu-model" and usage.energy_source == "estimated"


def test_concurrent_greedy_equals_one_at_a_time(client):
    def run(prompt: str) -> str:
        return (
            client.completions.create(
                model="smollm2-135m",
                prompt=prompt,
                max_tokens=32,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .text
        )

    alone = [run(p) for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(run, PROMPTS))
    assert (
        together == alone
    )  # exact on the real quantized model too (no flash attention, a KV stream per slot)
