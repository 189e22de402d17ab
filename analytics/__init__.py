"""kvtrace analytics: the store's normalised tables -> race findings, anomalies, linkage.

Headless (never imports streamlit, plotly or torch). Entry points:
- `analytics.run_all(con)` computes every registered analysis on a store connection;
- `analytics.findings.compute(con)` returns the race findings as a pyarrow.Table;
- `analytics.materialise.analyze(con)` stores the result tables (analytics/schema.sql).
"""

from __future__ import annotations

import duckdb

from kvtrace.analytics.registry import ParamValue
from kvtrace.analytics.runner import compute


def run_all(con: duckdb.DuckDBPyConnection, params: dict[str, ParamValue] | None = None) -> list[str]:
    """Compute every registered analysis into temporary tables named after them; returns their names."""
    return compute(con, None, params)


__all__ = ["run_all"]
