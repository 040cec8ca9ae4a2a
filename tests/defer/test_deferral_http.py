"""Deferral on a replayed grid over real HTTP: a 12-minute cycle (8 dirty minutes at 400 g/kWh, 2 clean at
80, 2 dirty) looping at 60x (a minute a second), forecast by the trace itself. Flex requests wait for the
clean minutes (and no longer than --flex-max-wait); batches wait for them too once the server's throughput
is measured, and a batch whose window ends first runs dirty rather than late; a batch that cannot finish in
its window expires with what did not run in its error file; default-tier requests never queue behind deferred
work; /metrics counts the decisions and /dashboard draws the forecast, the plan and the work done."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.defer.conftest import grid_csv
from tests.defer.test_batch_http import CHAT, MODEL, jsonl, line, wait_done
from tests.helpers import needs_llamacpp

pytestmark = needs_llamacpp

CYCLE = [400] * 8 + [80] * 2 + [400] * 2  # one row a minute of trace time
SPEED = 60  # a row a second


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return grid_csv(tmp_path_factory.mktemp("grid") / "cycle.csv", CYCLE)


def serve(start_server, chat_model_dir, grid, *extra):
    return start_server(
        "--model", str(chat_model_dir), "--served-model-name", MODEL, "--max-batch", "4", "--meter", "cpu-model",
        "--threads", "1", "--grid-csv", grid, "--replay-speed", str(SPEED), "--forecast", "perfect", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(start_server, chat_model_dir, grid):
    return serve(start_server, chat_model_dir, grid, "--flex-max-wait", "30m")


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=90, max_retries=0) as c:
        yield c


def grid_minute(server) -> int:
    """The row of the cycle playing now (from the deferral's own clock on /dashboard/data)."""
    now_s = httpx.get(server.url + "/dashboard/data").json()["defer"]["now_s"]
    return int(now_s // 60) % len(CYCLE)


def wait_for_minute(server, rows: set[int], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while grid_minute(server) not in rows:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def intensity_of(usage) -> float:
    """The grid intensity a request's energy was converted at (g/kWh)."""
    return usage["carbon_g"] / usage["energy_j"] * 3.6e6


def test_flex_waits_for_the_clean_minutes(server, client):
    wait_for_minute(server, {1, 2})  # 7 dirty minutes ahead, then clean, well inside the 30-minute wait
    start = time.monotonic()
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, service_tier="flex"
    )
    waited_s = time.monotonic() - start
    assert chat.service_tier == "flex"
    assert intensity_of(chat.usage.model_dump()) == pytest.approx(80, rel=0.02)
    assert 4.0 < waited_s < 12.0  # six to eight rows of a second each, not the whole wait
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert plain.service_tier == "default"  # the default tier never waits: it ran at once


def test_flex_runs_at_once_when_nothing_cleaner_comes_within_its_wait(start_server, chat_model_dir, grid):
    short = serve(start_server, chat_model_dir, grid, "--flex-max-wait", "2m")
    wait_for_minute(short, {1, 2})  # the clean minutes are 6-8 minutes away: beyond the 2-minute wait
    start = time.monotonic()
    response = httpx.post(
        short.url + "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 4, "service_tier": "flex"},
        timeout=60,
    ).json()
    waited_s = time.monotonic() - start
    assert response["service_tier"] == "flex" and intensity_of(response["usage"]) == pytest.approx(
        400, rel=0.02
    )
    assert waited_s < 1.5  # two dirty minutes ahead: waiting would gain nothing
    short.stop()


def test_batches_wait_for_the_clean_minutes_once_the_server_is_measured(server, client):
    warm = client.files.create(
        file=("warm.jsonl", jsonl([line(f"w{i}", "warm up", 16) for i in range(6)])), purpose="batch"
    )
    probe = wait_done(
        client, client.batches.create(input_file_id=warm.id, endpoint=CHAT, completion_window="24h").id
    )
    assert probe.status == "completed" and probe.request_counts.completed == 6  # ran at once: measuring
    wait_for_minute(server, {1, 2})
    requests = [line(f"r{i}", f"item {i}", 24) for i in range(8)]
    uploaded = client.files.create(file=("r.jsonl", jsonl(requests)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    done = wait_done(client, batch.id, timeout_s=60)
    assert done.status == "completed" and done.request_counts.completed == 8
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert {round(intensity_of(r["response"]["body"]["usage"])) for r in out} == {80}
    extra = done.model_extra
    assert extra["greenlm_intensity_at_submission_g_per_kwh"] == 400
    assert extra["greenlm_carbon_g"] == pytest.approx(
        extra["greenlm_carbon_if_run_at_submission_g"] * 80 / 400, rel=0.02
    )


def test_a_short_window_runs_dirty_rather_than_late_and_an_impossible_one_expires(server, client):
    wait_for_minute(server, {0, 1})
    small = client.files.create(
        file=("s.jsonl", jsonl([line(f"s{i}", "x", 8) for i in range(3)])), purpose="batch"
    )
    soon = client.batches.create(input_file_id=small.id, endpoint=CHAT, completion_window="3m")
    huge = client.files.create(
        file=("h.jsonl", jsonl([line(f"h{i}", "write", 1500, ignore_eos=True) for i in range(400)])),
        purpose="batch",
    )
    doomed = client.batches.create(input_file_id=huge.id, endpoint=CHAT, completion_window="1m")
    done = wait_done(client, soon.id, timeout_s=30)
    assert done.status == "completed" and done.completed_at <= done.expires_at
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert {round(intensity_of(r["response"]["body"]["usage"])) for r in out} == {
        400
    }  # no clean minute in reach
    expired = wait_done(client, doomed.id, timeout_s=30)
    assert expired.status == "expired" and expired.expired_at
    errors = [json.loads(x) for x in client.files.content(expired.error_file_id).text.splitlines()]
    ran = (
        [json.loads(x) for x in client.files.content(expired.output_file_id).text.splitlines()]
        if expired.output_file_id
        else []
    )
    assert sorted(r["custom_id"] for r in errors + ran) == sorted(f"h{i}" for i in range(400))
    assert errors and all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors)
    assert expired.request_counts.failed == len(errors) and expired.request_counts.completed == len(ran)


def test_default_requests_never_queue_behind_deferred_work(server, client):
    wait_for_minute(server, {8})  # the clean minutes: the batch runs at once
    requests = [line(f"long-{i}", "Write at length.", 1500, ignore_eos=True) for i in range(12)]
    uploaded = client.files.create(file=("long.jsonl", jsonl(requests)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/dashboard/data").json()["state"]["running"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def queue_seconds() -> tuple[float, float]:
        text = httpx.get(server.url + "/metrics").text
        family = {f.name: f for f in text_string_to_metric_families(text)}[
            "greenlm:request_queue_time_seconds"
        ]
        values = {s.name: s.value for s in family.samples if s.name.endswith(("_sum", "_count"))}
        return values["greenlm:request_queue_time_seconds_sum"], values[
            "greenlm:request_queue_time_seconds_count"
        ]

    before = queue_seconds()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # 4 slots: one free, three held by the batch
        answers = list(
            pool.map(lambda i: client.completions.create(model=MODEL, prompt=f"q{i}", max_tokens=8), range(4))
        )
    after = queue_seconds()
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
    assert after[1] - before[1] == 4 and (after[0] - before[0]) / 4 < 0.25  # admitted at the next step
    done = wait_done(client, batch.id, timeout_s=120)
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert done.status == "completed" and sorted(r["custom_id"] for r in out) == sorted(
        r["custom_id"] for r in requests
    )


def test_decisions_are_counted_and_the_dashboard_draws_the_plan(server, tmp_path):
    text = httpx.get(server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    decisions = {
        (s.labels["kind"], s.labels["action"], s.labels["reason"])
        for s in families["greenlm:defer_decisions"].samples
        if s.name.endswith("_total")
    }
    assert ("flex", "wait", "cleaner_later") in decisions and ("batch", "run", "probing") in decisions
    assert ("batch", "wait", "cleaner_later") in decisions and ("batch", "run", "cleanest") in decisions
    data = httpx.get(server.url + "/dashboard/data").json()["defer"]
    assert data["forecast"]["model"] == "perfect" and "perfect foresight" in data["forecast"]["source"]
    assert data["decision_count"] >= 4 and data["done"] and data["capacity_tokens_per_s"] > 0
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is installed by `make test` (Debian package chromium)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=6000", "--window-size=1300,1600",
    ]  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", server.url + "/dashboard"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    tag = dom[dom.index('id="chart-defer"') - 200 : dom.index('id="chart-defer"') + 200]
    assert int(tag.split('data-points="')[1].split('"')[0]) > 5, tag
    assert 'class="done"' in dom and "cleaner_later" in dom and "perfect foresight" in dom
