"""Saved run settings: what `optimize --out` records and `measure`/`eval`/`serve` read back."""

import json

import pytest

from greenlm.errors import GreenlmError
from greenlm.models import resolve_model
from greenlm.models.run import OPTIMIZE_FILE, RunSettings, save_run_settings, saved_run_settings
from tests.helpers import export_gguf, needs_llamacpp


def test_gguf_directory_round_trip(tmp_path):
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    assert saved_run_settings(resolve_model(str(folder))) is None
    save_run_settings(folder, RunSettings("llamacpp", threads=1, speculative="prompt-lookup"), {"kld": 0.01})
    saved = saved_run_settings(resolve_model(str(folder)))
    assert saved == RunSettings("llamacpp", threads=1, speculative="prompt-lookup", device="cpu")
    assert json.loads((folder / OPTIMIZE_FILE).read_text())["kld"] == 0.01


def test_builtin_model_has_none():
    assert saved_run_settings(resolve_model(None)) is None


def test_a_corrupt_file_is_one_clear_error(tmp_path):
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / "m.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (folder / OPTIMIZE_FILE).write_text("{not json")
    with pytest.raises(GreenlmError, match="not valid JSON"):
        saved_run_settings(resolve_model(str(folder)))
    (folder / OPTIMIZE_FILE).write_text(json.dumps({"run": {"engine": "llamacpp", "cores": 3}}))
    assert saved_run_settings(resolve_model(str(folder))).engine == "llamacpp"  # unknown keys are ignored


@needs_llamacpp
def test_measure_and_eval_run_a_saved_winner_as_chosen_unless_told_otherwise(tmp_path, tiny_model_dir):
    from greenlm.evaluate import EvalConfig, evaluate
    from greenlm.workload import MeasureConfig, run_measure

    folder = tmp_path / "best"
    folder.mkdir()
    export_gguf(tiny_model_dir, folder / "tiny-q8_0.gguf", quant="q8_0")
    save_run_settings(folder, RunSettings("llamacpp", threads=1, device="cpu"))
    from greenlm.energy.settings import EnergySettings

    small = dict(
        num_prompts=1, prompt_tokens=8, max_new_tokens=4, repeats=1, energy=EnergySettings(meter="cpu-model")
    )
    said = []
    chosen = run_measure(MeasureConfig(model=str(folder), **small), announce=said.append).to_dict()
    assert chosen["engine"] == "llamacpp" and chosen["threads"] == 1 and chosen["device"] == "cpu"
    assert any("as greenlm optimize chose it" in line for line in said)
    told = run_measure(MeasureConfig(model=str(folder), engine="transformers", **small)).to_dict()
    assert told["engine"] == "transformers"  # a flag the user gave wins
    quality = evaluate(EvalConfig(model=str(folder), max_eval_tokens=256, window_tokens=128)).to_dict()
    assert quality["engine"] == "llamacpp"
