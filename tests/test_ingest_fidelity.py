"""Every field of the OTLP trace model survives ingest and `kvtrace export`, and the JSON and
protobuf paths store the same rows for the same spans.

The spans are the real opentelemetry-sdk's (TracerProvider + InMemorySpanExporter, span limits
low enough to drop attributes, events and links (the SDK keeps the latest), a remote parent with a tracestate), encoded by
the SDK's own `encode_spans` to protobuf and by opentelemetry-proto's json_format to OTLP JSON;
what the SDK cannot produce (bytes values, a link's tracestate, dropped resource and scope
attribute counts) is set on its protobuf message before encoding.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from click.testing import CliRunner
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from kvtrace.app.cli import main
from kvtrace.ingest import jsonfast, protofast
from kvtrace.ingest.decode import Position, StagedRows, add_json_traces, add_proto_resource_spans
from kvtrace.ingest.pipeline import ingest_paths

T0 = 1_764_000_000_000_000_000
RESOURCE_URL = "https://opentelemetry.io/schemas/1.26.0"
SCOPE_URL = "https://opentelemetry.io/schemas/1.24.0"
BLOB = b"\x00\x01\xfe\xff kv"
# Store columns compared between paths (file_id and quarantined_at differ by construction).
TABLES = {
    "spans": "* EXCLUDE (file_id)",
    "span_events": "*",
    "span_links": "*",
    "resources": "*",
    "quarantine": "* EXCLUDE (source, quarantined_at, line, byte_offset, raw)",
}


def sdk_request(typed_values: bool) -> ExportTraceServiceRequest:
    """Two spans through the real SDK with every field of the model set; `typed_values` adds the
    values JSON has no plain form for (NaN, infinities, bytes, a kvlist that reads as one)."""
    exporter = InMemorySpanExporter()
    limits = SpanLimits(
        max_span_attributes=8, max_events=2, max_links=2, max_event_attributes=1, max_link_attributes=1
    )
    provider = TracerProvider(
        resource=Resource(
            {"service.name": "svc", "host.name": "h1", "service.instance.id": "i-1"}, schema_url=RESOURCE_URL
        ),
        span_limits=limits,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(
        "kvtrace.test", "1.2.3", schema_url=SCOPE_URL, attributes={"scope.k": "v", "scope.n": 3}
    )
    remote = SpanContext(
        0x5B8EFFF798038103D269B633813FC60C,
        0xEEE19B7EC3C1B173,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "abc"), ("k", "v")]),
    )
    linked = SpanContext(
        0x1F2E3D4C5B6A79881F2E3D4C5B6A7988, 0x0102030405060708, is_remote=True, trace_flags=TraceFlags(1)
    )
    attrs: dict[str, Any] = {
        "gone.1": 1,
        "gone.2": 2,
        "rid": "r-1",
        "i": -7,
        "d": 2.5,
        "b": True,
        "s": 'quote " é',
        "ints": [1, 2, 3],
        "strs": ["a", "b"],
        "ds": [0.5, 1e300],
    }
    if typed_values:
        attrs.update(
            {"gone.1": math.nan, "gone.2": math.inf, "nan": math.nan, "inf": math.inf, "ninf": -math.inf}
        )
        attrs = {k: attrs[k] for k in ("gone.1", "gone.2", "rid", "i", "s", "nan", "inf", "ninf", "ds", "b")}
    span = tracer.start_span(
        "op",
        context=trace.set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        start_time=T0,
        attributes=attrs,
        links=[Link(linked, {"dropped.link": 1}), Link(linked, {"l.gone": 2, "l": "x"}), Link(linked)],
    )
    span.add_event("dropped", {"x": 1}, timestamp=T0 + 1)
    span.add_event("e1", {"x.gone": 2, "x": 1}, timestamp=T0 + 2)
    span.add_event("e2", timestamp=T0 + 3)
    span.set_status(Status(StatusCode.ERROR, "boom"))
    child = tracer.start_span(
        "child",
        context=trace.set_span_in_context(span),
        kind=SpanKind.CLIENT,
        start_time=T0 + 5,
        attributes={"rid": 42},
    )
    child.end(end_time=T0 + 6)
    span.end(end_time=T0 + 10)
    request: ExportTraceServiceRequest = encode_spans(exporter.get_finished_spans())
    rs = request.resource_spans[0]
    rs.resource.dropped_attributes_count = 2
    rs.scope_spans[0].scope.dropped_attributes_count = 4
    root = next(s for s in rs.scope_spans[0].spans if s.name == "op")
    root.links[0].trace_state = "lk=1"
    if typed_values:
        kv = root.attributes.add(key="blob")
        kv.value.bytes_value = BLOB
        kv = root.attributes.add(key="looks.typed")
        kv.value.kvlist_value.values.add(key="bytesValue").value.string_value = "not bytes"
    return request


def otlp_json(request: ExportTraceServiceRequest | trace_pb2.TracesData, ids: str) -> dict[str, Any]:
    """json_format's proto3 JSON of `request`, with hex ids (OTLP/JSON) or its own base64."""
    doc: dict[str, Any] = json_format.MessageToDict(request)
    if ids == "hex":
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    for holder in [sp, *sp.get("links", [])]:
                        for key in ("traceId", "spanId", "parentSpanId"):
                            if key in holder:
                                holder[key] = base64.b64decode(holder[key]).hex()
    return doc


def encodings(request: ExportTraceServiceRequest) -> dict[str, bytes]:
    """The request as each file kind a producer writes: protobuf, OTLP/JSON (a pretty document,
    one line) and proto3 JSON with base64 ids."""
    return {
        "traces.pb": request.SerializeToString(),
        "traces.json": orjson.dumps(otlp_json(request, "hex"), option=orjson.OPT_INDENT_2),
        "traces.jsonl": orjson.dumps(otlp_json(request, "hex")) + b"\n",
        "traces_b64.json": json_format.MessageToJson(request).encode(),
    }


def stored(tmp_path: Path, name: str, data: bytes, columnar: bool = True) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the raw tables after ingesting `data` as file `name` into a fresh store."""
    folder = tmp_path / f"{name}-{columnar}"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    ingest_paths([folder / name], folder / "s.duckdb", progress=False, columnar=columnar)
    return table_rows(folder / "s.duckdb")


def table_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            t: sorted(con.execute(f"SELECT {cols} FROM {t}").fetchall(), key=repr)
            for t, cols in TABLES.items()
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def typed_request() -> ExportTraceServiceRequest:
    return sdk_request(typed_values=True)


@pytest.fixture(scope="module")
def plain_request() -> ExportTraceServiceRequest:
    return sdk_request(typed_values=False)


def test_json_and_protobuf_store_identical_rows(
    tmp_path: Path, typed_request: ExportTraceServiceRequest, plain_request: ExportTraceServiceRequest
) -> None:
    """The same SDK spans (with and without typed values) as protobuf, OTLP/JSON (document and
    line) and proto3 JSON with base64 ids, through the fast paths and through the validating
    decoder alone: identical store rows."""
    request = ExportTraceServiceRequest()
    request.resource_spans.extend([*typed_request.resource_spans, *plain_request.resource_spans])
    files = encodings(request)
    reference = stored(tmp_path / "ref", "traces.pb", files["traces.pb"], columnar=False)
    assert len(reference["spans"]) == 4 and not reference["quarantine"]
    for name, data in files.items():
        assert stored(tmp_path, name, data) == reference, name
    assert stored(tmp_path, "traces.json", files["traces.json"], columnar=False) == reference


def test_plain_spans_take_every_fast_path(plain_request: ExportTraceServiceRequest) -> None:
    """The comparison above covers the fast decoders: the C ones (protobuf, JSON lines) take the
    SDK's spans with every field set (only typed values leave them), and give the validating
    decoder's staging tables."""
    files = encodings(plain_request)
    line = files["traces.jsonl"]
    batch = StagedRows()
    add_json_traces(batch, orjson.loads(line), Position(1, 0), line)
    want = [t.to_pylist() for t in batch.tables()[:3]]
    for name, tables in {
        "C protobuf": protofast.decode_traces(files["traces.pb"]),
        "C JSON lines": jsonfast.decode_json_chunk(line),
    }.items():
        assert tables is not None, f"{name} declined"
        assert [t.to_pylist() for t in tables] == want, name


def test_every_field_keeps_its_value(tmp_path: Path, typed_request: ExportTraceServiceRequest) -> None:
    """Each field the SDK set (or the message carries) is stored with its original value."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "t.pb").write_bytes(typed_request.SerializeToString())
    ingest_paths([folder], tmp_path / "s.duckdb", progress=False)
    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    try:
        assert_fields(con, typed_request)
    finally:
        con.close()


def assert_fields(con: duckdb.DuckDBPyConnection, request: ExportTraceServiceRequest) -> None:
    rs = request.resource_spans[0]
    root = next(s for s in rs.scope_spans[0].spans if s.name == "op")
    span = con.execute(
        "SELECT trace_state, flags, dropped_attributes_count, dropped_events_count, dropped_links_count, "
        "scope_name, scope_version, scope_attributes::VARCHAR, scope_dropped_attributes_count, scope_schema_url, "
        "resource_dropped_attributes_count, resource_schema_url, kind, status_code, status_message, "
        "parent_span_id, attributes::VARCHAR FROM spans WHERE name = 'op'"
    ).fetchone()
    assert span is not None
    assert span[:16] == (
        "vendor=abc,k=v",
        root.flags,
        2,
        1,
        1,
        "kvtrace.test",
        "1.2.3",
        '{"scope.k":"v","scope.n":3}',
        4,
        SCOPE_URL,
        2,
        RESOURCE_URL,
        2,
        2,
        "boom",
        "eee19b7ec3c1b173",
    )
    assert root.flags != 0
    attributes = orjson.loads(span[16])
    assert attributes["nan"] == {"doubleValue": "NaN"}
    assert attributes["inf"] == {"doubleValue": "Infinity"}
    assert attributes["ninf"] == {"doubleValue": "-Infinity"}
    assert attributes["blob"] == {"bytesValue": base64.b64encode(BLOB).decode()}
    assert attributes["looks.typed"] == {"kvlistValue": {"bytesValue": "not bytes"}}
    assert attributes["ds"] == [0.5, 1e300] and attributes["i"] == -7 and attributes["rid"] == "r-1"
    assert "gone.1" not in attributes
    events = con.execute(
        "SELECT name, time_ns, attributes::VARCHAR, dropped_attributes_count FROM span_events ORDER BY seq"
    ).fetchall()
    assert events == [("e1", T0 + 2, '{"x":1}', 1), ("e2", T0 + 3, "{}", 0)]
    links = con.execute(
        "SELECT linked_trace_id, linked_span_id, trace_state, flags, dropped_attributes_count, attributes::VARCHAR "
        "FROM span_links ORDER BY seq"
    ).fetchall()
    assert links == [
        ("1f2e3d4c5b6a79881f2e3d4c5b6a7988", "0102030405060708", "lk=1", root.links[0].flags, 1, '{"l":"x"}'),
        ("1f2e3d4c5b6a79881f2e3d4c5b6a7988", "0102030405060708", None, root.links[1].flags, 0, "{}"),
    ]
    resource = con.execute("SELECT service_name, host_name, instance_id FROM resources").fetchall()
    assert resource == [("svc", "h1", "i-1")]


def test_export_carries_every_field(tmp_path: Path, typed_request: ExportTraceServiceRequest) -> None:
    """ingest -> store -> `kvtrace export` -> Parquet: the new columns are there, with the
    stored values."""
    (tmp_path / "t.jsonl").write_bytes(encodings(typed_request)["traces.jsonl"])
    db, out = tmp_path / "s.duckdb", tmp_path / "lake"
    ingest_paths([tmp_path / "t.jsonl"], db, progress=False)
    result = CliRunner().invoke(main, ["export", "--db", str(db), "--parquet", str(out)])
    assert result.exit_code == 0, result.output
    con = duckdb.connect()
    try:
        for table, columns in {
            "spans": "trace_id, span_id, trace_state, flags, dropped_attributes_count, dropped_events_count, "
            "dropped_links_count, scope_attributes::VARCHAR, scope_dropped_attributes_count, "
            "scope_schema_url, resource_dropped_attributes_count, resource_schema_url, kind, "
            "attributes::VARCHAR",
            "span_events": "trace_id, span_id, seq, dropped_attributes_count",
            "span_links": "trace_id, span_id, seq, trace_state, flags, dropped_attributes_count",
        }.items():
            files = [
                str(p) for p in out.rglob("*.parquet") if table in p.relative_to(out).parts[0].split(".")
            ]
            assert files, f"no Parquet for {table} in {sorted(p.name for p in out.iterdir())}"
            exported = sorted(
                con.execute(f"SELECT {columns} FROM read_parquet({files!r}, union_by_name=true)").fetchall()
            )
            con.execute(f"ATTACH '{db}' AS store (READ_ONLY)")
            original = sorted(con.execute(f"SELECT {columns} FROM store.{table}").fetchall())
            con.execute("DETACH store")
            assert exported == original and exported, table
    finally:
        con.close()


def test_a_store_from_before_these_columns_opens_and_keeps_them(
    tmp_path: Path, plain_request: ExportTraceServiceRequest
) -> None:
    """A store written before the new columns (kind and status code as TINYINT, no trace_state,
    flags, ...) opens, is widened, and stores every field of new spans, kind 200 included."""
    db = tmp_path / "old.duckdb"
    ingest_paths([], db, progress=False)
    con = duckdb.connect(str(db))
    for table, columns in {
        "spans": [
            "trace_state",
            "flags",
            "dropped_attributes_count",
            "dropped_events_count",
            "dropped_links_count",
            "scope_attributes",
            "scope_dropped_attributes_count",
            "scope_schema_url",
            "resource_dropped_attributes_count",
            "resource_schema_url",
        ],
        "span_events": ["dropped_attributes_count"],
        "span_links": ["trace_state", "flags", "dropped_attributes_count"],
    }.items():
        for column in columns:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    for table, column in (("spans", "kind"), ("spans", "status_code"), ("kv_events", "status_code")):
        con.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET DATA TYPE TINYINT")
    con.close()
    request = ExportTraceServiceRequest()
    request.CopyFrom(plain_request)
    request.resource_spans[0].scope_spans[0].spans[0].kind = 200  # type: ignore[assignment]
    (tmp_path / "t.pb").write_bytes(request.SerializeToString())
    ingest_paths([tmp_path / "t.pb"], db, progress=False)
    con = duckdb.connect(str(db), read_only=True)
    try:
        kinds = {r[0] for r in con.execute("SELECT kind FROM spans").fetchall()}
        assert 200 in kinds
        assert_fields_plain = con.execute(
            "SELECT trace_state, resource_schema_url, scope_schema_url FROM spans WHERE name = 'op'"
        ).fetchone()
        assert assert_fields_plain == ("vendor=abc,k=v", RESOURCE_URL, SCOPE_URL)
    finally:
        con.close()


# ---------------------------------------------------------------- every path, random field values

UINT32 = st.integers(0, 2**32 - 1)
TEXT = st.text(max_size=6)


def values(plain: bool) -> st.SearchStrategy[common_pb2.AnyValue]:
    """Random AnyValues; `plain` ones (what the C decoders take) hold no NaN or infinity and no
    kvlist key that would need decode.typed_kvlist's wrapper, nor an empty one."""
    scalars = [
        TEXT.map(lambda s: common_pb2.AnyValue(string_value=s)),
        st.integers(-(2**63), 2**63 - 1).map(lambda i: common_pb2.AnyValue(int_value=i)),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda d: common_pb2.AnyValue(double_value=d)),
        st.booleans().map(lambda b: common_pb2.AnyValue(bool_value=b)),
        st.binary(max_size=6).map(lambda b: common_pb2.AnyValue(bytes_value=b)),
        st.just(common_pb2.AnyValue()),
    ]
    keys = ["k", "m"]
    if not plain:  # an empty key is left out of OTLP/JSON, a keyless KeyValue the C parser declines
        keys.append("")
        scalars.append(
            st.sampled_from([math.nan, math.inf, -math.inf]).map(
                lambda d: common_pb2.AnyValue(double_value=d)
            )
        )
        keys += ["bytesValue", "doubleValue", "kvlistValue"]
    return st.recursive(
        st.one_of(scalars),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(
                lambda vs: common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=vs))
            ),
            st.lists(st.tuples(st.sampled_from(keys), inner), max_size=3, unique_by=lambda kv: kv[0]).map(
                lambda kvs: common_pb2.AnyValue(
                    kvlist_value=common_pb2.KeyValueList(
                        values=[common_pb2.KeyValue(key=k, value=v) for k, v in kvs]
                    )
                )
            ),
        ),
        max_leaves=6,
    )


def attributes(plain: bool) -> st.SearchStrategy[list[common_pb2.KeyValue]]:
    """Random attribute lists with distinct keys (a repeated key, which the C decoders decline,
    is test_ingest_protofast's); a plain list's `rid` is a string (as the C decoders want it)."""
    rid = TEXT.map(lambda s: common_pb2.AnyValue(string_value=s)) if plain else values(False)
    pair = st.one_of(
        st.tuples(st.sampled_from(["a", "b", "x.y"]), values(plain)), st.tuples(st.just("rid"), rid)
    )
    return st.lists(pair, max_size=4, unique_by=lambda kv: kv[0]).map(
        lambda kvs: [common_pb2.KeyValue(key=k, value=v) for k, v in kvs]
    )


NONZERO_ID = st.binary(min_size=8, max_size=8).filter(any)
ID_OR_NOT = st.one_of(st.just(b""), st.just(bytes(8)), NONZERO_ID)
TIME = st.one_of(st.just(0), st.integers(1, 2**63 - 1))


@st.composite
def random_span(draw: st.DrawFn, plain: bool) -> trace_pb2.Span:
    attrs = attributes(plain)
    span = trace_pb2.Span(
        trace_id=draw(st.binary(min_size=16, max_size=16).filter(any)),
        span_id=draw(NONZERO_ID),
        parent_span_id=draw(ID_OR_NOT),
        name=draw(TEXT),
        kind=draw(st.integers(-(2**31), 2**31 - 1)),
        start_time_unix_nano=draw(TIME),
        end_time_unix_nano=draw(TIME),
        trace_state=draw(TEXT),
        flags=draw(UINT32),
        dropped_attributes_count=draw(UINT32),
        dropped_events_count=draw(UINT32),
        dropped_links_count=draw(UINT32),
        status=trace_pb2.Status(code=draw(st.integers(-(2**31), 2**31 - 1)), message=draw(TEXT)),
    )
    span.attributes.extend(draw(attrs))
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(
            time_unix_nano=draw(TIME), name=draw(TEXT), dropped_attributes_count=draw(UINT32)
        )
        event.attributes.extend(draw(attrs))
    for _ in range(draw(st.integers(0, 2))):
        link = span.links.add(
            trace_id=draw(st.one_of(st.just(b""), st.binary(min_size=16, max_size=16))),
            span_id=draw(st.one_of(st.just(b""), NONZERO_ID) if plain else ID_OR_NOT),
            trace_state=draw(TEXT),
            flags=draw(UINT32),
            dropped_attributes_count=draw(UINT32),
        )
        link.attributes.extend(draw(attrs))
    return span


@st.composite
def random_request(draw: st.DrawFn) -> trace_pb2.TracesData:
    request = trace_pb2.TracesData()
    plain = draw(st.booleans())
    attrs = attributes(plain)
    for _ in range(draw(st.integers(1, 2))):
        rs = request.resource_spans.add(schema_url=draw(TEXT))
        rs.resource.attributes.extend(draw(attrs))
        rs.resource.dropped_attributes_count = draw(UINT32)
        ss = rs.scope_spans.add(schema_url=draw(TEXT))
        ss.scope.name, ss.scope.version = draw(TEXT), draw(TEXT)
        ss.scope.attributes.extend(draw(attrs))
        ss.scope.dropped_attributes_count = draw(UINT32)
        ss.spans.extend(draw(st.lists(random_span(plain), min_size=1, max_size=3)))
    return request


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_request())
def test_every_path_stages_the_same_rows_for_any_field_values(request: trace_pb2.TracesData) -> None:
    """Random values in every field (any int32 kind and code, uint32 flags and counts, zero and
    absent parent and link ids, times of 0, bytes, NaN, kvlists that read as typed values): the
    validating decoder from protobuf and from OTLP/JSON, and the C decoders where they take the
    input, stage the same spans, events and links; nothing is quarantined."""
    pb = request.SerializeToString()
    line = orjson.dumps(otlp_json(request, "hex")) + b"\n"
    from_json = StagedRows()
    add_json_traces(from_json, orjson.loads(line), Position(1, 0), line)
    from_proto = StagedRows()
    for rs in request.resource_spans:
        add_proto_resource_spans(from_proto, rs, Position(None, 0))
    want = [t.to_pylist() for t in from_proto.tables()[:3]]
    assert from_proto.n_quarantined == 0 and from_json.n_quarantined == 0, from_json.quarantine["reason"]
    assert [t.to_pylist() for t in from_json.tables()[:3]] == want
    for tables in (protofast.decode_traces(pb), jsonfast.decode_json_chunk(line)):
        if tables is not None:
            assert [t.to_pylist() for t in tables] == want
