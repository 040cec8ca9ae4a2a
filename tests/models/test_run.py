"""Saved run settings: what `optimize --out` records and `measure`/`eval`/`serve` read back."""

import json

import pytest

from greenlm.errors import GreenlmError
from greenlm.models import resolve_model
from greenlm.models.run import OPTIMIZE_FILE, RunSettings, save_run_settings, saved_run_settings


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
