"""Reusing what `kvtrace analyze` stored, while the store still holds what that run read.

`analyze` records a fingerprint of the store in `analysis_runs.store_fingerprint`: the row counts
of the tables the analyses read, the ingested files (count, largest id, latest time), and a hash of
the analyses themselves (every `.sql` file, the macros, the result schema) with kvtrace's version.
Any ingest (files or live OTLP) adds spans or files, and a changed analysis changes the hash, so an
equal fingerprint means the stored result tables are what the analyses would compute now.
`results(con)` then loads them as the session's temporary tables (where `runner.compute` would
have put them) instead of computing everything again, and says which it did.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Final

import duckdb

from kvtrace.analytics.registry import MACROS_SQL, SQL_DIR
from kvtrace.analytics.runner import compute

RESULT_SCHEMA_SQL: Final = Path(__file__).resolve().parent / "schema.sql"

# tables the analyses read (ingest/schema.sql); spans and ingested_files say whether anything came in
_COUNTED: Final = ("spans", "resources", "requests", "spec_steps", "kv_events", "aborts", "request_stages",
                   "feedback")


def _catalog(con: duckdb.DuckDBPyConnection) -> str:
    """The store's own catalog, quoted: `main.x` would resolve to a temporary table of that name."""
    row = con.execute("SELECT current_database()").fetchone()
    return '"' + str(row[0] if row else "main").replace('"', '""') + '"'


def _store_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {str(r[0]) for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND NOT temporary "
        "AND database_name = current_database()").fetchall()}


def analyses_hash() -> str:
    """A hash of what the analyses compute: their SQL, the macros, the result schema, the version."""
    digest = hashlib.sha256()
    for path in [*sorted(SQL_DIR.glob("*.sql")), MACROS_SQL, RESULT_SCHEMA_SQL]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    with contextlib.suppress(metadata.PackageNotFoundError):
        digest.update(metadata.version("kvtrace").encode())
    return digest.hexdigest()[:16]


def store_fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    """What the store holds, as one string: equal strings mean the analyses would see the same data."""
    catalog = _catalog(con)
    present = _store_tables(con)
    parts = []
    for table in _COUNTED:
        if table in present:
            row = con.execute(f"SELECT count(*) FROM {catalog}.main.{table}").fetchone()
            parts.append(f"{table}={int(row[0]) if row else 0}")
    if "ingested_files" in present:
        row = con.execute(f"SELECT count(*), max(file_id), CAST(max(ingested_at) AS VARCHAR) "
                          f"FROM {catalog}.main.ingested_files").fetchone()
        parts.append(f"files={row[0] if row else 0}/{row[1] if row else None}/{row[2] if row else None}")
    parts.append(f"analyses={analyses_hash()}")
    return ";".join(parts)


@dataclass(frozen=True)
class Results:
    """Where this session's analysis results came from, in words for the report."""

    reused: bool
    note: str


def last_run(con: duckdb.DuckDBPyConnection) -> tuple[datetime | None, str | None] | None:
    """(run_at, store_fingerprint) of the latest `kvtrace analyze` run, None when none ran."""
    present = _store_tables(con)
    if "analysis_runs" not in present:
        return None
    cols = {str(r[0]) for r in con.execute(f"DESCRIBE {_catalog(con)}.main.analysis_runs").fetchall()}
    fingerprint = "store_fingerprint" if "store_fingerprint" in cols else "NULL"
    row = con.execute(f"SELECT run_at, {fingerprint} FROM {_catalog(con)}.main.analysis_runs "
                      "ORDER BY run_at DESC LIMIT 1").fetchone()
    return None if row is None else (row[0], None if row[1] is None else str(row[1]))


def results(con: duckdb.DuckDBPyConnection, *, reuse: bool = True) -> Results:
    """The analyses' results as this session's temporary tables: the stored ones when the store has
    not changed since `kvtrace analyze` stored them (and `reuse`), else computed now."""
    from kvtrace.analytics.materialise import result_tables  # materialise imports this module

    run = last_run(con) if reuse else None
    if run is not None:
        run_at, stored = run
        when = "" if run_at is None else f" at {run_at:%Y-%m-%d %H:%M:%S %Z}".rstrip()
        missing = [t for t in result_tables() if t not in _store_tables(con)]
        if stored is not None and not missing and stored == store_fingerprint(con):
            catalog = _catalog(con)
            for table in result_tables():
                con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {catalog}.main.{table}")
            return Results(True, f"Analysis results reused from `kvtrace analyze`{when}: the store has not "
                                 "changed since (same spans, files and analyses).")
        why = ("it recorded no fingerprint of the store" if stored is None or missing
               else "the store (or kvtrace's analyses) changed since")
        compute(con)
        return Results(False, f"Analysis results computed now: the last `kvtrace analyze`{when} is out of date "
                              f"({why}).")
    compute(con)
    return Results(False, "Analysis results computed now: `kvtrace analyze` has not stored any for this store."
                   if reuse else "Analysis results computed now.")
