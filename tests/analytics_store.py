"""Tiny real DuckDB stores for analytics tests: the schema contract (ingest/schema.sql) filled with
the normalised rows a trace would have produced. Used where a case is easier to state as rows than
to simulate (clock skew on one host, a lost span)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "ingest" / "schema.sql"
_ids = itertools.count(1)


def span_id() -> str:
    return f"{next(_ids):016x}"


def new_store(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute(SCHEMA.read_text())
    return con


def insert(con: duckdb.DuckDBPyConnection, table: str, **values: Any) -> str:
    values.setdefault("trace_id", "0" * 32)
    values.setdefault("span_id", span_id())
    if table == "kv_events" and values.get("page_ids"):
        pages = sorted(values["page_ids"])
        values.update(page_ids=pages, page_lo=pages[0], page_hi=pages[-1], n_pages=len(pages))
    cols = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    con.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(values.values()))
    return str(values["span_id"])


def s(seconds: float) -> int:
    """Seconds -> ns (exact to the microsecond, as the logs are)."""
    return round(seconds * 1_000_000) * 1000
