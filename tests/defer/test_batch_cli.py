"""`greenlm batch run` as a user meets it, on the tiny chat model: --dry-run prints the plan and its expected
carbon against running now; a run answers every request once, in the clean minutes of a replayed grid; a run
killed with -9 continues when the same command runs again; every mistake is one line, exit 2, nothing
written."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.defer.conftest import grid_csv
from tests.defer.test_batch_http import jsonl, line
from tests.distill.test_cli import one_line_error, run_cli
from tests.helpers import needs_llamacpp
from tests.serve.conftest import ROOT

pytestmark = needs_llamacpp

GRID = [400] * 20 + [60] * 10 + [400] * 60  # one row a minute of trace time
FLAGS = [
    "--max-batch",
    "4",
    "--meter",
    "cpu-model",
    "--threads",
    "1",
    "--replay-speed",
    "600",
    "--forecast",
    "perfect",
]


@pytest.fixture
def files(tmp_path):
    requests = [line(f"q{i}", f"Question {i}?", 12) for i in range(3)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(requests))
    return tmp_path / "in.jsonl", grid_csv(tmp_path / "grid.csv", GRID), requests


def test_dry_run_prints_the_plan_and_its_expected_carbon(monkeypatch, capsys, chat_model_dir, files):
    source, grid, _ = files
    code, stdout, err = run_cli(
        monkeypatch, capsys, "batch", "run", source, "--dry-run", "--deadline", "1h", "--model", chat_model_dir,
        "--grid-csv", grid, *FLAGS, "--json",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(stdout)
    assert r["dry_run"] and r["requests"] == 3 and r["probe"]["requests"] == 3
    assert [s["intensity_g_per_kwh"] for s in r["plan"]] == [60]  # all of it in the clean minutes
    assert r["expected_carbon_g"] == pytest.approx(r["expected_carbon_if_run_now_g"] * 60 / 400, rel=1e-6)
    assert "perfect foresight" in r["forecast"]["source"] and r["probe"]["energy_source"] == "estimated"
    assert not any(p.name.endswith(".state") for p in source.parent.iterdir())  # a dry run keeps nothing


def test_a_run_answers_each_request_once_in_the_clean_minutes(monkeypatch, capsys, chat_model_dir, files):
    source, grid, requests = files
    out = source.with_name("out.jsonl")
    code, stdout, err = run_cli(
        monkeypatch, capsys, "batch", "run", source, "--out", out, "--deadline", "1h", "--model", chat_model_dir,
        "--grid-csv", grid, *FLAGS, "--json",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(stdout)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [row["custom_id"] for row in rows] == [q["custom_id"] for q in requests]
    assert all(row["response"]["status_code"] == 200 for row in rows)
    assert r["status"] == "completed" and r["requests"]["completed"] == 3
    assert r["carbon_g"] == pytest.approx(r["carbon_if_run_at_submission_g"] * 60 / 400, rel=0.02)
    assert not source.with_name("out.jsonl.state").exists()  # done: nothing left to resume


def test_an_expired_batch_is_not_a_success(monkeypatch, capsys, files, tmp_path):
    """The results are written, but a script must see that some requests were never answered."""
    from greenlm.serve import offline

    source, _grid, _ = files
    out = tmp_path / "o.jsonl"
    finished = {"status": "expired", "requests": {"total": 3, "completed": 1, "failed": 2}, "out": str(out)}
    monkeypatch.setattr(offline, "run_batch", lambda config, **_: finished)
    code, stdout, err = run_cli(monkeypatch, capsys, "batch", "run", source, "--out", out, "--json")
    assert code == 1
    assert json.loads(stdout)["status"] == "expired"  # the JSON still says what happened
    assert err.strip() == (
        f"error: the batch expired with 2 of 3 requests unanswered (their error lines are in {out}): "
        "give a later --deadline"
    )
    finished["status"] = "completed"
    code, _, err = run_cli(monkeypatch, capsys, "batch", "run", source, "--out", out, "--json")
    assert code == 0 and not err.strip()


def test_a_killed_run_continues_when_run_again(chat_model_dir, tmp_path, shared_cache_dir):
    requests = [line(f"r{i:02d}", "Write at length.", 1200, ignore_eos=True) for i in range(24)]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(jsonl(requests))
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        GREENLM_CACHE_DIR=str(shared_cache_dir),
        GREENLM_DB=str(tmp_path / "db" / "g.db"),
    )
    command = [sys.executable, "-m", "greenlm", "batch", "run", str(source), "--out", str(out), "--model", str(chat_model_dir),
               "--max-batch", "4", "--meter", "cpu-model", "--threads", "1"]  # fmt: skip
    first = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "out.jsonl.state" / "defer.db"
    deadline = time.monotonic() + 180
    done = 0
    while done < 4:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.1)
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    done = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:  # the table is not there yet
                done = 0
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert not out.exists()
    second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "continuing batch" in second.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [row["custom_id"] for row in rows] == [q["custom_id"] for q in requests]  # each once, in order


def test_mistakes_are_one_line(monkeypatch, capsys, chat_model_dir, files, tmp_path):
    source, grid, _ = files
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([line("a", "x")]) + b'{"custom_id": "b", "method": "POST", "url"\n')
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(jsonl([line("a", "x"), line("b", "y", url="/v1/completions")]))
    taken = tmp_path / "taken.jsonl"
    taken.write_text("x\n")
    model = ["--model", chat_model_dir]
    cases = [
        (["batch", "run", tmp_path / "nope.jsonl", "--out", tmp_path / "o.jsonl", *model], "not found"),
        (["batch", "run", bad, "--out", tmp_path / "o.jsonl", *model], "line 2: not valid JSON"),
        (["batch", "run", mixed, "--out", tmp_path / "o.jsonl", *model], "mixes endpoints"),
        (["batch", "run", source, "--out", taken, *model], "already exists"),
        (
            ["batch", "run", source, "--out", tmp_path / "o.jsonl", "--deadline", "eventually", *model],
            "not a duration",
        ),
        (
            ["batch", "run", source, "--out", tmp_path / "o.jsonl", "--replay-speed", "60", *model],
            "--replay-speed replays a CSV",
        ),
        (
            ["batch", "run", source, "--out", tmp_path / "o.jsonl", "--grid", "sunshine:GB", *model],
            "PROVIDER:ZONE",
        ),
        (["batch", "run", source, *model], "--out is required"),
    ]
    for args, needle in cases:
        code, _, err = run_cli(monkeypatch, capsys, *args)
        one_line_error(code, err, needle)
    assert not (tmp_path / "o.jsonl").exists() and taken.read_text() == "x\n"
