"""The read-only query guard: the one guard of the app's SQL console and of `kvtrace query`.

SQL typed by a person (the console, `kvtrace query`) goes through `run_isolated`, which runs it
in a worker process of its own (`kvtrace.app.sql_worker`); the app's own queries (pages, data
functions) through `run_query` on the app's connection. Both use the same statement guard and
connection guards. Defence in depth, each layer enough on its own for the case it names:

1. The connection is opened ``read_only=True``: no INSERT/UPDATE/CREATE on the store.
2. ``enable_external_access=false``: no file system, network or extension access at all
   (``COPY ... TO``, ``ATTACH``, ``read_csv('/etc/passwd')``, ``INSTALL``/``LOAD``, ``EXPORT``,
   secrets), plus ``autoload/autoinstall_known_extensions=false`` and no community extensions.
3. Limits enforced by DuckDB itself, set in the connection's config before
   ``lock_configuration=true`` (DuckDB >= 1.1, checked on 2.0.1), so no ``SET``/``RESET``/``PRAGMA``
   can lift them or turn layer 2 back on: ``memory_limit``, and in a worker ``threads`` and a
   private temporary directory for spilling, capped by ``max_temp_directory_size``.
4. A statement guard, by DuckDB's parser and tokenizer (not string prefixes): exactly one
   statement, of type SELECT, or EXPLAIN [ANALYZE | (ANALYZE, FORMAT f)] whose explained statement,
   parsed again on its own, is one SELECT; the EXPLAIN that runs is put together from the checked
   parts. ``EXPLAIN ANALYZE`` executes what it explains: a guard that looked only at the outer
   type let ``EXPLAIN ANALYZE CREATE TEMP TABLE``, ``SET``, ``SET VARIABLE``, ``CALL``,
   ``CHECKPOINT``, ``PREPARE`` run.
5. A wall-clock timeout: a timer calls the cursor's ``interrupt()``. DuckDB honours it between
   vectors, so it stops scans, joins and aggregations at once; it does NOT stop a long scalar
   call: ``SELECT sum(length(repeat('x', 1000000000))) FROM range(3)`` is three rows in one vector,
   ~25 s of ``repeat`` each on this box, and was still running 37 s after its interrupt.
6. Process isolation (``run_isolated``): one worker process per query, with an address-space
   limit (``RLIMIT_AS``: its size once set up plus ``ADDRESS_SPACE_BUDGET``), interrupted just
   before its deadline and killed at it (``timeout_s`` from when the query was submitted, plus
   what the trusted setup took: a wait for a store another process holds, ``--analyses``).
   Why: DuckDB's ``memory_limit`` does not cover the strings a scalar function builds
   (``repeat('xy', 1900000000)`` passed 3 GB under a 256 MB limit, 6 GB in the app under 2 GB),
   and layer 5 cannot stop a scalar call; nothing inside one process can. Under the address-space
   limit that ``repeat`` fails at once with DuckDB's own "Out of Memory Error"; the 1 GB ones fit,
   and the kill ends them at the deadline. The app's process holds nothing of a query but its
   result, a crash of DuckDB takes only the worker, at most ``MAX_WORKERS`` run at once per
   process, and a worker dies with the thread that started it. Cost: a worker's start, ~0.5 s of
   CPU (Python, duckdb, pyarrow), per query.
7. Results: a row cap and a byte cap (``RESULT_MAX_BYTES``): the result is streamed as Arrow
   batches and cut where either is reached, and says so; for a person (``display``), every column
   of a type Arrow, polars or CSV cannot show faithfully is cast to text by DuckDB before it leaves
   the engine (see ``SHOWABLE_TYPES``), and `to_frame` turns a column polars refuses into text.

Every error is a `QueryError` whose message is one line for a person.
This module is the app's execution core: it imports neither streamlit nor plotly (nor polars
until a frame is asked for: the worker never needs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

if TYPE_CHECKING:
    import polars as pl

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_ROWS = 10_000
MEMORY_LIMIT = "2GB"  # DuckDB's own limit on the app's connection (its own, trusted queries)
ISOLATED_MEMORY_LIMIT = "1GB"  # DuckDB's own limit in a worker (operators, caches, temporary tables)
ISOLATED_THREADS = 2  # DuckDB threads of a worker
TEMP_DIRECTORY_LIMIT = "2GB"  # what operators may spill (a private directory, removed after the query)
ADDRESS_SPACE_BUDGET = 1536 * 2**20  # a worker's address space over its size once set up (RLIMIT_AS)
RESULT_MAX_BYTES = 128 * 2**20  # Arrow bytes of one result; Streamlit refuses messages over 200 MB
INTERRUPT_LEAD_S = 0.5  # a worker is interrupted this long before its deadline, and killed at it
STARTUP_S = 30.0  # a worker's start, connect and prelude (on top of the store's lock wait)
MAX_WORKERS = 2  # isolated queries at once per process; more wait for a free slot

# The statement types a read-only console may run (an EXPLAIN only of a SELECT: see layer 4).
ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})

# DuckDB types that reach Arrow, polars, Streamlit and CSV unchanged, every value; any other
# column is cast to VARCHAR (DuckDB's own text form) before a person sees it. Not here, and why:
# UNION (polars and CSV refuse it), LIST/STRUCT/MAP/ARRAY/VARIANT (CSV refuses them), BLOB/BIT/
# GEOMETRY (not UTF-8), INTERVAL (CSV refuses it), UHUGEINT/BIGNUM (a UHUGEINT's max arrives as
# -1; a HUGEINT, what sum() of integers gives, arrives exact as decimal128), ENUM, DATE/TIME/TIMESTAMP* ('infinity' arrives as year 294247, a DATE past 9999
# panics polars when read), TIMETZ (loses its offset). Ids as DuckDBPyType.id spells them.
SHOWABLE_TYPES = frozenset({
    "boolean", "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
    "ubigint", "float", "double", "decimal", "varchar", "uuid", "null",
})

READ_ONLY_CONFIG: dict[str, Any] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_persistent_secrets": False,
    "memory_limit": MEMORY_LIMIT,
    # Must be last in spirit: once locked, nothing above can be changed by a query.
    "lock_configuration": True,
}


class QueryError(Exception):
    """A query the app could not run; the message is one line meant for a person."""


class QueryRefused(QueryError):
    """The query is not a single read-only SELECT/EXPLAIN, or DuckDB refused it as unsafe.

    `statement_type` names the statement's type when that was the reason (e.g. "DELETE"); it is
    None for an EXPLAIN refused for what it explains, and for every other reason.
    """

    def __init__(self, message: str, statement_type: str | None = None) -> None:
        super().__init__(message)
        self.statement_type = statement_type


class QueryTimeout(QueryError):
    """The query ran past its time limit and was interrupted (or its worker stopped)."""


class QueryOutOfMemory(QueryError):
    """The query needed more memory than the guard allows."""


class StoreUnavailable(QueryError):
    """The store file is missing or cannot be opened."""


@dataclass(frozen=True)
class QueryResult:
    """Rows of one query, cut at the row cap (or the byte cap: `note` says so)."""

    frame: pl.DataFrame  # DuckDB's Arrow result, as polars (no copy of fixed-width columns)
    truncated: bool
    elapsed_s: float
    max_rows: int
    note: str = ""


@dataclass(frozen=True)
class TableResult:
    """Rows of one isolated query as Arrow, cut at the row cap or the byte cap (`note` says which)."""

    table: pa.Table
    truncated: bool
    elapsed_s: float
    max_rows: int
    note: str = ""

    def to_query_result(self) -> QueryResult:
        return QueryResult(frame=to_frame(self.table), truncated=self.truncated, elapsed_s=self.elapsed_s,
                           max_rows=self.max_rows, note=self.note)


# -- layers 1-3: the connection ---------------------------------------------------------------------


def connection_config(
    *, memory_limit: str = MEMORY_LIMIT, threads: int | None = None, temp_directory: str | Path | None = None
) -> dict[str, Any]:
    """DuckDB config of a guarded connection; `lock_configuration` comes last (dicts keep order).
    `threads` None keeps DuckDB's default (one per core)."""
    config = {k: v for k, v in READ_ONLY_CONFIG.items() if k != "lock_configuration"}
    config["memory_limit"] = memory_limit
    if threads is not None:
        config["threads"] = threads
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
        config["max_temp_directory_size"] = TEMP_DIRECTORY_LIMIT
    config["lock_configuration"] = True
    return config


def open_read_only(
    path: str | Path,
    *,
    memory_limit: str = MEMORY_LIMIT,
    threads: int | None = None,
    temp_directory: str | Path | None = None,
    wait_s: float = 0.0,
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with every connection guard of this module's docstring (layers 1-3),
    waiting up to `wait_s` seconds while another process holds the file's lock; through the
    store's one door (`kvtrace.ingest.store.open_store`), any DuckDB file (no kvtrace check)."""
    from kvtrace.ingest.store import StoreError, open_store

    config = connection_config(memory_limit=memory_limit, threads=threads, temp_directory=temp_directory)
    try:
        return open_store(path, read_only=True, wait_s=wait_s, config=dict(config), require=())
    except StoreError as exc:
        raise StoreUnavailable(str(exc)) from exc


# -- layer 4: the statement guard -------------------------------------------------------------------


def check_read_only_sql(sql: str) -> str:
    """Refuse anything but exactly one SELECT, or EXPLAIN [ANALYZE] of one SELECT (layer 4).

    Returns the SQL to run: `sql` itself for a SELECT, and for an EXPLAIN the statement put
    together from its checked parts (so what runs is exactly what was checked).
    """
    statement = _single_statement(sql, "")
    kind = statement.type
    if kind == duckdb.StatementType.SELECT:
        return sql
    if kind == duckdb.StatementType.EXPLAIN:
        return _checked_explain(statement.query)
    name = _type_name(kind)
    raise QueryRefused(
        f"refused: {name} statements are not allowed; the store is read-only here and only SELECT or EXPLAIN may run",
        statement_type=name,
    )


def _single_statement(sql: str, context: str) -> duckdb.Statement:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse{context}: {first_line(exc)}") from exc
    if not statements:
        if context:
            raise QueryRefused(f"refused: EXPLAIN needs a SELECT to explain{context}")
        raise QueryRefused("empty query: write one SELECT statement")
    if len(statements) > 1:
        raise QueryRefused(f"one statement at a time, got {len(statements)}: the console runs read-only SELECTs")
    return statements[0]


# EXPLAIN's options in parentheses, as DuckDB's grammar has them: `EXPLAIN (ANALYZE, FORMAT json) ...`.
_EXPLAIN_FORMATS = frozenset({"text", "json", "html", "graphviz", "yaml", "mermaid"})
_TRUE_WORDS = frozenset({"true", "on", "1"})
_FALSE_WORDS = frozenset({"false", "off", "0"})


def _checked_explain(text: str) -> str:
    """`EXPLAIN [ANALYZE | (options)] <one SELECT>`, re-assembled from its checked parts."""
    tokens = duckdb.tokenize(text)
    ends = [start for start, _ in tokens[1:]] + [len(text)]
    words = [(start, text[start:end].strip())
             for (start, kind), end in zip(tokens, ends, strict=True) if kind != duckdb.token_type.comment]
    if not words or words[0][1].upper() != "EXPLAIN":
        raise QueryRefused("refused: cannot tell what this EXPLAIN explains; write EXPLAIN [ANALYZE] SELECT ...")
    analyze = False
    fmt: str | None = None
    at = 1
    if at < len(words) and words[at][1].upper() in ("ANALYZE", "ANALYSE"):
        analyze, at = True, at + 1
    elif at < len(words) and words[at][1] == "(":
        options: list[list[str]] = [[]]
        at += 1
        while at < len(words) and words[at][1] != ")":
            word = words[at][1]
            if word == ",":
                options.append([])
            else:
                options[-1].append(word.strip("'\"").lower())
            at += 1
        if at >= len(words):
            raise QueryRefused("refused: cannot tell what this EXPLAIN explains; write EXPLAIN [ANALYZE] SELECT ...")
        at += 1  # the closing parenthesis
        for option in options:
            if option in (["analyze"], ["analyse"]) or (
                len(option) == 2 and option[0] in ("analyze", "analyse") and option[1] in _TRUE_WORDS):
                analyze = True
            elif len(option) == 2 and option[0] in ("analyze", "analyse") and option[1] in _FALSE_WORDS:
                analyze = False
            elif len(option) == 2 and option[0] == "format" and option[1] in _EXPLAIN_FORMATS:
                fmt = option[1]
            else:
                raise QueryRefused(f"refused: EXPLAIN option {' '.join(option) or '(empty)'!r} is not allowed here; "
                                   "ANALYZE and FORMAT are")
    if at >= len(words):
        raise QueryRefused("refused: EXPLAIN needs a SELECT to explain")
    inner_sql = text[words[at][0]:]
    inner = _single_statement(inner_sql, " (the statement after EXPLAIN)")
    if inner.type != duckdb.StatementType.SELECT:
        name = _type_name(inner.type)
        runs = "EXPLAIN ANALYZE runs the statement it explains; " if analyze else ""
        raise QueryRefused(f"refused: {runs}only a SELECT may be explained here, not {name}")
    if fmt is not None:
        prefix = f"EXPLAIN ({'ANALYZE, ' if analyze else ''}FORMAT {fmt}) "
    else:
        prefix = "EXPLAIN ANALYZE " if analyze else "EXPLAIN "
    return prefix + inner_sql


def _type_name(kind: object) -> str:
    return str(getattr(kind, "name", kind))


# -- layers 5 and 7: running one query --------------------------------------------------------------


def run_query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, Any] | list[Any] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    prelude: str | None = None,
    display: bool = False,
) -> QueryResult:
    """Run one guarded read-only query on its own cursor, with a timeout and a row cap (layers 4-5, 7),
    in this process: for the app's own SQL. SQL typed by a person goes through `run_isolated`.

    `prelude` is trusted SQL of the app itself (the analyses' temporary macros), run on the fresh
    cursor before the query: temporary macros live per connection, and a cursor is one.
    `display` casts the columns a person could not see faithfully to text (layer 7).
    """
    checked = check_read_only_sql(sql)
    cur = con.cursor()
    try:
        if prelude:
            cur.execute(prelude)
        result = execute_guarded(cur, checked, params, timeout_s=timeout_s, max_rows=max_rows, display=display)
    finally:
        cur.close()
    return result.to_query_result()


def execute_guarded(
    cur: duckdb.DuckDBPyConnection,
    checked_sql: str,
    params: dict[str, Any] | list[Any] | None = None,
    *,
    timeout_s: float,
    max_rows: int,
    display: bool,
    max_bytes: int | None = None,
    interrupt_after_s: float | None = None,
) -> TableResult:
    """Run SQL that `check_read_only_sql` returned on `cur`: the timeout's interrupt (after
    `interrupt_after_s`, default `timeout_s`, which the message names), the row and byte caps,
    DuckDB's errors as one-line `QueryError`s."""
    timer = threading.Timer(timeout_s if interrupt_after_s is None else interrupt_after_s, cur.interrupt)
    timer.daemon = True
    started = time.perf_counter()
    timer.start()
    try:
        rel = cur.sql(checked_sql, params=params)
        if rel is None:
            raise QueryError("the query returned no rows to show")
        if display:
            rel = _displayable(rel)
        table, truncated, note = _fetch_capped(rel, max_rows, max_bytes)
    except duckdb.InterruptException as exc:
        raise QueryTimeout(timeout_message(timeout_s)) from exc
    except duckdb.PermissionException as exc:
        raise QueryRefused(f"refused: {first_line(exc)} (the app has no file, network or extension access)") from exc
    except duckdb.OutOfMemoryException as exc:
        raise QueryOutOfMemory(out_of_memory_message(first_line(exc))) from exc
    except duckdb.InvalidInputException as exc:
        message = first_line(exc)
        if "read-only" in message or "configuration has been locked" in message:
            raise QueryRefused(f"refused: {message}") from exc
        raise QueryError(message) from exc
    except duckdb.Error as exc:
        raise QueryError(first_line(exc)) from exc
    except MemoryError as exc:
        raise QueryOutOfMemory(out_of_memory_message("the result does not fit in memory")) from exc
    except pa.ArrowException as exc:
        raise QueryError(f"the result cannot be converted: {first_line(exc)}") from exc
    finally:
        timer.cancel()
    return TableResult(table, truncated, time.perf_counter() - started, max_rows, note)


def timeout_message(timeout_s: float) -> str:
    return f"query interrupted after the {timeout_s:g} s limit: aggregate more or add a LIMIT"


def out_of_memory_message(reason: str) -> str:
    return (f"query stopped: out of memory ({reason}); the limit is {ISOLATED_MEMORY_LIMIT} for DuckDB and "
            f"{ADDRESS_SPACE_BUDGET / 2**30:g} GiB for the query's process: aggregate more or add a LIMIT")


def _displayable(rel: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """`rel` with each column of a type outside SHOWABLE_TYPES cast to VARCHAR, by position (names
    may repeat), keeping the names."""
    types = [t.id for t in rel.types]
    if all(t in SHOWABLE_TYPES for t in types):
        return rel
    exprs = []
    for i, (name, kind) in enumerate(zip(rel.columns, types, strict=True), start=1):
        alias = '"' + name.replace('"', '""') + '"'
        exprs.append(f"#{i} AS {alias}" if kind in SHOWABLE_TYPES else f"CAST(#{i} AS VARCHAR) AS {alias}")
    return rel.project(", ".join(exprs))


def _fetch_capped(
    rel: duckdb.DuckDBPyRelation, max_rows: int, max_bytes: int | None
) -> tuple[pa.Table, bool, str]:
    """Stream Arrow batches until more than `max_rows` rows (or `max_bytes` bytes) arrived; never
    materialise the rest. Returns (table, truncated, note)."""
    reader = rel.to_arrow_reader(min(max_rows + 1, 65_536))
    batches: list[pa.RecordBatch] = []
    rows = 0
    size = 0
    note = ""
    for batch in reader:
        if max_bytes is not None and size + batch.nbytes > max_bytes:
            fit = _rows_within(batch, max_bytes - size)
            if fit:
                batches.append(batch.slice(0, fit))
                rows += fit
            if rows == 0:
                raise QueryError(f"the first row alone is over the {max_bytes / 2**20:g} MB a result may have: "
                                 "select fewer or narrower columns (e.g. left(col, 1000))")
            note = f"cut at {rows:,} rows: the result reached the {max_bytes / 2**20:g} MB limit"
            break
        batches.append(batch)
        rows += batch.num_rows
        size += batch.nbytes
        if rows > max_rows:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    truncated = bool(note) or table.num_rows > max_rows
    return table.slice(0, max_rows), truncated, note


def _rows_within(batch: pa.RecordBatch, budget: int) -> int:
    """How many leading rows of `batch` fit in `budget` bytes (binary search on slice sizes)."""
    lo, hi = 0, batch.num_rows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if batch.slice(0, mid).nbytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


# Python's date range (0001-01-01 .. 9999-12-31 23:59:59) in days and in seconds since the epoch:
# polars holds dates past it, but panics when one is read or printed.
_DAYS = (-719_162, 2_932_896)
_SECONDS = (-62_135_596_800, 253_402_300_799)
_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def to_frame(table: pa.Table) -> pl.DataFrame:
    """`table` as polars (Arrow to polars: fixed-width columns are not copied); a repeated column
    name gets its position appended (polars needs unique names), and a column polars cannot hold
    (a DATE past year 9999, ...) becomes DuckDB's text of it."""
    import polars as pl

    names: list[str] = []
    for i, name in enumerate(table.column_names):
        names.append(name if name not in names else f"{name}_{i}")
    if names != table.column_names:
        table = table.rename_columns(names)
    for i, (field, column) in enumerate(zip(table.schema, table.columns, strict=True)):
        if _out_of_python_range(field, column):
            table = table.set_column(i, field.name, _as_text(field, column))
    try:
        frame = pl.from_arrow(table, rechunk=False)
        assert isinstance(frame, pl.DataFrame)
        return frame
    except (pa.ArrowException, pl.exceptions.PolarsError, ValueError, TypeError, OverflowError):
        pass
    columns: list[pl.Series] = []
    for field, column in zip(table.schema, table.columns, strict=True):
        try:
            columns.append(pl.Series(field.name, column))
        except (pa.ArrowException, pl.exceptions.PolarsError, ValueError, TypeError, OverflowError):
            columns.append(pl.Series(field.name, _as_text(field, column)))
    return pl.DataFrame(columns)


def _out_of_python_range(field: pa.Field, column: pa.ChunkedArray) -> bool:
    """Whether a date or timestamp column holds a value outside Python's date range."""
    import pyarrow.compute as pc

    kind = field.type
    if pa.types.is_date32(kind):
        lo, hi, raw = *_DAYS, pa.int32()
    elif pa.types.is_date64(kind):
        lo, hi, raw = _SECONDS[0] * 1000, _SECONDS[1] * 1000, pa.int64()
    elif pa.types.is_timestamp(kind) and kind.unit != "ns":  # int64 nanoseconds never leave the range
        lo, hi, raw = _SECONDS[0] * _PER_SECOND[kind.unit], _SECONDS[1] * _PER_SECOND[kind.unit], pa.int64()
    else:
        return False
    if column.null_count == len(column):
        return False
    bounds = pc.min_max(column.cast(raw))
    return bool(bounds["min"].as_py() < lo or bounds["max"].as_py() > hi)


def _as_text(field: pa.Field, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """DuckDB's text of an Arrow column (our own result, in a private in-memory database)."""
    scratch = duckdb.connect(config={"enable_external_access": False})
    try:
        rel = scratch.from_arrow(pa.table({"c": column}))
        return rel.project("CAST(c AS VARCHAR) AS c").to_arrow_table().column("c")
    except duckdb.Error as exc:
        raise QueryError(f"column {field.name!r} of type {field.type} cannot be shown: {first_line(exc)}") from exc
    finally:
        scratch.close()


# -- layer 6: one worker process per query ----------------------------------------------------------

_WORKER_SLOTS = threading.BoundedSemaphore(MAX_WORKERS)
_ERRORS: dict[str, type[QueryError]] = {
    cls.__name__: cls for cls in (QueryError, QueryRefused, QueryTimeout, QueryOutOfMemory, StoreUnavailable)
}


def run_isolated(
    db: str | Path,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    prelude: str | None = None,
    analyses: bool = False,
    wait_s: float = 0.0,
    max_bytes: int = RESULT_MAX_BYTES,
    started_at: float | None = None,
) -> TableResult:
    """Run one query typed by a person against the store file `db`, in a worker process of its own
    (every layer of the module docstring), and return its rows, cast for display (layer 7).

    `prelude` is trusted SQL run first on the worker's cursor (the app's temporary macros);
    `analyses` computes every analysis into temporary tables first (`kvtrace query --analyses`).
    `wait_s` is how long the worker waits for a store another process holds.
    `started_at` (time.monotonic()) is when the time limit starts: default now (a wait for one of
    the MAX_WORKERS slots counts); `kvtrace query` passes its own process's start, so the whole
    command ends within `timeout_s`.
    """
    started_at = time.monotonic() if started_at is None else started_at
    check_read_only_sql(sql)  # refuse at once, before any process starts (the worker checks again)
    path = Path(db).resolve()
    if not path.is_file():
        raise StoreUnavailable(f"store {path} does not exist: run `kvtrace ingest PATH --db {path}` first")
    request = {
        "db": str(path), "sql": sql, "timeout_s": timeout_s, "max_rows": max_rows, "max_bytes": max_bytes,
        "prelude": prelude, "analyses": analyses, "wait_s": wait_s, "parent_pid": os.getpid(),
        "interrupt_lead_s": INTERRUPT_LEAD_S,
    }
    if not _WORKER_SLOTS.acquire(timeout=max(started_at + timeout_s - time.monotonic(), 0.0)):
        raise QueryTimeout(f"the console is busy ({MAX_WORKERS} queries running) for the whole "
                           f"{timeout_s:g} s limit: try again in a moment")
    try:
        with tempfile.TemporaryDirectory(prefix="kvtrace-sql-") as work:
            return _run_worker(request, Path(work), startup_s=STARTUP_S + wait_s + (600.0 if analyses else 0.0),
                               started_at=started_at)
    finally:
        _WORKER_SLOTS.release()


# The worker's interpreter is isolated (-I: no PYTHON* variables, no user site, not the current
# directory on its path, so nothing beside the parent's script can shadow a module) and imports
# kvtrace from where this process did.
_WORKER_BOOT = ("import sys; root = sys.argv[1]; root in sys.path or sys.path.insert(0, root); "
                "from kvtrace.app.sql_worker import main; sys.exit(main())")


def _worker_command() -> list[str]:
    import kvtrace

    return [sys.executable, "-I", "-c", _WORKER_BOOT, str(Path(kvtrace.__file__).parent.parent)]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # glibc reserves 64 MB of address space per thread arena, which would eat the worker's budget.
    env["MALLOC_ARENA_MAX"] = "2"
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"
    return env


def process_started_at() -> float:
    """When this process started, on time.monotonic()'s clock (Linux; elsewhere: now)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time since boot
    except (OSError, ValueError, IndexError):
        age = 0.0
    return time.monotonic() - min(max(age, 0.0), 3600.0)


def _run_worker(request: dict[str, Any], work: Path, *, startup_s: float, started_at: float) -> TableResult:
    request["work_dir"] = str(work)
    timeout_s = float(request["timeout_s"])
    with (work / "stderr").open("w+b") as stderr:
        # CLOCK_MONOTONIC is one clock for every process of the machine: the worker reads it too.
        request["deadline"] = started_at + timeout_s
        proc = subprocess.Popen(
            _worker_command(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=work, env=_worker_env(),
            close_fds=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(json.dumps(request).encode())
                proc.stdin.close()
            frames = _FrameReader(proc.stdout.fileno(), limit=int(request["max_bytes"]) + 2**20)
            first = frames.next_json(time.monotonic() + startup_s)
            if first is None:
                raise _worker_failure(proc, stderr, "did not start in time" if proc.poll() is None else "stopped")
            if first.get("event") == "running":
                kill_at = max(float(request["deadline"]) + float(first.get("setup_s", 0.0)), time.monotonic() + 1.0)
                answer = frames.next_json(kill_at)
                if answer is None:
                    if proc.poll() is None:
                        proc.kill()
                        raise QueryTimeout(timeout_message(timeout_s) + " (its process was stopped)")
                    raise _worker_failure(proc, stderr, "stopped")
            else:
                answer = first
            if answer.get("event") == "error":
                cls = _ERRORS.get(str(answer.get("kind")), QueryError)
                message = str(answer.get("message", "query failed"))
                if cls is QueryRefused:
                    raise QueryRefused(message, answer.get("statement_type"))
                raise cls(message)
            if answer.get("event") != "result":
                raise _worker_failure(proc, stderr, "answered something unexpected")
            payload = frames.next_bytes(time.monotonic() + timeout_s)
            if payload is None:
                raise _worker_failure(proc, stderr, "stopped while sending the result")
            table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
            return TableResult(table, bool(answer["truncated"]), float(answer["elapsed_s"]),
                               int(request["max_rows"]), str(answer.get("note", "")))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


def _worker_failure(proc: subprocess.Popen[bytes], stderr: Any, what: str) -> QueryError:
    """One line for a worker that stopped without an answer (killed for memory, crashed)."""
    if proc.poll() is None:
        proc.kill()
    rc = proc.wait()
    if rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        reason = f"killed by {sig}"
    else:
        reason = f"exit status {rc}"
    stderr.seek(0)
    tail = [line for line in stderr.read()[-4000:].decode("utf-8", "replace").splitlines() if line.strip()]
    last = tail[-1].strip() if tail else ""
    if "MemoryError" in last or "bad_alloc" in last or "out of memory" in last.lower():
        return QueryOutOfMemory(out_of_memory_message(f"its process {what}, {reason}"))
    detail = f": {last}" if last and not last.startswith(("File ", "Traceback")) else ""
    return QueryError(f"the query's process {what} ({reason}){detail}; the app itself is unaffected")


class _FrameReader:
    """Length-prefixed frames (8-byte big-endian length, then the bytes) from a pipe, with deadlines."""

    def __init__(self, fd: int, *, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.buffer = bytearray()
        self.eof = False

    def next_bytes(self, deadline: float) -> bytes | None:
        """The next frame, or None when the deadline passed or the worker closed the pipe first."""
        while True:
            if len(self.buffer) >= 8:
                (size,) = struct.unpack(">Q", self.buffer[:8])
                if size > self.limit:
                    raise QueryError(f"the query's result is over the {self.limit / 2**20:.0f} MB limit")
                if len(self.buffer) >= 8 + size:
                    with memoryview(self.buffer) as view:
                        frame = bytes(view[8:8 + size])
                    del self.buffer[:8 + size]
                    return frame
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Short waits: a thread stopped from outside (Streamlit's Stop) gets to its `finally` soon.
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.25))
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                self.eof = True
            self.buffer += chunk

    def next_json(self, deadline: float) -> dict[str, Any] | None:
        frame = self.next_bytes(deadline)
        if frame is None:
            return None
        value = json.loads(frame)
        return value if isinstance(value, dict) else {"event": "?"}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
