"""`greenlm optimize` and `greenlm report` as a user meets them, on the tiny model with a one-candidate space."""

import json
import socket

import pytest

from greenlm.models import resolve_model
from tests.test_cli import run_cli

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
    out_dir = tmp_path / "best"
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "optimize",
        *args,
        "--max-ppl-increase",
        "100000%",
        "--max-kld",
        "1000",
        "--out",
        str(out_dir),
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    for key in ("baseline", "chosen", "j_per_token_ratio", "ppl_increase_pct", "pareto", "wall_s"):
        assert key in summary
    assert summary["candidates_evaluated"] == 2 and summary["baseline"]["engine"] == "transformers"
    assert summary["baseline"]["energy_source"] == "estimated"
    if summary["budget_met"]:  # the one-layer cut is cheaper, unless noise on the shared machine says not
        assert summary["j_per_token_ratio"] > 1
        assert resolve_model(summary["variant_dir"]).kind == "variant"
    else:
        assert summary["chosen"] is None and not out_dir.exists()

    code, out, err = run_cli(
        monkeypatch, capsys, "report", "--db", str(tmp_path / "s.db"), "--out", str(tmp_path / "r.html")
    )
    assert code == 0, err
    assert "<svg" in (tmp_path / "r.html").read_text()


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
