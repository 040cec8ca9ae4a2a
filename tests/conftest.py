"""Shared fixtures: an isolated cache and store per test, a tiny random Llama with a real tokenizer, and the
models and GGUF exports several folders test on (made once per session). Helpers are in tests/helpers.py."""

from __future__ import annotations

import os

import pytest

from tests.helpers import build_tiny_model, export_gguf, tiny_tokenizer  # noqa: F401  (tests import them from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory):
    # The dequantized built-in model takes ~30 s to make: one cache per test session, never the user's own.
    return tmp_path_factory.mktemp("greenlm-cache")


@pytest.fixture(autouse=True)
def _isolated_paths(tmp_path, monkeypatch, shared_cache_dir):
    monkeypatch.setenv("GREENLM_DB", str(tmp_path / "store" / "greenlm.db"))
    monkeypatch.setenv("GREENLM_CACHE_DIR", str(shared_cache_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    from greenlm.models import load_model, resolve_model

    return load_model(resolve_model(str(tiny_model_dir)))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory):
    return export_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf").out


@pytest.fixture(scope="session")
def wide_model_dir(tmp_path_factory):
    """Rows 256 wide, so llama.cpp's k-quants apply (the 64-wide tiny model falls back everywhere)."""
    return build_tiny_model(tmp_path_factory.mktemp("wide-llama"), hidden=256)
