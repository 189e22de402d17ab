"""The OpenTelemetry Collector file exporter's framings, recognised from a file's bytes.

What the exporter writes (opentelemetry-collector-contrib, exporter/fileexporter), by its
`format` and `compression` settings:

- `format: json`, no compression: one OTLP JSON document per line (file_writer.go,
  exportMessageAsLine). sources.iter_json_units reads it as any JSON lines file.
- `format: proto`: every message (an ExportTraceServiceRequest, TracesData on the wire) preceded
  by its length as a 4-byte big-endian unsigned integer (exportMessageAsBuffer,
  binary.BigEndian.PutUint32), not a varint.
- `compression: zstd` (the default, message-level mode): every marshalled message, JSON or
  proto, is compressed into one zstd frame (marshaller.go marshalTraces -> codec.go
  zstdCompress, EncodeAll), then framed as above: buildExportFunc length-prefixes JSON too when
  it is compressed, so such a file has no lines at all.
- `compression: zstd` under the feature gate `exporter.file.nativeCompression` (v0.154.0,
  compression_writer.go): the whole file is one zstd stream, of several frames (one per write
  when rotating, else one per flush), holding JSON lines (`json`) or the length-prefixed
  messages (`proto`). sources.open_decompressed reads across the frames; inside, the same
  readers apply.

Rotation renames a full file and opens a new one between writes, group_by writes each
resource's messages to a file of their own, `append` continues the framing of the file there:
none of them changes the framing. A file still being written, or cut by a crash (the writer
buffers and flushes on an interval), may end inside a message.

This module tells how a window of a file's first (decompressed) bytes frames as such
length-prefixed messages (sources.collector_framed decides), and opens a compressed message; sources.iter_collector_records
reads the messages.
"""

from __future__ import annotations

import io
from typing import Any

import zstandard

PREFIX_BYTES = 4  # the big-endian uint32 length before each message
MAX_MESSAGE = 1 << 30  # a larger length is corruption, not data
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ = 1 << 20
# ResourceSpans fields: 1 resource, 2 scope_spans, 3 schema_url (all length-delimited)
_RESOURCE_SPANS_TAGS = (0x0A, 0x12, 0x1A)


def fixed32_messages(window: bytes) -> tuple[int, bool]:
    """How `window`, a file's first bytes, frames as length-prefixed messages: how many messages
    start in it, each starting as a message does (see message_starts), and whether the last one
    ends exactly where the window does. (0, False) as soon as a length is over MAX_MESSAGE or a
    message starts otherwise, or when the first length is zero: zeros at a file's start are
    padding or a crash artifact, as the varint reader reports them. Zero lengths later (empty
    messages) are skipped in bulk."""
    pos = messages = 0
    while pos + PREFIX_BYTES <= len(window):
        n = int.from_bytes(window[pos : pos + PREFIX_BYTES], "big")
        if n > MAX_MESSAGE or (n == 0 and pos == 0):
            return 0, False
        if n == 0:  # whole empty messages only: the next prefix may start with zeros
            run = len(window) - pos - len(window[pos:].lstrip(b"\x00"))
            pos += run - run % PREFIX_BYTES
            continue
        body = pos + PREFIX_BYTES
        if body < len(window):
            if not message_starts(window[body : body + min(n, 64)], n):
                return 0, False
            messages += 1
        pos = body + n
    return messages, pos == len(window)


def message_starts(head: bytes, n: int) -> bool:
    """Whether `head`, the first bytes of a message of `n` bytes, starts as a message of the file
    exporter: a zstd frame, a JSON object (an encoding extension's output), or a TracesData
    whose first ResourceSpans fits in the message and starts with one of its fields."""
    if not head:
        return False
    if head[: len(ZSTD_MAGIC)] == ZSTD_MAGIC or (
        len(head) < min(n, len(ZSTD_MAGIC)) and ZSTD_MAGIC.startswith(head)
    ):
        return True
    if head[:1] == b"{":
        return True
    if head[0] != 0x0A:  # TracesData field 1 (resource_spans), length-delimited
        return False
    length = shift = 0
    for i in range(1, min(11, len(head))):
        length |= (head[i] & 0x7F) << shift
        if head[i] < 0x80:
            body = i + 1
            return body + length <= n and (
                length == 0 or body >= len(head) or head[body] in _RESOURCE_SPANS_TAGS
            )
        shift += 7
    return len(head) < 11  # the length runs past what is shown


def is_compressed(payload: bytes) -> bool:
    return payload.startswith(ZSTD_MAGIC)


def decompress_message(payload: bytes, limit: int) -> bytes | None:
    """A zstd-compressed message's content (all its frames), or None when it is longer than
    `limit` bytes. Raises zstandard.ZstdError when the payload is corrupt or its last frame is
    cut short (a stream reader would return the bytes before the cut as if that were all).

    The input goes in slices small enough that no slice can produce more than what is left of
    the limit (a zstd block of 128 KiB can be written in 4 bytes): a compression bomb stops at
    about the limit, never holds more than twice it."""
    parts: list[bytes] = []
    total = pos = 0
    frame = zstandard.ZstdDecompressor().decompressobj()
    while pos < len(payload):
        step = max(256, (limit + 1 - total) >> 15)
        chunk = payload[pos : pos + step]
        out = frame.decompress(chunk)
        pos += len(chunk)
        parts.append(out)
        total += len(out)
        if total > limit:
            return None
        if frame.eof:  # the next frame (the exporter splits a large write into several) starts here
            pos -= len(frame.unused_data)
            frame = zstandard.ZstdDecompressor().decompressobj()
            if pos >= len(payload):
                return b"".join(parts)
    raise zstandard.ZstdError(f"frame cut short after {total:,} bytes of content")


def compressed_stream(stream: io.BufferedReader[Any]) -> io.BufferedReader[Any]:
    """The decompressed bytes of a compressed message read in place (one over the record limit)."""
    reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return io.BufferedReader(reader, buffer_size=_READ)
