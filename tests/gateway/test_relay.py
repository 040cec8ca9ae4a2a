"""The gateway over real HTTP in front of real upstreams: llama-cpp-python's own server (no usage in its
streams) and greenlm serve (its own energy in its usage), driven by the official openai client and httpx."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest

from tests.helpers import needs_llamacpp

pytestmark = needs_llamacpp

ENERGY = ("energy_j", "prefill_energy_j", "decode_energy_j", "carbon_g", "meter", "energy_source", "upstream")


def usage_of(obj) -> dict:
    usage = obj.usage
    return usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)


def check_energy(usage: dict, upstream: str) -> None:
    assert all(k in usage for k in ENERGY), usage
    assert usage["energy_j"] > 0 and usage["upstream"] == upstream
    assert usage["energy_j"] == pytest.approx(usage["prefill_energy_j"] + usage["decode_energy_j"])
    assert usage["carbon_g"] == pytest.approx(usage["energy_j"] / 3.6e6 * 475.0)
    assert (usage["meter"], usage["energy_source"]) == ("cpu-model", "estimated")


@pytest.fixture(scope="module")
def llama(start_llama):
    return start_llama()


def client_of(gw, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, timeout=60, max_retries=0)


def test_openai_client_through_the_gateway_to_llama_cpp_server(llama, start_gateway, tiny_gguf):
    gw = start_gateway(upstreams=[llama.url])
    name = gw.gateway.upstreams[0].name
    model = gw.gateway.model_id
    assert model == str(tiny_gguf)  # llama-cpp-python's server names its model by its path
    with client_of(gw) as client:
        assert [m.id for m in client.models.list().data] == [model]
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Tell me about lists"}], max_tokens=12
        )
        usage = usage_of(chat)
        check_energy(usage, name)
        assert usage["completion_tokens"] >= 1 and "token_counts" not in usage  # its non-streaming usage
        text = client.completions.create(model=model, prompt="The with statement", max_tokens=10)
        check_energy(usage_of(text), name)

        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Say something"}],
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        final = chunks[-1]
        assert final.choices == [] and final.usage is not None
        streamed = usage_of(final)
        check_energy(streamed, name)
        # llama-cpp-python streams no usage: counted from the chunks, and said so
        output = [c for c in chunks[:-1] if c.choices and c.choices[0].delta.content]
        assert streamed["token_counts"] == "estimated from chunks"
        assert streamed["completion_tokens"] == len(output)

        plain = list(client.completions.create(model=model, prompt="def f(x):", max_tokens=8, stream=True))
        assert all(c.usage is None for c in plain)  # not asked for: none
        assert "".join(c.choices[0].text for c in plain if c.choices)
    energy = gw.settled_energy()
    assert energy["requests"] == 4 and energy["pending_j"] == 0
    assert energy["requests_j"] + energy["idle_j"] == pytest.approx(energy["meter_total_j"], rel=1e-9)


def test_tokenizer_counts_when_the_upstream_reports_none(llama, start_gateway, tiny_gguf):
    gw = start_gateway(upstreams=[llama.url], tokenizer=str(tiny_gguf))
    with client_of(gw) as client:
        chunks = list(
            client.chat.completions.create(
                model=gw.gateway.model_id,
                messages=[{"role": "user", "content": "Exceptions are raised when something goes wrong"}],
                max_tokens=10,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    usage = usage_of(chunks[-1])
    assert usage["token_counts"] == "counted by the gateway's tokenizer"
    assert usage["prompt_tokens"] > 10  # the chat template's tokens and the message's, not 1 per 4 characters


def test_greenlm_serve_upstream_keeps_its_own_figures_beside_the_gateways(greenlm_serve, start_gateway):
    gw = start_gateway(upstreams=[greenlm_serve.url])
    assert gw.gateway.model_id == "tiny"
    with client_of(gw) as client:
        done = client.completions.create(
            model="tiny", prompt="Lists are mutable", max_tokens=24, extra_body={"ignore_eos": True}
        )
        usage = usage_of(done)
        check_energy(usage, gw.gateway.upstreams[0].name)
        inside = usage["upstream_energy"]
        assert inside["energy_j"] > 0 and inside["meter"] == "cpu-model" and usage["completion_tokens"] == 24
        chunks = list(
            client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "Hello"}],
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
        streamed = usage_of(chunks[-1])
        assert streamed["completion_tokens"] == 16 and "token_counts" not in streamed  # the upstream's usage
        assert streamed["upstream_energy"]["energy_j"] > 0
        assert [c for c in chunks[:-1] if c.usage is not None] == []
    # greenlm serve publishes the weights of its split: the gateway's meter group reads them from /energy
    upstream, group = gw.gateway.upstreams[0], gw.gateway.groups[0]
    assert upstream.greenlm and upstream.describe()["greenlm"]
    published = httpx.get(greenlm_serve.url + "/energy", timeout=30).json()["phase_costs"]
    costs = group.upstream_costs()
    assert costs is not None and costs.decode_j_per_token == pytest.approx(published["decode_j_per_token"])
    group.ledger.use_upstream_costs(costs, "test")
    assert gw.gateway.energy()["meters"][0]["phase_costs"]["source"] == "test"


def test_hostile_clients_get_openai_shaped_errors(llama, start_gateway):
    gw = start_gateway(upstreams=[llama.url], max_body_bytes=4096, api_key="sesame")
    headers = {"Authorization": "Bearer sesame"}
    url = gw.url + "/v1/chat/completions"
    bad = httpx.post(url, content=b'{"model": "x", "messages": [', headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    huge = httpx.post(url, content=b'{"model": "' + b"x" * 100_000 + b'"}', headers=headers)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    wrong = httpx.post(url, json={"model": "gpt-4", "messages": []}, headers=headers)
    assert wrong.status_code == 404 and "this gateway serves" in wrong.json()["error"]["message"]
    assert httpx.post(url, json={"model": "x"}).status_code == 401
    assert httpx.get(gw.url + "/energy").status_code == 401
    assert (
        httpx.get(gw.url + "/health").status_code == 200 and httpx.get(gw.url + "/metrics").status_code == 200
    )
    refused = httpx.post(
        url, json={"model": gw.gateway.model_id, "messages": "not a list", "max_tokens": 2}, headers=headers
    )
    # the upstream's own answer, in OpenAI's shape (llama-cpp-python's server answers a bad field with a 500)
    assert refused.status_code in (400, 422, 500) and "messages" in refused.json()["error"]["message"]


def test_64_concurrent_requests_and_the_invariant(llama, start_gateway):
    gw = start_gateway(upstreams=[llama.url])
    model = gw.gateway.model_id

    def one(i: int) -> float:
        body = {"model": model, "prompt": f"Request {i}: the import system", "max_tokens": 6}
        if i % 2:
            body.update(stream=True, stream_options={"include_usage": True})
            with httpx.stream("POST", gw.url + "/v1/completions", json=body, timeout=120) as r:
                assert r.status_code == 200
                events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            return json.loads(events[-2])["usage"]["energy_j"]
        r = httpx.post(gw.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["energy_j"]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        figures = list(pool.map(one, range(64)))
    assert len(figures) == 64 and all(f >= 0 for f in figures)
    energy = gw.settled_energy()
    assert energy["requests"] == 64 and energy["in_flight"] == 0
    # every joule the meter saw went to a request or to idle, and the requests' usage figures are those joules
    assert energy["requests_j"] + energy["idle_j"] == pytest.approx(energy["meter_total_j"], rel=1e-9)
    assert sum(figures) == pytest.approx(energy["requests_j"], rel=1e-9)
    metrics = httpx.get(gw.url + "/metrics").text
    assert (
        'greenlm:request_success_total{finished_reason="length"' in metrics
        or "greenlm:request_success_total" in metrics
    )
