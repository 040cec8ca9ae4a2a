"""The contract of a quantized execution module, and the registry that rebuilds them when a variant loads.

`compress` makes these modules; `models` rebuilds them from a variant's manifest; neither imports the other.
"""

from __future__ import annotations

from typing import Any, ClassVar


class QuantizedModule:
    """Mixin for modules that replace nn.Linear with low-bit storage.

    A variant's manifest records each replaced module's `kind` and `spec()`; loading rebuilds it empty with
    `from_spec` and fills it from the safetensors state dict, so quantized variants reload exactly.
    """

    kind: ClassVar[str]

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict[str, Any]):
        raise NotImplementedError


QUANTIZED_MODULES: dict[str, type[QuantizedModule]] = {}


def register_module(cls: type[QuantizedModule]) -> type[QuantizedModule]:
    QUANTIZED_MODULES[cls.kind] = cls
    return cls
