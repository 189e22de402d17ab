"""The embedded DuckDB store: open it and bring its schema up to date (idempotently)."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import duckdb

from kvtrace.ingest.errors import IngestError


def schema_sql() -> str:
    """The store's DDL (ingest/schema.sql): every statement is idempotent."""
    return resources.files("kvtrace.ingest").joinpath("schema.sql").read_text(encoding="utf-8")


# How long the CLI's commands wait for a store another process holds: `kvtrace serve`'s store
# writer holds it for spells of --store-hold seconds (default 5) and then lets go of it.
CLI_WAIT_S = 60.0
_LOCK_POLL_S = 0.05


def connect(
    path: str | Path, *, read_only: bool, config: dict[str, str | bool | int | float | list[str]] | None = None,
    wait_s: float = 0.0,
) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried for up to `wait_s` seconds while another process holds the file's
    lock (DuckDB lets one process open a file at a time, read-only opens included)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            if not _held_by_another(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_LOCK_POLL_S)


def _held_by_another(exc: duckdb.Error) -> bool:
    """Whether `exc` is DuckDB refusing a file another process holds (its lock)."""
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def open_store(path: str | Path, read_only: bool = False, wait_s: float = 0.0) -> duckdb.DuckDBPyConnection:
    """Open (creating when needed) the DuckDB store at `path`, with the schema applied, waiting
    up to `wait_s` seconds while another process (e.g. `kvtrace serve`) holds it.

    A read-only connection does not touch the schema; it fails when the file does not exist.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise IngestError(f"store {path} does not exist")
    if not read_only and path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = connect(path, read_only=read_only, wait_s=wait_s)
    except duckdb.Error as exc:
        raise IngestError(f"cannot open store {path}{held_note(exc, wait_s)}: {exc}") from exc
    if not read_only:
        con.execute(schema_sql())
        _rebuild_span_keys(con)
    return con


def held_note(exc: duckdb.Error, wait_s: float) -> str:
    """' (another process held it ...)' when `exc` is a lock conflict, else ''."""
    if _held_by_another(exc):
        return f" (another process held it for the {wait_s:.0f} s waited)"
    return ""


def _rebuild_span_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Fill span_keys from spans when they disagree (a store from before span_keys existed)."""
    row = con.execute("SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM span_keys)").fetchone()
    if row is not None and row[0] != row[1]:
        con.execute(
            "BEGIN TRANSACTION; DELETE FROM span_keys; "
            "INSERT INTO span_keys SELECT hash(trace_id, span_id) FROM spans; COMMIT"
        )
