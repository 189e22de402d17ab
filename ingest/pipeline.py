"""Ingest: trace files or live OTLP payloads -> the DuckDB store, loss-free and idempotent.

Flow of one file: records (sources) -> staged Arrow tables, one row per span -> the normalised
rows that follow from each span alone, derived by their SQL files in a private in-memory DuckDB
(Deriver) -> every `batch_spans` spans the batch is merged into the store by the SQL files in
ingest/sql/ (dedup through span_keys, the raw rows, the derived rows of the new spans, then the
set-based normalisation that needs other spans) -> the file is done with its ingested_files row, and
the transaction holding it (whole files, DEFAULT_COMMIT_SPANS spans or more) commits. A crash
before the commit leaves the store as it was; a re-run skips committed files and redoes the rest.

Decoding: JSON lines are read in chunks of whole lines (~batch_spans KB) and decoded by the
C parser (jsonfast.py, _otlpfast.c), then, if it declines, by the pyarrow path (columnar.py:
pyarrow's JSON reader + Arrow kernels); no Python per span either way. A chunk both decline
(anything they cannot reproduce byte for byte, including every malformed line) goes through
the validating decoder (decode.py), which quarantines bad records. Protobuf
ResourceSpans frames are decoded in groups by the C fast path (protofast.py, _otlpfast.c) with
the same fallback. Single JSON documents go through the validating decoder. Decoding and the
Deriver run up to PREFETCH_ITEMS ahead in a worker thread (the C decoder, pyarrow and DuckDB
release the GIL) while the store's connection merges the batches before, so both cores work."""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from tqdm import tqdm

from kvtrace.ingest.columnar import StagingTables, decode_json_lines
from kvtrace.ingest.decode import (
    QUARANTINE_SCHEMA,
    Position,
    StagingBatch,
    add_json_traces,
    add_proto_resource_spans,
)
from kvtrace.ingest.errors import IngestError, PayloadError
from kvtrace.ingest.protofast import decode_traces, frame_resource_spans
from kvtrace.ingest.sources import (
    LineChunk,
    Record,
    decompress_bytes,
    expand_paths,
    file_identity,
    iter_json_units,
    iter_proto_records,
    open_decompressed,
    sniff_format,
)
from kvtrace.ingest.store import open_store

DEFAULT_BATCH_SPANS = 50_000
# Files are committed in transactions of whole files holding at least this many spans (see
# ingest_files); DuckDB's row groups hold 122,880 rows.
DEFAULT_COMMIT_SPANS = 500_000
# JSON lines are read in chunks of batch_spans * this many bytes (simulator spans are ~1 KB).
CHUNK_BYTES_PER_SPAN = 1024
# Protobuf ResourceSpans frames are decoded in groups of up to batch_spans * this many bytes
# (simulator spans are ~320 bytes of protobuf).
PROTO_BYTES_PER_SPAN = 512
DUCKDB_MEMORY_LIMIT = "512MB"
# One DuckDB thread while ingesting: the batch-sized statements gain nothing from a second one,
# and the decoder thread runs beside them (measured: 1M spans 12.4-13.2 s vs 13.7-14.5 s with 2).
DUCKDB_THREADS = 1
T = TypeVar("T")


@dataclass
class BatchResult:
    """Outcome of one merged batch or live payload."""

    accepted: int = 0        # valid spans decoded (stored now or already stored)
    new_spans: int = 0       # of which newly stored
    rejected: int = 0        # records quarantined (malformed spans, lines, frames)
    reasons: list[str] = field(default_factory=list)  # one per rejected record, in order

    def add(self, other: BatchResult) -> None:
        self.accepted += other.accepted
        self.new_spans += other.new_spans
        self.rejected += other.rejected
        self.reasons.extend(other.reasons)


@dataclass
class FileResult:
    path: str
    skipped: bool
    format: str
    compression: str
    result: BatchResult


@dataclass
class IngestSummary:
    """What one `ingest_paths` run did, plus what the stored spans of its files span."""

    db_path: str
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    traces: int = 0
    services: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    start_ns: int | None = None
    end_ns: int | None = None
    store_spans: int = 0

    @property
    def files_ingested(self) -> int:
        return sum(not f.skipped for f in self.files)

    @property
    def files_skipped(self) -> int:
        return sum(f.skipped for f in self.files)

    @property
    def spans_read(self) -> int:
        return sum(f.result.accepted for f in self.files)

    @property
    def spans_new(self) -> int:
        return sum(f.result.new_spans for f in self.files)

    @property
    def quarantined(self) -> int:
        return sum(f.result.rejected for f in self.files)


# ------------------------------------------------------------------------------------ SQL steps


@cache
def _sql(name: str) -> str:
    return resources.files("kvtrace.ingest").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def _scalar(con: duckdb.DuckDBPyConnection, query: str) -> int:
    rows = con.execute(query).fetchall()
    row = rows[0] if rows else None
    return int(row[0]) if row and row[0] is not None else 0


RESOURCE_COLUMNS = ("service_name", "instance_id", "host_name", "service_version", "role")
# SQL of the normalised tables that depend on nothing but the span itself (requests, spec_steps,
# kv_events but reads, aborts, feedback): run beside the merge by a Deriver.
DERIVE_SQL = ("normalise_requests", "normalise_kv_events", "normalise_aborts_feedback")


@dataclass
class Staged:
    """One decoded batch as Arrow tables (decode.SPAN_SCHEMA, EVENT_SCHEMA, LINK_SCHEMA,
    QUARANTINE_SCHEMA), from the columnar fast path or the validating decoder. `prepare` adds
    what the merge needs beyond them (in the decode worker, when there is one)."""

    spans: pa.Table
    events: pa.Table
    links: pa.Table
    quarantine: pa.Table
    split: tuple[pa.Table, pa.Table] | None = None   # split_resources()
    derived: dict[str, pa.Table] | None = None       # Deriver.derive()

    @classmethod
    def from_batch(cls, batch: StagingBatch) -> Staged:
        return cls(*batch.tables())

    @classmethod
    def from_columnar(cls, tables: StagingTables) -> Staged:
        return cls(*tables, QUARANTINE_SCHEMA.empty_table())

    def prepare(self, deriver: Deriver) -> Staged:
        """Split the resources out and derive the span-local normalised rows, once."""
        if self.split is None:
            self.split = self.split_resources()
        if self.derived is None and self.spans.num_rows:
            try:
                self.derived = deriver.derive(self.split[0])
            except duckdb.Error:
                # e.g. out of memory on a giant span: the merge runs the same SQL on the store's
                # connection instead (merge_staged), which can spill to the store's disk
                self.derived = None
        return self

    def split_resources(self) -> tuple[pa.Table, pa.Table]:
        """The spans with `resource_attributes` (the resource's attribute text, repeated on every
        span) replaced by `res_idx`, and the batch's distinct resources (res_idx,
        resource_attributes and the resource-level columns), a handful of rows. The merge then
        hashes and stores each resource's text once instead of once per span."""
        spans = self.spans
        pos = spans.schema.get_field_index("resource_attributes")
        text = spans.column(pos).combine_chunks()
        encoded = pc.dictionary_encode(text, null_encoding="encode")
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        _, first = np.unique(indices, return_index=True)
        firsts = pa.array(first, pa.int64())
        resources = pa.table(
            {
                "res_idx": pa.array(np.arange(len(encoded.dictionary), dtype=np.int32)),
                "resource_attributes": encoded.dictionary,
                **{c: spans.column(c).take(firsts) for c in RESOURCE_COLUMNS},
            }
        )
        return spans.set_column(pos, "res_idx", encoded.indices.cast(pa.int32())), resources


@cache
def _derive_statements() -> list[tuple[str | None, str]]:
    """The statements of DERIVE_SQL in order: (table, query) for each `INSERT INTO table BY NAME
    query`, (None, statement) for the others (temp tables the queries read)."""
    out: list[tuple[str | None, str]] = []
    for name in DERIVE_SQL:
        text = re.sub(r"--[^\n]*", "", _sql(name))  # the files hold no "--" or ";" in literals
        for statement in (part.strip() for part in text.split(";")):
            if statement:
                insert = re.fullmatch(r"INSERT INTO (\w+) BY NAME\s+(.*)", statement, re.S)
                out.append((insert.group(1), insert.group(2)) if insert else (None, statement))
    return out


class Deriver:
    """The normalised rows that follow from each span alone (requests, spec_steps, kv_events of
    alloc/free/transfer/load, aborts, feedback), derived by the very SQL files the store runs for
    live payloads, in a private in-memory DuckDB: so this work runs beside the store's merge, on
    the other core, in the decode worker. Each INSERT's query goes straight to Arrow. The rows of
    a span seen twice in the batch come from its first occurrence, as the merge keeps it; the
    merge stores the rows of the spans it adds."""

    def __init__(self, memory_limit: str = DUCKDB_MEMORY_LIMIT) -> None:
        # No spilling (an in-memory DuckDB would spill into ./.tmp, wherever the user stands):
        # a batch that does not fit raises, and prepare() leaves it to the store's connection.
        # No progress bar: this runs in the background, under ingest's own.
        self.con = duckdb.connect(config={"threads": 1, "memory_limit": memory_limit, "temp_directory": ""})
        self.con.execute("SET enable_progress_bar = false")

    def derive(self, spans: pa.Table) -> dict[str, pa.Table]:
        """The derived tables' rows for `spans` (split_resources()' spans: res_idx, not the
        resource text), as Arrow tables by table name."""
        con = self.con
        con.register("stage_spans", spans)
        try:
            doubles = _scalar(con, "SELECT count(*) - count(DISTINCT (trace_id, span_id)) FROM stage_spans")
            con.execute(
                "CREATE OR REPLACE TEMP VIEW new_spans AS SELECT * EXCLUDE (res_idx) FROM stage_spans"
                + (" QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY seq) = 1" if doubles else "")
            )
            rows: dict[str, list[pa.Table]] = {}
            for table, statement in _derive_statements():
                if table is None:
                    con.execute(statement)
                else:
                    rows.setdefault(table, []).append(con.sql(statement).to_arrow_table())
            return {t: pa.concat_tables(parts) for t, parts in rows.items()}
        finally:
            _unregister(con, "stage_spans")

    def close(self) -> None:
        self.con.close()


def merge_batch(
    con: duckdb.DuckDBPyConnection, batch: StagingBatch, file_id: int | None, source: str
) -> BatchResult:
    """Store one staging batch inside the caller's open transaction (see merge_staged)."""
    return merge_staged(con, Staged.from_batch(batch), file_id, source)


def merge_staged(
    con: duckdb.DuckDBPyConnection, staged: Staged, file_id: int | None, source: str
) -> BatchResult:
    """Store one staged batch inside the caller's open transaction: raw tables, normalised
    tables (re-deriving rows of earlier spans whose relative arrived now) and quarantine rows."""
    spans, events, links, quarantine = staged.spans, staged.events, staged.links, staged.quarantine
    reasons = quarantine.column("reason").to_pylist()
    result = BatchResult(accepted=spans.num_rows, rejected=quarantine.num_rows, reasons=reasons)
    if quarantine.num_rows:
        con.register("stage_quarantine", quarantine)
        con.execute(
            "INSERT INTO quarantine BY NAME SELECT ? AS source, line, byte_offset, span_id, reason, "
            "raw, raw_bytes, now()::TIMESTAMP AS quarantined_at FROM stage_quarantine",
            [source],
        )
        con.unregister("stage_quarantine")
    if not spans.num_rows:
        return result
    if staged.split is None:
        staged.split = staged.split_resources()
    spans, resources = staged.split
    con.register("stage_spans", spans)
    con.register("stage_resources", resources)
    con.register("stage_events", events)
    con.register("stage_links", links)
    try:
        con.execute("SET VARIABLE file_id = ?", [file_id])
        con.execute(_sql("merge_spans"))
        doubles = _scalar(con, "SELECT (SELECT count(*) FROM stored_doubles) + "
                               "(SELECT count(*) FROM stage_spans) - (SELECT count(*) FROM batch_keys)")
        if doubles:
            con.execute(_sql("merge_new_spans"))
        con.execute(_sql("merge_store"))
        result.new_spans = _scalar(con, "SELECT count(*) FROM new_spans")
        if result.new_spans:
            if staged.derived is not None:
                _store_derived(con, staged.derived, only_new=bool(doubles))
            else:  # not prepared (a live payload): the same SQL, on the store's connection
                for name in DERIVE_SQL:
                    con.execute(_sql(name))
            _normalise(con)
    finally:
        for name in ("stage_spans", "stage_resources", "stage_events", "stage_links"):
            _unregister(con, name)
    return result


def _store_derived(con: duckdb.DuckDBPyConnection, derived: dict[str, pa.Table], only_new: bool) -> None:
    """Insert the Deriver's rows: all of them when every span of the batch is new, else those of
    the spans this batch adds (view new_spans)."""
    for table, rows in derived.items():
        if not rows.num_rows:
            continue
        con.register("derived_rows", rows)
        try:
            if only_new:
                con.execute(f"INSERT INTO {table} BY NAME SELECT d.* FROM derived_rows AS d "
                            "SEMI JOIN new_spans AS n USING (trace_id, span_id)")
            else:
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM derived_rows")
        finally:
            _unregister(con, "derived_rows")


def _normalise(con: duckdb.DuckDBPyConnection) -> None:
    """Derive the normalised rows that need other spans (forward.read rows need their parent
    forward, stage slices their request root; either may be stored already) from `new_spans`
    (see the headers of ingest/sql/*.sql)."""
    con.execute(_sql("read_targets"))
    if _scalar(con, "SELECT count(*) FROM read_pending_now"):
        con.execute(_sql("read_targets_pending"))
    con.execute(_sql("read_parents"))
    if _scalar(con, "SELECT count(*) FROM read_orphans"):
        con.execute(_sql("read_parents_stored"))
    con.execute(_sql("normalise_reads"))

    con.execute(_sql("stage_targets"))
    if _scalar(con, "SELECT count(*) FROM stage_pending_now"):
        con.execute(_sql("stage_targets_pending"))
    con.execute(_sql("stage_universe_batch"))
    con.execute(_sql("stage_walk"))
    if _scalar(con, "SELECT count(*) FROM stage_targets WHERE was_pending") or _scalar(
        con, "SELECT count(*) FROM stage_walk_out WHERE NOT resolved"
    ):
        con.execute(_sql("stage_universe_stored"))
        con.execute(_sql("stage_walk"))
    con.execute(_sql("normalise_stages"))


# ------------------------------------------------------------------------------------- decoding


def _decode_record(batch: StagingBatch, rec: Record) -> None:
    if rec.kind == "bad":
        batch.quarantine_record(rec.pos, rec.reason, rec.data)
    elif rec.kind == "json":
        try:
            obj = orjson.loads(rec.data)
        except orjson.JSONDecodeError as exc:
            batch.quarantine_record(rec.pos, f"invalid JSON: {exc}", rec.data)
            return
        add_json_traces(batch, obj, rec.pos, rec.data)
    else:
        try:
            rs = trace_pb2.ResourceSpans.FromString(rec.data)
        except DecodeError as exc:
            batch.quarantine_record(rec.pos, f"undecodable protobuf ResourceSpans: {exc}", rec.data)
            return
        add_proto_resource_spans(batch, rs, rec.pos)


def _staged_units(units: Iterable[LineChunk | Record], batch_spans: int, columnar: bool) -> Iterator[Staged]:
    """Decode a file's units: a chunk of JSON lines through the columnar fast path, or, when it
    declines, through the validating decoder (which quarantines bad lines as always); other
    records through the validating decoder, `batch_spans` spans a batch."""
    pending: list[Record] = []
    for unit in units:
        if isinstance(unit, LineChunk):
            if pending:
                yield from map(Staged.from_batch, _batches(pending, batch_spans))
                pending = []
            tables = decode_json_lines(unit.data) if columnar else None
            if tables is not None:
                yield Staged.from_columnar(tables)
            else:
                yield from map(Staged.from_batch, _batches(unit.records(), batch_spans))
        else:
            pending.append(unit)
            if len(pending) >= batch_spans:
                yield from map(Staged.from_batch, _batches(pending, batch_spans))
                pending = []
    if pending:
        yield from map(Staged.from_batch, _batches(pending, batch_spans))


def _staged_proto(records: Iterable[Record], batch_spans: int, columnar: bool) -> Iterator[Staged]:
    """Decode a protobuf file's ResourceSpans frames: runs of good frames (up to batch_spans *
    PROTO_BYTES_PER_SPAN bytes) through the C fast path (protofast.py), or, when it declines or
    a frame is bad, through the validating decoder, which quarantines as always."""
    group: list[Record] = []
    size, limit = 0, batch_spans * PROTO_BYTES_PER_SPAN

    def flush() -> Iterator[Staged]:
        tables = decode_traces(frame_resource_spans(r.data for r in group)) if columnar else None
        if tables is not None:
            yield Staged.from_columnar(tables)
        else:
            yield from map(Staged.from_batch, _batches(group, batch_spans))

    for rec in records:
        if rec.kind != "proto_rs":
            if group:
                yield from flush()
                group, size = [], 0
            yield from map(Staged.from_batch, _batches([rec], batch_spans))
            continue
        group.append(rec)
        size += len(rec.data)
        if size >= limit:
            yield from flush()
            group, size = [], 0
    if group:
        yield from flush()


_END = object()
# Items the decoder may run ahead of the merge: a file's end and the next file's start are items
# too, so that decoding does not stall at file boundaries (each staged batch holds ~50k spans).
PREFETCH_ITEMS = 4


def _prefetched(items: Iterator[T], depth: int = PREFETCH_ITEMS) -> Iterator[T]:
    """`items`, produced in a worker thread up to `depth` ahead of the caller: the decoder (C or
    pyarrow, both release the GIL) runs beside the DuckDB merge on the other core. An exception
    in the worker is raised here; when the caller stops early, the worker stops and closes
    `items` (its open files) before this returns."""
    out: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                out.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    break
            else:
                put(("end", _END))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="ingest-decode", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = out.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


def _batches(records: Iterable[Record], batch_spans: int) -> Iterator[StagingBatch]:
    batch = StagingBatch()
    for rec in records:
        _decode_record(batch, rec)
        if batch.n_spans >= batch_spans:
            yield batch
            batch = StagingBatch()
    if batch.n_spans or batch.n_quarantined:
        yield batch


# ---------------------------------------------------------------------------------------- files


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    batch_spans: int = DEFAULT_BATCH_SPANS,
    bar: tqdm[None] | None = None,
    columnar: bool = True,
) -> FileResult:
    """Ingest one file in one transaction; skip it when it is already committed unchanged.
    `columnar=False` decodes with the validating decoder only (same stored result)."""
    return ingest_files(con, [path], batch_spans, bar, columnar)[0]


@dataclass(frozen=True)
class _FileStart:
    ident: str
    size: int
    mtime_ns: int
    compression: str
    kind: str


@dataclass(frozen=True)
class _FileEnd:
    pass


def ingest_files(
    con: duckdb.DuckDBPyConnection,
    paths: list[Path],
    batch_spans: int = DEFAULT_BATCH_SPANS,
    bar: tqdm[None] | None = None,
    columnar: bool = True,
    commit_spans: int = DEFAULT_COMMIT_SPANS,
) -> list[FileResult]:
    """Ingest files, skipping those already committed unchanged. Each file is atomic: it commits
    with its ingested_files row, in a transaction that holds whole files only, committed once it
    holds `commit_spans` spans (or at the end). Large transactions let DuckDB write full row
    groups straight into the file instead of through the WAL and a checkpoint per commit (2-3x
    less store time); a crash rolls back the files of the open transaction, which a re-run redoes.

    Decoding runs one batch ahead in a worker thread, across file boundaries too, while this
    thread merges into DuckDB.
    """
    results: dict[str, FileResult] = {}
    todo: list[tuple[Path, str, int, int]] = []
    for path in paths:
        ident, size, mtime_ns = file_identity(path)
        done = con.execute(
            "SELECT format, compression FROM ingested_files WHERE path = ? AND size_bytes = ? AND mtime_ns = ?",
            [ident, size, mtime_ns],
        ).fetchall()
        if done:
            results[ident] = FileResult(ident, True, str(done[0][0]), str(done[0][1]), BatchResult())
            if bar is not None:
                bar.update(size)
        else:
            todo.append((path, ident, size, mtime_ns))
    current: _FileStart | None = None
    total, file_id, last_pos = BatchResult(), 0, 0
    in_transaction, transaction_spans = False, 0
    uncommitted: list[FileResult] = []

    def commit() -> None:
        nonlocal in_transaction, transaction_spans, uncommitted
        con.execute("COMMIT")
        results.update((r.path, r) for r in uncommitted)
        in_transaction, transaction_spans, uncommitted = False, 0, []

    try:
        for item in _prefetched(_decoded_files(todo, batch_spans, columnar)):
            if isinstance(item, _FileStart):
                current, total, last_pos = item, BatchResult(), 0
                if not in_transaction:
                    con.execute("BEGIN TRANSACTION")
                    in_transaction = True
                con.execute("DELETE FROM quarantine WHERE source = ?", [current.ident])
                file_id = _scalar(con, "SELECT nextval('ingested_files_seq')")
            elif isinstance(item, _FileEnd):
                assert current is not None
                fmt = _format_name(current.kind)
                con.execute(
                    "INSERT INTO ingested_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                    [file_id, current.ident, current.size, current.mtime_ns, fmt, current.compression,
                     total.accepted, total.new_spans, total.rejected],
                )
                uncommitted.append(FileResult(current.ident, False, fmt, current.compression, total))
                transaction_spans += total.accepted
                if bar is not None:
                    bar.update(current.size - last_pos)
                current = None
                if transaction_spans >= commit_spans:
                    commit()
            else:
                assert current is not None
                staged, pos = item
                total.add(merge_staged(con, staged, file_id, current.ident))
                if bar is not None:
                    bar.update(pos - last_pos)
                    last_pos = pos
        if in_transaction:
            commit()
    except duckdb.Error as exc:
        if in_transaction:
            _rollback(con)
        where = current.ident if current is not None else "ingest"
        held = len(uncommitted) + (current is not None)
        raise IngestError(
            f"{where}: the store failed: {exc}. The open transaction ({held} file(s)) was rolled back; "
            "files committed before it are kept, and re-running the same command continues from there."
        ) from exc
    except BaseException:
        if in_transaction:
            _rollback(con)
        raise
    return [results[file_identity(p)[0]] for p in paths]


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction; a connection that can no longer do even that (DuckDB
    invalidated it) already holds nothing uncommitted, so its error is not the one to report."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow table. In a transaction a failed statement aborted, DuckDB refuses
    this too; that refusal must not replace the error that aborted it (a later register of the
    same name replaces the view anyway)."""
    with contextlib.suppress(duckdb.Error):
        con.unregister(name)


def _decoded_files(
    todo: list[tuple[Path, str, int, int]], batch_spans: int, columnar: bool
) -> Iterator[_FileStart | tuple[Staged, int] | _FileEnd]:
    """Each file's start, its staged batches, prepared for the merge (with the raw byte position
    reached), its end."""
    deriver = Deriver()
    try:
        for path, ident, size, mtime_ns in todo:
            stream, compression = open_decompressed(path)
            raw_file = stream.raw
            with stream:
                kind = sniff_format(stream)
                yield _FileStart(ident, size, mtime_ns, compression, kind)
                staged: Iterator[Staged]
                if kind == "json":
                    units = iter_json_units(stream, batch_spans * CHUNK_BYTES_PER_SPAN)
                    staged = _staged_units(units, batch_spans, columnar)
                elif kind == "protobuf":
                    staged = _staged_proto(iter_proto_records(stream), batch_spans, columnar)
                else:
                    staged = iter(())
                for batch in staged:
                    yield batch.prepare(deriver), _raw_position(raw_file, size)
            yield _FileEnd()
    finally:
        deriver.close()


def _raw_position(raw: object, size: int) -> int:
    tell = getattr(raw, "tell", None)
    try:
        return min(int(tell()), size) if tell else 0
    except (OSError, ValueError):
        return 0


def _format_name(kind: str) -> str:
    return {"json": "otlp-json", "protobuf": "otlp-proto"}.get(kind, kind)


def ingest_paths(
    paths: Iterable[str | Path],
    db_path: str | Path,
    progress: bool = True,
    batch_spans: int = DEFAULT_BATCH_SPANS,
    columnar: bool = True,
    commit_spans: int = DEFAULT_COMMIT_SPANS,
    wait_s: float = 0.0,
) -> IngestSummary:
    """Ingest files, directories and globs into the store at `db_path`; each file is atomic.

    Already committed, unchanged files are skipped; changed or partly ingested ones are read
    again, and the (trace_id, span_id) dedup keeps every span exactly once.
    """
    files = expand_paths(paths)
    t0 = time.perf_counter()
    summary = IngestSummary(db_path=str(db_path))
    con = open_store(db_path, wait_s=wait_s)
    try:
        # Bound DuckDB's buffer pool (default: 80% of RAM) so that memory follows the batch size,
        # not the store's size; a batch's joins need far less, and DuckDB spills beyond it.
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        con.execute(f"SET threads = {DUCKDB_THREADS}")
        total_bytes = sum(f.stat().st_size for f in files)
        with tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc="ingest", disable=not progress, leave=False
        ) as bar:
            summary.files.extend(ingest_files(con, files, batch_spans, bar, columnar, commit_spans))
        summary.seconds = time.perf_counter() - t0
        _describe(con, summary)
    finally:
        con.close()
    return summary


def _describe(con: duckdb.DuckDBPyConnection, summary: IngestSummary) -> None:
    paths = [f.path for f in summary.files]
    rows = con.execute(
        """
        SELECT count(DISTINCT s.trace_id), list(DISTINCT s.service_name ORDER BY s.service_name),
               list(DISTINCT s.host_name ORDER BY s.host_name), min(s.start_ns), max(s.end_ns)
        FROM spans AS s
        WHERE s.file_id IN (SELECT file_id FROM ingested_files WHERE list_contains(?, path))
        """,
        [paths],
    ).fetchall()
    row = rows[0] if rows else None
    if row:
        summary.traces = int(row[0] or 0)
        summary.services = [s for s in (row[1] or []) if s is not None]
        summary.hosts = [h for h in (row[2] or []) if h is not None]
        summary.start_ns, summary.end_ns = row[3], row[4]
    summary.store_spans = _scalar(con, "SELECT count(*) FROM spans")


# ----------------------------------------------------------------------------------- live OTLP


def ingest_payload(
    con: duckdb.DuckDBPyConnection,
    payload: bytes,
    fmt: Literal["json", "protobuf"],
    source: str,
) -> BatchResult:
    """Store one OTLP ExportTraceServiceRequest / TracesData payload atomically (one transaction).

    `payload` is the request body, already decompressed (gzip/zstd magic is also accepted).
    Idempotent on (trace_id, span_id): a retried payload adds nothing. Malformed spans are
    rejected (and quarantined under `source`) while the rest is stored; the result counts both,
    with one reason per rejected record. Raises PayloadError when the payload as a whole cannot
    be decoded. `con` comes from open_store(); use it from one thread at a time.
    """
    staged = _decode_payload(decompress_bytes(payload), fmt, source)
    con.execute("BEGIN TRANSACTION")
    try:
        result = merge_staged(con, staged, None, source)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return result


def _decode_payload(data: bytes, fmt: str, source: str) -> Staged:
    """One payload's staged tables: JSON on one line through the columnar fast path, protobuf
    through the C fast path, when they take it, else through the validating decoder."""
    if fmt == "json" and b"\n" not in data.rstrip():
        tables = decode_json_lines(data)
        if tables is not None:
            return Staged.from_columnar(tables)
    if fmt == "protobuf":
        tables = decode_traces(data)
        if tables is not None:
            return Staged.from_columnar(tables)
    batch = StagingBatch()
    pos = Position(None, 0)
    if fmt == "json":
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"{source}: payload is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise PayloadError(f"{source}: payload is not an OTLP JSON object")
        add_json_traces(batch, obj, pos, data)
    elif fmt == "protobuf":
        try:
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(data)
        except DecodeError as exc:
            raise PayloadError(f"{source}: payload is not an OTLP protobuf message: {exc}") from None
        for rs in request.resource_spans:
            add_proto_resource_spans(batch, rs, pos)
    else:
        raise PayloadError(f"{source}: unknown payload format {fmt!r}")
    return Staged.from_batch(batch)


__all__ = [
    "BatchResult",
    "FileResult",
    "IngestError",
    "IngestSummary",
    "PayloadError",
    "ingest_file",
    "ingest_files",
    "ingest_paths",
    "ingest_payload",
    "merge_batch",
    "merge_staged",
]
