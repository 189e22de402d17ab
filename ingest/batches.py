"""Files -> staged batches, in file order, decoded on the parallel workers (parallel.py).

The feeder thread reads and frames the files (sources.py) and makes one decode job per unit: a
chunk of whole JSON lines (~batch_spans KB), a group of protobuf ResourceSpans frames, a run of
other records, or a group of small files read whole (at most one chunk each: one C decoder call
for thousands of files, each span tagged with its file). A job runs the whole fallback chain of
its unit: the C decoder (jsonfast.py / protofast.py over _otlpfast.c), then, for what it declines
(for every unit where the extension is not built), the validating decoder (decode.py), which
quarantines bad records; no Python per span on the fast path. Then, still in the worker,
Staged.prepare derives the batch's span-local rows (merge.Deriver). Records are bounded
(sources.MAX_RECORD_BYTES): a longer JSON line or protobuf frame is quarantined unread. The
results come back in the jobs' order as _Items: a file's start, its batches (with the raw
position reached, for progress), its end with the note its batches call for; or a _Group of
small files."""

from __future__ import annotations

import io
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from kvtrace.ingest.decode import StagedRows, StagedTables, add_json_traces, add_proto_resource_spans_bytes
from kvtrace.ingest.jsonfast import decode_json_chunk, decode_json_chunk_located
from kvtrace.ingest.merge import Deriver, Staged
from kvtrace.ingest.parallel import decode_workers, ordered
from kvtrace.ingest.protofast import decode_traces, decode_traces_located, frame_resource_spans
from kvtrace.ingest.sources import (
    _WS,
    MAX_RECORD_BYTES,
    NOT_OTLP,
    SNIFF_BYTES,
    LineChunk,
    Record,
    Sniff,
    SourceFile,
    iter_json_units,
    iter_proto_records,
    not_otlp_record,
    open_decompressed,
    read_small,
    sniff,
)

# JSON lines are read in chunks of batch_spans * this many bytes (simulator spans are ~1 KB).
CHUNK_BYTES_PER_SPAN = 1024

# Protobuf ResourceSpans frames are decoded in groups of up to batch_spans * this many bytes
# (simulator spans are ~320 bytes of protobuf).
PROTO_BYTES_PER_SPAN = 512


def _decode_record(batch: StagedRows, rec: Record) -> None:
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
        add_proto_resource_spans_bytes(batch, rec.data, rec.pos)  # a refused span costs only itself


# A decode job: the staged batches of one unit of a file (a chunk of JSON lines, a group of
# protobuf frames, a run of other records), through the whole fallback chain; run by a worker.
_Decode = Callable[[], list[Staged]]


def _validated(records: Iterable[Record], batch_spans: int) -> list[Staged]:
    """Records through the validating decoder (which quarantines bad ones), batch_spans a batch."""
    return [Staged.from_rows(b) for b in _batches(records, batch_spans)]


def _chunk(unit: LineChunk, batch_spans: int, columnar: bool) -> list[Staged]:
    """A chunk of JSON lines through the C fast path, or, when it declines (or is not built),
    through the validating decoder (which quarantines bad lines as always)."""
    tables = decode_json_chunk(unit.data) if columnar else None
    if tables is not None:
        return [Staged.from_columnar(tables)]
    return _validated(unit.records(), batch_spans)


def _frames(group: list[Record], batch_spans: int, columnar: bool) -> list[Staged]:
    """A run of good ResourceSpans frames through the C fast path, or, when it declines, through
    the validating decoder."""
    tables = decode_traces(frame_resource_spans(r.data for r in group)) if columnar else None
    if tables is not None:
        return [Staged.from_columnar(tables)]
    return _validated(group, batch_spans)


def _unit_jobs(units: Iterable[LineChunk | Record], batch_spans: int, columnar: bool) -> Iterator[_Decode]:
    """A JSON file's decode jobs: one per chunk of JSON lines (_chunk), and one per run of other
    records (batch_spans at most) through the validating decoder."""
    pending: list[Record] = []
    for unit in units:
        if isinstance(unit, LineChunk):
            if pending:
                yield partial(_validated, pending, batch_spans)
                pending = []
            yield partial(_chunk, unit, batch_spans, columnar)
        else:
            pending.append(unit)
            if len(pending) >= batch_spans:
                yield partial(_validated, pending, batch_spans)
                pending = []
    if pending:
        yield partial(_validated, pending, batch_spans)


def _proto_jobs(records: Iterable[Record], batch_spans: int, columnar: bool) -> Iterator[_Decode]:
    """A protobuf file's decode jobs: runs of good ResourceSpans frames (up to batch_spans *
    PROTO_BYTES_PER_SPAN bytes) through _frames, and each bad frame alone through the validating
    decoder, which quarantines as always."""
    group: list[Record] = []
    size, limit = 0, batch_spans * PROTO_BYTES_PER_SPAN
    for rec in records:
        if rec.kind != "proto_rs":
            if group:
                yield partial(_frames, group, batch_spans, columnar)
                group, size = [], 0
            yield partial(_validated, [rec], batch_spans)
            continue
        group.append(rec)
        size += len(rec.data)
        if size >= limit:
            yield partial(_frames, group, batch_spans, columnar)
            group, size = [], 0
    if group:
        yield partial(_frames, group, batch_spans, columnar)


def _staged_units(units: Iterable[LineChunk | Record], batch_spans: int, columnar: bool) -> Iterator[Staged]:
    """A JSON file's units decoded in order, here (see _unit_jobs)."""
    for job in _unit_jobs(units, batch_spans, columnar):
        yield from job()


def _staged_proto(records: Iterable[Record], batch_spans: int, columnar: bool) -> Iterator[Staged]:
    """A protobuf file's ResourceSpans frames decoded in order, here (see _proto_jobs)."""
    for job in _proto_jobs(records, batch_spans, columnar):
        yield from job()


# Decode jobs in flight (_decoded_files) beyond one a worker: decoded batches waiting for the
# merge, so that no worker idles while the merge takes the batch before (a file's start and end
# are jobs too). Each heavy job holds a chunk of ~batch_spans spans and its staged batch (~100 MB
# at 50k simulator spans), so this and the workers bound the memory ingest holds beside DuckDB's.
DECODE_AHEAD = 2


def _batches(records: Iterable[Record], batch_spans: int) -> Iterator[StagedRows]:
    batch = StagedRows()
    for rec in records:
        _decode_record(batch, rec)
        if batch.n_spans >= batch_spans:
            yield batch
            batch = StagedRows()
    if batch.n_spans or batch.n_quarantined:
        yield batch


# Small files (at most one chunk, batch_spans * CHUNK_BYTES_PER_SPAN bytes) are read whole and
# decoded and merged together, up to this many files (and one chunk of bytes) a batch: per file,
# what remains is one open and one read. (A batch per file made a directory of 20,000 one-span
# files take ~13 files/s: 30 statements a file, each dearer as the transaction grew.)
GROUP_FILES = 20_000


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


def _decoded_files(
    todo: list[SourceFile] | list[tuple[Path, str, int, int]], batch_spans: int, columnar: bool,
    max_record_bytes: int = MAX_RECORD_BYTES, group_files: int = GROUP_FILES, group_bytes: int | None = None,
    workers: int | None = None,
) -> Generator[_Item, None, None]:
    """The files' staged batches, prepared for the merge, in file order: a large file as its
    start, its batches (with the raw byte position reached), its end; runs of small files (at
    most one chunk each) as _Groups of up to `group_files` files and `group_bytes` bytes (one
    chunk by default), each decoded as one batch. The decoding and the Deriver run on `workers`
    threads (default: parallel.decode_workers(), one a core), with up to `workers` +
    DECODE_AHEAD jobs in flight ahead of the caller."""
    n = decode_workers() if workers is None else max(1, workers)
    jobs = _decode_jobs(todo, batch_spans, columnar, max_record_bytes, group_files, group_bytes)
    yield from _in_order(ordered(jobs, n, n + DECODE_AHEAD, Deriver, Deriver.close))


def _decode_jobs(
    todo: list[SourceFile] | list[tuple[Path, str, int, int]], batch_spans: int, columnar: bool,
    max_record_bytes: int, group_files: int, group_bytes: int | None,
) -> Iterator[_Job]:
    """The jobs of _decoded_files, made by reading and framing the files (in the feeder thread):
    one per file start and end, per unit of a large file, per group of small files."""
    files = [f if isinstance(f, SourceFile) else SourceFile(str(f[0]), *f[1:]) for f in todo]
    chunk_bytes = batch_spans * CHUNK_BYTES_PER_SPAN
    group_limit = chunk_bytes if group_bytes is None else min(chunk_bytes, group_bytes)
    group: list[tuple[int, SourceFile, bytes, str]] = []
    held = 0
    for index, f in enumerate(files):
        small = read_small(f.path, chunk_bytes, f.size) if f.size <= chunk_bytes else None
        if small is None:
            if group:
                yield partial(_group_job, group, batch_spans, columnar, max_record_bytes)
                group, held = [], 0
            yield from _streamed_jobs(index, f, batch_spans, columnar, max_record_bytes)
            continue
        if group and (held + len(small[0]) > group_limit or len(group) >= group_files):
            yield partial(_group_job, group, batch_spans, columnar, max_record_bytes)
            group, held = [], 0
        group.append((index, f, *small))
        held += len(small[0])
    if group:
        yield partial(_group_job, group, batch_spans, columnar, max_record_bytes)


def _group_job(
    group: list[tuple[int, SourceFile, bytes, str]], batch_spans: int, columnar: bool, max_record_bytes: int,
    deriver: Deriver,
) -> _Group:
    members = [_Member.read(i, f, data, compression, columnar=columnar, max_record_bytes=max_record_bytes)
               for i, f, data, compression in group]
    return _decode_group(members, deriver, batch_spans, columnar, max_record_bytes)


@dataclass(slots=True)
class _Batches:
    """A job's result: one unit of file `index` as prepared staged batches, and the raw byte
    position reached once it was read."""

    index: int
    staged: list[Staged]
    pos: int


@dataclass(slots=True)
class _EndOf:
    """A job's result: file `index` was read to its end (its _FileEnd follows from its batches)."""

    index: int
    kind: str
    blank: bool


_Result = _FileStart | _Batches | _EndOf | _Group

_Job = Callable[[Deriver], _Result]


def _given(result: _Result, deriver: Deriver) -> _Result:
    return result


def _prepared(index: int, decode: _Decode, pos: int, deriver: Deriver) -> _Batches:
    return _Batches(index, [st.prepare(deriver) for st in decode()], pos)


def _in_order(results: Iterator[_Result]) -> Iterator[_Item]:
    """The jobs' results as the merge takes them: each file's batches one by one, and its end
    with the note its batches call for."""
    outcomes: dict[int, _Outcome] = {}
    for r in results:
        if isinstance(r, _Batches):
            outcome = outcomes.setdefault(r.index, _Outcome())
            for st in r.staged:
                outcome.add(st.spans.num_rows, st.quarantine.column("reason").to_pylist())
                yield st, r.pos
        elif isinstance(r, _EndOf):
            yield outcomes.pop(r.index, _Outcome()).end(r.index, r.kind, r.blank)
        else:
            yield r


def _file_jobs(
    stream: io.BufferedReader[Any], sniffed: Sniff, batch_spans: int, columnar: bool, max_record_bytes: int
) -> Iterator[_Decode]:
    """One file's decode jobs, as its sniffed format reads (the stream is read as they are made)."""
    if sniffed.kind == "json":
        units = iter_json_units(stream, batch_spans * CHUNK_BYTES_PER_SPAN, max_record_bytes)
        yield from _unit_jobs(units, batch_spans, columnar)
    elif sniffed.kind == "protobuf":
        yield from _proto_jobs(iter_proto_records(stream, max_record_bytes), batch_spans, columnar)
    elif sniffed.kind == "unknown":
        yield partial(_validated, [not_otlp_record(stream, sniffed.reason)], batch_spans)


def _file_batches(
    stream: io.BufferedReader[Any], sniffed: Sniff, batch_spans: int, columnar: bool, max_record_bytes: int
) -> Iterator[Staged]:
    """One file's staged batches, decoded here, in order."""
    for job in _file_jobs(stream, sniffed, batch_spans, columnar, max_record_bytes):
        yield from job()


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


def _streamed_jobs(
    index: int, f: SourceFile, batch_spans: int, columnar: bool, max_record_bytes: int
) -> Iterator[_Job]:
    """A file read as a stream: its start, a job per unit (with the raw position reached), its end."""
    stream, compression = open_decompressed(f.path)
    raw_file = stream.raw
    with stream:
        head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
        sniffed = sniff(head)
        yield partial(_given, _FileStart(index, f.ident, f.size, f.mtime_ns, compression))
        for decode in _file_jobs(stream, sniffed, batch_spans, columnar, max_record_bytes):
            yield partial(_prepared, index, decode, _raw_position(raw_file, f.size))
    yield partial(_given, _EndOf(index, sniffed.kind, not head.strip(_WS)))


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


def _located(tables: StagedTables, span_files: np.ndarray) -> Staged:
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
