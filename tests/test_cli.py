"""The CLI as a user meets it: exit codes, one-line errors, clean --json on stdout."""

import json

import pytest

from tests.helpers import run_cli

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
    # the CPU estimate's parts, per phase: static (cores held for the wall time) and dynamic (busy time)
    for phase in ("prefill", "decode"):
        static, dynamic = record[f"{phase}_static_j_per_token"], record[f"{phase}_dynamic_j_per_token"]
        assert static > 0 and dynamic >= 0  # CPU time comes in 10 ms ticks: a tiny model's prefill may show 0
        memory = record["energy_domains"]["memory"][f"{phase}_j_per_token"]
        assert static + dynamic + memory == pytest.approx(record[f"{phase}_j_per_token"], rel=1e-6)
        assert record[f"{phase}_static_j"] > 0 and record[f"{phase}_dynamic_j"] >= 0
    assert record["energy_domains"]["cpu"] == {
        "meter": "cpu-model",
        "energy_source": "estimated",
        "additive": True,
        **{k: record["energy_domains"]["cpu"][k] for k in ("prefill_j", "decode_j")},
        **{k: record["energy_domains"]["cpu"][k] for k in ("prefill_j_per_token", "decode_j_per_token")},
    }
    assert record["device"] == "cpu"  # --device auto on a machine torch sees no GPU on
    assert record["config"]["device"] == "auto"

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
    cpu = statuses["cpu-model"]["details"]
    assert cpu["static"]["idle_watts_per_core"] > 0 and "SPECpower" in cpu["static"]["source"]
    assert cpu["dynamic"]["watts_per_busy_core"] > 0 and cpu["dynamic"]["source"]
    for s in statuses.values():
        assert s["reason"] if not s["available"] else s["details"], (
            "every meter says why it is or is not there"
        )


def test_meters_takes_the_cpu_model_overrides(monkeypatch, capsys):
    code, out, _ = run_cli(
        monkeypatch, capsys, "meters", "--watts-per-core", "9", "--idle-watts-per-core", "2", "--json"
    )
    assert code == 0
    cpu = {s["name"]: s for s in json.loads(out)}["cpu-model"]["details"]
    assert cpu["watts_per_core"] == 9 and cpu["static"]["idle_watts_per_core"] == 2
    assert cpu["dynamic"]["watts_per_busy_core"] == 7
    code, out, _ = run_cli(monkeypatch, capsys, "meters")
    assert code == 0 and "static:" in out and "dynamic:" in out


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
        (["measure", "--device", "tpu"], "unknown device 'tpu'"),
        (["measure", "--idle-watts-per-core", "-1"], "--idle-watts-per-core"),
        (
            ["measure", "--watts-per-core", "2", "--idle-watts-per-core", "3", "--meter", "cpu-model"],
            "exceed",
        ),
        (["meters", "--idle-watts-per-core", "-1"], "idle_watts_per_core"),
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
