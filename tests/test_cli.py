"""The CLI as a user meets it: exit codes, one-line errors, clean --json on stdout."""

import json
import sys

import pytest

from greenlm.cli import main

SMALL = [
    "--num-prompts",
    "2",
    "--prompt-tokens",
    "16",
    "--max-new-tokens",
    "4",
    "--repeats",
    "2",
    "--meter",
    "cpu-model",
]


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["greenlm", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_measure_json_then_runs(monkeypatch, capsys, tiny_model_dir):
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "measure",
        "--model",
        str(tiny_model_dir),
        *SMALL,
        "--batch-size",
        "2",
        "--country",
        "FR",
        "--pue",
        "1.2",
        "--json",
    )
    assert code == 0, err
    record = json.loads(out)
    for field in (
        "model",
        "engine",
        "meter",
        "energy_source",
        "threads",
        "batch_size",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "ttft_s",
        "tpot_s",
        "prefill_j_per_token",
        "decode_j_per_token",
        "tokens_per_j",
        "carbon_g_per_1k_tokens",
        "intensity_g_per_kwh",
        "pue",
        "peak_rss_mb",
        "repeats",
        "run_id",
    ):
        assert field in record, field
    assert record["meter"] == "cpu-model" and record["energy_source"] == "estimated"
    assert record["batch_size"] == 2 and record["repeats"] == 2 and record["pue"] == 1.2
    assert record["decode_j_per_token"] > 0 and record["intensity_location"] == "FR"
    assert "cpu-model" in err  # the meter choice is announced on stderr, not mixed into the JSON

    code, out, _ = run_cli(monkeypatch, capsys, "runs", "--json")
    assert code == 0
    assert json.loads(out)[0]["run_id"] == record["run_id"]


def test_measure_table_output(monkeypatch, capsys, tiny_model_dir):
    code, out, _ = run_cli(monkeypatch, capsys, "measure", "--model", str(tiny_model_dir), *SMALL)
    assert code == 0
    assert "decode J/token" in out and "ESTIMATED" in out and "stored as run" in out


def test_meters_lists_every_backend(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "meters", "--json")
    assert code == 0
    statuses = {s["name"]: s for s in json.loads(out)}
    assert {"rapl", "nvml", "cpu-model"} <= set(statuses)
    assert statuses["cpu-model"]["available"] and statuses["cpu-model"]["energy_source"] == "estimated"
    for s in statuses.values():
        assert s["reason"] if not s["available"] else s["details"], (
            "every meter says why it is or is not there"
        )


def test_runs_empty_store(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "runs")
    assert code == 0 and "no runs stored" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["measure", "--model", "/no/such/model"], "not found"),
        (["measure", "--batch-size", "0"], "--batch-size"),
        (["measure", "--country", "XX"], "unknown country code"),
        (["measure", "--pue", "0.5"], "PUE"),
        (["measure", "--batch-size", "many"], "Invalid value for '--batch-size'"),
        (["measure", "--meter", "wattmeter"], "wattmeter"),
        (["measure", "--no-such-flag"], "No such option"),
        (["runs", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_one_line_exit_2(monkeypatch, capsys, args, message):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""


def test_empty_text_file(monkeypatch, capsys, tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run_cli(
        monkeypatch, capsys, "measure", "--model", str(tiny_model_dir), "--text", str(empty), *SMALL
    )
    assert code == 2 and "is empty" in err


def test_corrupt_gguf(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    code, _, err = run_cli(monkeypatch, capsys, "measure", "--model", str(bad), *SMALL)
    assert code == 2 and "cannot load GGUF" in err
    assert len(err.strip().splitlines()) == 1
