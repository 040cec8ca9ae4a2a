"""bench/optimize_builtin.py's reproduction step builds the `greenlm measure` command a user would type from the
search's settings (a settings field moved by a refactor crashed it at the end of a 13-minute run once)."""

import json
import subprocess

import optimize_builtin

from greenlm.energy.settings import EnergySettings
from greenlm.optimize import EvalSettings


def test_reproduction_measures_the_saved_variant_with_the_search_workload(monkeypatch, tmp_path):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        answer = {
            "engine": "llamacpp",
            "threads": 2,
            "decode_j_per_token": 0.2,
            "per_repeat": [{"decode_j": 2.0, "decode_tokens": 10}, {"decode_j": 3.0, "decode_tokens": 10}],
        }
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(answer), stderr="")

    monkeypatch.setattr(optimize_builtin.subprocess, "run", fake_run)
    settings = EvalSettings(energy=EnergySettings(meter="cpu-model"))
    again = optimize_builtin.reproduce("chosen/", settings, repeats=3, db=tmp_path / "r.db")
    command = seen["command"]
    assert command[1:5] == ["-m", "greenlm", "measure", "--model"] and command[5] == "chosen/"
    assert command[command.index("--meter") + 1] == "cpu-model"
    assert command[command.index("--repeats") + 1] == "3"
    assert command[command.index("--max-new-tokens") + 1] == str(settings.max_new_tokens)
    assert again["per_repeat"] == [0.2, 0.3] and again["engine"] == "llamacpp"
