"""OTLP trace records -> flat, column-wise staging batches (one row per span).

Two decoders feed one `StagingBatch`:
- `add_json_traces`: a parsed OTLP JSON object (`TracesData` / `ExportTraceServiceRequest`, which
  share one JSON shape), tolerant of the quirks real exporters produce: hex ids in either case,
  64-bit trace ids, base64 ids (the protobuf JSON mapping), nanoseconds as strings or numbers,
  lowerCamelCase or snake_case field names, enum names or numbers, missing optional fields.
- `add_proto_resource_spans`: one protobuf `ResourceSpans` message.

Every span is validated; a bad span is recorded as a quarantine row (with its reason and bounded
raw bytes) and the good spans around it are kept. Attribute values keep their OTLP types in the
JSON column: ints, doubles, bools, strings, arrays as JSON arrays, kvlists as JSON objects,
bytes as base64 strings.

Nesting: an attribute value is at level 0, the elements of an array or kvlist at level L are at
level L + 1. An array or kvlist at level MAX_ATTRIBUTE_DEPTH (16) or deeper is cut: it is stored
as the string `cut_marker(kind)`, which says so, and the span is stored (its contents are not
looked at). JSON and protobuf cut alike (so do the C decoders, which leave such values to this
module); a protobuf message nested too deep for upb to parse is cut on the wire first
(ingest/nesting.py), so that no batch is refused for its nesting.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from kvtrace.ingest.errors import RecordError

RAW_LIMIT = 4096
MAX_ATTRIBUTE_DEPTH = 16  # arrays / kvlists at this level or deeper are cut (module docstring)


def cut_marker(kind: str) -> str:
    """The string that replaces an array or kvlist (`kind`) nested MAX_ATTRIBUTE_DEPTH deep."""
    return f"[kvtrace: {kind} nested {MAX_ATTRIBUTE_DEPTH} or more levels deep, cut]"


_CUT_ARRAY = cut_marker("array")
_CUT_KVLIST = cut_marker("kvlist")
_HEX = frozenset("0123456789abcdefABCDEF")
_INT64_MAX = 2**63 - 1

_SPAN_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}

SPAN_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("parent_span_id", pa.string()),
        ("name", pa.string()),
        ("kind", pa.int8()),
        ("start_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("status_code", pa.int8()),
        ("status_message", pa.string()),
        ("scope_name", pa.string()),
        ("scope_version", pa.string()),
        ("service_name", pa.string()),
        ("instance_id", pa.string()),
        ("host_name", pa.string()),
        ("service_version", pa.string()),
        ("role", pa.string()),
        ("resource_attributes", pa.string()),
        ("attributes", pa.string()),
        ("rid", pa.string()),
        ("seq", pa.int64()),
    ]
)
EVENT_SCHEMA = pa.schema(
    [
        ("span_seq", pa.int64()),
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("seq", pa.int32()),
        ("name", pa.string()),
        ("time_ns", pa.int64()),
        ("attributes", pa.string()),
    ]
)
LINK_SCHEMA = pa.schema(
    [
        ("span_seq", pa.int64()),
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("seq", pa.int32()),
        ("linked_trace_id", pa.string()),
        ("linked_span_id", pa.string()),
        ("attributes", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("line", pa.int64()),
        ("byte_offset", pa.int64()),
        ("span_id", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.binary()),
        ("raw_bytes", pa.int64()),
    ]
)


@dataclass
class Position:
    """Where a record sits in its source: 1-based line (JSON lines) and/or decompressed offset."""

    line: int | None = None
    byte_offset: int | None = None


@dataclass
class StagingBatch:
    """Column-wise rows of decoded spans, their events and links, and quarantined records."""

    spans: dict[str, list[Any]] = field(default_factory=lambda: {n: [] for n in SPAN_SCHEMA.names})
    events: dict[str, list[Any]] = field(default_factory=lambda: {n: [] for n in EVENT_SCHEMA.names})
    links: dict[str, list[Any]] = field(default_factory=lambda: {n: [] for n in LINK_SCHEMA.names})
    quarantine: dict[str, list[Any]] = field(
        default_factory=lambda: {n: [] for n in QUARANTINE_SCHEMA.names}
    )

    @property
    def n_spans(self) -> int:
        return len(self.spans["span_id"])

    @property
    def n_quarantined(self) -> int:
        return len(self.quarantine["reason"])

    def quarantine_record(
        self, pos: Position, reason: str, raw: bytes, span_id: str | None = None, raw_bytes: int | None = None
    ) -> None:
        """One quarantine row: at most RAW_LIMIT bytes of `raw`; `raw_bytes` is the record's full
        length when `raw` holds only its first bytes."""
        q = self.quarantine
        q["line"].append(pos.line)
        q["byte_offset"].append(pos.byte_offset)
        q["span_id"].append(span_id)
        q["reason"].append(reason)
        q["raw"].append(bytes(raw[:RAW_LIMIT]))
        q["raw_bytes"].append(len(raw) if raw_bytes is None else raw_bytes)

    def tables(self) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
        return (
            pa.Table.from_pydict(self.spans, schema=SPAN_SCHEMA),
            pa.Table.from_pydict(self.events, schema=EVENT_SCHEMA),
            pa.Table.from_pydict(self.links, schema=LINK_SCHEMA),
            pa.Table.from_pydict(self.quarantine, schema=QUARANTINE_SCHEMA),
        )


@dataclass(frozen=True)
class Resource:
    service_name: str | None
    instance_id: str | None
    host_name: str | None
    service_version: str | None
    role: str | None
    attributes_json: str

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any]) -> Resource:
        def text(key: str) -> str | None:
            value = attrs.get(key)
            return None if value is None else str(value)

        return cls(
            service_name=text("service.name"),
            instance_id=text("service.instance.id"),
            host_name=text("host.name"),
            service_version=text("service.version"),
            role=text("sglang.role"),
            attributes_json=orjson.dumps(dict(attrs), option=orjson.OPT_SORT_KEYS).decode(),
        )


# ---------------------------------------------------------------------------------- ids, values


def normalise_trace_id(value: object) -> str:
    """Lower-case 32-hex trace id from hex (any case, 16 or 32 chars), base64 or raw bytes."""
    raw = _id_bytes(value, "trace id", (16, 8))
    if len(raw) == 8:
        raw = bytes(8) + raw
    if raw == bytes(16):
        raise RecordError("trace id is all zeros")
    return raw.hex()


def normalise_span_id(value: object, what: str = "span id") -> str:
    """Lower-case 16-hex span id from hex (any case), base64 or raw bytes."""
    raw = _id_bytes(value, what, (8,))
    if raw == bytes(8):
        raise RecordError(f"{what} is all zeros")
    return raw.hex()


def _id_bytes(value: object, what: str, sizes: tuple[int, ...]) -> bytes:
    if isinstance(value, bytes):
        if len(value) in sizes:
            return value
        raise RecordError(f"{what} has {len(value)} bytes, expected {' or '.join(map(str, sizes))}")
    if value is None:
        raise RecordError(f"{what} is missing")
    if not isinstance(value, str):
        raise RecordError(f"{what} is {type(value).__name__}, expected a string")
    if not value:
        raise RecordError(f"{what} is missing")
    if len(value) in tuple(2 * s for s in sizes) and _HEX.issuperset(value):
        return bytes.fromhex(value)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(f"{what} {value[:40]!r} is neither hex nor base64") from None
    if len(raw) not in sizes:
        raise RecordError(f"{what} {value[:40]!r} decodes to {len(raw)} bytes")
    return raw


def _nanos(value: object, what: str) -> int | None:
    """Unix nanoseconds given as a JSON number or a decimal string; None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise RecordError(f"{what} is a boolean")
    if isinstance(value, int):
        n = value
    elif (isinstance(value, str) and value.isdigit()) or (isinstance(value, float) and value.is_integer()):
        n = int(value)
    else:
        raise RecordError(f"{what} {str(value)[:40]!r} is not an integer")
    if not 0 <= n <= _INT64_MAX:
        raise RecordError(f"{what} {n} is out of range")
    return n


def _enum(value: object, names: Mapping[str, int], what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in names:
        return names[value]
    raise RecordError(f"{what} {str(value)[:40]!r} is not a valid value")


def _get(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = d.get(camel)
    return d.get(snake) if value is None else value


def json_any_value(v: object, level: int = 0) -> Any:
    """OTLP JSON AnyValue (at nesting `level`) -> a plain JSON value with its type kept."""
    if not isinstance(v, dict):
        raise RecordError(f"attribute value is {type(v).__name__}, expected an AnyValue object")
    if not v:
        return None
    if len(v) != 1:
        raise RecordError(f"attribute value has several fields: {sorted(v)}")
    (kind, x), = v.items()
    if kind in ("stringValue", "string_value"):
        if not isinstance(x, str):
            raise RecordError("stringValue is not a string")
        return x
    if kind in ("intValue", "int_value"):
        n = _nanos_signed(x)
        return n
    if kind in ("doubleValue", "double_value"):
        if isinstance(x, bool) or not isinstance(x, int | float | str):
            raise RecordError("doubleValue is not a number")
        try:
            return float(x)
        except ValueError:
            raise RecordError(f"doubleValue {str(x)[:40]!r} is not a number") from None
    if kind in ("boolValue", "bool_value"):
        if not isinstance(x, bool):
            raise RecordError("boolValue is not a boolean")
        return x
    if kind in ("arrayValue", "array_value"):
        if level >= MAX_ATTRIBUTE_DEPTH:
            return _CUT_ARRAY
        values = x.get("values", []) if isinstance(x, dict) else None
        if not isinstance(values, list):
            raise RecordError("arrayValue.values is not a list")
        fast = _fast_array(values)
        return fast if fast is not None else [json_any_value(e, level + 1) for e in values]
    if kind in ("kvlistValue", "kvlist_value"):
        if level >= MAX_ATTRIBUTE_DEPTH:
            return _CUT_KVLIST
        values = x.get("values", []) if isinstance(x, dict) else None
        if not isinstance(values, list):
            raise RecordError("kvlistValue.values is not a list")
        return json_attributes(values, level + 1)
    if kind in ("bytesValue", "bytes_value"):
        if not isinstance(x, str):
            raise RecordError("bytesValue is not a base64 string")
        return x
    raise RecordError(f"unknown attribute value type {kind!r}")


def _fast_array(values: list[Any]) -> list[Any] | None:
    """Arrays of one scalar type (page ids, layer offsets, rids) without a call per element;
    None when the array is anything else, so the general path validates it."""
    if not values:
        return []
    try:
        first = values[0]
        if len(first) != 1:
            return None
        if "intValue" in first:
            ints = [int(e["intValue"]) for e in values]
            if min(ints) < -(2**63) or max(ints) > _INT64_MAX or any(len(e) != 1 for e in values):
                return None
            if any(isinstance(e["intValue"], bool | float) for e in values):
                return None
            return ints
        if "stringValue" in first:
            strs = [e["stringValue"] for e in values]
            if all(type(v) is str for v in strs) and all(len(e) == 1 for e in values):
                return strs
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return None


def _nanos_signed(x: object) -> int:
    if isinstance(x, bool):
        raise RecordError("intValue is a boolean")
    if isinstance(x, int):
        n = x
    elif isinstance(x, str):
        try:
            n = int(x)
        except ValueError:
            raise RecordError(f"intValue {x[:40]!r} is not an integer") from None
    elif isinstance(x, float) and x.is_integer():
        n = int(x)
    else:
        raise RecordError(f"intValue {str(x)[:40]!r} is not an integer")
    if not -(2**63) <= n <= _INT64_MAX:
        raise RecordError(f"intValue {n} is out of int64 range")
    return n


def json_attributes(items: object, level: int = 0) -> dict[str, Any]:
    """OTLP JSON `[{"key": k, "value": AnyValue}]` (values at nesting `level`) -> {k: value}."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise RecordError("attributes is not a list")
    out: dict[str, Any] = {}
    for kv in items:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise RecordError("attribute without a string key")
        out[kv["key"]] = json_any_value(kv.get("value", {}), level)
    return out


def proto_any_value(v: common_pb2.AnyValue, level: int = 0) -> Any:
    """A protobuf AnyValue (at nesting `level`) -> a plain JSON value with its type kept."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        if level >= MAX_ATTRIBUTE_DEPTH:
            return _CUT_ARRAY
        return [proto_any_value(e, level + 1) for e in v.array_value.values]
    if kind == "kvlist_value":
        if level >= MAX_ATTRIBUTE_DEPTH:
            return _CUT_KVLIST
        return proto_attributes(v.kvlist_value.values, level + 1)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if kind == "string_value_strindex":
        raise RecordError("string_value_strindex needs a profiles dictionary; not valid in traces")
    return getattr(v, kind)


def proto_attributes(items: Any, level: int = 0) -> dict[str, Any]:
    return {kv.key: proto_any_value(kv.value, level) for kv in items}


def _rid(attrs: Mapping[str, Any]) -> str | None:
    rid = attrs.get("rid")
    return None if rid is None else str(rid)


def _dumps(d: Mapping[str, Any]) -> str:
    return orjson.dumps(d).decode()


# ----------------------------------------------------------------------------------- JSON path


def add_json_traces(batch: StagingBatch, obj: object, pos: Position, raw: bytes) -> None:
    """Decode one parsed OTLP JSON traces object into `batch`; malformed parts are quarantined.

    A structural problem above span level (resourceSpans not a list, a bad resource) quarantines
    that whole part; a bad span quarantines only that span.
    """
    if not isinstance(obj, dict):
        batch.quarantine_record(pos, f"top-level JSON is {type(obj).__name__}, expected an object", raw)
        return
    rs_list = _get(obj, "resourceSpans", "resource_spans")
    if rs_list is None:
        if obj:
            batch.quarantine_record(pos, "object has no resourceSpans", raw)
        return
    if not isinstance(rs_list, list):
        batch.quarantine_record(pos, "resourceSpans is not a list", raw)
        return
    for rs in rs_list:
        try:
            resource, scope_lists = _json_resource(rs)
        except RecordError as exc:
            batch.quarantine_record(pos, str(exc), orjson.dumps(rs))
            continue
        for ss in scope_lists:
            try:
                scope_name, scope_version, spans = _json_scope(ss)
            except RecordError as exc:
                batch.quarantine_record(pos, str(exc), orjson.dumps(ss))
                continue
            for span in spans:
                try:
                    _add_json_span(batch, span, resource, scope_name, scope_version)
                except RecordError as exc:
                    sid = _get(span, "spanId", "span_id") if isinstance(span, dict) else None
                    batch.quarantine_record(
                        pos, f"span: {exc}", orjson.dumps(span), sid if isinstance(sid, str) else None
                    )


def _json_resource(rs: object) -> tuple[Resource, list[Any]]:
    if not isinstance(rs, dict):
        raise RecordError("resourceSpans entry is not an object")
    res = rs.get("resource") or {}
    if not isinstance(res, dict):
        raise RecordError("resource is not an object")
    attrs = json_attributes(res.get("attributes"))
    scopes = _get(rs, "scopeSpans", "scope_spans")
    if scopes is None:
        scopes = rs.get("instrumentationLibrarySpans", [])
    if not isinstance(scopes, list):
        raise RecordError("scopeSpans is not a list")
    return Resource.from_attributes(attrs), scopes


def _json_scope(ss: object) -> tuple[str | None, str | None, list[Any]]:
    if not isinstance(ss, dict):
        raise RecordError("scopeSpans entry is not an object")
    scope = ss.get("scope") or ss.get("instrumentationLibrary") or {}
    if not isinstance(scope, dict):
        raise RecordError("scope is not an object")
    spans = ss.get("spans", [])
    if not isinstance(spans, list):
        raise RecordError("spans is not a list")
    name, version = scope.get("name"), scope.get("version")
    if not isinstance(name, str | None) or not isinstance(version, str | None):
        raise RecordError("scope name/version is not a string")
    return name, version, spans


def _add_json_span(
    batch: StagingBatch, span: object, res: Resource, scope_name: str | None, scope_version: str | None
) -> None:
    if not isinstance(span, dict):
        raise RecordError("span is not an object")
    trace_id = normalise_trace_id(_get(span, "traceId", "trace_id"))
    span_id = normalise_span_id(_get(span, "spanId", "span_id"))
    parent_raw = _get(span, "parentSpanId", "parent_span_id")
    parent = normalise_span_id(parent_raw, "parent span id") if parent_raw else None
    name = span.get("name", "")
    if not isinstance(name, str):
        raise RecordError("name is not a string")
    kind = _enum(span.get("kind"), _SPAN_KINDS, "kind")
    start = _nanos(_get(span, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano")
    end = _nanos(_get(span, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano")
    status = span.get("status") or {}
    if not isinstance(status, dict):
        raise RecordError("status is not an object")
    status_code = _enum(status.get("code"), _STATUS_CODES, "status code")
    status_message = status.get("message")
    if not isinstance(status_message, str | None):
        raise RecordError("status message is not a string")
    attrs = json_attributes(span.get("attributes"))
    events = _json_events(span.get("events"))
    links = _json_links(span.get("links"))

    _append_span(
        batch, trace_id, span_id, parent, name, kind, start, end, status_code, status_message,
        scope_name, scope_version, res, attrs,
    )
    for seq, (ev_name, ev_time, ev_attrs) in enumerate(events):
        _append_event(batch, trace_id, span_id, seq, ev_name, ev_time, ev_attrs)
    for seq, (l_trace, l_span, l_attrs) in enumerate(links):
        _append_link(batch, trace_id, span_id, seq, l_trace, l_span, l_attrs)


def _json_events(items: object) -> list[tuple[str | None, int | None, dict[str, Any]]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise RecordError("events is not a list")
    out = []
    for ev in items:
        if not isinstance(ev, dict):
            raise RecordError("event is not an object")
        name = ev.get("name")
        if not isinstance(name, str | None):
            raise RecordError("event name is not a string")
        t = _nanos(_get(ev, "timeUnixNano", "time_unix_nano"), "event timeUnixNano")
        out.append((name, t, json_attributes(ev.get("attributes"))))
    return out


def _json_links(items: object) -> list[tuple[str, str, dict[str, Any]]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise RecordError("links is not a list")
    out = []
    for link in items:
        if not isinstance(link, dict):
            raise RecordError("link is not an object")
        out.append(
            (
                normalise_trace_id(_get(link, "traceId", "trace_id")),
                normalise_span_id(_get(link, "spanId", "span_id"), "link span id"),
                json_attributes(link.get("attributes")),
            )
        )
    return out


# ------------------------------------------------------------------------------- protobuf path


def add_proto_resource_spans(batch: StagingBatch, rs: trace_pb2.ResourceSpans, pos: Position) -> None:
    """Decode one protobuf ResourceSpans into `batch`; malformed spans are quarantined."""
    try:
        res = Resource.from_attributes(proto_attributes(rs.resource.attributes))
    except RecordError as exc:
        batch.quarantine_record(pos, f"resource: {exc}", rs.SerializeToString())
        return
    for ss in rs.scope_spans:
        scope_name = ss.scope.name or None
        scope_version = ss.scope.version or None
        for span in ss.spans:
            try:
                _add_proto_span(batch, span, res, scope_name, scope_version)
            except RecordError as exc:
                batch.quarantine_record(
                    pos, f"span: {exc}", span.SerializeToString(), span.span_id.hex() or None
                )


def _add_proto_span(
    batch: StagingBatch, span: trace_pb2.Span, res: Resource, scope_name: str | None, scope_version: str | None
) -> None:
    if not span.trace_id:
        raise RecordError("trace id is missing")
    if not span.span_id:
        raise RecordError("span id is missing")
    trace_id = normalise_trace_id(span.trace_id)
    span_id = normalise_span_id(span.span_id)
    parent = normalise_span_id(span.parent_span_id, "parent span id") if span.parent_span_id else None
    start = span.start_time_unix_nano or None
    end = span.end_time_unix_nano or None
    for t, what in ((start, "start_time_unix_nano"), (end, "end_time_unix_nano")):
        if t is not None and t > _INT64_MAX:
            raise RecordError(f"{what} {t} is out of range")
    attrs = proto_attributes(span.attributes)
    events = [(ev.name or None, ev.time_unix_nano or None, proto_attributes(ev.attributes)) for ev in span.events]
    links = [
        (
            normalise_trace_id(link.trace_id),
            normalise_span_id(link.span_id, "link span id"),
            proto_attributes(link.attributes),
        )
        for link in span.links
    ]
    _append_span(
        batch, trace_id, span_id, parent, span.name, int(span.kind), start, end,
        int(span.status.code), span.status.message or None, scope_name, scope_version, res, attrs,
    )
    for seq, (ev_name, ev_time, ev_attrs) in enumerate(events):
        _append_event(batch, trace_id, span_id, seq, ev_name, ev_time, ev_attrs)
    for seq, (l_trace, l_span, l_attrs) in enumerate(links):
        _append_link(batch, trace_id, span_id, seq, l_trace, l_span, l_attrs)


# ------------------------------------------------------------------------------------ appenders


def _append_span(
    batch: StagingBatch,
    trace_id: str,
    span_id: str,
    parent: str | None,
    name: str,
    kind: int,
    start: int | None,
    end: int | None,
    status_code: int,
    status_message: str | None,
    scope_name: str | None,
    scope_version: str | None,
    res: Resource,
    attrs: dict[str, Any],
) -> None:
    if not -128 <= kind <= 127 or not -128 <= status_code <= 127:
        raise RecordError("kind or status code out of range")
    row = (
        trace_id, span_id, parent, name, kind, start, end, status_code, status_message or None,
        scope_name, scope_version, res.service_name, res.instance_id, res.host_name,
        res.service_version, res.role, res.attributes_json, _dumps(attrs), _rid(attrs),
        len(batch.spans["seq"]),
    )
    for column, value in zip(SPAN_SCHEMA.names, row, strict=True):
        batch.spans[column].append(value)


def _append_event(
    batch: StagingBatch, trace_id: str, span_id: str, seq: int, name: str | None, t: int | None,
    attrs: dict[str, Any],
) -> None:
    e = batch.events
    e["span_seq"].append(len(batch.spans["seq"]) - 1)
    e["trace_id"].append(trace_id)
    e["span_id"].append(span_id)
    e["seq"].append(seq)
    e["name"].append(name)
    e["time_ns"].append(t)
    e["attributes"].append(_dumps(attrs))


def _append_link(
    batch: StagingBatch, trace_id: str, span_id: str, seq: int, l_trace: str, l_span: str,
    attrs: dict[str, Any],
) -> None:
    lk = batch.links
    lk["span_seq"].append(len(batch.spans["seq"]) - 1)
    lk["trace_id"].append(trace_id)
    lk["span_id"].append(span_id)
    lk["seq"].append(seq)
    lk["linked_trace_id"].append(l_trace)
    lk["linked_span_id"].append(l_span)
    lk["attributes"].append(_dumps(attrs))
