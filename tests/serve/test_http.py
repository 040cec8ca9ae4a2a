"""greenlm serve over real HTTP on the tiny model (llama.cpp): the official openai client, raw httpx for the
error cases, concurrency, the energy account, /metrics, overload, disconnects, auth and SIGTERM."""

from __future__ import annotations

import base64
import concurrent.futures
import signal
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import needs_llamacpp

pytestmark = needs_llamacpp

MODEL = "tiny"
PROMPTS = [
    "The with statement",
    "Lists are mutable",
    "def f(x):",
    "Exceptions are raised",
    "A class definition",
    "The import system",
    "Strings are immutable",
    "for i in range(10):",
]
ENERGY_FIELDS = ("energy_j", "prefill_energy_j", "decode_energy_j", "carbon_g", "meter", "energy_source")
TIMEOUT = httpx.Timeout(60.0)


@pytest.fixture(scope="module")
def server(start_server, chat_model_dir):
    return start_server(
        "--model", str(chat_model_dir), "--served-model-name", MODEL, "--max-batch", "8",
        "--max-queue", "16", "--max-body-bytes", "32768", "--meter", "cpu-model", "--threads", "1",
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60, max_retries=0) as c:
        yield c


def complete(client, prompt: str, max_tokens: int = 24):
    return client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True}
    )


def test_startup_record_and_models(server, client):
    ready = server.ready
    assert ready["engine"] == "llamacpp" and ready["max_batch"] == 8 and ready["host"] == "127.0.0.1"
    assert ready["meter"] == "cpu-model" and ready["energy_source"] == "estimated"
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_chat_with_energy_in_usage_streaming_and_not(client):
    messages = [{"role": "user", "content": "Tell me about the with statement."}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    usage = plain.usage
    assert plain.choices[0].message.role == "assistant" and plain.choices[0].finish_reason in (
        "stop",
        "length",
    )
    assert usage.completion_tokens >= 1 and usage.prompt_tokens > 5
    assert usage.energy_j > 0 and usage.energy_j == pytest.approx(
        usage.prefill_energy_j + usage.decode_energy_j
    )
    assert usage.carbon_g == pytest.approx(usage.energy_j / 3.6e6 * 475.0)
    assert (usage.meter, usage.energy_source) == ("cpu-model", "estimated")

    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == usage.completion_tokens
    assert all(getattr(final.usage, f) is not None for f in ENERGY_FIELDS) and final.usage.energy_j > 0


def test_completions_stop_and_seeded_sampling(client):
    full = complete(client, PROMPTS[0]).choices[0].text
    stop = full[5:8]
    stopped = client.completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].finish_reason == "stop" and full.startswith(stopped.choices[0].text)
    assert stop not in stopped.choices[0].text
    seeded = [
        client.completions.create(model=MODEL, prompt="x", max_tokens=12, temperature=1.0, seed=11)
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_concurrent_greedy_outputs_equal_one_at_a_time(server, client):
    alone = [complete(client, p).choices[0].text for p in PROMPTS]
    before = httpx.get(server.url + "/energy").json()
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: complete(client, p), PROMPTS))
    assert len(set(alone)) > 1  # the prompts lead to different texts: the comparison means something
    assert [r.choices[0].text for r in together] == alone  # exact: one KV stream per slot, no flash attention
    after = httpx.get(server.url + "/energy").json()
    # every joule charged to these requests reached their responses, and the account balances
    charged = sum(r.usage.energy_j for r in together)
    assert after["requests_j"] - before["requests_j"] == pytest.approx(charged, rel=1e-9)
    assert abs(after["accounting_gap_j"]) < 1e-9
    # against the meter's own reading over the server's life (cpu-model: its memory term is a two-point
    # trapezoid per window, so a sum of windows can differ from one long window by a little)
    assert after["invariant_gap_rel"] < 1e-3
    assert after["idle_j"] > 0 and after["meter_total_j"] > after["requests_j"]


def test_metrics_parse_and_balance(server):
    text = httpx.get(server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "greenlm:num_requests_running",
        "greenlm:num_requests_waiting",
        "greenlm:prompt_tokens",
        "greenlm:generation_tokens",
        "greenlm:request_success",
        "greenlm:time_to_first_token_seconds",
        "greenlm:inter_token_latency_seconds",
        "greenlm:e2e_request_latency_seconds",
        "greenlm:request_queue_time_seconds",
        "greenlm:request_energy_joules",
        "greenlm:energy_joules",
        "greenlm:carbon_grams",
        "greenlm:power_watts",
        "greenlm:tokens_per_joule",
    ):
        assert name in families, name
        assert all(s.labels.get("model_name") == MODEL for s in families[name].samples)
    assert families["greenlm:time_to_first_token_seconds"].type == "histogram"
    phases = {
        s.labels["phase"]: s.value
        for s in families["greenlm:energy_joules"].samples
        if s.name.endswith("_total")
    }
    assert set(phases) == {"prefill", "decode", "idle"} and all(v > 0 for v in phases.values())
    (meter_total,) = [
        s.value for s in families["greenlm:meter_energy_joules"].samples if s.name.endswith("_total")
    ]
    assert sum(phases.values()) == pytest.approx(meter_total, rel=1e-3)
    (tokens,) = [s.value for s in families["greenlm:generation_tokens"].samples if s.name.endswith("_total")]
    assert tokens >= 8 * 24


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "gpt-4", "prompt": "x"}, 404, "model", "model_not_found"),
        ({"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature", None),
        ({"model": MODEL, "prompt": "x", "temperature": 3}, 400, "temperature", None),
        ({"model": MODEL, "prompt": "x", "max_tokens": 100000}, 400, "max_tokens", "context_length_exceeded"),
        ({"model": MODEL, "prompt": "the " * 5000}, 400, "prompt", "context_length_exceeded"),
        ({"model": MODEL, "prompt": ""}, 400, "prompt", None),
        ({"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt", None),
        ({"model": MODEL, "prompt": "x", "n": 2}, 400, "n", None),
        ({"prompt": "x"}, 400, "model", None),
    ],
)
def test_completion_errors_have_openai_shape(server, body, status, param, code):
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["code"] == code


def test_chat_errors_malformed_json_unknown_routes_and_big_bodies(server):
    url = server.url
    cases = [
        httpx.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": []}),
        httpx.post(
            url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        ),
        httpx.post(url + "/v1/chat/completions", content=b'{"model": "tiny", "messages": [', timeout=TIMEOUT),
        httpx.post(url + "/v1/completions", content=b"[1, 2]"),
    ]
    assert [r.status_code for r in cases] == [400, 400, 400, 400]
    assert "not valid JSON" in cases[2].json()["error"]["message"]
    missing = httpx.get(url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    big = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x" * 40000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    # curl -d sends a form content type: the JSON is read all the same
    ok = httpx.post(
        url + "/v1/completions",
        content=b'{"model": "tiny", "prompt": "Hi", "max_tokens": 2}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert ok.status_code == 200 and ok.json()["usage"]["energy_j"] > 0


# ---- a second server: one slot, a queue of one, an API key ------------------------------------------------
KEY = "s3cret"


@pytest.fixture(scope="module")
def small(start_server, chat_model_dir):
    return start_server(
        "--model", str(chat_model_dir), "--served-model-name", MODEL, "--max-batch", "1",
        "--max-queue", "1", "--api-key", KEY, "--meter", "cpu-model", "--threads", "1",
    )  # fmt: skip


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def basic(password: str, user: str = "me") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_api_key_guards_the_api_energy_and_dashboard_not_health_or_metrics(small):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    for headers in ({}, auth("wrong"), {"Authorization": KEY}):
        r = httpx.post(small.url + "/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "www-authenticate" not in r.headers
    assert httpx.get(small.url + "/v1/models").status_code == 401
    assert httpx.get(small.url + "/health").status_code == 200
    assert httpx.get(small.url + "/metrics").status_code == 200
    with openai.OpenAI(base_url=small.url + "/v1", api_key=KEY, max_retries=0) as c:
        assert c.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.energy_j > 0
    # the energy account and the dashboard show per-request and load data: the key, as a Bearer token or as
    # the password of HTTP Basic (what a browser sends once the dashboard's challenge made it ask)
    for path in ("/energy", "/dashboard", "/dashboard/data"):
        for headers in (
            {},
            auth("wrong"),
            {"Authorization": KEY},
            basic("wrong"),
            {"Authorization": "Basic !!"},
        ):
            r = httpx.get(small.url + path, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, headers)
            challenge = 'Basic realm="greenlm"' if path.startswith("/dashboard") else None
            assert r.headers.get("www-authenticate") == challenge, path
        assert httpx.get(small.url + path, headers=auth()).status_code == 200, path
    with httpx.Client(base_url=small.url, auth=("anyone", KEY), timeout=TIMEOUT) as browser:
        page = browser.get("/dashboard")
        assert page.status_code == 200 and "<script" in page.text
        data = browser.get("/dashboard/data", params={"since": 0})
        assert data.status_code == 200 and data.json()["model"] == MODEL
        assert browser.get("/energy").json()["meter"] == "cpu-model"
    assert httpx.post(small.url + "/v1/completions", json=body, headers=basic(KEY)).status_code == 200


def metric(url: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_overload_gets_429_and_a_disconnect_frees_the_slot(small):
    url, long = (
        small.url,
        {"model": MODEL, "prompt": "x", "max_tokens": 2000, "ignore_eos": True, "stream": True},
    )
    aborted_before = metric(url, "greenlm:request_success_total", finished_reason="abort")
    with httpx.Client(base_url=url, headers=auth(), timeout=TIMEOUT) as http:
        with http.stream("POST", "/v1/completions", json=long) as first:
            lines = first.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # running in the only slot
            with http.stream("POST", "/v1/completions", json={**long, "max_tokens": 4}) as second:
                wait_for(lambda: metric(url, "greenlm:num_requests_waiting") == 1)  # queued behind it
                third = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
                assert third.status_code == 429, third.text
                assert int(third.headers["retry-after"]) >= 1
                assert third.json()["error"]["type"] == "rate_limit_error"
                first.close()  # the client goes away mid-stream
                body = "".join(second.iter_lines())
            assert '"finish_reason":"length"' in body and "[DONE]" in body  # it got the freed slot
    wait_for(
        lambda: metric(url, "greenlm:request_success_total", finished_reason="abort") == aborted_before + 1
    )
    assert metric(url, "greenlm:num_requests_running") == 0


def test_sigterm_lets_the_running_request_finish_then_exits_0(small):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=small.url, headers=auth(), timeout=TIMEOUT) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            small.proc.send_signal(signal.SIGTERM)
            rest = "".join(lines)
    assert '"finish_reason":"length"' in rest and rest.endswith("[DONE]")
    assert small.stop(timeout_s=60) == 0, small.stderr()
    assert small.stopped["event"] == "stopped" and small.stopped["finished"].get("length", 0) >= 2
    assert small.stopped["invariant_gap_rel"] < 1e-3
    with pytest.raises(httpx.ConnectError):
        httpx.get(small.url + "/health")
