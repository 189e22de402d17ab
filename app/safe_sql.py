"""The read-only query guard: every query the app runs, the SQL console's included, goes through here.

Defence in depth, each layer enough on its own for the case it names:

1. The connection is opened ``read_only=True``: no INSERT/UPDATE/CREATE on the store.
2. ``enable_external_access=false``: no file system, network or extension access at all
   (``COPY ... TO``, ``ATTACH``, ``read_csv('/etc/passwd')``, ``INSTALL``/``LOAD``, ``EXPORT``,
   secrets), plus ``autoload/autoinstall_known_extensions=false`` and no community extensions.
3. ``lock_configuration=true`` (DuckDB >= 1.1, checked on 2.0.1): no ``SET``/``RESET``/``PRAGMA``
   can turn any of that back on, nor raise the memory or thread limits.
4. A statement guard: exactly one statement, of type SELECT or EXPLAIN. It refuses what the
   layers above would let through (``CREATE TEMP TABLE``, ``CHECKPOINT``, ``CALL``, ``USE``) with
   a message that names the statement type, before DuckDB sees the query.
5. A wall-clock timeout (a timer thread calls the cursor's ``interrupt()``) and a row cap
   (results are streamed as Arrow batches and cut after ``max_rows``; the result says so).

This module is the app's execution core: it imports neither streamlit nor plotly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ROWS = 10_000
MEMORY_LIMIT = "2GB"

# The statement types a read-only console may run.
ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})

READ_ONLY_CONFIG: dict[str, Any] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_persistent_secrets": False,
    "max_memory": MEMORY_LIMIT,
    # Must be last in spirit: once locked, nothing above can be changed by a query.
    "lock_configuration": True,
}


class QueryError(Exception):
    """A query the app could not run; the message is one line meant for a person."""


class QueryRefused(QueryError):
    """The query is not a single read-only SELECT/EXPLAIN, or DuckDB refused it as unsafe."""


class QueryTimeout(QueryError):
    """The query ran past its time limit and was interrupted."""


class StoreUnavailable(QueryError):
    """The store file is missing or cannot be opened."""


@dataclass(frozen=True)
class QueryResult:
    """Rows of one query, cut at the row cap."""

    frame: pd.DataFrame
    truncated: bool
    elapsed_s: float
    max_rows: int


def open_read_only(path: str | Path) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with every guard of this module's docstring (layers 1-3)."""
    path = Path(path)
    if not path.is_file():
        raise StoreUnavailable(f"store {path} does not exist: run `kvtrace ingest PATH --db {path}` first")
    try:
        return duckdb.connect(str(path), read_only=True, config=dict(READ_ONLY_CONFIG))
    except duckdb.Error as exc:
        raise StoreUnavailable(f"cannot open {path} read-only: {_first_line(exc)}") from exc


def check_read_only_sql(sql: str) -> None:
    """Refuse anything but exactly one SELECT or EXPLAIN statement (layer 4)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {_first_line(exc)}") from exc
    if not statements:
        raise QueryRefused("empty query: write one SELECT statement")
    if len(statements) > 1:
        raise QueryRefused(f"one statement at a time, got {len(statements)}: the console runs read-only SELECTs")
    kind = statements[0].type
    if kind not in ALLOWED_STATEMENTS:
        name = getattr(kind, "name", str(kind))
        raise QueryRefused(
            f"refused: {name} statements are not allowed; the store is read-only here and only SELECT or EXPLAIN may run"
        )


def run_query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, Any] | list[Any] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    prelude: str | None = None,
) -> QueryResult:
    """Run one guarded read-only query on its own cursor, with a timeout and a row cap (layer 5).

    `prelude` is trusted SQL of the app itself (the analyses' temporary macros), run on the fresh
    cursor before the query: temporary macros live per connection, and a cursor is one.
    """
    check_read_only_sql(sql)
    cur = con.cursor()
    if prelude:
        cur.execute(prelude)
    timer = threading.Timer(timeout_s, cur.interrupt)
    timer.daemon = True
    started = time.perf_counter()
    timer.start()
    try:
        table, truncated = _fetch_capped(cur.sql(sql, params=params), max_rows)
    except duckdb.InterruptException as exc:
        raise QueryTimeout(f"query interrupted after the {timeout_s:g} s limit: aggregate more or add a LIMIT") from exc
    except duckdb.PermissionException as exc:
        raise QueryRefused(f"refused: {_first_line(exc)} (the app has no file, network or extension access)") from exc
    except duckdb.InvalidInputException as exc:
        message = _first_line(exc)
        if "read-only" in message or "configuration has been locked" in message:
            raise QueryRefused(f"refused: {message}") from exc
        raise QueryError(message) from exc
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from exc
    finally:
        timer.cancel()
        cur.close()
    elapsed = time.perf_counter() - started
    return QueryResult(frame=table.to_pandas(), truncated=truncated, elapsed_s=elapsed, max_rows=max_rows)


def _fetch_capped(rel: duckdb.DuckDBPyRelation, max_rows: int) -> tuple[pa.Table, bool]:
    """Stream Arrow batches until more than `max_rows` rows arrived; never materialise the rest."""
    reader = rel.to_arrow_reader(min(max_rows + 1, 65_536))
    batches: list[pa.RecordBatch] = []
    rows = 0
    for batch in reader:
        batches.append(batch)
        rows += batch.num_rows
        if rows > max_rows:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    truncated = table.num_rows > max_rows
    return table.slice(0, max_rows), truncated


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
