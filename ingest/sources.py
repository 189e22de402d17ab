"""Trace files -> a stream of OTLP records, with their positions, in bounded memory.

Handles: paths, directories (recursively) and globs; gzip and zstd (by magic bytes, not by
name); OTLP JSON as one document per file or as JSON lines (the collector's file exporter);
OTLP protobuf as one `TracesData` / `ExportTraceServiceRequest` message or a length-delimited
stream of them. A protobuf message is read one top-level `ResourceSpans` frame at a time, so a
file's size never decides memory; only a single-document (not lines) JSON file is read whole.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import zstandard

from kvtrace.ingest.decode import Position
from kvtrace.ingest.errors import IngestError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_FRAME = 1 << 30  # a larger length prefix is corruption, not data
SNIFF_BYTES = 1 << 20  # how much of a protobuf file's start decides between message and stream
_TRACE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".pb", ".bin", ".proto", ".otlp", ".protobuf")
_COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")

RecordKind = Literal["json", "proto_rs", "bad"]


@dataclass(frozen=True)
class Record:
    """One unit of a file: a JSON document/line, a protobuf ResourceSpans frame, or a bad span
    of bytes (`reason` says why)."""

    kind: RecordKind
    pos: Position
    data: bytes
    reason: str = ""


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named by `paths` (files, directories searched recursively, globs), sorted, unique.

    In directories only trace-like files are taken (.json/.jsonl/.pb/... optionally .gz/.zst);
    a file named explicitly is always taken. Raises IngestError for a path that matches nothing.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            found[p] = None
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and _looks_like_traces(f) and not _is_other_json(f):
                    found[f] = None
        else:
            matches = sorted(glob.glob(str(raw), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                raise IngestError(f"no such file, directory or glob match: {raw}")
            for f in files:
                found[f] = None
    return list(found)


def _looks_like_traces(f: Path) -> bool:
    name = f.name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.endswith(_TRACE_SUFFIXES)


def _is_other_json(f: Path) -> bool:
    """A directory's `.json` file that is not OTLP (a labels or config file beside the traces):
    its first 64 KiB name no resourceSpans. Files named explicitly are always read."""
    if ".json" not in f.name.lower() or ".jsonl" in f.name.lower():
        return False
    stream, _ = open_decompressed(f)
    with stream:
        head = stream.read(1 << 16)
    return head.lstrip()[:1] in (b"{", b"[") and b"resourceSpans" not in head and b"resource_spans" not in head


def open_decompressed(path: Path) -> tuple[io.BufferedReader, str]:
    """Open `path` for reading its decompressed bytes; returns the stream and the compression."""
    raw = open(path, "rb")  # noqa: SIM115 (closed by the returned stream)
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(GZIP_MAGIC):
        return io.BufferedReader(gzip.GzipFile(fileobj=raw), buffer_size=1 << 20), "gzip"
    if head.startswith(ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20), "zstd"
    return io.BufferedReader(raw, buffer_size=1 << 20), "none"


def decompress_bytes(data: bytes) -> bytes:
    """Decompress an in-memory payload when it starts with gzip or zstd magic."""
    if data.startswith(GZIP_MAGIC):
        return gzip.decompress(data)
    if data.startswith(ZSTD_MAGIC):
        out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return out
    return data


def sniff_format(stream: io.BufferedReader) -> str:
    """'json' when the first non-blank byte opens a JSON value, else 'protobuf'."""
    head = stream.peek(4096)[:4096].lstrip()
    if not head:
        return "empty"
    return "json" if head[:1] in (b"{", b"[") else "protobuf"


# ----------------------------------------------------------------------------------------- JSON


def iter_json_records(stream: BinaryIO) -> Iterator[Record]:
    """JSON lines (one record per non-blank line), or one multi-line JSON document.

    The first non-blank line decides: if it parses on its own the file is JSON lines; if not,
    the rest is read and parsed as one document, and if that fails too it is treated as JSON
    lines after all, so that its bad lines are quarantined one by one.
    """
    offset = 0
    first: tuple[int, int, bytes] | None = None
    for line_no, line in enumerate(stream, start=1):
        if line.strip():
            first = (line_no, offset, line)
            break
        offset += len(line)
    if first is None:
        return
    first_line_no, first_offset, first_line = first
    try:
        orjson.loads(first_line)
        lines_mode = True
    except orjson.JSONDecodeError:
        lines_mode = False
    if lines_mode:
        yield Record("json", Position(first_line_no, first_offset), _strip_eol(first_line))
        yield from _json_lines(stream, first_line_no + 1, first_offset + len(first_line))
        return
    rest = first_line + stream.read()
    try:
        orjson.loads(rest)
    except orjson.JSONDecodeError:
        yield from _json_lines(io.BytesIO(rest), first_line_no, first_offset)
        return
    yield Record("json", Position(first_line_no, first_offset), rest)


@dataclass(frozen=True)
class LineChunk:
    """A run of whole JSON lines (for the columnar decoder), where they sit in the stream."""

    data: bytes
    line: int         # 1-based line number of the first line of `data`
    byte_offset: int  # offset of `data` in the decompressed stream

    def records(self) -> Iterator[Record]:
        """The chunk's lines as records, positioned as iter_json_records positions them."""
        return _json_lines(io.BytesIO(self.data), self.line, self.byte_offset)


def iter_json_units(stream: io.BufferedReader, chunk_bytes: int) -> Iterator[LineChunk | Record]:
    """Like iter_json_records, but a JSON lines file comes as LineChunks of about `chunk_bytes`
    (whole lines; a longer line makes a longer chunk); a single JSON document, or a file whose
    first line is not JSON, comes as records exactly as iter_json_records gives them."""
    skipped = b""
    while True:
        line = stream.readline()
        if not line:
            return
        if line.strip():
            break
        skipped += line
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        yield from iter_json_records(io.BufferedReader(_Prefixed(skipped + line, stream)))
        return
    line_no, offset = skipped.count(b"\n") + 1, len(skipped)
    buf = line  # the start of the next chunk: bytes after the last newline read so far
    while True:
        more = stream.read(chunk_bytes)
        if not more:
            if buf:
                yield LineChunk(buf, line_no, offset)
            return
        cut = more.rfind(b"\n") + 1
        if cut == 0:  # one line longer than chunk_bytes so far: read on
            buf += more
            continue
        # one copy of the chunk's bytes (concatenating, then slicing, made two)
        chunk = b"".join((buf, memoryview(more)[:cut])) if buf or cut < len(more) else more
        buf = more[cut:]
        yield LineChunk(chunk, line_no, offset)
        line_no += chunk.count(b"\n")
        offset += len(chunk)


class _Prefixed(io.RawIOBase):
    """A raw stream that reads `prefix` first, then `rest` (to re-read a peeked line)."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _json_lines(stream: BinaryIO, line_no: int, offset: int) -> Iterator[Record]:
    for line in stream:
        if line.strip():
            yield Record("json", Position(line_no, offset), _strip_eol(line))
        line_no += 1
        offset += len(line)


def _strip_eol(line: bytes) -> bytes:
    return line.rstrip(b"\r\n")


# ------------------------------------------------------------------------------------- protobuf


def _varint(stream: BinaryIO) -> tuple[int, int] | None:
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


def iter_proto_records(stream: io.BufferedReader) -> Iterator[Record]:
    """ResourceSpans frames of one TracesData message, or of a length-delimited stream of them.

    A TracesData message is a run of (tag 0x0A, length, ResourceSpans) frames; a delimited stream
    starts with a length instead. A first byte 0x0A is both the tag and a length of 10: the file
    is read as one message unless the first MiB contradicts that and frames as a delimited stream
    (a delimited stream whose first, 10-byte message is corrupt). A frame whose length or tag is
    corrupt cannot be resynchronised: the rest of the message (of the file, for a single message)
    is quarantined from there.
    """
    window = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    if window[:1] == b"\x0a" and not (_contradicts_message(window) and _frames_as_delimited(window)):
        yield from _resource_frames(stream, 0, None)
        return
    offset = 0
    while True:
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
        message = stream.read(length)
        if len(message) < length:
            yield Record("bad", Position(None, offset), message, f"message truncated: {len(message)} of {length} bytes")
            return
        yield from _resource_frames(io.BytesIO(message), offset + used, length)
        offset += used + length


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
        pos = start + length
    return good > bad


def _resource_frames(stream: BinaryIO, base: int, size: int | None) -> Iterator[Record]:
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
        data = stream.read(length)
        if len(data) < length:
            yield Record("bad", Position(None, start), data, f"frame truncated: {len(data)} of {length} bytes")
            return
        yield Record("proto_rs", Position(None, start), data)
        offset += used + used2 + length


def _bad_rest(stream: BinaryIO, offset: int, reason: str) -> Record:
    """Quarantine what is left of a stream that cannot be resynchronised (bounded read)."""
    data = stream.read(4096)
    rest = len(data)
    while chunk := stream.read(1 << 20):
        rest += len(chunk)
    return Record("bad", Position(None, offset), data, f"{reason}; {rest} bytes from here not decodable")


def file_identity(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(path.resolve()), st.st_size, st.st_mtime_ns
