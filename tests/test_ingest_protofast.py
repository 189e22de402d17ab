"""The C fast path for OTLP protobuf (ingest/protofast.py over ingest/_otlpfast.c) stores exactly
what the validating decoder (upb + decode.add_proto_resource_spans) stores: identical staging
tables message by message, identical store tables file by file and payload by payload; it
declines (None) whatever it cannot reproduce, and no byte string crashes it."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_otlp_builders import delimited_protobuf, pd_request_spans, to_request
from ingest_support import assert_fast_and_validating_paths_agree
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from kvtrace.ingest import protofast
from kvtrace.ingest.decode import Position, StagedRows, add_proto_resource_spans
from kvtrace.ingest.errors import PayloadError
from kvtrace.ingest.pipeline import ingest_payload
from kvtrace.ingest.store import open_store

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")


def validating(data: bytes) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    batch = StagedRows()
    for rs in ExportTraceServiceRequest.FromString(data).resource_spans:
        add_proto_resource_spans(batch, rs, Position(None, 0))
    return batch.tables()


def assert_same_staging(data: bytes) -> None:
    fast = protofast.decode_traces(data)
    assert fast is not None, "the fast path declined a message it should take"
    spans, events, links, quarantine = validating(data)
    assert quarantine.num_rows == 0
    assert fast[0].to_pylist() == spans.to_pylist()
    assert fast[1].to_pylist() == events.to_pylist()
    assert fast[2].to_pylist() == links.to_pylist()
    assert (fast[0].schema, fast[1].schema, fast[2].schema) == (spans.schema, events.schema, links.schema)


def any_value(v: object) -> common_pb2.AnyValue:
    out = common_pb2.AnyValue()
    if v is None:
        return out
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, bytes):
        out.bytes_value = v
    elif isinstance(v, list):
        out.array_value.values.extend(any_value(e) for e in v)
    elif isinstance(v, dict):
        out.kvlist_value.values.extend(kvs(v))
    return out


def kvs(attrs: dict[str, object]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def message(*spans: trace_pb2.Span, resource: dict[str, object] | None = None, scope: str | None = "lib") -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    if resource is not None:
        rs.resource.attributes.extend(kvs(resource))
    ss = rs.scope_spans.add()
    if scope is not None:
        ss.scope.name = scope
        ss.scope.version = "1.0"
    ss.spans.extend(spans)
    return req.SerializeToString()


def span(span_id: int, attrs: dict[str, object] | None = None, **fields: Any) -> trace_pb2.Span:
    base: dict[str, Any] = {"name": "s", "kind": 1, "start_time_unix_nano": 1, "end_time_unix_nano": 2}
    s = trace_pb2.Span(trace_id=TRACE, span_id=span_id.to_bytes(8, "big"), **{**base, **fields})
    s.attributes.extend(kvs(attrs or {}))
    return s


def test_the_extension_is_built() -> None:
    """Installed with the package (gcc and the Python headers are on every machine here); a
    silent fall-back to the validating decoder would cost 10x in protobuf ingest."""
    assert protofast.available()


def test_sdk_requests_take_the_fast_path() -> None:
    assert_same_staging(to_request(pd_request_spans()).SerializeToString())
    assert_same_staging(to_request(pd_request_spans(trace_bits=64)).SerializeToString())


def test_every_value_type_and_field_shape() -> None:
    """Escapes and unicode, every AnyValue type incl. bytes, kvlists and nested arrays, doubles
    of every magnitude (orjson's text), NaN/inf (null), empty values, 64-bit trace ids, events
    with and without time and name, links, status, parent, kinds, int and string rids."""
    doubles = [0.25, 1.0, -0.0, 1e-5, 1.5e-5, 1e-6, 1e-7, 2.5e-9, 1e-10, 123456.789, 1e15, 1e16, 1.5e17,
               1e300, 5e-324, 2.5e-3, 1 / 3, 42.0, -1e22, math.nan, math.inf, -math.inf]
    attrs: dict[str, object] = {
        "rid": 42,
        "s": 'quote " backslash \\ newline \n tab \t bell \x07 nul \x00 del \x7f / é 漢 😀 \u2028',
        "": "empty key",
        'key "quoted"\n': False,
        "t": True,
        "neg": -(2**63),
        "max": 2**63 - 1,
        "ints": list(range(40)),
        "mixed": [1, "two", True, 2.5, None, b"\x00\xff", [1, [2, []]], {"a": 1}],
        "empty.array": [],
        "empty.kvlist": {},
        "kv": {"x": {"y": [1.5, "z"]}, "b": b"ab"},
        "empty": None,
        "bytes": b"\x00\x01\x02\xfe\xff",
        "bytes2": b"ab",
        **{f"d{i}": d for i, d in enumerate(doubles)},
        "ds": doubles,
    }
    s1 = span(0xAAE19B7EC3C1B175, attrs, parent_span_id=bytes.fromhex("eee19b7ec3c1b173"), trace_state="a=b",
              flags=256, dropped_attributes_count=3,
              status=trace_pb2.Status(code=2, message="boom"))
    s1.events.add(time_unix_nano=5, name="ev").attributes.extend(kvs({"e": 1}))
    s1.events.add(name="no time")
    s1.events.add()
    s1.links.add(trace_id=bytes.fromhex("d269b633813fc60c"), span_id=bytes.fromhex("eee19b7ec3c1b173"),
                 trace_state="x").attributes.extend(kvs({"l": "x"}))
    s1.links.add(trace_id=TRACE, span_id=bytes.fromhex("00000000000000a1"), flags=1)
    s2 = trace_pb2.Span(trace_id=bytes.fromhex("d269b633813fc60c"), span_id=bytes.fromhex("aae19b7ec3c1b176"))
    s3 = span(0xAAE19B7EC3C1B177, {"rid": "r-1"}, kind=-5, status=trace_pb2.Status(message=""))
    s4 = span(0xAAE19B7EC3C1B178, {"rid": None}, kind=127, start_time_unix_nano=2**63 - 1)
    data = message(s1, s2, resource={"service.name": "svc", "host.name": "h", "service.version": 3,
                                     "sglang.role": "decode", "z": [1, 2], "a": {"k": "v"}})
    data += message(s3, scope=None) + message(s4, resource={})
    data += message()  # a ResourceSpans with an empty ScopeSpans
    assert_same_staging(data)
    assert_same_staging(b"")


def test_unknown_fields_are_skipped_as_upb_skips_them() -> None:
    extra = b"\xa2\x06\x03abc" + b"\xf8\x07\x05" + b"\x99\x08" + bytes(8) + b"\xa5\x09" + bytes(4)
    data = message(span(1, {"k": "v"}))
    assert_same_staging(data + extra)  # after the resource_spans of the request
    s = span(2, {"k": "v"})
    assert_same_staging(message(trace_pb2.Span.FromString(s.SerializeToString() + extra)))


def _raw_span(extra: bytes) -> trace_pb2.Span:
    return trace_pb2.Span.FromString(span(1).SerializeToString() + extra)


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + protofast.frame_resource_spans([payload])[1:]


def raw_message(span_bytes: bytes) -> bytes:
    """A request around span bytes as given (which the protobuf runtime would re-encode)."""
    scope_spans = _len_field(0x12, span_bytes)
    return _len_field(0x0A, _len_field(0x12, scope_spans))


def _dup_key() -> bytes:
    s = span(1)
    s.attributes.extend(kvs({"k": 1}))
    s.attributes.extend(kvs({"k": 2}))
    return message(s)


def _two_values() -> bytes:
    """A KeyValue whose `value` comes twice (the runtime merges them; the fast path declines)."""
    kv = b"\x0a\x01k" + b"\x12\x02\x18\x01" + b"\x12\x03\x0a\x01x"
    return raw_message(span(1).SerializeToString() + _len_field(0x4A, kv))


DECLINES = {
    "duplicate-key": _dup_key(),
    "rid-bool": message(span(1, {"rid": True})),
    "rid-double": message(span(1, {"rid": 1.5})),
    "rid-array": message(span(1, {"rid": ["a"]})),
    "strindex": message(_raw_span(b"\x4a\x07\x0a\x01k\x12\x02\x40\x01")),  # KeyValue{k: {strindex: 1}}
    "zero-trace-id": message(trace_pb2.Span(trace_id=bytes(16), span_id=b"\x01" * 8)),
    "short-trace-id": message(trace_pb2.Span(trace_id=b"\x01" * 4, span_id=b"\x01" * 8)),
    "missing-trace-id": message(trace_pb2.Span(span_id=b"\x01" * 8)),
    "zero-span-id": message(trace_pb2.Span(trace_id=TRACE, span_id=bytes(8))),
    "missing-span-id": message(trace_pb2.Span(trace_id=TRACE)),
    "start-over-int64": message(span(1, start_time_unix_nano=2**63)),
    "event-time-over-int64": message(span(1, events=[trace_pb2.Span.Event(time_unix_nano=2**64 - 1)])),
    "truncated": message(span(1, {"k": "v"}))[:-3],
    "invalid-utf8-name": message(span(1)).replace(b"\x2a\x01s", b"\x2a\x01\xff"),
    "two-values": _two_values(),
    "status-twice": raw_message(span(1).SerializeToString() + b"\x7a\x00\x7a\x00"),
    "group-wire-type": raw_message(span(1).SerializeToString() + b"\xfb\x07\xfc\x07"),
}


@pytest.mark.parametrize("name", sorted(DECLINES))
def test_fast_path_declines_what_it_cannot_reproduce(name: str) -> None:
    assert protofast.decode_traces(DECLINES[name]) is None


def test_declined_payloads_still_store_what_the_validating_decoder_stores(tmp_path: Path) -> None:
    """A payload the fast path declines goes through the validating decoder: a bad span is
    rejected with its reason while the rest is stored; an undecodable payload raises PayloadError."""
    con = open_store(tmp_path / "s.duckdb")
    try:
        data = message(span(1, {"k": "v"}), trace_pb2.Span(trace_id=bytes(16), span_id=b"\x01" * 8))
        result = ingest_payload(con, data, "protobuf", "test")
        assert (result.accepted, result.new_spans, result.rejected) == (1, 1, 1)
        assert result.reasons == ["span: trace id is all zeros"]
        with pytest.raises(PayloadError):
            ingest_payload(con, DECLINES["truncated"], "protobuf", "test")
    finally:
        con.close()


FINITE = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(st.one_of(FINITE, st.integers(-(2**60), 2**60).map(float),
                 st.builds(lambda m, e: m * 10.0**e, st.floats(1, 10), st.integers(-12, 20))))
def test_doubles_are_written_as_orjson_writes_them(x: float) -> None:
    assert protofast.json_double(x) == orjson.dumps(x).decode()


def test_random_double_bit_patterns_are_written_as_orjson_writes_them() -> None:
    import random

    rng = random.Random(7)
    patterns = [rng.randbytes(8) for _ in range(20000)]
    patterns += [struct.pack("<Q", rng.randrange(1, 2**52)) for _ in range(2000)]  # subnormals
    patterns += [struct.pack("<d", 2.0**k) for k in range(-1074, 1024)]  # uneven rounding gaps
    for pattern in patterns:
        (x,) = struct.unpack("<d", pattern)
        expected = "null" if not math.isfinite(x) else orjson.dumps(x).decode()
        assert protofast.json_double(x) == expected, repr(x)


SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=12),
    st.binary(max_size=8),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "rid"), VALUE, max_size=6),
                min_size=1, max_size=5))
def test_random_attribute_values_give_identical_staging(attribute_sets: list[dict[str, object]]) -> None:
    assert_same_staging(message(*[span(i + 1, attrs) for i, attrs in enumerate(attribute_sets)]))


_SDK_REQUEST = to_request(pd_request_spans()).SerializeToString()  # built once, corrupted per example


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_bytes_never_crash_and_never_differ(data: st.DataObject) -> None:
    """Flip, insert, delete and truncate bytes of a real SDK request: the fast path either
    declines or gives exactly what the validating decoder gives for the same bytes."""
    buf = bytearray(_SDK_REQUEST)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del buf[i : i + data.draw(st.integers(1, 4))]
        else:
            del buf[i:]
        if not buf:
            return
    raw = bytes(buf)
    fast = protofast.decode_traces(raw)
    if fast is None:
        return
    try:
        spans, events, links, quarantine = validating(raw)
    except DecodeError:
        pytest.fail("the fast path took bytes that upb rejects")
    assert quarantine.num_rows == 0, "the fast path took a span the validating decoder quarantines"
    assert (fast[0].to_pylist(), fast[1].to_pylist(), fast[2].to_pylist()) == (
        spans.to_pylist(), events.to_pylist(), links.to_pylist())


def test_fast_and_validating_ingest_store_identical_tables(tmp_path: Path) -> None:
    """Whole store tables after ingesting the same protobuf files with and without the fast path,
    including a file with a frame it must decline (a zero trace id: that span is quarantined
    either way) and a corrupt tail (quarantined from there)."""
    good = delimited_protobuf(pd_request_spans(), per_message=2)
    bad_span = message(span(5, {"k": "v"}), trace_pb2.Span(trace_id=bytes(16), span_id=b"\x01" * 8))
    other = delimited_protobuf(pd_request_spans(seed=2, rid="0f0e0d0c0b0a0908"), per_message=3)
    (tmp_path / "a.pb").write_bytes(good)
    (tmp_path / "b.pb").write_bytes(other + bytes([len(bad_span)]) + bad_span + b"\x05\x0a\x03")
    assert_fast_and_validating_paths_agree([tmp_path / "a.pb", tmp_path / "b.pb"], tmp_path, 29, 2)


def test_simulator_protobuf_takes_the_fast_path(tmp_path: Path) -> None:
    """The simulator's protobuf files (real SDK, length-delimited TracesData) decode identically."""
    from kvtrace.ingest.pipeline import _staged_proto
    from kvtrace.ingest.sources import iter_proto_records, open_decompressed, sniff_format
    from kvtrace.simulator.runner import simulate

    simulate("pr35049", 0, tmp_path, fmt="protobuf")
    files = sorted(tmp_path.glob("*.otlp.pb"))
    assert files
    for f in files:
        stream, _ = open_decompressed(f)
        with stream:
            assert sniff_format(stream) == "protobuf"
            records = list(iter_proto_records(stream))
        assert_same_staging(protofast.frame_resource_spans(r.data for r in records))
        staged = list(_staged_proto(records, 10**6, columnar=True))
        assert len(staged) == 1 and staged[0].spans.num_rows > 0
