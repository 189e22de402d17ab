"""SQL page: ready examples (the analyses, made self-contained) and the guarded console query."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import duckdb

from kvtrace.analytics.materialise import result_tables
from kvtrace.analytics.registry import MACROS_SQL, Analysis, ParamValue, default_registry
from kvtrace.app.safe_sql import QueryResult, StoreUnavailable, run_isolated
from kvtrace.app.store import Store

CONSOLE_MAX_ROWS = 5_000


@dataclass(frozen=True)
class Example:
    title: str
    description: str
    sql: str


def _literal(value: ParamValue) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _with_defaults(analysis: Analysis) -> str:
    """The analysis's SQL with each `$param` replaced by its declared default, as a literal."""
    sql = analysis.sql.strip().rstrip(";")
    for p in sorted(analysis.params, key=lambda p: -len(p.name)):
        sql = re.sub(rf"\${p.name}\b", _literal(p.default), sql)
    return sql


def analysis_example(name: str) -> str:
    """A single SELECT that computes analysis `name` from the normalised tables alone.

    Each analysis it requires becomes a CTE named after it (the runner would have made it a
    temporary table), so the console can run it on a read-only store.
    """
    registry = default_registry()
    parts: list[str] = []
    for dep in registry.closure(name):
        analysis = registry.get(dep)
        body = _with_defaults(analysis)
        if dep == name:
            return ("WITH " + ",\n".join(parts) + "\n" if parts else "") + f"SELECT * FROM (\n{body}\n) AS {name}"
        parts.append(f"{dep} AS (\n{body}\n)")
    raise KeyError(name)


def examples(store: Store) -> list[Example]:
    """Stored results first (cheap to read), then every analysis as a runnable query."""
    out = [Example("requests per version and role", "normalised table",
                   "SELECT service_version, role, count(*) AS requests, avg(spec_accept_length) AS accept_length\n"
                   "FROM requests GROUP BY ALL ORDER BY ALL")]
    present = store.tables()
    out += [Example(f"stored result: {t}", "materialised by `kvtrace analyze`", f"SELECT * FROM {t} LIMIT 100")
            for t in result_tables() if t in present]
    out += [Example(f"analysis: {a.name}", a.description, analysis_example(a.name)) for a in default_registry()]
    return out


def run_console(store: Store, sql: str) -> QueryResult:
    """The console's query: app.safe_sql's guard, in a worker process of its own (the app's process
    never runs SQL a person typed), on the store's current snapshot, with the analyses' macros.

    A snapshot replaced (and removed) between asking for its path and the worker opening it is
    retried once on the new one.
    """
    for attempt in (1, 2):
        path = store.call(_snapshot_path)
        try:
            return run_isolated(path, sql, timeout_s=store.timeout_s, max_rows=CONSOLE_MAX_ROWS,
                                prelude=_macros()).to_query_result()
        except StoreUnavailable:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _snapshot_path(cur: duckdb.DuckDBPyConnection) -> str:
    row = cur.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    assert row is not None
    return str(row[0])


@cache
def _macros() -> str:
    return MACROS_SQL.read_text(encoding="utf-8")
