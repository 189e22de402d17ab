"""Ingest: trace files or live OTLP payloads -> the DuckDB store, loss-free and idempotent.

A file's way, module by module:
  sources.py    bytes -> records and chunks of whole JSON lines (decompression, framing, bounds)
  batches.py    -> staged Arrow batches, one row per span (jsonfast.py, protofast.py: the C
                decoders, then decode.py: the validating decoder, for what they decline), each
                with the normalised rows that follow from its spans alone (merge.Deriver),
                decoded on the parallel workers of parallel.py and handed on in file order
  merge.py      -> the store: dedup, raw rows, derived rows, and the normalisation that needs
                other spans (the SQL files of ingest/sql/)
  pipeline.py   (this module) the driver: which files to read (the ledger), transactions of
                whole files, commits, the summary; and live payloads (ingest_payload).

Every `batch_spans` spans a batch is merged; a file is done with its ingested_files row, and the
transaction holding it (whole files: DEFAULT_COMMIT_SPANS spans, DEFAULT_COMMIT_FILES files or
DEFAULT_COMMIT_BYTES bytes, whichever comes first) commits. A crash before the commit leaves the
store as it was; a re-run skips committed files and redoes the rest. Small files (at most one
chunk each: a directory of one-span files a collector rotated) are decoded and merged many to a
batch, and the per-file SQL (ledger lookup, quarantine of an earlier read, ledger rows) runs once
per batch or commit. A file that gives no spans (empty, not OTLP, every record quarantined) says
so in its FileResult.note and in the ledger's format."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import orjson
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from tqdm import tqdm

# (_decode_record and _staged_proto: tests take them from here: tests/ingest_support.py,
# tests/test_ingest_protofast.py)
from kvtrace.ingest.batches import GROUP_FILES, _decoded_files, _FileEnd, _FileStart, _Group
from kvtrace.ingest.batches import _decode_record as _decode_record
from kvtrace.ingest.batches import _staged_proto as _staged_proto
from kvtrace.ingest.decode import Position, StagedRows, add_json_traces, add_proto_resource_spans
from kvtrace.ingest.errors import IngestError, PayloadError
from kvtrace.ingest.jsonfast import decode_json_chunk
from kvtrace.ingest.merge import (
    DUCKDB_MEMORY_LIMIT,
    BatchResult,
    Deriver,
    Staged,
    _merge,
    _scalar,
    _unregister,
    merge_staged,
)
from kvtrace.ingest.nesting import parse_cut
from kvtrace.ingest.protofast import decode_traces
from kvtrace.ingest.sources import (
    MAX_RECORD_BYTES,
    SkippedLink,
    SourceFile,
    collect_sources,
    decompress_bytes,
    file_identity,
)
from kvtrace.ingest.store import open_store

DEFAULT_BATCH_SPANS = 50_000

# Files are committed in transactions of whole files holding at least this many spans (see
# ingest_files); DuckDB's row groups hold 122,880 rows.
DEFAULT_COMMIT_SPANS = 500_000

# One DuckDB thread while ingesting: the batch-sized statements gain nothing from a second one,
# and the decoder thread runs beside them (measured: 1M spans 12.4-13.2 s vs 13.7-14.5 s with 2).
DUCKDB_THREADS = 1


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


# A transaction of whole files commits once it holds DEFAULT_COMMIT_SPANS spans, or
# DEFAULT_COMMIT_FILES files, or DEFAULT_COMMIT_BYTES bytes of files, whichever comes first.
DEFAULT_COMMIT_FILES = 20_000

DEFAULT_COMMIT_BYTES = 1 << 30


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

    Decoding runs on the decode workers (one a core, see parallel.py), up to the workers +
    DECODE_AHEAD jobs ahead, across file boundaries too, while this thread merges into DuckDB in
    file order; small files are decoded and merged many to a batch, and the per-file SQL (the
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
    # a group of small files commits as one: no bigger than a transaction may be
    decoded = _decoded_files(todo, batch_spans, columnar, max_record_bytes, min(GROUP_FILES, commit_files),
                             commit_bytes)
    try:
        for item in decoded:
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
    finally:
        decoded.close()  # stops the decode workers and closes the files they read
    return [results[f.ident] for f in files]


def _ledger_lookup(con: duckdb.DuckDBPyConnection, files: list[SourceFile]) -> dict[int, tuple[str, str]]:
    """The files (by position) already committed unchanged: their format and compression. One
    query for all of them. A file that gave no spans but quarantined records (not OTLP, or
    nothing in it decoded) is not done: a later version may read it, so every run reads it again."""
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
            "WHERE f.spans_read > 0 OR f.quarantined = 0 GROUP BY p.i"
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
            # the ledger row of an earlier read that gave nothing (it stored no spans) is replaced
            self.con.execute("DELETE FROM ingested_files WHERE path IN (SELECT source FROM reread_sources) "
                             "AND spans_read = 0 AND quarantined > 0")
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
    """One payload's staged tables: JSON on one line or protobuf through the C fast path, when
    it takes it, else through the validating decoder."""
    if fmt == "json" and b"\n" not in data.rstrip():
        tables = decode_json_chunk(data)
        if tables is not None:
            return Staged.from_columnar(tables)
    if fmt == "protobuf":
        tables = decode_traces(data)
        if tables is not None:
            return Staged.from_columnar(tables)
    batch = StagedRows()
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
    return Staged.from_rows(batch)


__all__ = [
    "DUCKDB_MEMORY_LIMIT",
    "BatchResult",
    "Deriver",
    "FileResult",
    "IngestError",
    "IngestSummary",
    "PayloadError",
    "Staged",
    "ingest_files",
    "ingest_paths",
    "ingest_payload",
    "merge_staged",
]
