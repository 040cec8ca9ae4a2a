"""Self-contained HTML report of an optimization search, from the results store."""

from greenlm.report.html import build_report, write_report

__all__ = ["build_report", "write_report"]
