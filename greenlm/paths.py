"""Where greenlm keeps its files: the results store and caches (overridable for tests and CI)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """Dequantized models, reference statistics. `GREENLM_CACHE_DIR` overrides."""
    root = os.environ.get("GREENLM_CACHE_DIR")
    return Path(root) if root else Path(platformdirs.user_cache_dir("greenlm"))


def default_db_path() -> Path:
    """The SQLite results store. `GREENLM_DB` overrides; `--db` overrides both."""
    env = os.environ.get("GREENLM_DB")
    return Path(env) if env else Path(platformdirs.user_data_dir("greenlm")) / "greenlm.db"
