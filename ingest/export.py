"""`export_parquet`: a hive-partitioned Parquet copy of the store (by service and day), the
layout a scale-out engine (Spark, Trino, DuckDB over object storage) reads without the store."""

from __future__ import annotations

from pathlib import Path

from kvtrace.ingest.errors import IngestError
from kvtrace.ingest.store import open_store

# Tables keyed by span: partitioned by the service and UTC day of their span's start.
SPAN_KEYED = (
    "spans", "span_events", "span_links", "requests", "spec_steps", "kv_events", "aborts",
    "request_stages", "feedback",
)
# Small bookkeeping tables: one unpartitioned file each.
WHOLE = ("resources", "ingested_files", "quarantine")


def export_parquet(db_path: str | Path, out_dir: str | Path, wait_s: float = 0.0) -> dict[str, int]:
    """Write `out_dir/<table>/service=<s>/day=<YYYY-MM-DD>/*.parquet` (and whole files for the
    bookkeeping tables). Returns rows written per table. Existing output is overwritten."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = open_store(db_path, read_only=True, wait_s=wait_s)
    counts: dict[str, int] = {}
    try:
        for table in SPAN_KEYED:
            if table == "spans":
                source = "SELECT t.* FROM spans AS t"
                service, start = "t.service_name", "t.start_ns"
            else:
                source = f"SELECT t.* FROM {table} AS t LEFT JOIN spans AS s USING (trace_id, span_id)"
                service, start = "s.service_name", "s.start_ns"
            query = source.replace(
                "SELECT t.*",
                f"SELECT t.*, coalesce({service}, 'unknown') AS service, "
                f"coalesce(strftime(make_timestamp({start} // 1000), '%Y-%m-%d'), 'unknown') AS day",
                1,
            )
            counts[table] = _count(con, table)
            con.execute(
                f"COPY ({query}) TO '{_quote(out / table)}' "
                "(FORMAT parquet, PARTITION_BY (service, day), OVERWRITE_OR_IGNORE true)"
            )
        for table in WHOLE:
            counts[table] = _count(con, table)
            con.execute(f"COPY {table} TO '{_quote(out / f'{table}.parquet')}' (FORMAT parquet)")
    except Exception as exc:
        raise IngestError(f"export to {out} failed: {exc}") from exc
    finally:
        con.close()
    return counts


def _count(con: object, table: str) -> int:
    rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()  # type: ignore[attr-defined]
    return int(rows[0][0])


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
