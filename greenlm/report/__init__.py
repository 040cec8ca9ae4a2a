"""Self-contained HTML report of an optimization search, from the results store."""

from greenlm._lazy import lazy

__getattr__, __dir__, __all__ = lazy(
    __name__,
    {"build_report": "greenlm.report.html", "write_report": "greenlm.report.html"},
    call="greenlm.report.html:write_report",
)
