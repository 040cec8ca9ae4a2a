"""A directory saved by `optimize --out` starts the way it was chosen: its saved engine, threads and decoding."""

import json

import pytest

from greenlm.errors import GreenlmError
from greenlm.models.run_settings import SETTINGS_FILE, saved_run_settings


def write(tmp_path, data):
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(tmp_path)


def test_settings_from_a_hand_written_manifest(tmp_path):
    settings = saved_run_settings(
        write(tmp_path, {"engine": "llamacpp", "threads": 1, "device": "cpu", "decoding": "prompt-lookup"})
    )
    assert (settings.engine, settings.threads, settings.device, settings.speculative) == (
        "llamacpp",
        1,
        "cpu",
        "prompt-lookup",
    )
    assert settings.source.endswith(SETTINGS_FILE)


def test_todays_optimize_manifest_and_plain_decoding(tmp_path):
    # what optimize's save_chosen writes now: engine and threads among the candidate's figures
    settings = saved_run_settings(
        write(tmp_path, {"label": "x", "engine": "transformers", "threads": 2, "kld": 0.01})
    )
    assert (settings.engine, settings.threads, settings.device, settings.speculative) == (
        "transformers",
        2,
        None,
        None,
    )
    assert (
        saved_run_settings(write(tmp_path, {"speculative": {"kind": "prompt-lookup"}})).speculative
        == "prompt-lookup"
    )


def test_no_settings_for_names_files_and_plain_directories(tmp_path):
    assert saved_run_settings(None) is None
    assert saved_run_settings("smollm2-135m") is None
    assert saved_run_settings(str(tmp_path)) is None
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert saved_run_settings(str(tmp_path / "m.gguf")) is None


@pytest.mark.parametrize(
    "data",
    ["{not json", "[1, 2]", {"engine": "vllm"}, {"threads": 0}, {"threads": "2"}, {"decoding": "beam"}],
)
def test_a_damaged_manifest_is_one_clear_error(tmp_path, data):
    with pytest.raises(GreenlmError, match=SETTINGS_FILE):
        saved_run_settings(write(tmp_path, data))
