"""`greenlm optimize` and `greenlm report` as a user meets them, on the tiny model with a one-candidate space."""

import json
import socket

import pytest

from greenlm.models import resolve_model
from greenlm.models.run import saved_run_settings
from tests.helpers import run_cli

SPACE = """
grids:
  - engine: transformers
    recipes: [[{method: drop_layers, count: 1}]]
"""


@pytest.fixture
def args(tmp_path, tiny_model_dir):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    common = ["--model", str(tiny_model_dir), "--space", str(space), "--db", str(tmp_path / "s.db")]
    small = ["--eval-tokens", "1024", "--screen-tokens", "512", "--repeats", "2", "--max-new-tokens", "8"]
    return [*common, *small, "--meter", "cpu-model"]


def test_json_summary_then_report(monkeypatch, capsys, tmp_path, args):
    """The CLI's plumbing with a deterministic stand-in for measurement (real measurement: test_candidate,
    test_final): the summary, the saved winner with how it ran, and the report from the store."""
    import greenlm.optimize.search as search
    from tests.optimize.fake_work import fake_final, fake_work

    monkeypatch.setattr(search, "evaluate_candidate", lambda _settings, c, front: fake_work(c, front))
    monkeypatch.setattr(search, "final_round", fake_final)
    space = tmp_path / "quant.yaml"
    space.write_text("grids:\n  - engine: llamacpp\n    quant_types: [q8_0, q4_k_m, q4_0]\n")
    out_dir = tmp_path / "best"
    code, out, err = run_cli(
        monkeypatch, capsys, "optimize", *args, "--space", str(space), "--out", str(out_dir), "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["budget_met"] and summary["chosen"]["quant_type"] == "q4_k_m"
    assert summary["j_per_token_ratio"] == pytest.approx(0.5 / 0.12) and summary["comparable"]
    assert summary["candidates_evaluated"] == 4 and summary["baseline"]["engine"] == "transformers"
    assert summary["baseline"]["energy_source"] == "estimated"
    assert summary["variant_dir"] == str(out_dir)
    assert saved_run_settings(resolve_model(str(out_dir))).engine == "llamacpp"

    code, out, err = run_cli(
        monkeypatch, capsys, "report", "--db", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html")
    )
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "final-round" in page


def test_impossible_budget_says_so_in_words(monkeypatch, capsys, args):
    code, out, err = run_cli(
        monkeypatch, capsys, "optimize", *args, "--max-ppl-increase", "0%", "--max-kld", "0"
    )
    assert code == 0, err
    assert "no candidate met the quality budget" in out
    assert "baseline" in out and "Pareto front" in out and "ESTIMATED" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-ppl-increase", "-1"], "max-ppl-increase"),
        (["--max-kld", "-0.1"], "max-kld"),
        (["--time-budget", "soon"], "time-budget"),
        (["--resume"], "nothing to resume"),
        (["--executor", "dask"], "executor"),
        (["--executor", "ray", "--ray-cpus-per-task", "0"], "ray-cpus-per-task"),
    ],
)
def test_bad_input_is_one_line(monkeypatch, capsys, args, extra, message):
    code, out, err = run_cli(monkeypatch, capsys, "optimize", *args, *extra)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_unreachable_ray_address(monkeypatch, capsys, args):
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _out, err = run_cli(
        monkeypatch, capsys, "optimize", *args, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"
    )
    assert code == 2 and "cannot reach the Ray cluster" in err and "Traceback" not in err
