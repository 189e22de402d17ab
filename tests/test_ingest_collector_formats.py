"""The OpenTelemetry Collector file exporter's outputs, in every mode it has (issue 16).

Each file is built the way the exporter writes it (opentelemetry-collector-contrib,
exporter/fileexporter; ingest/framing.py has the details): real SDK spans, encoded by the SDK's
OTLP encoder into one ExportTraceServiceRequest per batch, then
- `format: json`: one JSON document a line (exportMessageAsLine);
- `format: proto`: each message after its length as a 4-byte big-endian uint32
  (exportMessageAsBuffer);
- `compression: zstd`: each message, JSON or proto, compressed into one zstd frame, then
  length-prefixed (marshaller.go + codec.go zstdCompress; JSON is length-prefixed too);
- the `exporter.file.nativeCompression` gate: the whole file a zstd stream, one frame per write
  when rotating (compression_writer.go writeFrame): JSON lines (the line and its newline are two
  writes) or the length-prefixed messages.
Every file has the same misleading name: the format is told from the bytes.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from ingest_otlp_builders import delimited_protobuf, json_lines, pd_request_spans, to_otlp_json, to_request
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from kvtrace.ingest.pipeline import ingest_paths
from kvtrace.ingest.sources import (
    SNIFF_BYTES,
    collector_framed,
    iter_json_records,
    open_decompressed,
    sniff,
)
from kvtrace.ingest.store import open_store

FOREIGN = Path(__file__).resolve().parents[2] / "shared" / "data" / "otlp-foreign"
NAME = "traces.json"  # for every mode, proto ones included


@pytest.fixture(scope="module")
def messages() -> list[ExportTraceServiceRequest]:
    """Two requests' spans (28) as the Collector batches them: 4 spans a message."""
    spans = pd_request_spans(seed=7) + pd_request_spans(seed=8, rid="0badc0ffee123456")
    return [to_request(spans[i : i + 4]) for i in range(0, len(spans), 4)]


@pytest.fixture(scope="module")
def expected_ids(messages: list[ExportTraceServiceRequest]) -> set[tuple[str, str]]:
    return {
        (s.trace_id.hex(), s.span_id.hex())
        for m in messages
        for rs in m.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    }


def _prefixed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload  # binary.BigEndian.PutUint32, then the bytes


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)  # one whole frame (EncodeAll)


def _json(m: ExportTraceServiceRequest) -> bytes:
    return orjson.dumps(to_otlp_json(m))  # the Collector's OTLP JSON: hex ids


def _proto(m: ExportTraceServiceRequest) -> bytes:
    return m.SerializeToString()


Writer = Callable[[list[ExportTraceServiceRequest]], bytes]
MODES: dict[str, tuple[Writer, str, str]] = {  # mode -> (writer, ledger format, compression)
    "json": (lambda ms: b"".join(_json(m) + b"\n" for m in ms), "otlp-json", "none"),
    "proto": (lambda ms: b"".join(_prefixed(_proto(m)) for m in ms), "otlp-proto", "none"),
    "proto+zstd": (lambda ms: b"".join(_prefixed(_zstd(_proto(m))) for m in ms), "otlp-proto", "none"),
    "json+zstd": (lambda ms: b"".join(_prefixed(_zstd(_json(m))) for m in ms), "otlp-proto", "none"),
    "json+zstd native": (
        lambda ms: b"".join(_zstd(_json(m)) + _zstd(b"\n") for m in ms),
        "otlp-json",
        "zstd",
    ),
    "proto+zstd native": (lambda ms: b"".join(_zstd(_prefixed(_proto(m))) for m in ms), "otlp-proto", "zstd"),
}


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = open_store(db, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _stored(db: Path) -> set[tuple[str, str]]:
    return set(query(db, "SELECT trace_id, span_id FROM spans"))


# --------------------------------------------------------------------------------- every mode


# every mode read whole (a small file, decoded with others) and, for the length-prefixed ones
# (the JSON lines modes stream through the JSON lines reader as always), streamed
EVERY_MODE = [pytest.param(mode, 50_000, id=f"{mode}-read-whole") for mode in MODES] + [
    pytest.param(mode, 4, id=f"{mode}-streamed") for mode in MODES if MODES[mode][1] == "otlp-proto"
]


@pytest.mark.parametrize(("mode", "batch_spans"), EVERY_MODE)
def test_every_file_exporter_mode_stores_every_span_once(
    tmp_path: Path,
    messages: list[ExportTraceServiceRequest],
    expected_ids: set[tuple[str, str]],
    mode: str,
    batch_spans: int,
) -> None:
    """Every span of every mode is stored with its ids, nothing quarantined, the ledger says what
    was read; a re-run skips the file and adds nothing. (A small file is read whole and decoded
    with others; batch_spans=4 makes it a streamed one: 4 KiB chunks.)"""
    write, fmt, compression = MODES[mode]
    f = tmp_path / NAME
    f.write_bytes(write(messages))
    db = tmp_path / "s.duckdb"
    summary = ingest_paths([f], db, progress=False, batch_spans=batch_spans)
    assert (summary.spans_new, summary.quarantined) == (len(expected_ids), 0)
    assert _stored(db) == expected_ids
    assert query(db, "SELECT format, compression, spans_read, quarantined FROM ingested_files") == [
        (fmt, compression, len(expected_ids), 0)
    ]
    again = ingest_paths([f], db, progress=False, batch_spans=batch_spans)
    assert (again.files_skipped, again.spans_new) == (1, 0)
    assert query(db, "SELECT count(*) FROM spans") == [(len(expected_ids),)]


# ------------------------------------------------------------------------- cut short, corrupt


@pytest.mark.parametrize("cut", ["inside-message", "inside-prefix"])
@pytest.mark.parametrize("mode", ["proto", "proto+zstd", "json+zstd"])
def test_a_file_cut_inside_its_last_message_keeps_the_messages_before(
    tmp_path: Path,
    messages: list[ExportTraceServiceRequest],
    mode: str,
    cut: str,
) -> None:
    """A crash (or a file still being written) leaves a last message cut short: every span of
    the messages before it is stored, the tail is one quarantine row at its offset, and a
    re-run adds nothing."""
    write = MODES[mode][0]
    head = write(messages[:-1])
    last = write(messages[-1:])
    data = head + (last[: len(last) // 2] if cut == "inside-message" else last[:2])
    f = tmp_path / NAME
    f.write_bytes(data)
    db = tmp_path / "s.duckdb"
    summary = ingest_paths([f], db, progress=False)
    kept = {
        (s.trace_id.hex(), s.span_id.hex())
        for m in messages[:-1]
        for rs in m.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    }
    assert (summary.spans_new, summary.quarantined) == (len(kept), 1)
    assert _stored(db) == kept
    ((source, offset, reason, size),) = query(
        db, "SELECT source, byte_offset, reason, raw_bytes FROM quarantine"
    )
    assert source == str(f.resolve()) and offset == len(head)
    assert reason.startswith("message truncated" if cut == "inside-message" else "length prefix truncated")
    assert size == len(data) - len(head)
    again = ingest_paths([f], db, progress=False)
    assert (again.files_skipped, again.spans_new) == (1, 0)


def test_a_corrupt_compressed_message_costs_only_itself(
    tmp_path: Path,
    messages: list[ExportTraceServiceRequest],
) -> None:
    payloads = [_zstd(_proto(m)) for m in messages]
    bad = payloads[2][:4] + bytes(len(payloads[2]) - 4)  # the zstd magic, then zeros
    framed = [_prefixed(p) for p in payloads[:2]] + [_prefixed(bad)] + [_prefixed(p) for p in payloads[3:]]
    f = tmp_path / NAME
    f.write_bytes(b"".join(framed))
    db = tmp_path / "s.duckdb"
    summary = ingest_paths([f], db, progress=False)
    lost = sum(len(ss.spans) for rs in messages[2].resource_spans for ss in rs.scope_spans)
    assert (summary.spans_new, summary.quarantined) == (28 - lost, 1)
    ((offset, reason),) = query(db, "SELECT byte_offset, reason FROM quarantine")
    assert offset == len(framed[0]) + len(framed[1])
    assert reason.startswith(f"zstd-compressed message of {len(bad):,} bytes undecodable")


@pytest.mark.parametrize("mode", ["proto", "proto+zstd", "proto+zstd native"])
def test_messages_over_the_record_limit_are_read_in_place(
    tmp_path: Path,
    messages: list[ExportTraceServiceRequest],
    expected_ids: set[tuple[str, str]],
    mode: str,
) -> None:
    """A message (or its decompressed content) over max_record_bytes is read frame by frame in
    place, never held whole: its ResourceSpans frames, each within the limit, are all stored."""
    limit = 1300  # four messages are larger (1363-1698 bytes), every ResourceSpans frame smaller
    assert sum(len(_proto(m)) > limit for m in messages) == 4
    f = tmp_path / NAME
    f.write_bytes(MODES[mode][0](messages))
    db = tmp_path / "s.duckdb"
    summary = ingest_paths([f], db, progress=False, batch_spans=4, max_record_bytes=limit)
    assert (summary.spans_new, summary.quarantined) == (len(expected_ids), 0)
    assert _stored(db) == expected_ids


# ------------------------------------------------------------ nothing else is read this way


def _window(data: bytes, tmp_path: Path) -> bytes:
    f = tmp_path / "probe"
    f.write_bytes(data)
    stream, _ = open_decompressed(f)
    with stream:
        return stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]


def test_detection_tells_collector_framing_from_every_other_input(
    tmp_path: Path,
    messages: list[ExportTraceServiceRequest],
) -> None:
    """The Collector's framing is taken for its proto and compressed files, and for nothing we
    read before: varint-delimited protobuf (ours, a first message of ten corrupt bytes, zero
    bytes before it), one TracesData message, JSON, JSON lines, each also gzip- and
    zstd-compressed, and every file of the foreign corpus (otlp2parquet's .pb files among them)."""
    spans = pd_request_spans()
    delimited = delimited_protobuf(spans, per_message=3)
    others = {
        "delimited": delimited,
        "single message": to_request(spans).SerializeToString(),
        "json lines": json_lines(spans),
        "json document": orjson.dumps(to_otlp_json(to_request(spans)), option=orjson.OPT_INDENT_2),
        "ten corrupt bytes first": b"\x0a" + bytes(10) + delimited,
        "zeros first": bytes(3) + delimited,
        "one zero first": bytes(1) + delimited,
    }
    if FOREIGN.is_dir():
        others |= {
            p.name: p.read_bytes()
            for p in sorted(FOREIGN.iterdir())
            if p.suffix in (".json", ".jsonl", ".pb")
        }
    for name, data in list(others.items()):
        others[f"{name}.gz"] = gzip.compress(data)
        others[f"{name}.zst"] = _zstd(data)
    taken = [name for name, data in others.items() if collector_framed(_window(data, tmp_path))]
    assert taken == []
    for mode in ("proto", "proto+zstd", "json+zstd", "proto+zstd native"):
        window = _window(MODES[mode][0](messages), tmp_path)
        assert collector_framed(window) and sniff(window).kind == "protobuf", mode


@pytest.mark.skipif(not FOREIGN.is_dir(), reason="../shared/data/otlp-foreign is not here")
def test_the_specs_file_exporter_example_is_still_read_as_json_lines() -> None:
    """The OTLP file exporter spec's example (JSON lines) is read line by line as before."""
    f = FOREIGN / "spec_file_exporter_example_traces.jsonl"
    lines = [line for line in f.read_bytes().splitlines() if line.strip()]
    stream, _ = open_decompressed(f)
    with stream:
        assert sniff(stream.peek(SNIFF_BYTES)).kind == "json"
        records = list(iter_json_records(stream))
    assert [(r.kind, r.data) for r in records] == [("json", line) for line in lines]


# ------------------------------------------------------------------ not OTLP, read again later


def test_a_file_this_version_cannot_frame_is_not_otlp_and_a_rerun_reads_it_again(
    tmp_path: Path,
    messages: list[ExportTraceServiceRequest],
) -> None:
    """A framing this version does not read (here little-endian lengths; a protobuf whose first
    frame length is corrupt) stores nothing and is reported as not OTLP, with the reason. It is
    not recorded as done: a re-run (by then perhaps a version that reads it) reads it again, and
    replaces its quarantine row and ledger row instead of adding to them."""
    little = tmp_path / "little-endian.bin"
    little.write_bytes(b"".join(struct.pack("<I", len(_proto(m))) + _proto(m) for m in messages))
    broken = tmp_path / "broken.pb"
    broken.write_bytes(b"\x0a" + b"\xff" * 11 + _proto(messages[0]))
    db = tmp_path / "s.duckdb"
    for _ in range(2):
        summary = ingest_paths([little, broken], db, progress=False)
        assert (summary.files_skipped, summary.files_ingested, summary.spans_new) == (0, 2, 0)
        notes = {Path(r.path).name: r.note for r in summary.without_spans}
        assert notes["little-endian.bin"].startswith("not OTLP: neither JSON nor OTLP protobuf")
        assert notes["broken.pb"].startswith("not OTLP: no OTLP protobuf frame could be read (frame length")
        assert sorted(
            query(
                db,
                "SELECT regexp_extract(path, '[^/]+$'), format, spans_read, quarantined FROM ingested_files",
            )
        ) == [("broken.pb", "not-otlp", 0, 1), ("little-endian.bin", "not-otlp", 0, 1)]
        assert query(db, "SELECT count(*) FROM quarantine WHERE starts_with(reason, 'not OTLP')") == [(2,)]
    # the bytes are then read as the Collector's: the same path, rewritten, is ingested (and done)
    little.write_bytes(MODES["proto"][0](messages))
    summary = ingest_paths([little], db, progress=False)
    assert (summary.spans_new, summary.quarantined) == (28, 0)
    assert query(
        db, "SELECT format, spans_read FROM ingested_files WHERE ends_with(path, 'little-endian.bin')"
    ) == [("otlp-proto", 28)]
    assert query(db, "SELECT count(*) FROM quarantine WHERE ends_with(source, 'little-endian.bin')") == [(0,)]
    assert ingest_paths([little], db, progress=False).files_skipped == 1
