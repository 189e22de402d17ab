"""The embedded DuckDB store: open it and bring its schema up to date (idempotently)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import duckdb

from ingest.errors import IngestError


def schema_sql() -> str:
    """The store's DDL (ingest/schema.sql): every statement is idempotent."""
    return resources.files("ingest").joinpath("schema.sql").read_text(encoding="utf-8")


def open_store(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating when needed) the DuckDB store at `path`, with the schema applied.

    A read-only connection does not touch the schema; it fails when the file does not exist.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise IngestError(f"store {path} does not exist")
    if not read_only and path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise IngestError(f"cannot open store {path}: {exc}") from exc
    if not read_only:
        con.execute(schema_sql())
        _rebuild_span_keys(con)
    return con


def _rebuild_span_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Fill span_keys from spans when they disagree (a store from before span_keys existed)."""
    row = con.execute("SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM span_keys)").fetchone()
    if row is not None and row[0] != row[1]:
        con.execute(
            "BEGIN TRANSACTION; DELETE FROM span_keys; "
            "INSERT INTO span_keys SELECT hash(trace_id, span_id) FROM spans; COMMIT"
        )
