"""`export_parquet`: a hive-partitioned Parquet copy of the store (by service and day), and
`export_lake`: the trace lake the Spark engine reads (docs/spark.md), partitioned by what the
hazards are local to: the page owner (instance, TP rank, KV pool) and the hour.

Lake layout (every table's columns as the store has them now, `SELECT *`: columns added to the
store flow through; the partition keys are extra directory levels, never in place of a column):

    DIR/kv_events/instance=<i>/rank=<r>/pool=<p>/hour=<YYYY-MM-DDTHH>/*.parquet
    DIR/<table>/instance=<i>/hour=<YYYY-MM-DDTHH>/*.parquet     (the other span-keyed tables: the
                                                                 instance and start of their span)
    DIR/<table>/data_0.parquet                                  (resources, ingested_files, quarantine)
    DIR/<table>/empty.parquet                                   (a table without rows: its schema)
    DIR/_kvtrace_lake.json                                      (layout version, tables, rows)
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import orjson

from kvtrace.ingest.errors import IngestError
from kvtrace.ingest.store import open_store

# Tables keyed by span: partitioned by the service and UTC day of their span's start.
SPAN_KEYED = (
    "spans",
    "span_events",
    "span_links",
    "requests",
    "spec_steps",
    "kv_events",
    "aborts",
    "request_stages",
    "feedback",
)
# Small bookkeeping tables: one unpartitioned file each.
WHOLE = ("resources", "ingested_files", "quarantine")
LAKE_TABLES: Final = (*SPAN_KEYED, *WHOLE)
LAKE_MANIFEST: Final = "_kvtrace_lake.json"
LAKE_VERSION: Final = 1
# a partition value as a path segment: anything but [A-Za-z0-9._-] becomes '_' (the column itself
# stays in the file, exact; the directory only groups rows)
_SEGMENT: Final = "regexp_replace(coalesce(CAST({} AS VARCHAR), 'none'), '[^A-Za-z0-9._-]', '_', 'g')"
_HOUR: Final = "coalesce(strftime(make_timestamp(({}) // 1000), '%Y-%m-%dT%H'), 'none')"


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


def lake_partition_sql(table: str, source: str = "t", spans: str = "s") -> tuple[str, list[str]]:
    """The partition-key expressions of one lake table over `source` (and its span as `spans`)."""
    if table == "kv_events":
        keys = {"instance": f"{source}.instance_id", "rank": f"{source}.tp_rank", "pool": f"{source}.kv_pool"}
        hour = f"{source}.start_ns"
    elif table == "spans":
        keys, hour = {"instance": f"{source}.instance_id"}, f"{source}.start_ns"
    else:
        keys, hour = {"instance": f"{spans}.instance_id"}, f"{spans}.start_ns"
    parts = [f"{_SEGMENT.format(v)} AS {k}" for k, v in keys.items()] + [f"{_HOUR.format(hour)} AS hour"]
    return ", ".join(parts), [*keys, "hour"]


def export_lake(db_path: str | Path, out_dir: str | Path, wait_s: float = 0.0) -> dict[str, int]:
    """Write the store as the Spark engine's lake (layout in the module doc). Returns rows per table.

    Each table is written beside its old copy and swapped in when complete, so a re-run replaces
    the lake table by table and an interrupted one leaves every table whole."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    con = open_store(db_path, read_only=True, wait_s=wait_s)
    counts: dict[str, int] = {}
    try:
        for table in LAKE_TABLES:
            counts[table] = _count(con, table)
            staging = out / f".{table}.writing"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            if counts[table] == 0:
                con.execute(
                    f"COPY (SELECT * FROM {table} LIMIT 0) TO '{_quote(staging / 'empty.parquet')}' "
                    "(FORMAT parquet)"
                )
            elif table in WHOLE:
                con.execute(f"COPY {table} TO '{_quote(staging / 'data_0.parquet')}' (FORMAT parquet)")
            else:
                keys_sql, keys = lake_partition_sql(table)
                join = (
                    ""
                    if table in ("spans", "kv_events")
                    else " LEFT JOIN (SELECT trace_id, span_id, instance_id, start_ns FROM spans) AS s USING (trace_id, span_id)"
                )
                con.execute(
                    f"COPY (SELECT t.*, {keys_sql} FROM {table} AS t{join}) TO '{_quote(staging)}' "
                    f"(FORMAT parquet, PARTITION_BY ({', '.join(keys)}), OVERWRITE_OR_IGNORE true)"
                )
            shutil.rmtree(out / table, ignore_errors=True)
            staging.rename(out / table)
        manifest = {
            "layout": LAKE_VERSION,
            "written_by": "kvtrace export",
            "source": str(db_path),
            "written_at": datetime.now(UTC).isoformat(),
            "rows": counts,
        }
        (out / LAKE_MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    except Exception as exc:
        raise IngestError(f"export to {out} failed: {exc}") from exc
    finally:
        con.close()
    return counts
