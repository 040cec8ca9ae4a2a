"""A batch survives kill -9 of its server: the restarted server (same --state-dir) resumes it, the lines
finished before the kill are kept as they were (not run again), the rest run, and the output has every
custom_id exactly once."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import openai

from tests.defer.test_batch_http import CHAT, MODEL, jsonl, line, wait_done
from tests.helpers import needs_llamacpp

pytestmark = needs_llamacpp


def finished_rows(state_dir) -> dict[str, str]:
    """custom_id -> the result line's id, read from the state as the server left it."""
    with sqlite3.connect(state_dir / "defer.db") as db:
        rows = db.execute("SELECT custom_id, result_json FROM results").fetchall()
    return {cid: json.loads(text)["id"] for cid, text in rows}


def test_kill_9_mid_batch_then_restart_loses_and_repeats_nothing(start_server, chat_model_dir, tmp_path):
    state = tmp_path / "state"
    args = ("--model", str(chat_model_dir), "--served-model-name", MODEL, "--max-batch", "4", "--meter", "cpu-model",
            "--threads", "1", "--state-dir", str(state))  # fmt: skip
    first = start_server(*args)
    requests = [line(f"r{i:02d}", f"Write about {i}.", 1200, ignore_eos=True) for i in range(40)]
    with openai.OpenAI(base_url=first.url + "/v1", api_key="unused", timeout=60, max_retries=0) as client:
        file_id = client.files.create(file=("r.jsonl", jsonl(requests)), purpose="batch").id
        batch_id = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch_id).request_counts.completed < 6:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    first.stop(signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL
    before = finished_rows(state)
    assert 6 <= len(before) < 40  # killed mid-batch

    second = start_server(*args)
    with openai.OpenAI(base_url=second.url + "/v1", api_key="unused", timeout=60, max_retries=0) as client:
        done = wait_done(client, batch_id, timeout_s=300)
        assert (
            done.status == "completed" and done.request_counts.completed == 40 and done.error_file_id is None
        )
        out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    ids = [r["custom_id"] for r in out]
    assert sorted(ids) == [f"r{i:02d}" for i in range(40)]  # none lost, none twice
    kept = {r["custom_id"]: r["id"] for r in out}
    assert all(kept[cid] == rid for cid, rid in before.items())  # finished lines were not run again
    assert f"resuming batch {batch_id}" in second.stderr()
