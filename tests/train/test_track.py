"""`greenlm track -- CMD` and `greenlm.track()`: the command's whole process tree is metered, its exit code
passes through, each window is stored; bad input is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import greenlm
from greenlm.cli import main
from greenlm.energy.cpu_model import DYNAMIC_DOMAIN, CpuModelMeter
from greenlm.energy.settings import EnergySettings
from greenlm.errors import GreenlmError
from greenlm.store import Store
from greenlm.train.tracker import track_command

WATTS = 10.0  # a round cpu-model figure, so joules are CPU seconds x 10

# A command whose child and grandchild burn CPU and write down how much they used.
BURN = """
import os, subprocess, sys
def burn():
    x = 0
    for i in range(3_000_000):
        x += i * i
out = sys.argv[1]
if len(sys.argv) > 2:
    burn()
    t = os.times()
    open(out + ".grandchild", "w").write(str(t.user + t.system))
else:
    subprocess.run([sys.executable, __file__, out, "child"], check=True)
    burn()
    t = os.times()
    open(out + ".child", "w").write(str(t.user + t.system))
    sys.exit(5)
"""


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["greenlm", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_track_counts_children_and_passes_the_exit_code(tmp_path):
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    result = track_command(
        [sys.executable, str(script), str(tmp_path / "cpu")],
        energy=EnergySettings(meter="cpu-model", watts_per_core=WATTS),
    )
    assert result.exit_code == 5 and not result.interrupted
    child = float((tmp_path / "cpu.child").read_text())
    grandchild = float((tmp_path / "cpu.grandchild").read_text())
    # the meter charged at least the CPU time the two processes report for themselves
    meter = CpuModelMeter(watts_per_core=WATTS)
    per_cpu_second = meter.dynamic_watts_per_core * meter.share().core_fraction
    assert result.energy_detail_j[DYNAMIC_DOMAIN] >= 0.95 * per_cpu_second * (child + grandchild)
    assert result.carbon_g > 0 and result.meter == "cpu-model" and result.energy_source == "estimated"
    with Store() as store:
        row = store.get(result.run_id)
    assert row["command"][1] == str(script) and row["exit_code"] == 5


def test_cli_exit_code_json_and_bad_input(monkeypatch, capsys):
    code, stdout, err = run_cli(
        monkeypatch,
        capsys,
        "track",
        "--meter",
        "cpu-model",
        "--json",
        "--",
        sys.executable,
        "-c",
        "import sys; sys.exit(3)",
    )
    assert code == 3, err
    record = json.loads(stdout)
    assert record["exit_code"] == 3 and record["energy_j"] >= 0 and record["run_id"]

    code, _, err = run_cli(
        monkeypatch, capsys, "track", "--meter", "cpu-model", "--", sys.executable, "-c", "pass"
    )
    assert code == 0 and "greenlm track:" in err and "gCO2e" in err

    for args, needle in (
        (["track"], "no command to track"),
        (["track", "--", "no-such-command-x"], "not found"),
    ):
        code, stdout, err = run_cli(monkeypatch, capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0] and stdout == "", err


def test_context_manager_and_decorator():
    with greenlm.track("block", energy=EnergySettings(meter="cpu-model")) as t:
        sum(i * i for i in range(200_000))
    assert t.energy_j > 0 and t.duration_s > 0 and t.result.run_id
    with pytest.raises(RuntimeError):
        _ = greenlm.track("unfinished", store=False).energy_j

    @greenlm.track("step", energy=EnergySettings(meter="cpu-model"), store=False)
    def step(n):
        return sum(range(n))

    assert step(1000) == 499500 and step.last.energy_j >= 0 and step.last.name == "step"

    @greenlm.track
    def bare():
        return 1

    assert bare() == 1 and bare.last.name.endswith("bare")
    with pytest.raises(GreenlmError, match="PUE"):
        greenlm.track("x", energy=EnergySettings(pue=0.5))


def test_import_greenlm_stays_light():
    code = "import sys, greenlm; greenlm.track; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
