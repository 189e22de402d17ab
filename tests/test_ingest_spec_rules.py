"""The OTLP spec's rules for receivers, one test each, on the real SDK's output.

Each input starts as spans recorded by opentelemetry-sdk and encoded by its own `encode_spans`
(OTLP/JSON: opentelemetry-proto's json_format, ids in hex), then carries the one quirk a rule is
about. Where the rule is about OTLP/JSON, the same document parsed by json_format (the reference
proto3 JSON parser, ignoring unknown fields) and ingested as protobuf must store the very same
rows: the two paths agree, and agree with the reference.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link

from kvtrace.ingest.pipeline import ingest_paths

T0 = 1_764_000_000_000_000_000
TABLES = {
    "spans": "* EXCLUDE (file_id)",
    "span_events": "*",
    "span_links": "*",
    "resources": "*",
    "quarantine": "span_id, reason",
}
Rows = dict[str, list[tuple[Any, ...]]]


def sdk_request(services: tuple[str, ...] = ("svc",)) -> ExportTraceServiceRequest:
    """A root with two children (one with an event and a link) per service, through the SDK."""
    exporter = InMemorySpanExporter()
    spans = []
    for service in services:
        provider = TracerProvider(resource=Resource({"service.name": service, "host.name": "h"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("lib", "1.0")
        root = tracer.start_span("root", start_time=T0, attributes={"rid": "r-1", "n": 1})
        ctx = trace.set_span_in_context(root)
        a = tracer.start_span(
            "a",
            context=ctx,
            start_time=T0 + 1,
            attributes={"k": "v"},
            links=[Link(root.get_span_context(), {"l": 1})],
        )
        a.add_event("ev", {"e": 2}, timestamp=T0 + 2)
        a.end(end_time=T0 + 3)
        tracer.start_span("b", context=ctx, start_time=T0 + 4).end(end_time=T0 + 5)
        root.end(end_time=T0 + 6)
    spans = list(exporter.get_finished_spans())
    request: ExportTraceServiceRequest = encode_spans(spans)
    return request


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON of `request`: json_format's mapping with the ids in hex."""
    doc: dict[str, Any] = json_format.MessageToDict(request)
    for sp in all_spans(doc):
        for holder in [sp, *sp.get("links", [])]:
            for key in ("traceId", "spanId", "parentSpanId"):
                if key in holder:
                    holder[key] = base64.b64decode(holder[key]).hex()
    return doc


def all_spans(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [sp for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for sp in ss["spans"]]


def via_json_format(doc: dict[str, Any]) -> bytes:
    """The protobuf that the reference parser (json_format, unknown fields ignored) makes of an
    OTLP/JSON document (its hex ids given in the proto3 mapping's base64 first)."""
    doc = copy.deepcopy(doc)
    for sp in all_spans(doc):
        for holder in [sp, *(sp.get("links") or [])]:
            for key in ("traceId", "spanId", "parentSpanId"):
                value = holder.get(key)
                if isinstance(value, str) and value:
                    holder[key] = base64.b64encode(bytes.fromhex(value)).decode()
    message = json_format.ParseDict(doc, ExportTraceServiceRequest(), ignore_unknown_fields=True)
    return message.SerializeToString()


def stored(tmp_path: Path, name: str, data: bytes) -> Rows:
    """Every row of the raw tables after ingesting `data` as file `name` into a fresh store."""
    folder = tmp_path / name.replace(".", "_")
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    ingest_paths([folder / name], folder / "s.duckdb", progress=False)
    con = duckdb.connect(str(folder / "s.duckdb"), read_only=True)
    try:
        return {
            t: sorted(con.execute(f"SELECT {cols} FROM {t}").fetchall(), key=repr)
            for t, cols in TABLES.items()
        }
    finally:
        con.close()


def span_column(rows: Rows, column: int) -> list[Any]:
    return [r[column] for r in rows["spans"]]


def by_name(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(sp for sp in all_spans(doc) if sp["name"] == name)


# ------------------------------------------------------------- the OTLP/JSON rules, one variant each


def unknown_fields(doc: dict[str, Any]) -> None:
    rs = doc["resourceSpans"][0]
    rs["futureField"] = {"x": [1, None]}
    rs["resource"]["attributes"][0]["value"]["futureField"] = 1
    rs["resource"]["future"] = "x"
    ss = rs["scopeSpans"][0]
    ss["scope"]["futureField"] = True
    for sp in ss["spans"]:
        sp["futureField"] = "x"
        for kv in sp.get("attributes", []):
            kv["value"]["futureField"] = 1
            kv["futureKv"] = 2
        for item in sp.get("events", []) + sp.get("links", []):
            item["futureField"] = 3
        sp.setdefault("status", {})["futureField"] = 4


def zero_parent(doc: dict[str, Any]) -> None:
    by_name(doc, "root")["parentSpanId"] = "0" * 16


def nulls(doc: dict[str, Any]) -> None:
    by_name(doc, "b").update(
        name=None,
        kind=None,
        traceState=None,
        flags=None,
        status=None,
        events=None,
        links=None,
        droppedAttributesCount=None,
        endTimeUnixNano=None,
    )
    a = by_name(doc, "a")
    a["attributes"] = [
        {"key": "k", "value": None},
        {"key": None, "value": {"stringValue": "v"}},
        {"key": "s", "value": {"stringValue": None}},
    ]
    a["events"][0]["name"] = None


def link_without_ids(doc: dict[str, Any]) -> None:
    a = by_name(doc, "a")
    a["links"].append({"attributes": [{"key": "x", "value": {"intValue": "1"}}], "traceState": "t=1"})
    a["links"].append({"traceId": a["traceId"]})


def kind(value: int) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        by_name(doc, "a")["kind"] = value

    return mutate


def zero_times(doc: dict[str, Any]) -> None:
    a = by_name(doc, "a")
    a["startTimeUnixNano"] = "0"
    a["events"][0]["timeUnixNano"] = "0"


VARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown_fields": unknown_fields,
    "zero_parent": zero_parent,
    "nulls": nulls,
    "link_without_ids": link_without_ids,
    "kind_200": kind(200),
    "kind_int32_max": kind(2**31 - 1),
    "kind_negative": kind(-1),
    "zero_times": zero_times,
}


@pytest.fixture(scope="module")
def agreeing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Rows]]:
    """Each variant's document (its own SDK spans, so its own ids) and the rows stored for it.
    Every variant is written as an OTLP/JSON document, as a JSON line and as json_format's
    protobuf, each kind into its own store; the rows must be the same from all three."""
    tmp = tmp_path_factory.mktemp("rules")
    docs = {}
    for name, mutate in VARIANTS.items():
        doc = otlp_json(sdk_request())
        mutate(doc)
        docs[name] = doc
    encoders: dict[str, Callable[[dict[str, Any]], bytes]] = {
        "json": lambda d: orjson.dumps(d, option=orjson.OPT_INDENT_2),
        "jsonl": lambda d: orjson.dumps(d) + b"\n",
        "pb": via_json_format,
    }
    stores = {}
    for ext, encode in encoders.items():
        (tmp / ext).mkdir()
        files = []
        for name, doc in docs.items():
            files.append(tmp / ext / f"{name}.{ext}")
            files[-1].write_bytes(encode(doc))
        ingest_paths(files, tmp / f"{ext}.duckdb", progress=False)
        stores[ext] = tmp / f"{ext}.duckdb"
    out = {}
    for name, doc in docs.items():
        trace_ids = sorted({sp["traceId"] for sp in all_spans(doc)})
        rows = {ext: variant_rows(db, trace_ids, name) for ext, db in stores.items()}
        assert rows["jsonl"] == rows["json"], name
        assert rows["pb"] == rows["json"], name
        out[name] = (doc, rows["json"])
    return out


def variant_rows(db: Path, trace_ids: list[str], name: str) -> Rows:
    """The raw rows of one variant's traces (and the quarantine rows of its file)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = {
            t: sorted(
                con.execute(f"SELECT {cols} FROM {t} WHERE trace_id IN ?", [trace_ids]).fetchall(), key=repr
            )
            for t, cols in TABLES.items()
            if t not in ("resources", "quarantine")
        }
        rows["quarantine"] = con.execute(
            "SELECT span_id, reason FROM quarantine WHERE source LIKE ?", [f"%/{name}.%"]
        ).fetchall()
        return rows
    finally:
        con.close()


def test_unknown_fields_are_ignored_everywhere(agreeing: dict[str, tuple[dict[str, Any], Rows]]) -> None:
    """Receivers MUST ignore unknown fields: in an AnyValue (of a span's, and of a resource's
    attribute), and on every other object. Nothing is quarantined, every value is kept."""
    _, rows = agreeing["unknown_fields"]
    assert len(rows["spans"]) == 3 and not rows["quarantine"]
    attributes = {r[3]: orjson.loads(r[17]) for r in rows["spans"]}
    assert attributes == {"root": {"rid": "r-1", "n": 1}, "a": {"k": "v"}, "b": {}}
    assert [(r[3], orjson.loads(r[5])) for r in rows["span_events"]] == [("ev", {"e": 2})]
    assert [orjson.loads(r[5]) for r in rows["span_links"]] == [{"l": 1}]
    assert {r[6] for r in rows["spans"]} == {"svc"}  # service_name, from the resource


def test_an_all_zero_parent_span_id_is_a_root(agreeing: dict[str, tuple[dict[str, Any], Rows]]) -> None:
    """The Collector writes a root's parentSpanId as zeros: no parent, not a bad span."""
    _, rows = agreeing["zero_parent"]
    assert not rows["quarantine"]
    parents = dict(zip(span_column(rows, 3), span_column(rows, 2), strict=True))
    assert parents["root"] is None and parents["a"] is not None


def test_json_null_is_the_default_value(agreeing: dict[str, tuple[dict[str, Any], Rows]]) -> None:
    """proto3 JSON: null is the field's default. `"name": null` is "", a null kind 0, null
    attributes none, a null attribute value an empty value, a null key ""."""
    _, rows = agreeing["nulls"]
    assert not rows["quarantine"] and len(rows["spans"]) == 3
    names = span_column(rows, 3)
    assert "" in names and "b" not in names
    spans = {r[3]: r for r in rows["spans"]}
    assert spans[""][4] == 0  # kind
    assert orjson.loads(spans["a"][17]) == {"k": None, "": "v", "s": None}
    assert rows["span_events"][0][3] is None  # event name


def test_a_link_without_ids_keeps_its_span(agreeing: dict[str, tuple[dict[str, Any], Rows]]) -> None:
    """A link with no trace or span id is stored with NULL ids; its span is stored."""
    doc, rows = agreeing["link_without_ids"]
    assert not rows["quarantine"] and len(rows["spans"]) == 3
    links = [(r[2], r[3], r[4], r[5], r[6]) for r in sorted(rows["span_links"], key=lambda r: r[2])]
    assert links[1] == (1, None, None, '{"x":1}', "t=1")
    assert links[2] == (2, by_name(doc, "a")["traceId"], None, "{}", None)


@pytest.mark.parametrize(
    "variant, kind", [("kind_200", 200), ("kind_int32_max", 2**31 - 1), ("kind_negative", -1)]
)
def test_any_int32_kind_is_stored(
    agreeing: dict[str, tuple[dict[str, Any], Rows]], variant: str, kind: int
) -> None:
    """SpanKind is an open proto3 enum: a value above 127 (any int32) is stored, not quarantined."""
    _, rows = agreeing[variant]
    assert not rows["quarantine"]
    assert dict(zip(span_column(rows, 3), span_column(rows, 4), strict=True))["a"] == kind


def test_a_start_time_of_zero_is_the_same_from_json_and_protobuf(
    agreeing: dict[str, tuple[dict[str, Any], Rows]],
) -> None:
    """protobuf cannot tell 0 from absent: "0" from JSON is stored as protobuf's 0 is (NULL)."""
    _, rows = agreeing["zero_times"]
    starts = dict(zip(span_column(rows, 3), span_column(rows, 12), strict=True))
    assert starts["a"] is None and starts["b"] == T0 + 4
    assert rows["span_events"][0][4] is None


# ------------------------------------------------------------------- file-level rules, own stores


def test_a_utf8_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    """A JSON file that starts with a BOM is read as JSON (not as protobuf, not quarantined):
    a document and JSON lines alike give the spans the plain line gives."""
    doc = otlp_json(sdk_request())
    bom = b"\xef\xbb\xbf"
    rows = stored(tmp_path / "doc", "t.json", bom + orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    assert len(rows["spans"]) == 3 and not rows["quarantine"]
    assert (
        stored(tmp_path / "lines", "t.jsonl", bom + orjson.dumps(doc) + b"\n" + orjson.dumps(doc) + b"\n")
        == rows
    )


def test_invalid_utf8_in_one_protobuf_span_costs_that_span_only(tmp_path: Path) -> None:
    """upb refuses a whole ResourceSpans for one span's invalid UTF-8; only that span is
    quarantined, with its id and the reason, and the other spans of its block are stored."""
    request = sdk_request(("svc", "other"))
    bad = request.resource_spans[0].scope_spans[0].spans[1]
    bad.name = "BAD_NAME"
    data = request.SerializeToString().replace(b"BAD_NAME", b"BAD\xffNAME")
    rows = stored(tmp_path, "t.pb", data)
    assert len(rows["spans"]) == 5
    assert rows["quarantine"] == [(bad.span_id.hex(), rows["quarantine"][0][1])]
    assert rows["quarantine"][0][1] == "span: undecodable protobuf Span: invalid UTF-8 in its name"
    assert {r[3] for r in rows["spans"]} == {"root", "a", "b"}


def test_quarantine_is_per_span_with_the_real_reason(tmp_path: Path) -> None:
    """A resource that cannot be read (a stringValue that is a number) quarantines each of its
    spans, one row a span with its id and the resource's reason; the other block is stored."""
    doc = otlp_json(sdk_request(("svc", "other")))
    doc["resourceSpans"][0]["resource"]["attributes"].append({"key": "bad", "value": {"stringValue": 5}})
    rows = stored(tmp_path, "t.json", orjson.dumps(doc))
    bad_ids = sorted(sp["spanId"] for sp in doc["resourceSpans"][0]["scopeSpans"][0]["spans"])
    assert sorted(rows["quarantine"]) == [(i, "resource: stringValue is not a string") for i in bad_ids]
    assert len(rows["spans"]) == 3
    assert {r[1] for r in rows["spans"]}.isdisjoint(bad_ids)
