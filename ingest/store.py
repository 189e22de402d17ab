"""The embedded DuckDB store: open it and bring its schema up to date (idempotently)."""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path
from typing import Final, Literal

import duckdb

from kvtrace.ingest.errors import IngestError


def schema_sql() -> str:
    """The store's DDL (ingest/schema.sql): every statement is idempotent."""
    return resources.files("kvtrace.ingest").joinpath("schema.sql").read_text(encoding="utf-8")


# -- the one door to the store ----------------------------------------------------------------------
#
# Every command and layer opens the store through `open_store`: ingest, the analyses, replay's
# export and result writing, the app's snapshot and SQL worker, the receiver's writer process.
# One error type (StoreError, with a `reason`) and one wait policy (DEFAULT_WAIT_S, `--wait`).

# How long the CLI's commands (and the app's first open) wait for a store another process holds:
# `kvtrace serve`'s store writer holds it for spells of --store-hold seconds (default 5) and then
# lets go of it. `--wait SECONDS` (env KVTRACE_WAIT) on every command that takes --db sets it.
DEFAULT_WAIT_S = 60.0
WAIT_ENV = "KVTRACE_WAIT"
CLI_WAIT_S = DEFAULT_WAIT_S  # the name commands used before `--wait`
_LOCK_POLL_S = 0.05

# The tables that make a file a kvtrace store (what the analyses read; ingest/schema.sql makes them).
KVTRACE_TABLES: Final = ("requests", "spec_steps", "kv_events", "aborts", "request_stages", "feedback")

Reason = Literal["missing", "held", "not_kvtrace", "newer_format", "unreadable"]
DuckDBConfig = dict[str, str | bool | int | float | list[str]]


class StoreError(IngestError):
    """The store cannot be opened. `reason`: missing (no such file), held (another process kept
    it locked for the whole wait), not_kvtrace (a DuckDB file without kvtrace's tables),
    newer_format (written by a newer DuckDB than this one), unreadable (anything else DuckDB
    refuses: not a DuckDB file, damaged). The message names the file and what to do."""

    def __init__(self, path: str | Path, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.reason: Reason = reason


def missing_store(path: str | Path) -> StoreError:
    """The door's error for a store file that does not exist."""
    return StoreError(
        path, "missing", f"store {path} does not exist: run `kvtrace ingest PATH --db {path}` first"
    )


def default_wait_s() -> float:
    """The wait policy's default: KVTRACE_WAIT when set (seconds), else DEFAULT_WAIT_S."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    try:
        return max(float(raw), 0.0) if raw else DEFAULT_WAIT_S
    except ValueError:
        return DEFAULT_WAIT_S


def open_store(
    path: str | Path,
    read_only: bool = False,
    wait_s: float = 0.0,
    *,
    create: bool = True,
    config: DuckDBConfig | None = None,
    require: tuple[str, ...] = KVTRACE_TABLES,
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB store at `path`, waiting up to `wait_s` seconds while another process
    (e.g. `kvtrace serve`'s writer) holds it; the one way every layer opens it.

    - read-only: the file must exist and hold the `require`d tables; the schema is not touched.
    - writable: created (with its folder) unless `create` is False; the schema is applied
      (idempotently, upgrading an older store). An existing DuckDB file with tables but none of
      kvtrace's `spans` is refused (not_kvtrace) rather than written into.
    - `config`: DuckDB settings (e.g. the app's guards: no external access, locked configuration).
    - `require=()`: open any DuckDB file (the app's guarded reader, for files the user names).

    Raises StoreError (one type, with `reason`) for every refusal.
    """
    path = Path(path)
    exists = path.is_file()
    if not exists and (read_only or not create):
        raise missing_store(path)
    if not read_only and not exists and path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    con = _connect(path, read_only, dict(config or {}), wait_s)
    try:
        if require:
            _check_kvtrace(con, path, read_only, require)
        if not read_only:
            con.execute(schema_sql())
            _widen_enums(con)
            _rebuild_span_keys(con)
    except BaseException:
        con.close()
        raise
    return con


def _connect(path: Path, read_only: bool, config: DuckDBConfig, wait_s: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried for up to `wait_s` seconds while another process holds the file's
    lock (DuckDB lets one process open a file at a time, read-only opens included)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=dict(config))
        except duckdb.Error as exc:
            held = _held_by_another(exc)
            if held and time.monotonic() < deadline:
                time.sleep(_LOCK_POLL_S)
                continue
            raise _open_error(path, exc, wait_s) from exc


def _open_error(path: Path, exc: duckdb.Error, wait_s: float) -> StoreError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if _held_by_another(exc):
        return StoreError(
            path,
            "held",
            f"cannot open store {path}: another process held it for the {wait_s:g} s "
            f"waited (--wait SECONDS waits longer): {first}",
        )
    text = str(exc).lower()
    if "newer" in text or ("version" in text and "storage" in text) or "version number" in text:
        return StoreError(
            path,
            "newer_format",
            f"cannot open store {path}: written by a newer DuckDB than this "
            f"kvtrace's ({duckdb.__version__}): {first}",
        )
    return StoreError(path, "unreadable", f"cannot open store {path}: {first}")


def _held_by_another(exc: duckdb.Error) -> bool:
    """Whether `exc` is DuckDB refusing a file another process holds (its lock)."""
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _check_kvtrace(
    con: duckdb.DuckDBPyConnection, path: Path, read_only: bool, require: tuple[str, ...]
) -> None:
    present = {
        row[0]
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND NOT temporary"
        ).fetchall()
    }
    if not read_only:
        if present and "spans" not in present:  # someone else's DuckDB file: do not write into it
            raise StoreError(
                path,
                "not_kvtrace",
                f"store {path} is not a kvtrace store (a DuckDB file without "
                f"a spans table; tables: {', '.join(sorted(present)[:8])})",
            )
        return  # an empty file or an older kvtrace store: the schema below brings it up to date
    missing = [t for t in require if t not in present]
    if missing:
        raise StoreError(
            path, "not_kvtrace", f"store {path} is not a kvtrace store (missing tables: {', '.join(missing)})"
        )


# Enum columns that stores made before kvtrace kept any int32 kind / status code hold as TINYINT.
_WIDENED = (("spans", "kind"), ("spans", "status_code"), ("kv_events", "status_code"))


def _widen_enums(con: duckdb.DuckDBPyConnection) -> None:
    """Widen the _WIDENED columns to INTEGER where they are still TINYINT (once per store: an
    ALTER of a column already INTEGER would rewrite it on every open)."""
    narrow = con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main' "
        "AND data_type = 'TINYINT' AND (table_name, column_name) IN (SELECT * FROM (VALUES "
        + ", ".join(f"('{t}', '{c}')" for t, c in _WIDENED)
        + "))"
    ).fetchall()
    for table, column in narrow:
        con.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET DATA TYPE INTEGER")


def _rebuild_span_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Fill span_keys from spans when they disagree (a store from before span_keys existed)."""
    row = con.execute("SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM span_keys)").fetchone()
    if row is not None and row[0] != row[1]:
        con.execute(
            "BEGIN TRANSACTION; DELETE FROM span_keys; "
            "INSERT INTO span_keys SELECT hash(trace_id, span_id) FROM spans; COMMIT"
        )
