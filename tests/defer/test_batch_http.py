"""The Batch API on greenlm serve over real HTTP with the official openai client, unchanged: files.create,
batches.create / retrieve / list / cancel, files.content; each result line's usage carries energy and carbon,
the batch carries totals and the carbon it would have emitted at submission; and every bad input gets a clear
400 (or 404) in OpenAI's error shape."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.helpers import needs_llamacpp

pytestmark = needs_llamacpp

MODEL = "tiny"
CHAT = "/v1/chat/completions"


def line(
    custom_id: str, content: str, max_tokens: int = 8, model: str = MODEL, url: str = CHAT, **extra
) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def jsonl(items) -> bytes:
    return "".join((json.dumps(i) if not isinstance(i, str) else i) + "\n" for i in items).encode()


@pytest.fixture(scope="module")
def server(start_server, chat_model_dir):
    return start_server(
        "--model", str(chat_model_dir), "--served-model-name", MODEL, "--max-batch", "4", "--meter", "cpu-model",
        "--threads", "1", "--batch-max-file-bytes", "8192", "--carbon-intensity", "300",
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60, max_retries=0) as c:
        yield c


def wait_done(client, batch_id: str, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def test_the_official_client_runs_a_batch(client):
    requests = [line(f"req-{i}", f"Tell me about item {i}.", max_tokens=6 + i) for i in range(6)]
    requests.append(line("bad-model", "hello", model="gpt-4"))  # runs, and fails like the same request live
    uploaded = client.files.create(file=("requests.jsonl", jsonl(requests)), purpose="batch")
    assert (
        uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(requests))
    )
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == jsonl(requests)

    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"job": "t"}
    )
    assert created.status in ("validating", "in_progress") and created.request_counts.total == 7
    assert created.expires_at - created.created_at == pytest.approx(24 * 3600, abs=2)
    done = wait_done(client, created.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (7, 6, 1)
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.metadata == {"job": "t"}

    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in out) == [f"req-{i}" for i in range(6)]  # each once, none lost
    assert [e["custom_id"] for e in errors] == ["bad-model"]
    assert (
        errors[0]["response"]["status_code"] == 404
        and errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
    )
    for r in out:
        body = r["response"]["body"]
        assert r["response"]["status_code"] == 200 and r["error"] is None and r["id"].startswith("batch_req_")
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] is not None
        usage = body["usage"]
        assert usage["energy_j"] > 0 and usage["carbon_g"] == pytest.approx(usage["energy_j"] / 3.6e6 * 300)
    extra = done.model_extra
    energy = sum(r["response"]["body"]["usage"]["energy_j"] for r in out)
    assert extra["greenlm_energy_j"] == pytest.approx(energy, rel=1e-9)
    assert extra["greenlm_carbon_g"] == pytest.approx(energy / 3.6e6 * 300, rel=1e-6)
    assert extra["greenlm_carbon_if_run_at_submission_g"] == pytest.approx(energy / 3.6e6 * 300, rel=1e-6)
    assert (extra["greenlm_meter"], extra["greenlm_energy_source"]) == ("cpu-model", "estimated")
    assert done.usage.output_tokens == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in out)

    # a finished batch cannot be cancelled: OpenAI's error
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.cancel(done.id)
    assert "Cannot cancel a batch with status 'completed'" in info.value.message


def test_batches_list_pages_newest_first(server, client):
    file_id = client.files.create(file=("one.jsonl", jsonl([line("a", "hi", 2)])), purpose="batch").id
    ids = [
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="1h").id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    raw = httpx.get(server.url + "/v1/batches", params={"limit": 2}).json()
    assert raw["first_id"] == ids[2] and raw["last_id"] == ids[1] and raw["has_more"] is True
    second = client.batches.list(limit=2, after=ids[1])
    assert second.data[0].id == ids[0]
    every = [b.id for b in client.batches.list(limit=1)]  # the client's auto-paging walks `after`
    assert every[:3] == ids[::-1] and len(every) == len(set(every))
    for batch_id in ids:
        assert wait_done(client, batch_id).status == "completed"
    files = client.files.list()
    assert file_id in [f.id for f in files.data]
    assert client.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_cancel_a_running_batch_lists_what_did_not_run(client):
    requests = [line(f"long-{i}", "Write at length.", max_tokens=1500, ignore_eos=True) for i in range(24)]
    file_id = client.files.create(file=("long.jsonl", jsonl(requests)), purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="8h")
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_done(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    finished = (
        [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        if done.output_file_id
        else []
    )
    assert sorted(r["custom_id"] for r in errors + finished) == sorted(r["custom_id"] for r in requests)
    assert all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in errors)
    assert finished and errors and done.request_counts.failed == len(errors)


BAD_FILES = [
    (
        b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n{"custom_id": "b", "method"\n',
        "line 2: not valid JSON",
    ),
    (jsonl([line("a", "x", url="/v1/embeddings")]), "line 1: unknown endpoint '/v1/embeddings'"),
    (jsonl([line("a", "x"), line("b", "y"), line("a", "z")]), "line 3: custom_id 'a' repeats line 1"),
    (jsonl([{"custom_id": "a", "method": "GET", "url": CHAT, "body": {}}]), 'line 1: method must be "POST"'),
    (jsonl([{"method": "POST", "url": CHAT, "body": {}}]), "line 1: custom_id must be a non-empty string"),
    (jsonl(["[1, 2]"]), "line 1: expected a JSON object"),
    (b"\n\n", "the file has no requests"),
    (b"\xff\xfe", "not UTF-8"),
    (jsonl([line(f"r{i}", "x" * 200) for i in range(40)]), "over this server's limit of 8,192 bytes"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_bad_batch_files_get_a_clear_400(client, content, message):
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("bad.jsonl", content), purpose="batch")
    assert message in info.value.message
    assert info.value.body["type"] == "invalid_request_error" and info.value.body["param"] == "file"


def test_bad_requests_and_unknown_ids(server, client):
    good = client.files.create(file=("g.jsonl", jsonl([line("a", "x")])), purpose="batch").id
    completions = client.files.create(
        file=(
            "c.jsonl",
            jsonl(
                [
                    {
                        "custom_id": "c",
                        "method": "POST",
                        "url": "/v1/completions",
                        "body": {"model": MODEL, "prompt": "x"},
                    }
                ]
            ),
        ),
        purpose="batch",
    ).id
    cases = [
        (
            dict(input_file_id=good, endpoint="/v1/embeddings", completion_window="24h"),
            400,
            "unknown endpoint",
        ),
        (
            dict(input_file_id=good, endpoint=CHAT, completion_window="48h"),
            400,
            "completion_window must be '24h'",
        ),
        (
            dict(input_file_id="file-nope", endpoint=CHAT, completion_window="24h"),
            404,
            "No such File object: file-nope",
        ),
        (
            dict(input_file_id=completions, endpoint=CHAT, completion_window="24h"),
            400,
            "not the batch's endpoint",
        ),
    ]
    for kwargs, status, message in cases:
        with pytest.raises(openai.APIStatusError) as info:
            client.batches.create(**kwargs)
        assert info.value.status_code == status and message in info.value.message, info.value.message
    with pytest.raises(openai.NotFoundError, match="No batch found with id 'batch_nope'"):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")
    with pytest.raises(openai.NotFoundError, match="file-nope"):
        client.files.content("file-nope")
    with pytest.raises(openai.BadRequestError, match="purpose 'fine-tune' is not kept here"):
        client.files.create(file=("f.jsonl", jsonl([line("a", "x")])), purpose="fine-tune")
    form = httpx.post(server.url + "/v1/files", data={"purpose": "batch"}, files={"other": ("x", b"y")})
    assert form.status_code == 400 and "no 'file' part" in form.json()["error"]["message"]
    huge = httpx.post(
        server.url + "/v1/files", data={"purpose": "batch"}, files={"file": ("x", b"x" * 2_000_000)}
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    paged = httpx.get(server.url + "/v1/batches", params={"limit": "many"})
    assert paged.status_code == 400 and paged.json()["error"]["param"] == "limit"


def test_flex_requests_say_so(client):
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, service_tier="flex"
    )
    assert chat.service_tier == "flex" and chat.usage.energy_j > 0
    plain = client.completions.create(model=MODEL, prompt="hi", max_tokens=4)
    assert plain.model_extra.get("service_tier") == "default"
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        service_tier="flex",
        stream=True,
    )
    assert {c.service_tier for c in stream} == {"flex"}
