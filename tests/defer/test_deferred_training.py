"""Deferred training: the gate a training loop consults between steps (on a test clock, exactly), and
`greenlm distill --deadline --grid-csv` on the tiny teacher/student pair, paused in the dirty minutes and
resumed in the clean ones, its manifest recording the carbon against running straight through."""

from __future__ import annotations

import json

import pytest

from greenlm.defer.gate import RunGate
from greenlm.defer.grid import open_grid
from greenlm.defer.settings import GridSettings
from greenlm.energy.carbon import GridIntensity
from greenlm.models.manifest import read_manifest
from tests.defer.conftest import grid_csv
from tests.distill.test_cli import FLAGS, one_line_error, run_cli

FALLBACK = GridIntensity(300.0, "override", "test")
KWH = 3.6e6


class Wall:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_the_gate_pauses_in_dirty_minutes_and_finishes_by_the_deadline(tmp_path):
    wall = Wall()
    csv = grid_csv(tmp_path / "g.csv", [400, 400, 400, 80, 80, 80, 400, 400, 400, 400], step_s=60)
    grid = open_grid(GridSettings(csv=csv, speed=60.0, loop=False, forecast="perfect"), FALLBACK, wall=wall)
    gate = RunGate(grid, deadline_s=9 * 60, sleep=wall.sleep)
    saved = []
    total = 6
    for step in range(1, total + 1):
        wall.t += 0.5  # each step: half a wall second, 30 trace seconds at 60x
        gate.between_steps(
            step=step, total_steps=total, step_s=0.5, step_j=KWH, checkpoint=lambda s=step: saved.append(s)
        )
    summary = gate.summary()
    # step 1 ran at 400 (nothing decided before it); then one pause until the clean minute 3; the rest at 80
    assert saved == [1] and summary["pauses"] == 1 and summary["paused_s"] > 0
    assert summary["carbon_g"] == pytest.approx(400 + 5 * 80)
    # straight through: six half-minute steps from minute 0, all inside the dirty minutes 0-2
    assert summary["carbon_if_straight_through_g"] == pytest.approx(6 * 400)
    assert summary["deadline_met"] and summary["saving_pct"] == pytest.approx(100 * (1 - 800 / 2400))
    assert [d["action"] for d in summary["decisions"]] == ["pause", "resume"]


def test_the_gate_runs_on_when_waiting_would_miss_the_deadline(tmp_path):
    wall = Wall()
    csv = grid_csv(tmp_path / "g.csv", [400, 400, 400, 80, 80, 400], step_s=60)
    grid = open_grid(GridSettings(csv=csv, speed=60.0, loop=False, forecast="perfect"), FALLBACK, wall=wall)
    gate = RunGate(grid, deadline_s=120, sleep=wall.sleep)  # two minutes: the clean ones are beyond
    for step in range(1, 5):
        wall.t += 0.5
        gate.between_steps(step=step, total_steps=4, step_s=0.5, step_j=KWH, checkpoint=lambda: None)
    summary = gate.summary()
    assert (
        summary["pauses"] == 0 and summary["carbon_g"] == pytest.approx(4 * 400) and summary["deadline_met"]
    )


def test_distill_with_a_deadline_pauses_and_records_the_saving(
    monkeypatch, capsys, tiny_model_dir, student_dir, tmp_path
):
    csv = grid_csv(
        tmp_path / "g.csv", [400] * 30 + [60] * 10 + [400] * 40, step_s=60
    )  # dirty for 6 s at 300x
    out = tmp_path / "healed"
    code, stdout, err = run_cli(
        monkeypatch, capsys, "distill", "--teacher", tiny_model_dir, "--student", student_dir, "--steps", "6",
        "--out", out, *FLAGS, "--meter", "cpu-model", "--no-eval", "--deadline", "60m", "--grid-csv", csv,
        "--replay-speed", "300", "--forecast", "perfect", "--json",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(stdout)
    d = r["deferral"]
    assert d["pauses"] >= 1 and d["deadline_met"] and d["steps"] == 6
    assert d["carbon_g"] < d["carbon_if_straight_through_g"]
    assert "deferred training: pause" in err and "resume" in err
    manifest = read_manifest(out)
    assert manifest.training["deferral"]["carbon_if_straight_through_g"] == pytest.approx(
        d["carbon_if_straight_through_g"]
    )
    assert "perfect foresight" in manifest.training["deferral"]["grid"]["forecast"]["source"]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--deadline", "24h"], "--deadline defers training to the grid's clean hours"),
        (["--grid-csv", "x.csv"], "add --deadline"),
        (["--deadline", "soon", "--grid-csv", "x.csv"], "--deadline 'soon' is not a duration"),
    ],
)
def test_bad_deferral_flags_are_one_line(
    monkeypatch, capsys, tiny_model_dir, student_dir, tmp_path, flags, needle
):
    code, _, err = run_cli(
        monkeypatch, capsys, "distill", "--teacher", tiny_model_dir, "--student", student_dir, "--steps", "2",
        "--out", tmp_path / "v", *flags,
    )  # fmt: skip
    one_line_error(code, err, needle)
    assert not (tmp_path / "v").exists()
