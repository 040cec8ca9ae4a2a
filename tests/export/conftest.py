"""Fixtures for the export tests: tiny models built here and their GGUF exports, made once per session."""

from __future__ import annotations

import pytest

from tests.conftest import build_tiny_model
from tests.export.helpers import export_gguf


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
