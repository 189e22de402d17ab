"""`kvtrace ingest --engine spark PATHS --lake DIR`: OTLP files into the trace lake, one Spark task a file.

Each task runs the DuckDB ingest itself (ingest_paths: the same decoders, quarantine and
normalisation SQL as `kvtrace ingest`) on its one file into a scratch store, and writes that
store's tables into the lake in export.py's layout, named after the file. So the decode and
normalisation code has one source of truth, and the lake a task writes holds exactly the rows the
DuckDB ingest stores for that file (docs/spark.md says why this, rather than normalising in Spark SQL).

Idempotent per file, as the DuckDB ingest is: a file's parts are named `<path key>.<state key>`
(state = size and modification time) and its row in `ingested_files/` is written last, as the
commit mark. A re-run skips a file whose mark matches; a changed file (or one whose task died
before its mark) has every part of its path key removed and is written again. `resources` rows are
one file per resource id (the same resource in many files is stored once).

The lake must be a filesystem every executor can write (local disk for local[*], NFS or a mounted
object store on a cluster), and kvtrace must be installed on the executors.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from kvtrace.ingest.errors import IngestError
from kvtrace.ingest.export import LAKE_MANIFEST, LAKE_VERSION, SPAN_KEYED, lake_partition_sql
from kvtrace.ingest.sources import SourceFile, collect_sources

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession

MARKS: Final = "ingested_files"
_RESULT_FIELDS: Final = ("path", "spans", "quarantined", "seconds", "error")


def _key(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def path_key(f: SourceFile) -> str:
    """A file's key in the lake: its resolved path."""
    return _key(f.ident, 16)


def state_key(f: SourceFile) -> str:
    """What a file held when ingested: size and modification time (the DuckDB ingest's test)."""
    return _key(f"{f.size}:{f.mtime_ns}", 10)


@dataclass
class SparkIngestSummary:
    """What one Spark ingest did."""

    lake: str
    files_ingested: int = 0
    files_skipped: int = 0
    spans: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)


def _q(path: Path | str) -> str:
    return str(path).replace("'", "''")


def _marked(lake: Path, f: SourceFile) -> bool:
    return (lake / MARKS / f"{path_key(f)}.{state_key(f)}.parquet").exists()


def _remove_parts(lake: Path, key: str) -> None:
    for table in (*SPAN_KEYED, "quarantine", MARKS):
        for part in glob.glob(str(lake / table / "**" / f"{key}.*.parquet"), recursive=True):
            os.remove(part)


def ingest_file(path: str, ident: str, size: int, mtime_ns: int, lake_dir: str) -> dict[str, Any]:
    """One task: the DuckDB ingest of one file into a scratch store, then its rows into the lake."""
    from kvtrace.ingest.pipeline import ingest_paths
    from kvtrace.ingest.store import open_store

    started = time.perf_counter()
    lake = Path(lake_dir)
    f = SourceFile(path, ident, size, mtime_ns)
    key, state = path_key(f), state_key(f)
    scratch = Path(tempfile.mkdtemp(prefix="kvtrace-spark-ingest-"))
    try:
        db = scratch / "store.duckdb"
        summary = ingest_paths([path], db, progress=False)
        con = open_store(db, read_only=True)
        try:
            staging = scratch / "lake"
            staging.mkdir()
            for table in SPAN_KEYED:
                n = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
                if not n:
                    continue
                keys_sql, keys = lake_partition_sql(table)
                join = (
                    ""
                    if table in ("spans", "kv_events")
                    else " LEFT JOIN (SELECT trace_id, span_id, instance_id, start_ns FROM spans) AS s USING (trace_id, span_id)"
                )
                con.execute(
                    f"COPY (SELECT t.*, {keys_sql} FROM {table} AS t{join}) TO '{_q(staging / table)}' "
                    f"(FORMAT parquet, PARTITION_BY ({', '.join(keys)}), FILENAME_PATTERN '{key}.{state}.{{i}}')"
                )
            for table in ("quarantine",):
                if con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]:
                    (staging / table).mkdir(parents=True, exist_ok=True)
                    con.execute(
                        f"COPY {table} TO '{_q(staging / table / f'{key}.{state}.0.parquet')}' (FORMAT parquet)"
                    )
            resources = [int(r[0]) for r in con.execute("SELECT resource_id FROM resources").fetchall()]
            (staging / "resources").mkdir(parents=True, exist_ok=True)
            for rid in resources:
                con.execute(
                    f"COPY (SELECT * FROM resources WHERE resource_id = {rid}) TO "
                    f"'{_q(staging / 'resources' / f'r-{rid:016x}.parquet')}' (FORMAT parquet)"
                )
            (staging / MARKS).mkdir(parents=True, exist_ok=True)
            mark_tmp = staging / MARKS / f"{key}.{state}.parquet"
            con.execute(f"COPY (SELECT * FROM ingested_files) TO '{_q(mark_tmp)}' (FORMAT parquet)")
            spans = con.execute("SELECT count(*) FROM spans").fetchall()[0][0]
            quarantined = con.execute("SELECT count(*) FROM quarantine").fetchall()[0][0]
        finally:
            con.close()
        # swap in: this path's older parts out, the new parts in, the commit mark last
        _remove_parts(lake, key)
        for part in sorted(staging.rglob("*.parquet")):
            rel = part.relative_to(staging)
            if rel.parts[0] == MARKS:
                continue
            target = lake / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(part), str(target))
        (lake / MARKS).mkdir(parents=True, exist_ok=True)
        shutil.move(str(mark_tmp), str(lake / MARKS / mark_tmp.name))
        del summary
        return {
            "path": path,
            "spans": int(spans),
            "quarantined": int(quarantined),
            "seconds": time.perf_counter() - started,
            "error": None,
        }
    except Exception as exc:  # one bad file never stops the others; it is reported by name
        return {
            "path": path,
            "spans": 0,
            "quarantined": 0,
            "seconds": time.perf_counter() - started,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _task(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    for batch in batches:
        rows = [
            ingest_file(r["path"], r["ident"], r["size"], r["mtime_ns"], r["lake"]) for r in batch.to_pylist()
        ]
        yield pa.RecordBatch.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("path", pa.string()),
                    ("spans", pa.int64()),
                    ("quarantined", pa.int64()),
                    ("seconds", pa.float64()),
                    ("error", pa.string()),
                ]
            ),
        )


def ingest_to_lake(
    spark: SparkSession,
    paths: Sequence[str | Path],
    lake_dir: str | Path,
    *,
    follow_symlinks: bool = False,
    tasks: int | None = None,
) -> SparkIngestSummary:
    """Ingest `paths` (files, directories, globs: what `kvtrace ingest` takes) into the lake, one
    Spark task a file, `tasks` at a time at most (default: the session's default parallelism)."""
    started = time.perf_counter()
    lake = Path(lake_dir).resolve()
    lake.mkdir(parents=True, exist_ok=True)
    found = collect_sources(paths, follow_symlinks)
    summary = SparkIngestSummary(str(lake))
    todo = [f for f in found.files if not _marked(lake, f)]
    summary.files_skipped = len(found.files) - len(todo)
    if todo:
        rows = [
            {
                "path": os.path.abspath(f.path),
                "ident": f.ident,
                "size": f.size,
                "mtime_ns": f.mtime_ns,
                "lake": str(lake),
            }
            for f in todo
        ]
        width = max(1, min(len(todo), tasks or _parallelism(spark)))
        frame = spark.createDataFrame(
            rows, "path string, ident string, size long, mtime_ns long, lake string"
        )
        done = (
            frame.repartition(width)
            .mapInArrow(_task, "path string, spans long, quarantined long, seconds double, error string")
            .collect()
        )
        for r in done:
            if r["error"]:
                summary.failed.append((r["path"], r["error"]))
            else:
                summary.files_ingested += 1
                summary.spans += int(r["spans"])
                summary.quarantined += int(r["quarantined"])
    _write_manifest(lake)
    summary.seconds = time.perf_counter() - started
    if summary.failed and not summary.files_ingested and not summary.files_skipped:
        raise IngestError(
            "no file could be ingested: " + "; ".join(f"{p}: {e}" for p, e in summary.failed[:5])
        )
    return summary


def _parallelism(spark: SparkSession) -> int:
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:  # Spark Connect has no SparkContext
        return 8


def _write_manifest(lake: Path) -> None:
    manifest = {
        "layout": LAKE_VERSION,
        "written_by": "kvtrace ingest --engine spark",
        "written_at": datetime.now(UTC).isoformat(),
    }
    (lake / LAKE_MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def local_python_env() -> None:
    """Local Spark's Python workers run this interpreter (kvtrace and its deps importable there)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
