import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.energy.fakes import FakeGpu, FakePowercap, make_pynvml


@pytest.fixture
def powercap(tmp_path: Path) -> FakePowercap:
    return FakePowercap(tmp_path / "powercap")


@pytest.fixture
def install_pynvml(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Replace pynvml for this test; returns the fake module so tests can inspect its call counts."""

    def install(gpus: list[FakeGpu], *, init_error: int | None = None):
        mod = make_pynvml(gpus, init_error=init_error)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    return install


@pytest.fixture
def no_nvml(install_pynvml: Callable):
    """NVML as on a machine without the driver, whatever the test host has."""
    return install_pynvml([], init_error=12)
