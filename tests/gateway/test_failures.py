"""Upstreams that fail: killed mid-stream (the client gets an error event), silent (time-out, then another
upstream), stalled mid-stream (idle time-out), all down (one OpenAI-shaped error), unreachable at start."""

from __future__ import annotations

import json
import os
import time

import httpx
import openai
import pytest

from greenlm.errors import GreenlmError
from tests.gateway.conftest import free_port
from tests.gateway.fakes import FakeUpstream
from tests.helpers import needs_llamacpp

pytestmark = needs_llamacpp
NO_EOS = {"2": -100}  # the tiny tokenizer's </s>: generate to max_tokens


@pytest.fixture
def fake():
    made: list[FakeUpstream] = []

    def make(mode: str) -> FakeUpstream:
        made.append(FakeUpstream(mode))
        return made[-1]

    yield make
    for f in made:
        f.close()


def test_an_upstream_killed_mid_stream_ends_the_stream_with_an_error_event(start_llama, start_gateway):
    victim = start_llama()
    gw = start_gateway(upstreams=[victim.url])
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="x", timeout=60, max_retries=0) as client:
        stream = client.completions.create(
            model=gw.gateway.model_id,
            prompt="The with statement",
            max_tokens=3000,
            stream=True,
            logit_bias=NO_EOS,
        )
        seen = 0
        with pytest.raises(openai.APIError, match="failed after"):
            for chunk in stream:
                seen += bool(chunk.choices and chunk.choices[0].text)
                if seen == 5:
                    victim.kill()
    assert seen >= 5
    # the broken request is booked with what it was seen doing (the killed process's last CPU time, since the
    # meter's previous reading, died with it: it may be 0 J)
    energy = gw.settled_energy()
    assert energy["requests"] == 1 and energy["in_flight"] == 0
    assert energy["requests_j"] + energy["idle_j"] == pytest.approx(energy["meter_total_j"], rel=1e-9)


def test_a_silent_upstream_times_out_and_the_request_moves_to_another(fake, start_llama, start_gateway):
    silent = fake("silent")
    llama = start_llama()
    gw = start_gateway(upstreams=[silent.url, llama.url], first_byte_timeout_s=1.0, health_interval_s=30)
    names = [u.name for u in gw.gateway.upstreams]
    model = gw.gateway.model_id  # the first upstream's: the fake's
    t0 = time.monotonic()
    r = httpx.post(
        gw.url + "/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 4}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["upstream"] == names[1] and silent.posts == 1
    assert 1.0 <= time.monotonic() - t0 < 20
    assert not gw.gateway.upstreams[0].up  # taken out at once; health checks put it back
    body = {"model": model, "prompt": "Hi", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", gw.url + "/v1/completions", json=body, timeout=30) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        lines = list(s.iter_lines())
    assert "data: [DONE]" in lines and any('"text"' in line for line in lines)
    assert silent.posts == 1  # the down upstream got no second request while another is up
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'reason="first_byte_timeout"' in metrics and "greenlm:upstream_up{" in metrics


def test_a_stream_that_stalls_gets_an_idle_timeout_error_event(fake, start_gateway):
    stalled = fake("stall")
    # the fake runs in this process: its tree is the test's own
    gw = start_gateway(upstreams=[stalled.url], idle_timeout_s=1.0, upstream_pids=[os.getpid()])
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hel"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "upstream_failed" and "no event for 1 s" in error["message"]
    assert events[-1] == "[DONE]"


def test_every_upstream_down_is_one_openai_shaped_error(start_llama, start_gateway):
    llama = start_llama()
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(upstreams=[llama.url, dead], health_interval_s=0.2)
    assert any("is down at start" in n for n in gw.notes)
    assert [u.up for u in gw.gateway.upstreams] == [True, False]
    llama.kill()
    deadline = time.monotonic() + 20
    while gw.gateway.upstreams[0].up and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(gw.url + "/health").status_code == 503
    r = httpx.post(gw.url + "/v1/completions", json={"model": gw.gateway.model_id, "prompt": "x"}, timeout=30)
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_unavailable" and "2 tried" in error["message"]


def test_no_upstream_answering_at_start_refuses_to_start(start_gateway):
    with pytest.raises(GreenlmError, match="no upstream answers: .*cannot connect"):
        start_gateway(upstreams=[f"http://127.0.0.1:{free_port()}"])
