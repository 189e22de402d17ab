"""OTLP trace records -> flat, column-wise staging batches (one row per span).

Two decoders feed one `StagedRows`:
- `add_json_traces`: a parsed OTLP JSON object (`TracesData` / `ExportTraceServiceRequest`, which
  share one JSON shape), tolerant of the quirks real exporters produce: hex ids in either case,
  64-bit trace ids, base64 ids (the protobuf JSON mapping), nanoseconds as strings or numbers,
  lowerCamelCase or snake_case field names, enum names or numbers, missing optional fields.
- `add_proto_resource_spans`: one protobuf `ResourceSpans` message.

Every span is validated; a bad span is recorded as a quarantine row (with its reason and bounded
raw bytes) and the good spans around it are kept. A bad resource or scope quarantines each span
of its block, one row a span, with the resource's or scope's reason; a link without (valid) ids
is kept with NULL ids and never costs its span.

Both paths follow the OTLP/JSON and proto3 rules, so that they agree: unknown fields are
ignored everywhere (AnyValue included); JSON `null` is the field's default (`"name": null` is
""); an all-zero parentSpanId is no parent; a time of 0 is absent (NULL), as protobuf cannot
tell them apart; enums (kind, status code) are any int32.

Every field of the OTLP trace model is kept (SPAN_SCHEMA and friends): span trace_state, flags,
dropped attribute/event/link counts; event dropped attribute count; link trace_state, flags,
dropped attribute count; scope name, version, attributes, dropped attribute count and the
ScopeSpans schema_url; resource attributes, dropped attribute count and the ResourceSpans
schema_url.

Attribute values keep their OTLP types in the JSON column (the store's typed JSON form): ints as
JSON integers, doubles as JSON numbers with a fraction or exponent, bools, strings, arrays as
JSON arrays, kvlists as JSON objects, empty values as null. The values JSON cannot carry as
such are one-member objects named after their OTLP/JSON field: bytes `{"bytesValue":
"<standard base64>"}`, NaN and infinities `{"doubleValue": "NaN" | "Infinity" | "-Infinity"}`;
a kvlist that would read as one of those (its only key is bytesValue, doubleValue or
kvlistValue) is wrapped as `{"kvlistValue": {...}}`. So every object with exactly one such key
is a typed value, every other object is a kvlist, and the form is lossless.

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
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
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
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT32_MAX = 2**32 - 1

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
        ("kind", pa.int32()),
        ("start_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("status_code", pa.int32()),
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
        ("trace_state", pa.string()),
        ("flags", pa.int64()),
        ("dropped_attributes_count", pa.int64()),
        ("dropped_events_count", pa.int64()),
        ("dropped_links_count", pa.int64()),
        ("scope_attributes", pa.string()),
        ("scope_dropped_attributes_count", pa.int64()),
        ("scope_schema_url", pa.string()),
        ("resource_dropped_attributes_count", pa.int64()),
        ("resource_schema_url", pa.string()),
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
        ("dropped_attributes_count", pa.int64()),
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
        ("trace_state", pa.string()),
        ("flags", pa.int64()),
        ("dropped_attributes_count", pa.int64()),
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


# The staging contract, in one place: a batch is `merge.Staged` (Arrow tables of SPAN_SCHEMA,
# EVENT_SCHEMA, LINK_SCHEMA, QUARANTINE_SCHEMA). The C decoders (protofast, jsonfast) return
# the first three as `StagedTables`; the validating decoder builds them row by row in `StagedRows`.
StagedTables = tuple[pa.Table, pa.Table, pa.Table]


@dataclass
class StagedRows:
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
    """A ResourceSpans' resource: the columns read from its attributes, its attribute JSON, its
    dropped attribute count and the ResourceSpans' schema_url."""

    service_name: str | None
    instance_id: str | None
    host_name: str | None
    service_version: str | None
    role: str | None
    attributes_json: str
    dropped_attributes_count: int = 0
    schema_url: str | None = None

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any], dropped: int = 0, schema_url: str | None = None) -> Resource:
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
            dropped_attributes_count=dropped,
            schema_url=schema_url or None,
        )


@dataclass(frozen=True)
class Scope:
    """A ScopeSpans' instrumentation scope and the ScopeSpans' schema_url."""

    name: str | None = None
    version: str | None = None
    attributes_json: str = "{}"
    dropped_attributes_count: int = 0
    schema_url: str | None = None


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


def _parent_id(value: object) -> str | None:
    """A span's parent: absent, empty or all zeros (the Collector's "no parent") is a root."""
    if not value:
        return None
    raw = _id_bytes(value, "parent span id", (8,))
    return None if raw == bytes(8) else raw.hex()


def _link_ids(trace: object, span: object) -> tuple[str | None, str | None]:
    """A link's ids; one that is absent, all zeros or malformed is NULL (the link is kept)."""
    try:
        t: str | None = normalise_trace_id(trace)
    except RecordError:
        t = None
    try:
        s: str | None = normalise_span_id(span, "link span id")
    except RecordError:
        s = None
    return t, s


def _id_bytes(value: object, what: str, sizes: tuple[int, ...]) -> bytes:
    if isinstance(value, bytes):
        if len(value) in sizes:
            return value
        if not value:
            raise RecordError(f"{what} is missing")
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
    """Unix nanoseconds given as a JSON number or a decimal string; None when absent or 0 (which
    protobuf cannot tell apart)."""
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
    return n or None


def _uint32(value: object, what: str) -> int:
    """A uint32 / fixed32 field (flags, dropped counts): a JSON number or decimal string; absent
    or null is 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise RecordError(f"{what} is a boolean")
    if isinstance(value, int):
        n = value
    elif (isinstance(value, str) and value.isdigit()) or (isinstance(value, float) and value.is_integer()):
        n = int(value)
    else:
        raise RecordError(f"{what} {str(value)[:40]!r} is not an integer")
    if not 0 <= n <= _UINT32_MAX:
        raise RecordError(f"{what} {n} is out of uint32 range")
    return n


def _enum(value: object, names: Mapping[str, int], what: str) -> int:
    """An enum (kind, status code): its name or any int32 (proto3 enums are open)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise RecordError(f"{what} {value} is out of int32 range")
        return value
    if isinstance(value, str) and value in names:
        return names[value]
    raise RecordError(f"{what} {str(value)[:40]!r} is not a valid value")


def _string(value: object, what: str) -> str | None:
    """An optional string field; null or "" is None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RecordError(f"{what} is not a string")
    return value


def _get(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = d.get(camel)
    return d.get(snake) if value is None else value


def typed_double(x: float) -> Any:
    """A double as the attribute JSON holds it: itself, or for NaN and infinities the typed form
    {"doubleValue": "NaN" | "Infinity" | "-Infinity"} (JSON has no such numbers)."""
    if math.isfinite(x):
        return x
    return {"doubleValue": "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")}


def typed_bytes(raw: bytes) -> dict[str, str]:
    """Bytes as the attribute JSON holds them: {"bytesValue": "<standard base64>"}."""
    return {"bytesValue": base64.b64encode(raw).decode()}


def typed_kvlist(d: dict[str, Any]) -> Any:
    """A kvlist as the attribute JSON holds it: the object itself, unless it would read as a
    typed value (its only key is one of TYPED_KEYS): then {"kvlistValue": {...}}."""
    if len(d) == 1 and next(iter(d)) in TYPED_KEYS:
        return {"kvlistValue": d}
    return d


TYPED_KEYS = frozenset({"bytesValue", "doubleValue", "kvlistValue"})
_ANY_FIELDS = {
    "stringValue": "string", "string_value": "string",
    "boolValue": "bool", "bool_value": "bool",
    "intValue": "int", "int_value": "int",
    "doubleValue": "double", "double_value": "double",
    "arrayValue": "array", "array_value": "array",
    "kvlistValue": "kvlist", "kvlist_value": "kvlist",
    "bytesValue": "bytes", "bytes_value": "bytes",
}


def _json_bytes(x: object) -> bytes:
    """A proto3 JSON bytes value: standard or URL-safe base64, padded or not."""
    if not isinstance(x, str):
        raise RecordError("bytesValue is not a base64 string")
    text = x.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(f"bytesValue {x[:40]!r} is not base64") from None


def json_any_value(v: object, level: int = 0) -> Any:
    """OTLP JSON AnyValue (at nesting `level`) -> a plain JSON value with its type kept (the
    module docstring's typed form). Unknown members are ignored, a null member is unset."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise RecordError(f"attribute value is {type(v).__name__}, expected an AnyValue object")
    kind: str | None = None
    x: Any = None
    for key, value in v.items():
        k = _ANY_FIELDS.get(key)
        if k is None or value is None:
            continue  # an unknown member (ignored, as OTLP/JSON receivers must), or null: unset
        if kind is not None:
            raise RecordError(f"attribute value has several values: {sorted(v)}")
        kind, x = k, value
    if kind is None:
        return None
    if kind == "string":
        if not isinstance(x, str):
            raise RecordError("stringValue is not a string")
        return x
    if kind == "int":
        return _nanos_signed(x)
    if kind == "double":
        if isinstance(x, bool) or not isinstance(x, int | float | str):
            raise RecordError("doubleValue is not a number")
        try:
            return typed_double(float(x))
        except ValueError:
            raise RecordError(f"doubleValue {str(x)[:40]!r} is not a number") from None
    if kind == "bool":
        if not isinstance(x, bool):
            raise RecordError("boolValue is not a boolean")
        return x
    if kind == "array":
        if level >= MAX_ATTRIBUTE_DEPTH:
            return _CUT_ARRAY
        values = _values(x, "arrayValue")
        fast = _fast_array(values)
        return fast if fast is not None else [json_any_value(e, level + 1) for e in values]
    if kind == "kvlist":
        if level >= MAX_ATTRIBUTE_DEPTH:
            return _CUT_KVLIST
        return typed_kvlist(json_attributes(_values(x, "kvlistValue"), level + 1))
    return typed_bytes(_json_bytes(x))


def _values(x: object, what: str) -> list[Any]:
    """The `values` list of an arrayValue / kvlistValue object (absent or null: empty)."""
    if not isinstance(x, dict):
        raise RecordError(f"{what} is not an object")
    values = x.get("values")
    if values is None:
        return []
    if not isinstance(values, list):
        raise RecordError(f"{what}.values is not a list")
    return values


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
    """OTLP JSON `[{"key": k, "value": AnyValue}]` (values at nesting `level`) -> {k: value}.
    A null or absent key is "" and a null or absent value is an empty one (proto3 defaults)."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise RecordError("attributes is not a list")
    out: dict[str, Any] = {}
    for kv in items:
        if not isinstance(kv, dict):
            raise RecordError("attribute is not an object")
        key = kv.get("key")
        if key is None:
            key = ""
        elif not isinstance(key, str):
            raise RecordError("attribute key is not a string")
        out[key] = json_any_value(kv.get("value"), level)
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
        return typed_kvlist(proto_attributes(v.kvlist_value.values, level + 1))
    if kind == "bytes_value":
        return typed_bytes(v.bytes_value)
    if kind == "double_value":
        return typed_double(v.double_value)
    if kind == "string_value_strindex":
        raise RecordError("string_value_strindex needs a profiles dictionary; not valid in traces")
    return getattr(v, kind)


def proto_attributes(items: Any, level: int = 0) -> dict[str, Any]:
    return {kv.key: proto_any_value(kv.value, level) for kv in items}


def proto_resource(res: resource_pb2.Resource, schema_url: str = "") -> Resource:
    """A protobuf Resource (and its ResourceSpans' schema_url) -> Resource."""
    return Resource.from_attributes(proto_attributes(res.attributes), res.dropped_attributes_count, schema_url)


def proto_scope(scope: common_pb2.InstrumentationScope, schema_url: str = "") -> Scope:
    """A protobuf InstrumentationScope (and its ScopeSpans' schema_url) -> Scope."""
    return Scope(
        scope.name or None, scope.version or None, _dumps(proto_attributes(scope.attributes)),
        scope.dropped_attributes_count, schema_url or None,
    )


def json_resource(res: object, schema_url: object) -> Resource:
    """An OTLP JSON resource object (and its resourceSpans' schemaUrl) -> Resource."""
    if res is None:
        res = {}
    if not isinstance(res, dict):
        raise RecordError("resource is not an object")
    return Resource.from_attributes(
        json_attributes(res.get("attributes")),
        _uint32(_get(res, "droppedAttributesCount", "dropped_attributes_count"), "resource droppedAttributesCount"),
        _string(schema_url, "resource schemaUrl"),
    )


def json_scope(scope: object, schema_url: object) -> Scope:
    """An OTLP JSON scope object (and its scopeSpans' schemaUrl) -> Scope."""
    if scope is None:
        scope = {}
    if not isinstance(scope, dict):
        raise RecordError("scope is not an object")
    name, version = scope.get("name"), scope.get("version")
    if not isinstance(name, str | None) or not isinstance(version, str | None):
        raise RecordError("scope name/version is not a string")
    return Scope(
        name or None, version or None, _dumps(json_attributes(scope.get("attributes"))),
        _uint32(_get(scope, "droppedAttributesCount", "dropped_attributes_count"), "scope droppedAttributesCount"),
        _string(schema_url, "scope schemaUrl"),
    )


def _rid(attrs: Mapping[str, Any]) -> str | None:
    rid = attrs.get("rid")
    return None if rid is None else str(rid)


def _dumps(d: Mapping[str, Any]) -> str:
    return orjson.dumps(d).decode()


# ----------------------------------------------------------------------------------- JSON path


def add_json_traces(batch: StagedRows, obj: object, pos: Position, raw: bytes) -> None:
    """Decode one parsed OTLP JSON traces object into `batch`; malformed parts are quarantined.

    A bad span quarantines only that span; a bad resource or scope quarantines each span of its
    block (with the resource's or scope's reason); only structure too broken to find its spans in
    (resourceSpans not a list, ...) is quarantined as one record.
    """
    if not isinstance(obj, dict):
        batch.quarantine_record(pos, f"top-level JSON is {type(obj).__name__}, expected an object", raw)
        return
    rs_list = _get(obj, "resourceSpans", "resource_spans")
    if rs_list is None:
        if obj and "resourceSpans" not in obj and "resource_spans" not in obj:  # null: none
            batch.quarantine_record(pos, "object has no resourceSpans", raw)
        return
    if not isinstance(rs_list, list):
        batch.quarantine_record(pos, "resourceSpans is not a list", raw)
        return
    for rs in rs_list:
        try:
            scope_lists = _json_scope_lists(rs)
        except RecordError as exc:
            batch.quarantine_record(pos, str(exc), orjson.dumps(rs))
            continue
        resource: Resource | None = None
        res_error = None
        try:
            resource = json_resource(rs.get("resource"), _get(rs, "schemaUrl", "schema_url"))
        except RecordError as exc:
            res_error = f"resource: {exc}"
        for ss in scope_lists:
            try:
                scope_obj, spans = _json_scope_spans(ss)
            except RecordError as exc:
                batch.quarantine_record(pos, str(exc), orjson.dumps(ss))
                continue
            error = res_error
            scope = Scope()
            if error is None:
                try:
                    scope = json_scope(scope_obj, _get(ss, "schemaUrl", "schema_url"))
                except RecordError as exc:
                    error = f"scope: {exc}"
            for span in spans:
                try:
                    if error is not None or resource is None:
                        raise RecordError(str(error))
                    _add_json_span(batch, span, resource, scope)
                except RecordError as exc:
                    reason = str(exc) if error is not None else f"span: {exc}"
                    sid = _get(span, "spanId", "span_id") if isinstance(span, dict) else None
                    batch.quarantine_record(pos, reason, orjson.dumps(span), sid if isinstance(sid, str) else None)


def _json_scope_lists(rs: object) -> list[Any]:
    if not isinstance(rs, dict):
        raise RecordError("resourceSpans entry is not an object")
    scopes = _get(rs, "scopeSpans", "scope_spans")
    if scopes is None:
        scopes = rs.get("instrumentationLibrarySpans")
    if scopes is None:
        return []
    if not isinstance(scopes, list):
        raise RecordError("scopeSpans is not a list")
    return scopes


def _json_scope_spans(ss: object) -> tuple[object, list[Any]]:
    if not isinstance(ss, dict):
        raise RecordError("scopeSpans entry is not an object")
    scope = ss.get("scope")
    if scope is None:
        scope = ss.get("instrumentationLibrary")
    spans = ss.get("spans")
    if spans is None:
        spans = []
    if not isinstance(spans, list):
        raise RecordError("spans is not a list")
    return scope, spans


def _add_json_span(batch: StagedRows, span: object, res: Resource, scope: Scope) -> None:
    if not isinstance(span, dict):
        raise RecordError("span is not an object")
    trace_id = normalise_trace_id(_get(span, "traceId", "trace_id"))
    span_id = normalise_span_id(_get(span, "spanId", "span_id"))
    parent = _parent_id(_get(span, "parentSpanId", "parent_span_id"))
    name = span.get("name")
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise RecordError("name is not a string")
    kind = _enum(span.get("kind"), _SPAN_KINDS, "kind")
    start = _nanos(_get(span, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano")
    end = _nanos(_get(span, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano")
    status = span.get("status")
    if status is None:
        status = {}
    if not isinstance(status, dict):
        raise RecordError("status is not an object")
    status_code = _enum(status.get("code"), _STATUS_CODES, "status code")
    status_message = _string(status.get("message"), "status message")
    extra = (
        _string(_get(span, "traceState", "trace_state"), "traceState"),
        _uint32(span.get("flags"), "flags"),
        _uint32(_get(span, "droppedAttributesCount", "dropped_attributes_count"), "droppedAttributesCount"),
        _uint32(_get(span, "droppedEventsCount", "dropped_events_count"), "droppedEventsCount"),
        _uint32(_get(span, "droppedLinksCount", "dropped_links_count"), "droppedLinksCount"),
    )
    attrs = json_attributes(span.get("attributes"))
    events = _json_events(span.get("events"))
    links = _json_links(span.get("links"))

    _append_span(
        batch, trace_id, span_id, parent, name, kind, start, end, status_code, status_message,
        scope, res, attrs, extra,
    )
    for seq, event in enumerate(events):
        _append_event(batch, trace_id, span_id, seq, *event)
    for seq, link in enumerate(links):
        _append_link(batch, trace_id, span_id, seq, *link)


_Event = tuple[str | None, int | None, dict[str, Any], int]
_Link = tuple[str | None, str | None, dict[str, Any], str | None, int, int]


def _json_events(items: object) -> list[_Event]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise RecordError("events is not a list")
    out = []
    for ev in items:
        if not isinstance(ev, dict):
            raise RecordError("event is not an object")
        t = _nanos(_get(ev, "timeUnixNano", "time_unix_nano"), "event timeUnixNano")
        dropped = _uint32(_get(ev, "droppedAttributesCount", "dropped_attributes_count"), "event droppedAttributesCount")
        out.append((_string(ev.get("name"), "event name"), t, json_attributes(ev.get("attributes")), dropped))
    return out


def _json_links(items: object) -> list[_Link]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise RecordError("links is not a list")
    out = []
    for link in items:
        if not isinstance(link, dict):
            raise RecordError("link is not an object")
        l_trace, l_span = _link_ids(_get(link, "traceId", "trace_id"), _get(link, "spanId", "span_id"))
        out.append(
            (
                l_trace, l_span, json_attributes(link.get("attributes")),
                _string(_get(link, "traceState", "trace_state"), "link traceState"),
                _uint32(link.get("flags"), "link flags"),
                _uint32(_get(link, "droppedAttributesCount", "dropped_attributes_count"), "link droppedAttributesCount"),
            )
        )
    return out


# ------------------------------------------------------------------------------- protobuf path


def add_proto_resource_spans(batch: StagedRows, rs: trace_pb2.ResourceSpans, pos: Position) -> None:
    """Decode one protobuf ResourceSpans into `batch`; malformed spans are quarantined (a bad
    resource or scope: each span of it, with that reason)."""
    res: Resource | None = None
    error = None
    try:
        res = proto_resource(rs.resource, rs.schema_url)
    except RecordError as exc:
        error = f"resource: {exc}"
    for ss in rs.scope_spans:
        scope_error = error
        scope = Scope()
        if scope_error is None:
            try:
                scope = proto_scope(ss.scope, ss.schema_url)
            except RecordError as exc:
                scope_error = f"scope: {exc}"
        for span in ss.spans:
            try:
                if scope_error is not None or res is None:
                    raise RecordError(str(scope_error))
                _add_proto_span(batch, span, res, scope)
            except RecordError as exc:
                reason = str(exc) if scope_error is not None else f"span: {exc}"
                batch.quarantine_record(pos, reason, span.SerializeToString(), span.span_id.hex() or None)


def add_proto_resource_spans_bytes(batch: StagedRows, data: bytes, pos: Position) -> None:
    """Decode one ResourceSpans frame into `batch`. When upb refuses the frame (e.g. invalid
    UTF-8 in one span's string), each span is parsed alone: only the spans upb refuses are
    quarantined (a refused resource or scope: each span of it), the rest are stored."""
    from kvtrace.ingest.nesting import parse_cut, split_resource_spans  # nesting imports this module

    try:
        rs, _ = parse_cut(trace_pb2.ResourceSpans, data, "resource_spans")
    except DecodeError as exc:
        whole = f"undecodable protobuf ResourceSpans: {exc}"
        try:
            head, scopes = split_resource_spans(data)
        except ValueError:
            batch.quarantine_record(pos, whole, data)
            return
        _add_proto_salvaged(batch, pos, head, scopes)
        return
    add_proto_resource_spans(batch, rs, pos)


def _add_proto_salvaged(
    batch: StagedRows, pos: Position, head: bytes, scopes: list[tuple[bytes, list[bytes]]]
) -> None:
    """The spans of a ResourceSpans frame upb refused as a whole, each parsed alone."""
    from kvtrace.ingest.nesting import parse_cut, span_utf8_error, wire_span_id

    res: Resource | None = None
    error = None
    try:
        head_msg = trace_pb2.ResourceSpans.FromString(head)
        res = proto_resource(head_msg.resource, head_msg.schema_url)
    except (DecodeError, RecordError) as exc:
        error = f"resource: {exc}"
    for scope_head, spans in scopes:
        scope_error = error
        scope = Scope()
        if scope_error is None:
            try:
                scope_msg = trace_pb2.ScopeSpans.FromString(scope_head)
                scope = proto_scope(scope_msg.scope, scope_msg.schema_url)
            except (DecodeError, RecordError) as exc:
                scope_error = f"scope: {exc}"
        for data in spans:
            try:
                if scope_error is not None or res is None:
                    raise RecordError(str(scope_error))
                try:
                    span, _ = parse_cut(trace_pb2.Span, data, "span")
                except DecodeError as exc:
                    why = span_utf8_error(data) or str(exc)
                    raise RecordError(f"span: undecodable protobuf Span: {why}") from None
                try:
                    _add_proto_span(batch, span, res, scope)
                except RecordError as exc:
                    raise RecordError(f"span: {exc}") from None
            except RecordError as exc:
                batch.quarantine_record(pos, str(exc), data, wire_span_id(data))


def _add_proto_span(batch: StagedRows, span: trace_pb2.Span, res: Resource, scope: Scope) -> None:
    if not span.trace_id:
        raise RecordError("trace id is missing")
    if not span.span_id:
        raise RecordError("span id is missing")
    trace_id = normalise_trace_id(span.trace_id)
    span_id = normalise_span_id(span.span_id)
    parent = _parent_id(span.parent_span_id)
    start = span.start_time_unix_nano or None
    end = span.end_time_unix_nano or None
    for t, what in ((start, "start_time_unix_nano"), (end, "end_time_unix_nano")):
        if t is not None and t > _INT64_MAX:
            raise RecordError(f"{what} {t} is out of range")
    attrs = proto_attributes(span.attributes)
    events: list[_Event] = []
    for ev in span.events:
        if ev.time_unix_nano > _INT64_MAX:
            raise RecordError(f"event time_unix_nano {ev.time_unix_nano} is out of range")
        events.append(
            (ev.name or None, ev.time_unix_nano or None, proto_attributes(ev.attributes), ev.dropped_attributes_count)
        )
    links: list[_Link] = [
        (
            *_link_ids(link.trace_id, link.span_id), proto_attributes(link.attributes),
            link.trace_state or None, link.flags, link.dropped_attributes_count,
        )
        for link in span.links
    ]
    extra = (
        span.trace_state or None, span.flags, span.dropped_attributes_count, span.dropped_events_count,
        span.dropped_links_count,
    )
    _append_span(
        batch, trace_id, span_id, parent, span.name, int(span.kind), start, end,
        int(span.status.code), span.status.message or None, scope, res, attrs, extra,
    )
    for seq, event in enumerate(events):
        _append_event(batch, trace_id, span_id, seq, *event)
    for seq, link in enumerate(links):
        _append_link(batch, trace_id, span_id, seq, *link)


# ------------------------------------------------------------------------------------ appenders


def _append_span(
    batch: StagedRows,
    trace_id: str,
    span_id: str,
    parent: str | None,
    name: str,
    kind: int,
    start: int | None,
    end: int | None,
    status_code: int,
    status_message: str | None,
    scope: Scope,
    res: Resource,
    attrs: dict[str, Any],
    extra: tuple[str | None, int, int, int, int],
) -> None:
    """One span row; `extra` is (trace_state, flags, dropped attributes, events, links counts)."""
    row = (
        trace_id, span_id, parent, name, kind, start, end, status_code, status_message or None,
        scope.name, scope.version, res.service_name, res.instance_id, res.host_name,
        res.service_version, res.role, res.attributes_json, _dumps(attrs), _rid(attrs),
        len(batch.spans["seq"]), *extra, scope.attributes_json, scope.dropped_attributes_count,
        scope.schema_url, res.dropped_attributes_count, res.schema_url,
    )
    for column, value in zip(SPAN_SCHEMA.names, row, strict=True):
        batch.spans[column].append(value)


def _append_event(
    batch: StagedRows, trace_id: str, span_id: str, seq: int, name: str | None, t: int | None,
    attrs: dict[str, Any], dropped: int,
) -> None:
    e = batch.events
    e["span_seq"].append(len(batch.spans["seq"]) - 1)
    e["trace_id"].append(trace_id)
    e["span_id"].append(span_id)
    e["seq"].append(seq)
    e["name"].append(name)
    e["time_ns"].append(t)
    e["attributes"].append(_dumps(attrs))
    e["dropped_attributes_count"].append(dropped)


def _append_link(
    batch: StagedRows, trace_id: str, span_id: str, seq: int, l_trace: str | None, l_span: str | None,
    attrs: dict[str, Any], trace_state: str | None, flags: int, dropped: int,
) -> None:
    lk = batch.links
    lk["span_seq"].append(len(batch.spans["seq"]) - 1)
    lk["trace_id"].append(trace_id)
    lk["span_id"].append(span_id)
    lk["seq"].append(seq)
    lk["linked_trace_id"].append(l_trace)
    lk["linked_span_id"].append(l_span)
    lk["attributes"].append(_dumps(attrs))
    lk["trace_state"].append(trace_state)
    lk["flags"].append(flags)
    lk["dropped_attributes_count"].append(dropped)
