"""Ingest: trace files or live OTLP payloads -> the DuckDB store, loss-free and idempotent.

Flow of one file: records (sources) -> staged Arrow tables, one row per span -> the normalised
rows that follow from each span alone, derived by their SQL files in a private in-memory DuckDB
(Deriver) -> every `batch_spans` spans the batch is merged into the store by the SQL files in
ingest/sql/ (dedup through span_keys, the raw rows, the derived rows of the new spans, then the
set-based normalisation that needs other spans) -> the file is done with its ingested_files row, and
the transaction holding it (whole files: DEFAULT_COMMIT_SPANS spans, DEFAULT_COMMIT_FILES files or
DEFAULT_COMMIT_BYTES bytes, whichever comes first) commits. A crash before the commit leaves the
store as it was; a re-run skips committed files and redoes the rest.

Small files (at most one chunk each: a directory of one-span files a collector rotated) are read
whole, many at once, decoded together (one C decoder call for thousands of files, each span
tagged with its file) and merged as one batch; the per-file SQL (ledger lookup, quarantine of an
earlier read, ledger rows) runs once per batch or commit. So 20,000 one-span files cost about
what one file of the same bytes costs. Records are bounded (sources.MAX_RECORD_BYTES): a longer
JSON line or protobuf frame is quarantined unread. A file that gives no spans (empty, not OTLP,
every record quarantined) says so in its FileResult.note and in the ledger's format.

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
import io
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

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
from kvtrace.ingest.identity import with_instance_fallback
from kvtrace.ingest.jsonfast import decode_json_chunk_located
from kvtrace.ingest.nesting import parse_cut
from kvtrace.ingest.protofast import decode_traces, decode_traces_located, frame_resource_spans
from kvtrace.ingest.sources import (
    _WS,
    MAX_RECORD_BYTES,
    NOT_OTLP,
    SNIFF_BYTES,
    LineChunk,
    Record,
    SkippedLink,
    Sniff,
    SourceFile,
    collect_sources,
    decompress_bytes,
    file_identity,
    iter_json_units,
    iter_proto_records,
    not_otlp_record,
    open_decompressed,
    read_small,
    sniff,
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
    note: str = ""  # why an ingested file gave no spans (empty, not OTLP, all quarantined, ...)


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
    skipped_links: list[SkippedLink] = field(default_factory=list)  # symlinks not followed

    @property
    def without_spans(self) -> list[FileResult]:
        """The files read now that gave no spans, each with its note."""
        return [f for f in self.files if not f.skipped and f.note]

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
    # Which file (an index into ingest_files' list of files to read) each span and each
    # quarantine row came from, when the batch holds several files' rows; None: one file.
    span_files: np.ndarray | None = None
    quarantine_files: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.spans = with_instance_fallback(self.spans)  # before anything reads instance_id

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
    tables (re-deriving rows of earlier spans whose relative arrived now) and quarantine rows,
    all of one source (`file_id`: its ingested_files row, None for a live payload)."""
    file_ids = pa.nulls(staged.spans.num_rows, pa.int32()) if file_id is None else \
        pa.array(np.full(staged.spans.num_rows, file_id, dtype=np.int32))
    sources = pa.array([source] * staged.quarantine.num_rows, pa.string())
    result, _ = _merge(con, staged, file_ids, sources, per_file=False)
    return result


def _merge(
    con: duckdb.DuckDBPyConnection, staged: Staged, file_ids: pa.Array, sources: pa.Array, per_file: bool
) -> tuple[BatchResult, dict[int, int]]:
    """merge_staged for a batch of several files' rows: `file_ids` (one per span: the
    ingested_files row that stores it) and `sources` (one per quarantine row). Returns the batch's
    result and, with `per_file`, the new spans of each file id."""
    spans, events, links, quarantine = staged.spans, staged.events, staged.links, staged.quarantine
    reasons = quarantine.column("reason").to_pylist()
    result = BatchResult(accepted=spans.num_rows, rejected=quarantine.num_rows, reasons=reasons)
    new_by_file: dict[int, int] = {}
    if quarantine.num_rows:
        con.register("stage_quarantine", quarantine.append_column("source", sources))
        try:
            con.execute(
                "INSERT INTO quarantine BY NAME SELECT source, line, byte_offset, span_id, reason, "
                "raw, raw_bytes, now()::TIMESTAMP AS quarantined_at FROM stage_quarantine"
            )
        finally:
            _unregister(con, "stage_quarantine")
    if not spans.num_rows:
        return result, new_by_file
    if staged.split is None:
        staged.split = staged.split_resources()
    spans, resources = staged.split
    con.register("stage_spans", spans.append_column("file_id", file_ids))
    con.register("stage_resources", resources)
    con.register("stage_events", events)
    con.register("stage_links", links)
    try:
        con.execute(_sql("merge_spans"))
        doubles = _scalar(con, "SELECT (SELECT count(*) FROM stored_doubles) + "
                               "(SELECT count(*) FROM stage_spans) - (SELECT count(*) FROM batch_keys)")
        if doubles:
            con.execute(_sql("merge_new_spans"))
        con.execute(_sql("merge_store"))
        if per_file:
            new_by_file = {int(f): int(n) for f, n in
                           con.execute("SELECT file_id, count(*) FROM new_spans GROUP BY file_id").fetchall()}
            result.new_spans = sum(new_by_file.values())
        else:
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
    return result, new_by_file


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
        batch.quarantine_record(rec.pos, rec.reason, rec.data, raw_bytes=rec.size)
    elif rec.kind == "json":
        try:
            obj = orjson.loads(rec.data)
        except orjson.JSONDecodeError as exc:
            batch.quarantine_record(rec.pos, f"invalid JSON: {exc}", rec.data)
            return
        add_json_traces(batch, obj, rec.pos, rec.data)
    else:
        try:
            rs, _ = parse_cut(trace_pb2.ResourceSpans, rec.data, "resource_spans")
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

# A transaction of whole files commits once it holds DEFAULT_COMMIT_SPANS spans, or
# DEFAULT_COMMIT_FILES files, or DEFAULT_COMMIT_BYTES bytes of files, whichever comes first.
DEFAULT_COMMIT_FILES = 20_000
DEFAULT_COMMIT_BYTES = 1 << 30
# Small files (at most one chunk, batch_spans * CHUNK_BYTES_PER_SPAN bytes) are read whole and
# decoded and merged together, up to this many files (and one chunk of bytes) a batch: per file,
# what remains is one open and one read. (A batch per file made a directory of 20,000 one-span
# files take ~13 files/s: 30 statements a file, each dearer as the transaction grew.)
GROUP_FILES = 20_000


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


@dataclass(slots=True)
class _FileStart:
    index: int  # position in the list of files to read
    ident: str
    size: int
    mtime_ns: int
    compression: str


@dataclass(slots=True)
class _FileEnd:
    index: int
    kind: str   # what the ledger records: json / protobuf / empty / unknown (not OTLP)
    note: str   # why the file gave no spans; '' when it gave some


@dataclass
class _Group:
    """Small files decoded together: their starts, one staged batch of all their rows (its
    span_files / quarantine_files say whose; None when they hold no rows), their ends."""

    starts: list[_FileStart]
    staged: Staged | None
    ends: list[_FileEnd]


_Item = _FileStart | tuple[Staged, int] | _FileEnd | _Group


def ingest_files(
    con: duckdb.DuckDBPyConnection,
    paths: Sequence[Path | SourceFile],
    batch_spans: int = DEFAULT_BATCH_SPANS,
    bar: tqdm[None] | None = None,
    columnar: bool = True,
    commit_spans: int = DEFAULT_COMMIT_SPANS,
    commit_files: int = DEFAULT_COMMIT_FILES,
    commit_bytes: int = DEFAULT_COMMIT_BYTES,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> list[FileResult]:
    """Ingest files, skipping those already committed unchanged. Each file is atomic: it commits
    with its ingested_files row, in a transaction that holds whole files only, committed once it
    holds `commit_spans` spans, `commit_files` files or `commit_bytes` bytes of files (or at the
    end). Large transactions let DuckDB write full row groups straight into the file instead of
    through the WAL and a checkpoint per commit (2-3x less store time); a crash rolls back the
    files of the open transaction, which a re-run redoes. `paths` may be collect_sources' files
    (saving a stat each); `max_record_bytes` bounds one JSON line or protobuf frame in memory.

    Decoding runs ahead in a worker thread, across file boundaries too, while this thread merges
    into DuckDB; small files are decoded and merged many to a batch, and the per-file SQL (the
    ledger lookup and rows, the quarantine of an earlier read) runs once per batch or commit.
    """
    files = [p if isinstance(p, SourceFile) else SourceFile(str(p), *file_identity(p)) for p in paths]
    results: dict[str, FileResult] = {}
    todo: list[SourceFile] = []
    done = _ledger_lookup(con, files)
    seen: set[str] = set()
    for i, f in enumerate(files):
        if f.ident in seen:
            continue
        seen.add(f.ident)
        if i in done:
            results[f.ident] = FileResult(f.ident, True, done[i][0], done[i][1], BatchResult())
            if bar is not None:
                bar.update(f.size)
        else:
            todo.append(f)
    merger = _Merger(con, len(todo), bar)
    try:
        # a group of small files commits as one: no bigger than a transaction may be
        decoded = _decoded_files(todo, batch_spans, columnar, max_record_bytes, min(GROUP_FILES, commit_files),
                                 commit_bytes)
        for item in _prefetched(decoded):
            if isinstance(item, _Group):
                for start in item.starts:
                    merger.start(start)
                if item.staged is not None:
                    merger.where = item.starts[0].ident + (
                        f" (or one of the {len(item.starts) - 1} other files batched with it)" if len(item.starts) > 1 else "")
                    merger.merge(item.staged, None)
                for end in item.ends:
                    merger.end(end)
            elif isinstance(item, _FileStart):
                merger.start(item)
                merger.where = item.ident
            elif isinstance(item, _FileEnd):
                merger.end(item)
            else:
                merger.merge(*item)
            if merger.in_transaction and not merger.open and (
                merger.tx_spans >= commit_spans or merger.tx_files >= commit_files or merger.tx_bytes >= commit_bytes
            ):
                merger.commit(results)
        if merger.in_transaction:
            merger.commit(results)
    except duckdb.Error as exc:
        if merger.in_transaction:
            _rollback(con)
        held = len(merger.uncommitted) + len(merger.open)
        raise IngestError(
            f"{merger.where}: the store failed: {exc}. The open transaction ({held} file(s)) was rolled back; "
            "files committed before it are kept, and re-running the same command continues from there."
        ) from exc
    except BaseException:
        if merger.in_transaction:
            _rollback(con)
        raise
    return [results[f.ident] for f in files]


def _ledger_lookup(con: duckdb.DuckDBPyConnection, files: list[SourceFile]) -> dict[int, tuple[str, str]]:
    """The files (by position) already committed unchanged: their format and compression. One
    query for all of them."""
    if not files:
        return {}
    probe = pa.table({
        "i": pa.array(np.arange(len(files), dtype=np.int64)),
        "path": pa.array([f.ident for f in files], pa.string()),
        "size": pa.array([f.size for f in files], pa.int64()),
        "mtime": pa.array([f.mtime_ns for f in files], pa.int64()),
    })
    con.register("ledger_probe", probe)
    try:
        rows = con.execute(
            "SELECT p.i, any_value(f.format), any_value(f.compression) FROM ledger_probe AS p "
            "JOIN ingested_files AS f ON f.path = p.path AND f.size_bytes = p.size AND f.mtime_ns = p.mtime "
            "GROUP BY p.i"
        ).fetchall()
    finally:
        _unregister(con, "ledger_probe")
    return {int(i): (str(fmt), str(comp)) for i, fmt, comp in rows}


class _Merger:
    """The store side of ingest_files: file ids, the open transaction, per-file totals, and the
    SQL that is per file (quarantine of an earlier read deleted, ledger rows) run in batches."""

    def __init__(self, con: duckdb.DuckDBPyConnection, n_files: int, bar: tqdm[None] | None) -> None:
        self.con, self.bar = con, bar
        self.to_start = n_files
        self.ids: dict[int, int] = {}
        self.id_block: list[int] = []
        self.meta: dict[int, _FileStart] = {}
        self.totals: dict[int, BatchResult] = {}
        self.last_pos: dict[int, int] = {}
        self.open: set[int] = set()
        self.current: int | None = None  # the file whose batches come one by one (not in a group)
        self.where = "ingest"
        self.pending_deletes: list[str] = []
        self.ledger: list[tuple[object, ...]] = []
        self.uncommitted: list[FileResult] = []
        self.in_transaction = False
        self.tx_spans = self.tx_files = self.tx_bytes = 0

    def start(self, fs: _FileStart) -> None:
        if not self.in_transaction:
            self.con.execute("BEGIN TRANSACTION")
            self.in_transaction = True
        if not self.id_block:
            n = max(1, min(self.to_start, 1024))
            rows = self.con.execute("SELECT nextval('ingested_files_seq') FROM range(?)", [n]).fetchall()
            self.id_block = sorted((int(r[0]) for r in rows), reverse=True)
        self.to_start -= 1
        self.ids[fs.index] = self.id_block.pop()
        self.meta[fs.index] = fs
        self.totals[fs.index] = BatchResult()
        self.open.add(fs.index)
        self.current = fs.index
        self.pending_deletes.append(fs.ident)

    def _flush_deletes(self) -> None:
        if not self.pending_deletes:
            return
        self.con.register("reread_sources", pa.table({"source": pa.array(self.pending_deletes, pa.string())}))
        try:
            self.con.execute("DELETE FROM quarantine WHERE source IN (SELECT source FROM reread_sources)")
        finally:
            _unregister(self.con, "reread_sources")
        self.pending_deletes = []

    def merge(self, staged: Staged, pos: int | None) -> None:
        self._flush_deletes()
        n_spans, n_q = staged.spans.num_rows, staged.quarantine.num_rows
        if staged.span_files is None or staged.quarantine_files is None:
            assert self.current is not None
            span_files = np.full(n_spans, self.current, dtype=np.int64)
            q_files = np.full(n_q, self.current, dtype=np.int64)
        else:
            span_files, q_files = staged.span_files, staged.quarantine_files
        present = np.unique(np.concatenate((span_files, q_files)))
        ids = np.zeros(int(present.max()) + 1 if len(present) else 1, dtype=np.int32)
        ids[present] = [self.ids[int(i)] for i in present]
        idents = np.array([""] * len(ids), dtype=object)
        idents[present] = [self.meta[int(i)].ident for i in present]
        result, new_by_id = _merge(
            self.con, staged, pa.array(ids[span_files]), pa.array(idents[q_files].tolist(), pa.string()),
            per_file=len(present) > 1,
        )
        if len(present) <= 1:
            if len(present):
                self.totals[int(present[0])].add(result)
            return self._progress(pos)
        by_id = {self.ids[int(i)]: int(i) for i in present}
        files, counts = np.unique(span_files, return_counts=True)
        for f, n in zip(files.tolist(), counts.tolist(), strict=True):
            self.totals[f].accepted += n
        for file_id, n in new_by_id.items():
            self.totals[by_id[file_id]].new_spans += n
        for f, reason in zip(q_files.tolist(), result.reasons, strict=True):
            total = self.totals[f]
            total.rejected += 1
            total.reasons.append(reason)
        self._progress(pos)

    def _progress(self, pos: int | None) -> None:
        if self.bar is not None and pos is not None and self.current is not None:
            self.bar.update(pos - self.last_pos.get(self.current, 0))
            self.last_pos[self.current] = pos

    def end(self, fe: _FileEnd) -> None:
        fs, total = self.meta.pop(fe.index), self.totals.pop(fe.index)
        fmt = _format_name(fe.kind)
        self.ledger.append((self.ids.pop(fe.index), fs.ident, fs.size, fs.mtime_ns, fmt, fs.compression,
                            total.accepted, total.new_spans, total.rejected))
        self.uncommitted.append(FileResult(fs.ident, False, fmt, fs.compression, total, fe.note))
        self.open.discard(fe.index)
        self.tx_files += 1
        self.tx_spans += total.accepted
        self.tx_bytes += fs.size
        if self.bar is not None:
            self.bar.update(fs.size - self.last_pos.pop(fe.index, 0))
        if self.current == fe.index:
            self.current = None

    def commit(self, results: dict[str, FileResult]) -> None:
        self._flush_deletes()
        if self.ledger:
            cols = list(zip(*self.ledger, strict=True))
            names = ("file_id", "path", "size_bytes", "mtime_ns", "format", "compression", "spans_read",
                     "spans_new", "quarantined")
            types = (pa.int32(), pa.string(), pa.int64(), pa.int64(), pa.string(), pa.string(), pa.int64(),
                     pa.int64(), pa.int64())
            rows = pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types, strict=True)})
            self.con.register("ledger_rows", rows)
            try:
                self.con.execute("INSERT INTO ingested_files BY NAME "
                                 "SELECT *, now()::TIMESTAMP AS ingested_at FROM ledger_rows")
            finally:
                _unregister(self.con, "ledger_rows")
        self.con.execute("COMMIT")
        results.update((r.path, r) for r in self.uncommitted)
        self.ledger, self.uncommitted = [], []
        self.in_transaction = False
        self.tx_spans = self.tx_files = self.tx_bytes = 0


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


# ----------------------------------------------------------------------------- the decode worker


def _decoded_files(
    todo: list[SourceFile] | list[tuple[Path, str, int, int]], batch_spans: int, columnar: bool,
    max_record_bytes: int = MAX_RECORD_BYTES, group_files: int = GROUP_FILES, group_bytes: int | None = None,
) -> Iterator[_Item]:
    """The files' staged batches, prepared for the merge: a large file as its start, its batches
    (with the raw byte position reached), its end; runs of small files (at most one chunk each)
    as _Groups of up to `group_files` files and `group_bytes` bytes (one chunk by default), each
    decoded as one batch."""
    files = [f if isinstance(f, SourceFile) else SourceFile(str(f[0]), *f[1:]) for f in todo]
    chunk_bytes = batch_spans * CHUNK_BYTES_PER_SPAN
    group_limit = chunk_bytes if group_bytes is None else min(chunk_bytes, group_bytes)
    deriver = Deriver()
    group: list[_Member] = []
    held = 0
    try:
        for index, f in enumerate(files):
            small = read_small(f.path, chunk_bytes, f.size) if f.size <= chunk_bytes else None
            if small is None:
                if group:
                    yield _decode_group(group, deriver, batch_spans, columnar, max_record_bytes)
                    group, held = [], 0
                yield from _streamed_file(index, f, deriver, batch_spans, columnar, max_record_bytes)
                continue
            if group and (held + len(small[0]) > group_limit or len(group) >= group_files):
                yield _decode_group(group, deriver, batch_spans, columnar, max_record_bytes)
                group, held = [], 0
            group.append(_Member.read(index, f, *small, columnar=columnar, max_record_bytes=max_record_bytes))
            held += len(small[0])
        if group:
            yield _decode_group(group, deriver, batch_spans, columnar, max_record_bytes)
    finally:
        deriver.close()


def _file_batches(
    stream: io.BufferedReader[Any], sniffed: Sniff, batch_spans: int, columnar: bool, max_record_bytes: int
) -> Iterator[Staged]:
    """One file's staged batches, as its sniffed format reads."""
    if sniffed.kind == "json":
        units = iter_json_units(stream, batch_spans * CHUNK_BYTES_PER_SPAN, max_record_bytes)
        yield from _staged_units(units, batch_spans, columnar)
    elif sniffed.kind == "protobuf":
        yield from _staged_proto(iter_proto_records(stream, max_record_bytes), batch_spans, columnar)
    elif sniffed.kind == "unknown":
        yield from map(Staged.from_batch, _batches([not_otlp_record(stream, sniffed.reason)], batch_spans))


@dataclass
class _Outcome:
    """What a file gave, for the note on a file without spans."""

    spans: int = 0
    quarantined: int = 0
    first_reason: str = ""
    all_not_otlp: bool = True

    def add(self, spans: int, reasons: Iterable[str]) -> None:
        self.spans += spans
        for reason in reasons:
            if not self.quarantined:
                self.first_reason = reason
            self.quarantined += 1
            self.all_not_otlp = self.all_not_otlp and reason.startswith(NOT_OTLP)

    def end(self, index: int, kind: str, blank: bool) -> _FileEnd:
        if self.spans:
            return _FileEnd(index, kind, "")
        if kind == "empty":
            return _FileEnd(index, "empty", "empty file")
        if self.quarantined and self.all_not_otlp:
            return _FileEnd(index, "unknown", self.first_reason)
        if self.quarantined:
            return _FileEnd(index, kind, f"all {self.quarantined:,} record(s) quarantined (the first: {self.first_reason})")
        if blank:
            return _FileEnd(index, "empty", "blank file (whitespace only)")
        return _FileEnd(index, kind, "valid OTLP that holds none")


def _streamed_file(
    index: int, f: SourceFile, deriver: Deriver, batch_spans: int, columnar: bool, max_record_bytes: int
) -> Iterator[_Item]:
    """A file read as a stream: its start, its batches (with the raw position reached), its end."""
    stream, compression = open_decompressed(f.path)
    raw_file = stream.raw
    outcome = _Outcome()
    with stream:
        head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
        sniffed = sniff(head)
        yield _FileStart(index, f.ident, f.size, f.mtime_ns, compression)
        for batch in _file_batches(stream, sniffed, batch_spans, columnar, max_record_bytes):
            outcome.add(batch.spans.num_rows, batch.quarantine.column("reason").to_pylist())
            yield batch.prepare(deriver), _raw_position(raw_file, f.size)
    yield outcome.end(index, sniffed.kind, blank=not head.strip(_WS))


@dataclass
class _Member:
    """A small file of a group, read whole: its bytes, its sniffed format, and what the group's
    one fast decode takes of it (JSON lines text, or protobuf ResourceSpans frames)."""

    index: int
    file: SourceFile
    compression: str
    data: bytes
    sniffed: Sniff
    lines: bytes | None = None
    frames: list[bytes] | None = None

    @classmethod
    def read(cls, index: int, f: SourceFile, data: bytes, compression: str, columnar: bool,
             max_record_bytes: int) -> _Member:
        m = cls(index, f, compression, data, sniff(data[:SNIFF_BYTES]))
        if not columnar or len(data) > max_record_bytes:
            return m
        if m.sniffed.kind == "json":
            m.lines = _as_json_lines(data)
        elif m.sniffed.kind == "protobuf":
            records = list(iter_proto_records(_reader(data), max_record_bytes))
            if records and all(r.kind == "proto_rs" for r in records):
                m.frames = [r.data for r in records]
        return m

    def start(self) -> _FileStart:
        f = self.file
        return _FileStart(self.index, f.ident, f.size, f.mtime_ns, self.compression)

    def staged(self, batch_spans: int, columnar: bool, max_record_bytes: int) -> list[Staged]:
        """This file alone, through the very path a streamed file takes."""
        out = list(_file_batches(_reader(self.data), self.sniffed, batch_spans, columnar, max_record_bytes))
        for st in out:
            st.span_files = np.full(st.spans.num_rows, self.index, dtype=np.int64)
            st.quarantine_files = np.full(st.quarantine.num_rows, self.index, dtype=np.int64)
        return out


def _reader(data: bytes) -> io.BufferedReader[Any]:
    """`data` as a stream whose first peek shows what a streamed file's first peek would (its
    first SNIFF_BYTES), without a buffer larger than the data."""
    return io.BufferedReader(io.BytesIO(data), buffer_size=max(1, min(len(data), SNIFF_BYTES)))


def _as_json_lines(data: bytes) -> bytes | None:
    """A small JSON file as lines the C decoder may take together with other files' lines: JSON
    lines as they are (ending with a line end), one JSON document re-written on one line (the
    validating decoder reads the same parsed object); None when neither parses. (A file of one
    line is taken as it is: the C decoder validates it.)"""
    text = data.strip(_WS)
    nl = text.find(b"\n")
    if nl < 0:
        return data if data.endswith(b"\n") else data + b"\n"
    try:
        orjson.loads(text[:nl])
    except orjson.JSONDecodeError:
        try:
            return orjson.dumps(orjson.loads(data)) + b"\n"
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            return None
    return data if data.endswith(b"\n") else data + b"\n"


def _decode_group(
    group: list[_Member], deriver: Deriver, batch_spans: int, columnar: bool, max_record_bytes: int
) -> _Group:
    """Small files decoded as one batch: runs of files the C decoder takes together (JSON lines or
    protobuf frames) in one call each, halved until it takes them, and files it declines alone
    exactly as streamed; their rows in file order (so doubles keep their first copy)."""
    parts: list[Staged] = []
    run: list[_Member] = []

    def run_kind(m: _Member) -> str | None:
        return "json" if m.lines is not None else "proto" if m.frames is not None else None

    def flush() -> None:
        if run:
            parts.extend(_decode_run(run, run_kind(run[0]), batch_spans, columnar, max_record_bytes))
            run.clear()

    for m in group:
        if run and run_kind(run[0]) != run_kind(m):
            flush()
        run.append(m)
    flush()
    staged = _concat(parts) if parts else None
    with_spans: set[int] = set()
    outcomes: dict[int, _Outcome] = {}  # of the files that had quarantined records
    if staged is not None:
        assert staged.span_files is not None and staged.quarantine_files is not None
        with_spans = set(np.unique(staged.span_files).tolist())
        reasons = staged.quarantine.column("reason").to_pylist()
        for i, reason in zip(staged.quarantine_files.tolist(), reasons, strict=True):
            outcomes.setdefault(i, _Outcome()).add(0, [reason])
        if staged.spans.num_rows or staged.quarantine.num_rows:
            staged.prepare(deriver)
        else:
            staged = None
    ends = [
        _FileEnd(m.index, m.sniffed.kind, "") if m.index in with_spans
        else outcomes.get(m.index, _Outcome()).end(m.index, m.sniffed.kind, blank=not m.data.strip(_WS))
        for m in group
    ]
    return _Group([m.start() for m in group], staged, ends)


def _decode_run(
    run: list[_Member], kind: str | None, batch_spans: int, columnar: bool, max_record_bytes: int
) -> list[Staged]:
    if kind is None or not run:
        return [st for m in run for st in m.staged(batch_spans, columnar, max_record_bytes)]
    if kind == "json":
        texts = [m.lines or b"" for m in run]
        starts = np.cumsum([0] + [len(t) for t in texts[:-1]])
        got = decode_json_chunk_located(b"".join(texts))
        if got is not None:
            tables, offsets = got
            owners = np.searchsorted(starts, offsets, side="right") - 1
            return [_located(tables, np.array([m.index for m in run], dtype=np.int64)[owners])]
    else:
        frames = [fr for m in run for fr in (m.frames or [])]
        frame_file = np.array([m.index for m in run for _ in (m.frames or [])], dtype=np.int64)
        got = decode_traces_located(frame_resource_spans(frames))
        if got is not None:
            tables, res_idx = got
            return [_located(tables, frame_file[res_idx])]
    if len(run) == 1:
        return run[0].staged(batch_spans, columnar, max_record_bytes)
    mid = len(run) // 2
    return (_decode_run(run[:mid], kind, batch_spans, columnar, max_record_bytes)
            + _decode_run(run[mid:], kind, batch_spans, columnar, max_record_bytes))


def _located(tables: StagingTables, span_files: np.ndarray) -> Staged:
    staged = Staged.from_columnar(tables)
    staged.span_files = span_files
    staged.quarantine_files = np.zeros(0, dtype=np.int64)
    return staged


def _concat(parts: list[Staged]) -> Staged:
    """Staged batches (each with span_files / quarantine_files) as one: spans renumbered in order
    (seq), events and links pointing at their spans' new positions."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.spans.num_rows for p in parts[:-1]])

    def shifted(tables: list[pa.Table]) -> pa.Table:
        out = []
        for t, off in zip(tables, offsets.tolist(), strict=True):
            i = t.schema.get_field_index("span_seq")
            out.append(t.set_column(i, "span_seq", pc.add(t.column(i), pa.scalar(off, pa.int64()))) if off else t)
        return pa.concat_tables(out).combine_chunks()

    spans = pa.concat_tables([p.spans for p in parts]).combine_chunks()
    seq = spans.schema.get_field_index("seq")
    spans = spans.set_column(seq, "seq", pa.array(np.arange(spans.num_rows, dtype=np.int64)))
    staged = Staged(
        spans, shifted([p.events for p in parts]), shifted([p.links for p in parts]),
        pa.concat_tables([p.quarantine for p in parts]).combine_chunks(),
    )
    staged.span_files = np.concatenate([p.span_files for p in parts if p.span_files is not None])
    staged.quarantine_files = np.concatenate([p.quarantine_files for p in parts if p.quarantine_files is not None])
    return staged


def _raw_position(raw: object, size: int) -> int:
    tell = getattr(raw, "tell", None)
    try:
        return min(int(tell()), size) if tell else 0
    except (OSError, ValueError):
        return 0


def _format_name(kind: str) -> str:
    return {"json": "otlp-json", "protobuf": "otlp-proto", "unknown": "not-otlp"}.get(kind, kind)


def ingest_paths(
    paths: Iterable[str | Path],
    db_path: str | Path,
    progress: bool = True,
    batch_spans: int = DEFAULT_BATCH_SPANS,
    columnar: bool = True,
    commit_spans: int = DEFAULT_COMMIT_SPANS,
    wait_s: float = 0.0,
    commit_files: int = DEFAULT_COMMIT_FILES,
    commit_bytes: int = DEFAULT_COMMIT_BYTES,
    max_record_bytes: int = MAX_RECORD_BYTES,
    follow_symlinks: bool = False,
) -> IngestSummary:
    """Ingest files, directories and globs into the store at `db_path`; each file is atomic.

    Already committed, unchanged files are skipped; changed or partly ingested ones are read
    again, and the (trace_id, span_id) dedup keeps every span exactly once. Symbolic links that
    leave a given directory or glob are not followed unless `follow_symlinks`: the summary lists
    them (skipped_links).
    """
    found = collect_sources(paths, follow_symlinks)
    t0 = time.perf_counter()
    summary = IngestSummary(db_path=str(db_path), skipped_links=found.skipped_links)
    con = open_store(db_path, wait_s=wait_s)
    try:
        # Bound DuckDB's buffer pool (default: 80% of RAM) so that memory follows the batch size,
        # not the store's size; a batch's joins need far less, and DuckDB spills beyond it.
        con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        con.execute(f"SET threads = {DUCKDB_THREADS}")
        total_bytes = sum(f.size for f in found.files)
        with tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc="ingest", disable=not progress, leave=False
        ) as bar:
            summary.files.extend(ingest_files(
                con, found.files, batch_spans, bar, columnar, commit_spans,
                commit_files=commit_files, commit_bytes=commit_bytes, max_record_bytes=max_record_bytes,
            ))
        summary.seconds = time.perf_counter() - t0
        _describe(con, summary)
    finally:
        con.close()
    return summary


def _describe(con: duckdb.DuckDBPyConnection, summary: IngestSummary) -> None:
    con.register("described_files", pa.table({"path": pa.array([f.path for f in summary.files], pa.string())}))
    try:
        rows = con.execute(
            """
            SELECT count(DISTINCT s.trace_id), list(DISTINCT s.service_name ORDER BY s.service_name),
                   list(DISTINCT s.host_name ORDER BY s.host_name), min(s.start_ns), max(s.end_ns)
            FROM spans AS s
            WHERE s.file_id IN (SELECT file_id FROM ingested_files WHERE path IN (SELECT path FROM described_files))
            """
        ).fetchall()
    finally:
        _unregister(con, "described_files")
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
            request, _ = parse_cut(trace_service_pb2.ExportTraceServiceRequest, data)
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
