"""Trace files -> a stream of OTLP records, with their positions, in bounded memory.

Handles: paths, directories (recursively) and globs; gzip and zstd (by magic bytes, not by
name); OTLP JSON as one document per file or as JSON lines (the collector's file exporter);
OTLP protobuf as one `TracesData` / `ExportTraceServiceRequest` message or a length-delimited
stream of them: varint lengths (protobuf's delimited form), or the 4-byte big-endian lengths of
the OpenTelemetry Collector's file exporter, whose messages may each be zstd-compressed
(framing.py says what it writes in each mode; the framing is told from the bytes, never the
name). A protobuf message is read one top-level `ResourceSpans` frame at a time, so a
file's size never decides memory.

Bounded memory per record: a JSON line (or a single JSON document) longer than
`max_record_bytes`, or a protobuf ResourceSpans frame longer than it, is never held whole: it
comes out as a "bad" record with its position, its first RAW_HEAD bytes and its length (the
quarantine row), and reading resumes after it. Junk never takes a byte-at-a-time path: runs of
zero bytes are skipped in bulk (and quarantined as one record), and a file that is neither JSON
nor OTLP protobuf is one record (sniff()).

Symbolic links: inside a directory or glob given to ingest, a link whose target lies outside
that tree is not followed unless asked (follow_symlinks); collect_sources reports each one.
"""

from __future__ import annotations

import glob
import gzip
import importlib
import io
import os
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Protocol

import numpy as np
import orjson
import zstandard

from kvtrace.ingest.decode import RAW_LIMIT, Position
from kvtrace.ingest.errors import IngestError
from kvtrace.ingest.framing import (
    PREFIX_BYTES,
    ZSTD_MAGIC,
    compressed_stream,
    decompress_message,
    fixed32_messages,
    is_compressed,
)


def _newline_counter() -> Any:
    try:  # the C extension's count (bytes.count scans a byte at a time: ~0.5 CPU-s per GB)
        return importlib.import_module("kvtrace.ingest._otlpfast").count_newlines
    except (ImportError, AttributeError):  # pragma: no cover - where the extension is not built
        return lambda data: data.count(b"\n")


_count_newlines = _newline_counter()

GZIP_MAGIC = b"\x1f\x8b"
MAX_FRAME = 1 << 30  # a larger length prefix is corruption, not data
# Default bound on one record held in memory: a JSON line or document, a protobuf frame or
# message. Larger ones are quarantined unread (see the module docstring).
MAX_RECORD_BYTES = 64 << 20
SNIFF_BYTES = 1 << 20  # how much of a protobuf file's start decides between message and stream
READ_BYTES = 1 << 20   # bulk reads when skipping or counting bytes that are not decoded
NOT_OTLP = "not OTLP"  # how the reason of a record that holds no OTLP data at all begins
_WS = b" \t\n\r\x0b\x0c"  # bytes.strip()'s whitespace (the C decoder's py_space)
_TRACE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".pb", ".bin", ".proto", ".otlp", ".protobuf")
_COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")

RecordKind = Literal["json", "proto_rs", "bad"]


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Record:
    """One unit of a file: a JSON document/line, a protobuf ResourceSpans frame, or a bad span
    of bytes (`reason` says why). A record over the size limit holds only its first bytes:
    `size` is then its full length."""

    kind: RecordKind
    pos: Position
    data: bytes
    reason: str = ""
    size: int | None = None


# ---------------------------------------------------------------------------------------- paths


class SourceFile(NamedTuple):
    """A file to ingest: the path as found, its identity in the ledger (the resolved path), its
    size and modification time (one stat)."""

    path: str
    ident: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SkippedLink:
    """A symbolic link in a given directory or glob that was not followed."""

    path: Path
    target: str
    reason: str


@dataclass
class SourceSet:
    files: list[SourceFile] = field(default_factory=list)
    skipped_links: list[SkippedLink] = field(default_factory=list)


def collect_sources(paths: Iterable[str | Path], follow_symlinks: bool = False) -> SourceSet:
    """Files named by `paths` (files, directories searched recursively, globs) in order, each
    once (by resolved path), with their identities.

    In directories only trace-like files are taken (.json/.jsonl/.pb/... optionally .gz/.zst);
    a file named explicitly is always taken, a link named explicitly is followed. Inside a
    directory or glob, a symbolic link whose target is outside it (the directory; for a glob the
    directory before its first wildcard) is skipped and reported unless `follow_symlinks`; a link
    within the tree is taken at its target. Raises IngestError for a path that matches nothing.
    """
    out = SourceSet()
    seen: set[str] = set()

    def add(p: str, ident: str | None = None) -> None:
        ident = ident or os.path.realpath(p)
        if ident in seen:
            return
        try:
            st = os.stat(ident)
        except OSError as exc:
            raise IngestError(f"cannot read {p}: {exc.strerror or exc}") from None
        seen.add(ident)
        out.files.append(SourceFile(p, ident, st.st_size, st.st_mtime_ns))

    for raw in paths:
        p = os.fspath(raw)
        if os.path.isfile(p):
            add(p)
        elif os.path.isdir(p):
            for f, ident, plain_json in _tree_files(p, follow_symlinks, out.skipped_links):
                if not (plain_json and _is_other_json(f)):
                    add(f, ident)
        else:
            files = [m for m in sorted(glob.glob(p, recursive=True)) if os.path.isfile(m)]
            if not files:
                raise IngestError(f"no such file, directory or glob match: {raw}")
            base = os.path.realpath(_glob_base(p))
            for f in files:
                target = os.path.realpath(f)
                if not follow_symlinks and not _inside(target, base):
                    out.skipped_links.append(SkippedLink(Path(f), target, "points outside the glob's directory"))
                    continue
                add(f, target)
    return out


def expand_paths(paths: Iterable[str | Path], follow_symlinks: bool = False) -> list[Path]:
    """The paths of collect_sources(paths).files."""
    return [Path(f.path) for f in collect_sources(paths, follow_symlinks).files]


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _glob_base(pattern: str) -> str:
    """The directory part of `pattern` before its first wildcard ('.' when it starts with one)."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _tree_files(root: str, follow_symlinks: bool, skipped: list[SkippedLink]) -> list[tuple[str, str, bool]]:
    """Trace-like files under `root` (recursively, in the order sorted(Path.rglob()) gives) with
    their resolved paths and whether they are `.json` (not lines) files; links that leave the
    tree are reported in `skipped` unless followed."""
    root_real = os.path.realpath(root)
    found: list[tuple[str, str, bool]] = []
    walked = {root_real}
    stack: list[tuple[str, str]] = [(root, root_real)]
    while stack:
        d, d_real = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:  # unreadable directory: as rglob, skipped
            continue
        real_prefix = d_real.rstrip(os.sep) + os.sep
        subdirs: list[tuple[str, str]] = []
        for e in entries:
            p = e.path
            if e.is_symlink():
                target = os.path.realpath(p)
                inside = _inside(target, root_real)
                if os.path.isdir(target):
                    if inside or target in walked:
                        continue  # walked at its own path
                    if not follow_symlinks:
                        skipped.append(SkippedLink(Path(p), target, "a directory outside the input tree"))
                        continue
                    walked.add(target)
                    subdirs.append((p, target))
                elif _looks_like_traces(e.name):
                    if not os.path.isfile(target):
                        skipped.append(SkippedLink(Path(p), target, "its target does not exist"))
                    elif inside or follow_symlinks:
                        found.append((p, target, _plain_json(e.name)))
                    else:
                        skipped.append(SkippedLink(Path(p), target, "points outside the input tree"))
            elif e.is_dir(follow_symlinks=False):
                subdirs.append((p, real_prefix + e.name))
            elif e.is_file(follow_symlinks=False) and _looks_like_traces(e.name):
                found.append((p, real_prefix + e.name, _plain_json(e.name)))
        stack.extend(subdirs)
    # Path order compares part by part: the separator sorts before every other character
    found.sort(key=lambda item: item[0].replace(os.sep, "\0"))
    return found


def _plain_json(name: str) -> bool:
    lowered = name.lower()
    return ".json" in lowered and ".jsonl" not in lowered


def _looks_like_traces(name: str) -> bool:
    name = name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.endswith(_TRACE_SUFFIXES)


def _is_other_json(f: str) -> bool:
    """A directory's `.json` file that is not OTLP (a labels or config file beside the traces):
    its first 64 KiB name no resourceSpans. Files named explicitly are always read."""
    if not _plain_json(os.path.basename(f)):
        return False
    stream, _ = open_decompressed(f, buffer_size=1 << 16)
    with stream:
        head = stream.read(1 << 16)
    return head.lstrip()[:1] in (b"{", b"[") and b"resourceSpans" not in head and b"resource_spans" not in head


def open_decompressed(path: Path | str, buffer_size: int = 1 << 20) -> tuple[io.BufferedReader, str]:
    """Open `path` for reading its decompressed bytes; returns the stream and the compression."""
    raw = open(path, "rb")  # noqa: SIM115 (closed by the returned stream)
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(GZIP_MAGIC):
        return _without_bom(io.BufferedReader(gzip.GzipFile(fileobj=raw), buffer_size=buffer_size)), "gzip"
    if head.startswith(ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return _without_bom(io.BufferedReader(reader, buffer_size=buffer_size)), "zstd"
    return _without_bom(io.BufferedReader(raw, buffer_size=buffer_size)), "none"


# A UTF-8 byte-order mark: skipped at the start of a file (JSON may carry one; no OTLP protobuf
# starts with these bytes), so that sniffing and every reader see the JSON itself. Offsets in
# quarantine rows count from after it.
UTF8_BOM = b"\xef\xbb\xbf"


def _without_bom(stream: io.BufferedReader) -> io.BufferedReader:
    """`stream`, past a leading UTF8_BOM."""
    try:
        if stream.peek(3)[:3] == UTF8_BOM:
            stream.read(3)
    except (OSError, EOFError, zstandard.ZstdError):
        pass  # a corrupt stream: its reader reports it
    return stream


def read_small(path: str, limit: int, size_hint: int = 0) -> tuple[bytes, str] | None:
    """A file's whole decompressed bytes and its compression when they are at most `limit`
    bytes (and so is the file), else None: one open and one read for a plain file of about
    `size_hint` bytes (its stat size)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        want = min(limit, size_hint) + 1
        parts = [os.read(fd, want)]
        total = len(parts[0])
        while total >= want and parts[-1] and total <= limit:  # larger than its stat said
            parts.append(os.read(fd, min(READ_BYTES, limit + 1 - total)))
            total += len(parts[-1])
    finally:
        os.close(fd)
    if total > limit:
        return None
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if data.startswith(GZIP_MAGIC):
        stream: _Readable = gzip.GzipFile(fileobj=io.BytesIO(data))
        compression = "gzip"
    elif data.startswith(ZSTD_MAGIC):
        stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        compression = "zstd"
    else:
        return data.removeprefix(UTF8_BOM), "none"
    try:
        out = stream.read(limit + 1)
    except (OSError, EOFError, zstandard.ZstdError):
        return None  # a corrupt stream: the streaming path reports it
    return (out.removeprefix(UTF8_BOM), compression) if len(out) <= limit else None


def decompress_bytes(data: bytes) -> bytes:
    """Decompress an in-memory payload when it starts with gzip or zstd magic."""
    if data.startswith(GZIP_MAGIC):
        return gzip.decompress(data)
    if data.startswith(ZSTD_MAGIC):
        out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return out
    return data


# ------------------------------------------------------------------------------------- sniffing


@dataclass(frozen=True)
class Sniff:
    """What a file's first bytes say it is: 'json', 'protobuf', 'empty' (no bytes at all) or
    'unknown' (neither: `reason` says what it starts with)."""

    kind: str
    reason: str = ""


def sniff(head: bytes) -> Sniff:
    """Decide a file's format from its first bytes (up to SNIFF_BYTES), in bulk.

    JSON when the first non-blank byte opens a JSON value, unless the bytes frame as OTLP
    protobuf down to a plausible first ResourceSpans (a protobuf frame of 123 or 91 bytes starts
    with `\\n{` or `\\n[`). Protobuf when they start with a TracesData tag (0x0A), with zero bytes
    (skipped in bulk by the reader and quarantined as not OTLP), or frame as a length-delimited
    stream, or as the Collector's 4-byte length-prefixed messages. Anything else is not OTLP (random bytes, text): one record, never a byte-at-a-time
    walk. A whitespace-only start is read as JSON, whose reader skips blank lines in bulk."""
    if not head:
        return Sniff("empty")
    text = head.lstrip(_WS)
    plausible = _plausible_protobuf(head)
    if not text or (text[:1] in b"{[" and not plausible):
        return Sniff("json")
    if plausible or head[:1] in (b"\x0a", b"\x00") or _frames_as_delimited(head) or collector_framed(head):
        return Sniff("protobuf")
    shown = head[:16].hex(" ")
    return Sniff("unknown", f"neither JSON nor OTLP protobuf (starts with bytes {shown})")


def sniff_format(stream: io.BufferedReader) -> str:
    """sniff() of a stream's first bytes (peeked, not consumed): its kind."""
    return sniff(stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]).kind


# ResourceSpans fields (all length-delimited): 1 resource, 2 scope_spans, 3 schema_url; the first
# field of a Resource (1 attributes, 2 dropped count, 3 entity refs) and of a ScopeSpans (1 scope,
# 2 spans, 3 schema_url).
_RS_TAGS = {0x0A: {0x0A, 0x10, 0x1A}, 0x12: {0x0A, 0x12, 0x1A}, 0x1A: set()}


def _plausible_protobuf(head: bytes) -> bool:
    """Whether `head` starts as OTLP protobuf: a TracesData frame (0x0A, length), or a length
    prefix and such a frame, whose ResourceSpans body starts with a valid field whose own body
    starts with a valid field (as far as `head` reaches)."""
    for start in (0, None):
        pos = 0
        if start is None:  # a length-delimited stream: a length prefix first
            got = _varint_at(head, 0)
            if got is None or not 0 < got[0] <= MAX_FRAME:
                continue
            pos = got[1]
        if head[pos : pos + 1] != b"\x0a":
            continue
        got = _varint_at(head, pos + 1)
        if got is None or got[0] > MAX_FRAME:
            continue
        length, body = got
        if _plausible_resource_spans(head[body : body + length], length):
            return True
    return False


def _plausible_resource_spans(body: bytes, length: int) -> bool:
    """Whether a ResourceSpans frame of `length` bytes, of which `body` is the start, begins with
    a valid field whose own body begins with a valid field; False where the bytes give out first."""
    if not body or body[0] not in _RS_TAGS:
        return False
    got = _varint_at(body, 1)
    if got is None:
        return False
    n, inner = got
    if inner + n > length:
        return False
    allowed = _RS_TAGS[body[0]]
    if not allowed or n == 0:
        return True
    return inner < len(body) and body[inner] in allowed


# ----------------------------------------------------------------------------------------- JSON


@dataclass(frozen=True)
class LineChunk:
    """A run of whole JSON lines (for the columnar decoder), where they sit in the stream."""

    data: bytes
    line: int         # 1-based line number of the first line of `data`
    byte_offset: int  # offset of `data` in the decompressed stream

    def records(self) -> Iterator[Record]:
        """The chunk's lines as records, positioned as iter_json_records positions them."""
        return _json_lines(io.BytesIO(self.data), self.line, self.byte_offset)


def iter_json_records(stream: io.BufferedReader, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Record]:
    """JSON lines (one record per non-blank line), or one multi-line JSON document.

    The first non-blank line decides: if it parses on its own the file is JSON lines; if not,
    the rest is read and parsed as one document, and if that fails too (or the file is longer
    than `max_record_bytes`) it is treated as JSON lines after all, so that its bad lines are
    quarantined one by one. A line longer than `max_record_bytes` is a bad record (not held).
    """
    for unit in iter_json_units(stream, READ_BYTES, max_record_bytes):
        if isinstance(unit, LineChunk):
            yield from unit.records()
        else:
            yield unit


def iter_json_units(
    stream: io.BufferedReader, chunk_bytes: int, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[LineChunk | Record]:
    """Like iter_json_records, but a JSON lines file comes as LineChunks of about `chunk_bytes`
    (whole lines; a longer line makes a longer chunk, up to `max_record_bytes`); a single JSON
    document, or a file whose first line is not JSON, comes as records exactly as
    iter_json_records gives them. Memory stays within chunk_bytes + max_record_bytes: a longer
    line comes as a bad record (its first bytes, its length) and is skipped in bulk."""
    line_no, offset, carry, carried = _skip_blank(stream, max_record_bytes)
    if carried > max_record_bytes:  # a blank start longer than the limit on the line of the first data
        if not stream.peek(1):
            return
        length, eol = _skip_line(stream, carried, b" ")
        yield _long_line(carry[:RAW_LIMIT], line_no, offset, length, max_record_bytes)
        if eol:
            yield from _line_chunks(stream, chunk_bytes, max_record_bytes, line_no + 1, offset + length + eol, b"")
        return
    first = carry + stream.readline(max_record_bytes + 1 - carried)
    if not first.strip(_WS):
        return
    if len(first) > max_record_bytes:
        yield from _line_chunks(stream, chunk_bytes, max_record_bytes, line_no, offset, first)
        return
    try:
        orjson.loads(first)
        lines_mode = True
    except orjson.JSONDecodeError:
        lines_mode = False
    if lines_mode:
        yield from _line_chunks(stream, chunk_bytes, max_record_bytes, line_no, offset, first)
        return
    doc = first + stream.read(max_record_bytes + 1 - len(first))
    if len(doc) > max_record_bytes:  # longer than any one document may be: JSON lines after all
        yield from _line_chunks(stream, chunk_bytes, max_record_bytes, line_no, offset, doc)
        return
    try:
        orjson.loads(doc)
    except orjson.JSONDecodeError:
        yield from _json_lines(io.BytesIO(doc), line_no, offset)
        return
    yield Record("json", Position(line_no, offset), doc)


def _skip_blank(stream: io.BufferedReader, limit: int) -> tuple[int, int, bytes, int]:
    """Consume the blank lines at the stream's start, in bulk: the line number and offset of the
    first non-blank line, and the whitespace of that line already consumed (its first `limit` + 1
    bytes, and its length)."""
    line_no, offset, carry, carried = 1, 0, b"", 0
    while True:
        buf = stream.peek(READ_BYTES)
        if not buf:
            return line_no, offset, carry, carried
        rest = buf.lstrip(_WS)
        stop = len(buf) - len(rest)
        cut = buf.rfind(b"\n", 0, stop) + 1
        if cut:
            line_no += buf.count(b"\n", 0, cut)
            offset += carried + cut
            carry, carried = b"", 0
        stream.read(stop)
        if len(carry) <= limit:
            carry += buf[cut:stop][: limit + 1 - len(carry)]
        carried += stop - cut
        if rest:
            return line_no, offset, carry, carried


def _line_chunks(
    stream: io.BufferedReader, chunk_bytes: int, limit: int, line_no: int, offset: int, head: bytes
) -> Iterator[LineChunk | Record]:
    """LineChunks of whole lines from `head` (already read, at line `line_no`, byte `offset`)
    and the rest of the stream, and a bad record for each line over `limit` bytes."""
    parts: list[bytes | memoryview] = [head] if head else []
    size = len(head)
    tail = size - (head.rfind(b"\n") + 1)  # bytes of the unfinished line at the end of parts
    while True:
        more = stream.read(chunk_bytes) if tail <= limit else b""
        if not more or tail > limit:
            if tail > limit:  # the unfinished line is over the limit: skip to its end, unread
                # only parts[0] can hold line ends (the head); the pieces after it are that line's
                first = bytes(parts[0])
                start = first.rfind(b"\n") + 1
                if start:
                    yield from _split_long(first[:start], line_no, offset, limit)
                    line_no, offset = line_no + first.count(b"\n", 0, start), offset + start
                pieces, held = [first[start:]], len(first) - start
                for piece in parts[1:]:
                    if held >= RAW_LIMIT:
                        break
                    pieces.append(bytes(piece[: RAW_LIMIT - held]))
                    held += len(pieces[-1])
                line_head = b"".join(pieces)[:RAW_LIMIT]
                length, eol = _skip_line(stream, tail, bytes(parts[-1][-1:]))
                yield _long_line(line_head[: min(RAW_LIMIT, length)], line_no, offset, length, limit)
                line_no, offset = line_no + 1, offset + length + eol
                parts, size, tail = [], 0, 0
                if eol:
                    continue
                return
            if size:
                yield from _split_long(b"".join(parts), line_no, offset, limit)
            return
        cut = more.rfind(b"\n") + 1
        if cut == 0:  # no line end in `more`: the unfinished line grows
            parts.append(more)
            size += len(more)
            tail += len(more)
            continue
        # one copy of the chunk's bytes (concatenating, then slicing, made two)
        if parts or cut < len(more):
            parts.append(memoryview(more)[:cut])
            chunk = b"".join(parts)
        else:
            chunk = more
        rest = more[cut:]
        parts, size, tail = ([rest], len(rest), len(rest)) if rest else ([], 0, 0)
        yield from _split_long(chunk, line_no, offset, limit)
        line_no += _count_newlines(chunk)
        offset += len(chunk)


def _split_long(chunk: bytes, line_no: int, offset: int, limit: int) -> Iterator[LineChunk | Record]:
    """`chunk` (whole lines, the last perhaps without its end) as one LineChunk, or, when lines
    in it are over `limit`, as the runs between them and a bad record for each."""
    if len(chunk) <= limit:
        yield LineChunk(chunk, line_no, offset)
        return
    ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 0x0A)
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [len(chunk)]))
    long = np.flatnonzero(stops - starts > limit)
    if not len(long):
        yield LineChunk(chunk, line_no, offset)
        return
    at = 0  # start of the run not yet given out
    for i in long.tolist():
        s, e = int(starts[i]), int(stops[i])
        if s > at:
            yield LineChunk(chunk[at:s], line_no + chunk.count(b"\n", 0, at), offset + at)
        length = e - s - (e > s and chunk[e - 1 : e] == b"\r")
        yield _long_line(chunk[s : min(e, s + RAW_LIMIT)], line_no + i, offset + s, length, limit)
        at = min(e + 1, len(chunk))
    if at < len(chunk):
        yield LineChunk(chunk[at:], line_no + chunk.count(b"\n", 0, at), offset + at)


def _skip_line(stream: io.BufferedReader, length: int, last: bytes) -> tuple[int, int]:
    """Read past the rest of a line in bulk: (its length without the line end, bytes of the line
    end: 1 for '\\n', 0 at EOF); a '\\r' before the '\\n' is not counted in the length."""
    while True:
        buf = stream.peek(READ_BYTES)
        if not buf:
            return length, 0
        nl = buf.find(b"\n")
        if nl < 0:
            stream.read(len(buf))
            length += len(buf)
            last = buf[-1:]
            continue
        stream.read(nl + 1)
        length += nl
        last = buf[nl - 1 : nl] if nl else last
        if last == b"\r":
            return length - 1, 2
        return length, 1


def _long_line(head: bytes, line_no: int, offset: int, length: int, limit: int) -> Record:
    return Record("bad", Position(line_no, offset), head,
                  f"line of {length:,} bytes is over the {limit:,}-byte record limit (not decoded)", size=length)


def _json_lines(stream: BinaryIO, line_no: int, offset: int) -> Iterator[Record]:
    for line in stream:
        if line.strip():
            yield Record("json", Position(line_no, offset), _strip_eol(line))
        line_no += 1
        offset += len(line)


def _strip_eol(line: bytes) -> bytes:
    return line.rstrip(b"\r\n")


# ------------------------------------------------------------------------------------- protobuf


def _varint(stream: _Readable) -> tuple[int, int] | None:
    """Read a base-128 varint; (value, bytes used), None at a clean EOF. Raises ValueError."""
    value = shift = used = 0
    while True:
        b = stream.read(1)
        if not b:
            if used == 0:
                return None
            raise ValueError("truncated varint")
        used += 1
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value, used
        shift += 7
        if used >= 10:
            raise ValueError("varint longer than 10 bytes")


class _Bounded(io.RawIOBase):
    """The next `n` bytes of a stream, as a stream (a length-delimited message read in place)."""

    def __init__(self, stream: _Readable, n: int) -> None:
        self._s = stream
        self.left = n

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self.left if size is None or size < 0 else min(size, self.left)
        data = self._s.read(want) if want else b""
        self.left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def iter_proto_records(stream: io.BufferedReader, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Record]:
    """ResourceSpans frames of one TracesData message, of a varint-delimited stream of them, or
    of the Collector file exporter's 4-byte length-prefixed messages (collector_framed() on the
    first MiB decides; iter_collector_records reads them). A file whose framing gives out
    before a single frame or message could be read is not OTLP: its records say so (the ledger
    then records it as not OTLP, and a later run reads it again)."""
    window = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    if collector_framed(window):
        records = iter_collector_records(stream, max_record_bytes)
    else:
        records = _varint_records(stream, window, max_record_bytes)
    yield from _not_otlp_unless_framed(records)


def collector_framed(window: bytes) -> bool:
    """Whether a file whose first bytes are `window` is read as the Collector's length-prefixed
    messages (framing.py) rather than as varint-delimited protobuf, one TracesData message, or
    JSON. A Collector file starts with a zero byte unless its first message is 16 MiB or more:
    then it is taken only when nothing else reads it. Two messages that frame are taken; one
    that frames is taken when it ends where the file does, or runs past a full window, unless
    the bytes also frame as a varint-delimited stream (zero bytes, then varint lengths)."""
    messages, exact = fixed32_messages(window)
    if not messages:
        return False
    if window[0] != 0:
        return (len(window) >= SNIFF_BYTES and window.lstrip(_WS)[:1] not in (b"{", b"[")
                and not _plausible_protobuf(window) and not _frames_as_delimited(window))
    return messages >= 2 or ((exact or len(window) >= SNIFF_BYTES) and not _frames_as_delimited(window))


def _varint_records(stream: io.BufferedReader, window: bytes, max_record_bytes: int) -> Iterator[Record]:
    """ResourceSpans frames of one TracesData message, or of a varint-delimited stream of them.

    A TracesData message is a run of (tag 0x0A, length, ResourceSpans) frames; a delimited stream
    starts with a length instead. A first byte 0x0A is both the tag and a length of 10: the file
    is read as one message unless the first MiB contradicts that and frames as a delimited stream
    (a delimited stream whose first, 10-byte message is corrupt). A frame whose length or tag is
    corrupt cannot be resynchronised: the rest of the message (of the file, for a single message)
    is quarantined from there. A frame over `max_record_bytes` is quarantined unread (its first
    bytes and length) and skipped; a larger message is read frame by frame in place. A run of
    zero bytes where a length prefix belongs is skipped in bulk, and (two or more) quarantined
    as one record: no OTLP data.
    """
    if window[:1] == b"\x0a" and not (_contradicts_message(window) and _frames_as_delimited(window)):
        yield from _resource_frames(stream, 0, None, max_record_bytes)
        return
    offset = 0
    while True:
        zeros = _skip_zeros(stream)
        if zeros:
            if zeros > 1:
                yield Record("bad", Position(None, offset), bytes(min(zeros, RAW_LIMIT)),
                             f"{NOT_OTLP}: {zeros:,} zero bytes (no data: padding or a crash artifact?)", size=zeros)
            offset += zeros
            continue
        try:
            got = _varint(stream)
        except ValueError as exc:
            yield _bad_rest(stream, offset, f"length prefix: {exc}")
            return
        if got is None:
            return
        length, used = got
        if length > MAX_FRAME:
            yield _bad_rest(stream, offset, f"length prefix {length} is too large")
            return
        if length > max_record_bytes:  # read in place, frame by frame
            inner = _Bounded(stream, length)
            last: Record | None = None
            for last in _resource_frames(inner, offset + used, length, max_record_bytes):
                yield last
            _skip(inner, inner.left)
            if inner.left:  # the file ended inside the message
                if last is None or last.kind != "bad":
                    yield Record("bad", Position(None, offset), b"",
                                 f"message truncated: {length - inner.left} of {length} bytes")
                return
            offset += used + length
            continue
        message = stream.read(length)
        if len(message) < length:
            yield Record("bad", Position(None, offset), message, f"message truncated: {len(message)} of {length} bytes")
            return
        yield from _resource_frames(io.BytesIO(message), offset + used, length, max_record_bytes)
        offset += used + length


def iter_collector_records(stream: io.BufferedReader, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[Record]:
    """The Collector file exporter's length-prefixed messages (framing.py): each message's
    ResourceSpans frames, a JSON message (format json, compressed) as one json record.

    Positions are offsets in the (decompressed) file: of a frame in an uncompressed message; of
    its message's length prefix for everything read out of a compressed message. A message cut
    short by the end of the file (a crash, a file still being written) is quarantined with its
    offset; the messages before it are kept. A corrupt compressed message costs only itself; a
    length over framing.MAX_MESSAGE cannot be resynchronised past, so the rest of the file is
    quarantined from there. A run of zero bytes where a length belongs (empty messages are four)
    is skipped in bulk, and quarantined as one record when longer than one empty message.
    """
    offset, lead = 0, 0  # lead: zero bytes already read that begin the next length prefix
    while True:
        got = stream.read(PREFIX_BYTES - lead)
        if not got and not lead:
            return
        header, lead = bytes(lead) + got, 0
        if len(header) < PREFIX_BYTES:
            yield Record("bad", Position(None, offset), header,
                         f"length prefix truncated: {len(header)} of {PREFIX_BYTES} bytes (the file ends inside it)",
                         size=len(header))
            return
        n = int.from_bytes(header, "big")
        if n == 0:
            run = PREFIX_BYTES + _skip_zeros(stream)
            lead = run % PREFIX_BYTES if stream.peek(1) else 0  # the zeros the next prefix starts with
            if run - lead > PREFIX_BYTES:
                yield Record("bad", Position(None, offset), bytes(min(run - lead, RAW_LIMIT)),
                             f"{NOT_OTLP}: {run - lead:,} zero bytes (no data: padding or a crash artifact?)",
                             size=run - lead)
            offset += run - lead
            continue
        if n > MAX_FRAME:
            yield _bad_rest(stream, offset, f"length prefix {n:,} is too large")
            return
        if not (yield from _collector_message(stream, offset, n, max_record_bytes)):
            return
        offset += PREFIX_BYTES + n


def _collector_message(stream: io.BufferedReader, offset: int, n: int, limit: int) -> Generator[Record, None, bool]:
    """The records of the message of `n` bytes after the length prefix at `offset`; whether the
    file held all of it. One over `limit` is read in place, frame by frame."""
    if n <= limit:
        payload = stream.read(n)
        if len(payload) < n:
            yield Record("bad", Position(None, offset), payload[:RAW_LIMIT],
                         f"message truncated: {len(payload):,} of {n:,} bytes (the file ends inside it)",
                         size=PREFIX_BYTES + len(payload))
            return False
        if not is_compressed(payload):
            yield from _message_records(payload, offset, limit)
            return True
        try:
            content = decompress_message(payload, limit)
        except zstandard.ZstdError as exc:
            yield Record("bad", Position(None, offset), payload[:RAW_LIMIT],
                         f"zstd-compressed message of {n:,} bytes undecodable: {exc}", size=n)
            return True
        if content is not None:
            yield from (_at(r, offset) for r in _message_records(content, None, limit))
            return True
        yield from _compressed_in_place(io.BufferedReader(io.BytesIO(payload)), offset, n, limit)
        return True
    inner = _Bounded(stream, n)
    body = io.BufferedReader(inner, buffer_size=READ_BYTES)
    last: Record | None = None
    if is_compressed(body.peek(len(ZSTD_MAGIC))[: len(ZSTD_MAGIC)]):
        for last in _compressed_in_place(body, offset, n, limit):
            yield last
    elif body.peek(1)[:1] == b"{":
        yield (last := _over_limit(body.peek(RAW_LIMIT)[:RAW_LIMIT], offset, n, limit, "JSON message"))
    else:
        for last in _resource_frames(body, offset + PREFIX_BYTES, n, limit):
            yield last
    _skip(body, n)
    if inner.left:  # the file ended inside the message
        if last is None or last.kind != "bad":
            yield Record("bad", Position(None, offset), b"",
                         f"message truncated: {n - inner.left:,} of {n:,} bytes (the file ends inside it)",
                         size=PREFIX_BYTES + n - inner.left)
        return False
    return True


def _message_records(content: bytes, offset: int | None, limit: int) -> Iterator[Record]:
    """A whole (decompressed) message: one JSON record, or its ResourceSpans frames (positioned
    from the message's prefix at `offset`; None: positioned by the caller)."""
    if content[:1] == b"{":
        yield Record("json", Position(None, offset), content)
        return
    yield from _resource_frames(io.BytesIO(content), (offset or 0) + PREFIX_BYTES, len(content), limit)


def _compressed_in_place(body: io.BufferedReader[Any], offset: int, n: int, limit: int) -> Iterator[Record]:
    """A compressed message whose content is over `limit`, decompressed as a stream: its
    ResourceSpans frames one by one (each within the limit, as always), a JSON one quarantined
    unread."""
    content = compressed_stream(body)
    try:
        if content.peek(1)[:1] == b"{":
            yield _over_limit(content.peek(RAW_LIMIT)[:RAW_LIMIT], offset, None, limit, "compressed JSON message")
            return
        for rec in _resource_frames(content, 0, None, limit):
            yield _at(rec, offset)
    except zstandard.ZstdError as exc:
        yield Record("bad", Position(None, offset), b"", f"zstd-compressed message of {n:,} bytes undecodable: {exc}",
                     size=n)


def _over_limit(head: bytes, offset: int, n: int | None, limit: int, what: str) -> Record:
    size = f" of {n:,} bytes" if n is not None else ""
    return Record("bad", Position(None, offset), head,
                  f"{what}{size} is over the {limit:,}-byte record limit (not decoded)", size=n)


def _at(rec: Record, offset: int) -> Record:
    """`rec` positioned at `offset` (a compressed message's: offsets inside it are not the file's)."""
    return replace(rec, pos=Position(None, offset))


def _not_otlp_unless_framed(records: Iterator[Record]) -> Iterator[Record]:
    """`records`, except that when not one frame (or message) of the file could be read, every
    record says the file is not OTLP: its framing is not one this version reads. Bad records
    before the first frame are held back (up to 64, bounded in size) until that is known."""
    held: list[Record] = []
    for rec in records:
        if rec.kind == "bad" and "-byte record limit" not in rec.reason and len(held) < 64:
            held.append(rec)
            continue
        yield from held
        yield rec
        yield from records
        return
    for rec in held:
        yield rec if rec.reason.startswith(NOT_OTLP) else replace(
            rec, reason=f"{NOT_OTLP}: no OTLP protobuf frame could be read ({rec.reason})")


def _skip_zeros(stream: io.BufferedReader) -> int:
    """Consume a run of zero bytes in bulk; how many there were."""
    n = 0
    while True:
        buf = stream.peek(READ_BYTES)
        if not buf or buf[0] != 0:
            return n
        k = len(buf) - len(buf.lstrip(b"\x00"))
        stream.read(k)
        n += k
        if k < len(buf):
            return n


def _varint_at(buf: bytes, pos: int) -> tuple[int, int] | None:
    """The varint at buf[pos:]: (value, position after it); None when buf ends first or it is
    longer than 10 bytes."""
    value = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        value |= (buf[i] & 0x7F) << shift
        if buf[i] < 0x80:
            return value, i + 1
        shift += 7
    return None


def _contradicts_message(window: bytes) -> bool:
    """Whether `window` (a file's start) cannot be the start of one TracesData message: a frame
    tag other than resource_spans (0x0A) before the window ends."""
    pos = 0
    while pos < len(window):
        if window[pos] != 0x0A:
            return True
        got = _varint_at(window, pos + 1)
        if got is None:
            return False
        pos = got[1] + got[0]
    return False


def _frames_as_delimited(window: bytes) -> bool:
    """Whether `window` frames as a length-delimited stream of TracesData messages: sane lengths,
    and most messages after the first (which may be the corrupt one) start with 0x0A."""
    pos, good, bad = 0, 0, 0
    while pos < len(window):
        got = _varint_at(window, pos)
        if got is None:
            break
        length, start = got
        if length > MAX_FRAME:
            return False
        if pos > 0 and length and start < len(window):
            good, bad = (good + 1, bad) if window[start] == 0x0A else (good, bad + 1)
        if not length:  # a run of zero bytes: jump over it at once
            start = len(window) - len(window[start:].lstrip(b"\x00"))
        pos = start + length
    return good > bad


def _resource_frames(stream: _Readable, base: int, size: int | None, limit: int = MAX_RECORD_BYTES) -> Iterator[Record]:
    offset = 0
    while size is None or offset < size:
        start = base + offset
        try:
            got = _varint(stream)
        except ValueError as exc:
            yield _bad_rest(stream, start, f"field tag: {exc}")
            return
        if got is None:
            return
        tag, used = got
        if tag != 0x0A:
            yield _bad_rest(stream, start, f"unexpected field tag {tag} (expected resource_spans)")
            return
        try:
            got = _varint(stream)
        except ValueError as exc:
            yield _bad_rest(stream, start, f"frame length: {exc}")
            return
        if got is None or got[0] > MAX_FRAME:
            yield _bad_rest(stream, start, "frame length missing or too large")
            return
        length, used2 = got
        if length > limit:
            head = stream.read(RAW_LIMIT)
            got_bytes = len(head) + _skip(stream, length - len(head))
            if got_bytes < length:
                yield Record("bad", Position(None, start), head, f"frame truncated: {got_bytes} of {length} bytes",
                             size=got_bytes)
                return
            yield Record("bad", Position(None, start), head,
                         f"ResourceSpans frame of {length:,} bytes is over the {limit:,}-byte record limit "
                         "(not decoded)", size=length)
            offset += used + used2 + length
            continue
        data = stream.read(length)
        if len(data) < length:
            yield Record("bad", Position(None, start), data, f"frame truncated: {len(data)} of {length} bytes")
            return
        yield Record("proto_rs", Position(None, start), data)
        offset += used + used2 + length


def _skip(stream: _Readable, n: int) -> int:
    """Read and drop up to `n` bytes in bulk; how many there were."""
    done = 0
    while done < n:
        chunk = stream.read(min(READ_BYTES, n - done))
        if not chunk:
            break
        done += len(chunk)
    return done


def _bad_rest(stream: _Readable, offset: int, reason: str, whole: bool = False) -> Record:
    """Quarantine what is left of a stream that cannot be resynchronised (bounded read)."""
    data = stream.read(RAW_LIMIT)
    rest = len(data) + _skip(stream, 1 << 62)
    if not whole:
        reason = f"{reason}; {rest} bytes from here not decodable"
    return Record("bad", Position(None, offset), data, reason, size=rest)


def not_otlp_record(stream: _Readable, reason: str) -> Record:
    """The whole of a file that is not OTLP as one record (its first bytes, its length)."""
    return _bad_rest(stream, 0, f"{NOT_OTLP}: {reason}", whole=True)


def file_identity(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(path.resolve()), st.st_size, st.st_mtime_ns
