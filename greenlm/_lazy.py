"""Lazy package exports (PEP 562): a package names what it offers without importing it until first use, so
`import greenlm` and `greenlm --help` stay light (no torch, llama.cpp or ray until a command needs them)."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable


def _resolve(target: str, default_name: str) -> object:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute or default_name)


class _VerbModule(types.ModuleType):
    """A package that is also its verb: `greenlm.compress(config)` runs the verb whether `greenlm.compress`
    is still the lazy face's function or already the imported subpackage (Python binds a subpackage to its
    parent's attribute on import, so both must behave alike)."""

    __verb__: str

    def __call__(self, *args, **kwargs):
        return _resolve(self.__verb__, "")(*args, **kwargs)


def lazy(
    package: str, exports: dict[str, str], *, call: str | None = None
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, exporting each name from the module it maps to
    (`"pkg.module"`, or `"pkg.module:attribute"` when the name differs there). `call` ("pkg.module:function")
    makes the package itself callable as that function."""
    if call is not None:
        module = sys.modules[package]
        module.__class__ = _VerbModule
        module.__verb__ = call

    def __getattr__(name: str) -> object:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return _resolve(target, name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
