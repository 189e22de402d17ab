"""`kvtrace analyze`: compute every analysis and store the result tables (schema.sql) in the store."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

import duckdb
import orjson

from kvtrace.analytics.errors import StoreError
from kvtrace.analytics.registry import ParamValue, Registry, default_registry
from kvtrace.analytics.reuse import store_fingerprint
from kvtrace.analytics.runner import compute

RESULT_SCHEMA_SQL: Final = Path(__file__).resolve().parent / "schema.sql"
_TABLE: Final = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


def result_tables() -> list[str]:
    """The tables schema.sql defines for analyses (analysis_runs excluded)."""
    names = _TABLE.findall(RESULT_SCHEMA_SQL.read_text(encoding="utf-8"))
    return [n for n in names if n != "analysis_runs"]


@dataclass(frozen=True)
class AnalyzeSummary:
    """What one `analyze` run stored."""

    rows: dict[str, int]
    seconds: float


def ensure_result_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the result tables if missing (idempotent)."""
    con.execute(RESULT_SCHEMA_SQL.read_text(encoding="utf-8"))


def analyze(
    con: duckdb.DuckDBPyConnection,
    params: dict[str, ParamValue] | None = None,
    registry: Registry | None = None,
) -> AnalyzeSummary:
    """Compute all analyses and replace the store's result tables with them, in one transaction."""
    started = time.perf_counter()
    reg = registry or default_registry()
    ensure_result_schema(con)
    # what this run reads: `kvtrace report` reuses the results while the store still holds it (the
    # package's analyses at their defaults only: other results are not what a report would compute)
    fingerprint = store_fingerprint(con) if registry is None and not params else None
    order = compute(con, None, params, reg)
    rows: dict[str, int] = {}
    # `main.x` would resolve to the temporary table of the same name: name the store's catalog.
    row = con.execute("SELECT current_database()").fetchone()
    store = '"' + str(row[0] if row else "main").replace('"', '""') + '".main'
    try:
        con.execute("BEGIN TRANSACTION")
        for table in result_tables():
            con.execute(f"DELETE FROM {store}.{table}")
            con.execute(f"INSERT INTO {store}.{table} BY NAME SELECT * FROM temp.main.{table}")
            count = con.execute(f"SELECT count(*) FROM {store}.{table}").fetchone()
            rows[table] = int(count[0]) if count else 0
        seconds = time.perf_counter() - started
        con.execute(
            f"INSERT INTO {store}.analysis_runs (run_at, kvtrace_version, analyses, params, seconds, store_fingerprint) "
            "VALUES (now(), ?, ?, ?, ?, ?)",
            [_version(), order, orjson.dumps(params or {}).decode(), seconds, fingerprint],
        )
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise StoreError(f"could not store the results: {str(exc).splitlines()[0]}") from exc
    return AnalyzeSummary(rows=rows, seconds=time.perf_counter() - started)


def _version() -> str:
    try:
        return metadata.version("kvtrace")
    except metadata.PackageNotFoundError:
        return "unknown"
