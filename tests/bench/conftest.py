"""The benchmark scripts import each other as top-level modules (bench/ is a script's first sys.path entry)."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


import pytest  # noqa: E402

from tests.energy.fakes import make_pynvml  # noqa: E402


@pytest.fixture
def install_pynvml(monkeypatch: pytest.MonkeyPatch):
    """Replace pynvml for this test (as tests/energy do); returns the fake module."""

    def install(gpus, *, init_error=None):
        mod = make_pynvml(gpus, init_error=init_error)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    return install
