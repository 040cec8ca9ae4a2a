"""What the policies decide and the variant pool carries out, one frozen type per kind of change.

Each says where from and where to, why (`reason`: a short code, the label of
`greenlm:policy_decisions_total{from,to,reason}`) and, in words, on what figures (`detail`). `from_` and `to`
are the label strings: variant names, `cores:N`, or `unloaded`; `kind` names the type in logs, the dashboard
and the store's `policy_decision` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

UNLOADED = "unloaded"


class _Labels:
    """Every decision has `kind`, `from_`, `to`, `reason` and `detail` (fields or properties)."""

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "from": self.from_,
            "to": self.to,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True, kw_only=True)
class SwitchVariant(_Labels):
    """New requests start on variant `to` (loaded first if it is not); those running finish where they
    started."""

    kind: ClassVar[str] = "variant"
    from_: str
    to: str
    reason: str
    detail: str


@dataclass(frozen=True, kw_only=True)
class SetCores(_Labels):
    """Shrink or restore the CPU affinity (and the threads of loaded variants) to `cores`."""

    kind: ClassVar[str] = "cores"
    previous: int
    cores: int
    reason: str
    detail: str

    @property
    def from_(self) -> str:
        return f"cores:{self.previous}"

    @property
    def to(self) -> str:
        return f"cores:{self.cores}"


@dataclass(frozen=True, kw_only=True)
class Unload(_Labels):
    """Close every variant with no request running; the next request reloads the active one."""

    kind: ClassVar[str] = "unload"
    variant: str  # the active one, which a reload will load
    reason: str
    detail: str

    @property
    def from_(self) -> str:
        return self.variant

    @property
    def to(self) -> str:
        return UNLOADED


@dataclass(frozen=True, kw_only=True)
class Reload(_Labels):
    """Load the active variant again (requests wait and nothing is loaded). The pool takes this one itself
    when a request arrives; it is recorded beside the policies' decisions."""

    kind: ClassVar[str] = "reload"
    variant: str
    reason: str
    detail: str

    @property
    def from_(self) -> str:
        return UNLOADED

    @property
    def to(self) -> str:
        return self.variant


Decision = SwitchVariant | SetCores | Unload | Reload
