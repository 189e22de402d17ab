"""Columnar fast path for OTLP JSON lines: a chunk of whole lines -> the very staging tables that
the validating decoder (decode.py) builds for it, with no Python per span or per attribute value.
`decode_json_lines` first tries the C parser (jsonfast.py); what that declines is tried here.

pyarrow's JSON reader parses the chunk against an explicit OTLP schema (C++, multi-threaded);
resourceSpans -> scopeSpans -> spans are flattened with Arrow list kernels; ids, times, enums
and the attribute JSON text are computed with Arrow compute kernels.

The fast path only takes what it can reproduce exactly. It returns None (the caller then runs
the validating decoder on the chunk, which quarantines bad records as always) when the chunk
has anything outside its canon: a JSON `null`, NaN/Infinity, a BOM, invalid
UTF-8, a line that is not exactly one object, a field the schema does not name (snake_case
names, kvlist or bytes values, nested arrays, instrumentationLibrarySpans), a number where OTLP
JSON puts a string or the reverse (numeric nanoseconds), an id that is not hex (base64 ids),
an all-zero or malformed id, several values in one AnyValue, a duplicate attribute key, or any
value the validating decoder would quarantine. Doubles and strings whose JSON text Arrow cannot
produce byte-for-byte as orjson does are encoded by orjson, one value at a time.
`tests/test_ingest_columnar.py` checks that both paths give identical staging tables.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from kvtrace.ingest.decode import (
    _SPAN_KINDS,
    _STATUS_CODES,
    EVENT_SCHEMA,
    LINK_SCHEMA,
    SPAN_SCHEMA,
    Resource,
    Scope,
    StagedTables,
    json_resource,
    json_scope,
)
from kvtrace.ingest.errors import RecordError
from kvtrace.ingest.jsonfast import decode_json_chunk

# Byte sequences whose presence sends a chunk to the validating decoder: JSON null (missing and
# null differ there; Arrow cannot tell them apart) and a byte-order mark (Arrow skips it, orjson
# rejects it). NaN/Infinity, which Arrow parses and orjson rejects, are caught after parsing
# (non-finite doubles); invalid \u surrogates Arrow rejects itself.
_SLOW_TOKENS = (b"null", b"\xef\xbb\xbf")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class _NotFast(Exception):
    """The chunk holds something the fast path does not reproduce exactly."""


def _any_value(nested: bool) -> pa.DataType:
    fields = [
        ("stringValue", pa.string()),
        ("intValue", pa.string()),
        ("doubleValue", pa.float64()),
        ("boolValue", pa.bool_()),
    ]
    if not nested:
        fields.append(("arrayValue", pa.struct([("values", pa.list_(_any_value(True)))])))
    return pa.struct(fields)


_KEY_VALUES = pa.list_(pa.struct([("key", pa.string()), ("value", _any_value(False))]))
_SPAN = pa.struct(
    [
        ("traceId", pa.string()),
        ("spanId", pa.string()),
        ("traceState", pa.string()),
        ("parentSpanId", pa.string()),
        ("flags", pa.int64()),
        ("name", pa.string()),
        ("kind", pa.int64()),
        ("startTimeUnixNano", pa.string()),
        ("endTimeUnixNano", pa.string()),
        ("attributes", _KEY_VALUES),
        ("droppedAttributesCount", pa.int64()),
        (
            "events",
            pa.list_(
                pa.struct(
                    [
                        ("timeUnixNano", pa.string()),
                        ("name", pa.string()),
                        ("attributes", _KEY_VALUES),
                        ("droppedAttributesCount", pa.int64()),
                    ]
                )
            ),
        ),
        ("droppedEventsCount", pa.int64()),
        (
            "links",
            pa.list_(
                pa.struct(
                    [
                        ("traceId", pa.string()),
                        ("spanId", pa.string()),
                        ("traceState", pa.string()),
                        ("attributes", _KEY_VALUES),
                        ("droppedAttributesCount", pa.int64()),
                        ("flags", pa.int64()),
                    ]
                )
            ),
        ),
        ("droppedLinksCount", pa.int64()),
        ("status", pa.struct([("message", pa.string()), ("code", pa.int64())])),
    ]
)
OTLP_JSON_SCHEMA = pa.schema(
    [
        (
            "resourceSpans",
            pa.list_(
                pa.struct(
                    [
                        ("resource", pa.struct([("attributes", _KEY_VALUES), ("droppedAttributesCount", pa.int64())])),
                        (
                            "scopeSpans",
                            pa.list_(
                                pa.struct(
                                    [
                                        (
                                            "scope",
                                            pa.struct(
                                                [
                                                    ("name", pa.string()),
                                                    ("version", pa.string()),
                                                    ("attributes", _KEY_VALUES),
                                                    ("droppedAttributesCount", pa.int64()),
                                                ]
                                            ),
                                        ),
                                        ("spans", pa.list_(_SPAN)),
                                        ("schemaUrl", pa.string()),
                                    ]
                                )
                            ),
                        ),
                        ("schemaUrl", pa.string()),
                    ]
                )
            ),
        )
    ]
)



def decode_json_lines(chunk: bytes, use_threads: bool = True, native: bool = True) -> StagedTables | None:
    """Spans, events and links staging tables of a chunk of whole OTLP JSON lines, identical to
    what decode.add_json_traces gives line by line; None when the chunk needs that decoder.
    The C parser (ingest/jsonfast.py) is tried first (unless `native` is False); what it
    declines is tried here, with pyarrow."""
    if native:
        tables = decode_json_chunk(chunk)
        if tables is not None:
            return tables
    if _has_slow_token(chunk):
        return None
    chunk = _enum_numbers(chunk)
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = sum(1 for line in chunk.split(b"\n") if line.strip())
    try:
        table = pj.read_json(
            io.BytesIO(chunk),
            read_options=pj.ReadOptions(use_threads=use_threads, block_size=max(1 << 20, len(chunk) // 2 + 1)),
            parse_options=pj.ParseOptions(explicit_schema=OTLP_JSON_SCHEMA, unexpected_field_behavior="error"),
        )
        if table.num_rows != lines:
            return None  # e.g. two objects on one line: orjson rejects that line
        return _staging(table)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, _NotFast, RecordError):
        return None


def _has_slow_token(chunk: bytes) -> bool:
    """Whether a _SLOW_TOKENS sequence occurs (the BOM is looked for only when its first byte
    occurs: a one-byte search is a memchr)."""
    return b"null" in chunk or (b"\xef" in chunk and b"\xef\xbb\xbf" in chunk)


def _enum_numbers(chunk: bytes) -> bytes:
    """Enum names (the protobuf JSON mapping: "kind":"SPAN_KIND_SERVER") as their numbers. The
    byte pattern, with its unescaped quotes, can only be the span's kind or the status's code."""
    if b'"SPAN_KIND_' in chunk:
        for name, number in _SPAN_KINDS.items():
            chunk = chunk.replace(b'"kind":"%s"' % name.encode(), b'"kind":%d' % number)
    if b'"STATUS_CODE_' in chunk:
        for name, number in _STATUS_CODES.items():
            chunk = chunk.replace(b'"code":"%s"' % name.encode(), b'"code":%d' % number)
    return chunk


# ------------------------------------------------------------------------------- flattening


def _staging(table: pa.Table) -> StagedTables:
    rs_list = table.column("resourceSpans").combine_chunks()
    rs = rs_list.flatten()
    ss_list = pc.struct_field(rs, "scopeSpans")
    ss = ss_list.flatten()
    ss_rs = pc.list_parent_indices(ss_list)
    sp_list = pc.struct_field(ss, "spans")
    sp = sp_list.flatten()
    sp_ss = pc.list_parent_indices(sp_list)
    sp_rs = pc.take(ss_rs, sp_ss)
    n = len(sp)

    trace_id = _trace_ids(pc.struct_field(sp, "traceId"))
    span_id = _span_ids(pc.struct_field(sp, "spanId"))
    parent_raw = pc.struct_field(sp, "parentSpanId")
    # "" and all zeros are no parent (a root)
    no_parent = pc.or_(pc.equal(parent_raw, ""), pc.equal(parent_raw, _ZERO_SPAN))
    parent = _span_ids(pc.if_else(no_parent, pa.scalar(None, pa.string()), parent_raw), nullable=True)
    status = pc.struct_field(sp, "status")
    message = pc.struct_field(status, "message")
    attributes, rid = _attributes_json(pc.struct_field(sp, "attributes"), with_rid=True)
    scopes = _scopes(ss)
    resources = _resources(rs)

    columns: dict[str, pa.Array] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": pc.fill_null(pc.struct_field(sp, "name"), ""),
        "kind": _int32(pc.struct_field(sp, "kind")),
        "start_ns": _nanos(pc.struct_field(sp, "startTimeUnixNano")),
        "end_ns": _nanos(pc.struct_field(sp, "endTimeUnixNano")),
        "status_code": _int32(pc.struct_field(status, "code")),
        "status_message": _empty_null(message),
        "trace_state": _empty_null(pc.struct_field(sp, "traceState")),
        "flags": _uint32(pc.struct_field(sp, "flags")),
        "dropped_attributes_count": _uint32(pc.struct_field(sp, "droppedAttributesCount")),
        "dropped_events_count": _uint32(pc.struct_field(sp, "droppedEventsCount")),
        "dropped_links_count": _uint32(pc.struct_field(sp, "droppedLinksCount")),
    }
    for name, values in scopes.items():
        columns[name] = pc.take(values, sp_ss)
    for name, values in resources.items():
        columns[name] = pc.take(values, sp_rs)
    columns["attributes"] = attributes
    columns["rid"] = rid
    columns["seq"] = pa.array(np.arange(n, dtype=np.int64))
    spans = pa.Table.from_arrays([columns[f.name] for f in SPAN_SCHEMA], schema=SPAN_SCHEMA)
    return spans, _events(sp, trace_id, span_id), _links(sp, trace_id, span_id)


def _children(lists: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Flattened values of a list array, each value's parent row, and its position in the list."""
    values = lists.flatten()
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    position = np.arange(len(values), dtype=np.int64) - starts[parent]
    return values, parent, position


def _events(sp: pa.Array, trace_id: pa.Array, span_id: pa.Array) -> pa.Table:
    return _per_span(sp, "events", trace_id, span_id, EVENT_SCHEMA,
                     lambda ev: [_empty_null(pc.struct_field(ev, "name")), _nanos(pc.struct_field(ev, "timeUnixNano"))],
                     lambda ev: [_uint32(pc.struct_field(ev, "droppedAttributesCount"))])


def _links(sp: pa.Array, trace_id: pa.Array, span_id: pa.Array) -> pa.Table:
    return _per_span(sp, "links", trace_id, span_id, LINK_SCHEMA,
                     lambda lk: [_trace_ids(pc.struct_field(lk, "traceId"), nullable=True),
                                 _span_ids(pc.struct_field(lk, "spanId"), nullable=True)],
                     lambda lk: [_empty_null(pc.struct_field(lk, "traceState")), _uint32(pc.struct_field(lk, "flags")),
                                 _uint32(pc.struct_field(lk, "droppedAttributesCount"))])


def _per_span(
    sp: pa.Array, field: str, trace_id: pa.Array, span_id: pa.Array, schema: pa.Schema,
    own: Callable[[pa.Array], list[pa.Array]], after: Callable[[pa.Array], list[pa.Array]],
) -> pa.Table:
    """Events or links: span_seq, the span's ids, seq within the span, `own(children)`,
    attributes, `after(children)`."""
    children, parent, position = _children(pc.struct_field(sp, field))
    idx = pa.array(parent)
    attributes, _ = _attributes_json(pc.struct_field(children, "attributes"), with_rid=False)
    columns = [
        idx,
        pc.take(trace_id, idx),
        pc.take(span_id, idx),
        pa.array(position.astype(np.int32)),
        *own(children),
        attributes,
        *after(children),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _resources(rs: pa.Array) -> dict[str, pa.Array]:
    """Resource columns per resourceSpans entry, decoded by the validating decoder (one call per
    resource, not per span; a line usually holds one)."""
    names = ("service_name", "instance_id", "host_name", "service_version", "role", "resource_attributes",
             "resource_dropped_attributes_count", "resource_schema_url")
    rows: dict[str, list[Any]] = {k: [] for k in names}
    cache: dict[bytes, Resource] = {}
    urls = pc.struct_field(rs, "schemaUrl").to_pylist()
    for value, url in zip(pc.struct_field(rs, "resource").to_pylist(), urls, strict=True):
        obj = _otlp_json(value)
        key = orjson.dumps([obj, url])
        res = cache.get(key)
        if res is None:
            res = cache[key] = json_resource(obj, url)
        for name, v in zip(names, (res.service_name, res.instance_id, res.host_name, res.service_version, res.role,
                                   res.attributes_json, res.dropped_attributes_count, res.schema_url), strict=True):
            rows[name].append(v)
    return {k: pa.array(v, pa.int64() if k.endswith("_count") else pa.string()) for k, v in rows.items()}


def _scopes(ss: pa.Array) -> dict[str, pa.Array]:
    """Scope columns per scopeSpans entry, decoded by the validating decoder (as _resources)."""
    names = ("scope_name", "scope_version", "scope_attributes", "scope_dropped_attributes_count", "scope_schema_url")
    rows: dict[str, list[Any]] = {k: [] for k in names}
    cache: dict[bytes, Scope] = {}
    urls = pc.struct_field(ss, "schemaUrl").to_pylist()
    for value, url in zip(pc.struct_field(ss, "scope").to_pylist(), urls, strict=True):
        obj = _otlp_json(value)
        key = orjson.dumps([obj, url])
        scope = cache.get(key)
        if scope is None:
            scope = cache[key] = json_scope(obj, url)
        for name, v in zip(names, (scope.name, scope.version, scope.attributes_json,
                                   scope.dropped_attributes_count, scope.schema_url), strict=True):
            rows[name].append(v)
    return {k: pa.array(v, pa.int64() if k.endswith("_count") else pa.string()) for k, v in rows.items()}


def _otlp_json(value: Any) -> Any:
    """An Arrow-parsed OTLP JSON value back in its JSON form (fields Arrow filled with None,
    i.e. absent in the input since the chunk holds no `null`, dropped)."""
    if isinstance(value, dict):
        return {k: _otlp_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_otlp_json(v) for v in value]
    return value


# ------------------------------------------------------------------------- ids, times, enums


def _all(mask: pa.Array) -> bool:
    """True when every non-null entry is true (also for none)."""
    return bool(pc.all(mask, skip_nulls=True, min_count=0).as_py())


def _any(mask: pa.Array) -> bool:
    return bool(pc.any(mask, skip_nulls=True, min_count=0).as_py())


def _trace_ids(raw: pa.Array, nullable: bool = False) -> pa.Array:
    """Lower-case 32-hex trace ids (a 16-hex id left-padded with zeros, as in decode.py)."""
    if raw.null_count and not nullable:
        raise _NotFast("trace id missing")
    lower = pc.utf8_lower(raw)
    if not _all(pc.match_substring_regex(lower, "^(?:[0-9a-f]{16}|[0-9a-f]{32})$")):
        raise _NotFast("trace id not hex")
    padded = pc.utf8_lpad(lower, 32, "0")
    if _any(pc.equal(padded, _ZERO_TRACE)):
        raise _NotFast("trace id all zeros")
    return padded


def _span_ids(raw: pa.Array, nullable: bool = False) -> pa.Array:
    if raw.null_count and not nullable:
        raise _NotFast("span id missing")
    lower = pc.utf8_lower(raw)
    ok = pc.match_substring_regex(lower, "^[0-9a-f]{16}$")
    if not _all(ok) or _any(pc.equal(lower, _ZERO_SPAN)):
        raise _NotFast("span id not 16 hex or all zeros")
    return lower


def _nanos(raw: pa.Array) -> pa.Array:
    """Decimal-string nanoseconds -> int64 (null when absent or 0, as decode._nanos); a non-digit
    or out-of-range value leaves the fast path (the validating decoder quarantines it)."""
    if len(raw) > raw.null_count and not _all(pc.match_substring_regex(raw, "^[0-9]+$")):
        raise _NotFast("nanoseconds not decimal digits")
    ns = pc.cast(raw, pa.int64())  # raises ArrowInvalid beyond int64
    return pc.if_else(pc.equal(ns, 0), pa.scalar(None, pa.int64()), ns)


def _int32(raw: pa.Array) -> pa.Array:
    """An enum (kind, status code): any int32; absent is 0."""
    filled = pc.fill_null(raw, 0)
    if len(filled) and (pc.min(filled).as_py() < -(2**31) or pc.max(filled).as_py() > 2**31 - 1):
        raise _NotFast("kind or status code out of int32 range")
    return pc.cast(filled, pa.int32())


def _uint32(raw: pa.Array) -> pa.Array:
    """A uint32 (flags, dropped counts) as int64; absent is 0."""
    filled = pc.fill_null(raw, 0)
    if len(filled) and (pc.min(filled).as_py() < 0 or pc.max(filled).as_py() > 2**32 - 1):
        raise _NotFast("flags or dropped count out of uint32 range")
    return pc.cast(filled, pa.int64())


def _empty_null(raw: pa.Array) -> pa.Array:
    """An optional string: "" is null."""
    return pc.if_else(pc.equal(raw, ""), pa.scalar(None, pa.string()), raw)


# ------------------------------------------------------------------------- attribute JSON text


def _attributes_json(lists: pa.Array, with_rid: bool) -> tuple[pa.Array, pa.Array | None]:
    """`{"key": value, ...}` JSON text per list of OTLP KeyValues, byte-identical to
    orjson.dumps(decode.json_attributes(list)); and the `rid` attribute as text (decode._rid)."""
    kv, parent, _ = _children(lists)
    n = len(lists)
    keys = pc.struct_field(kv, "key")
    if keys.null_count:
        raise _NotFast("attribute without a key")
    if len(kv):
        owners = pa.Table.from_arrays([pa.array(parent), keys], names=["owner", "key"])
        if owners.group_by(["owner", "key"]).aggregate([]).num_rows != len(kv):
            raise _NotFast("duplicate attribute key")
    value = pc.struct_field(kv, "value")
    value_text = _value_json(value, nested=False)
    pairs = pc.binary_join_element_wise(_json_strings(keys), value_text, ":")
    lengths = np.bincount(parent, minlength=n) if len(kv) else np.zeros(n, dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    per_owner = pa.ListArray.from_arrays(offsets, pairs)
    text = pc.binary_join_element_wise("{", pc.binary_join(per_owner, ","), "}", "")
    if not with_rid:
        return text, None
    return text, _rid(keys, value, parent, n)


def _rid(keys: pa.Array, value: pa.Array, parent: np.ndarray, n: int) -> pa.Array:
    """The `rid` attribute as decode._rid gives it (str(value)), for string and int values."""
    is_rid = pc.equal(keys, "rid").to_numpy(zero_copy_only=False)
    where = np.flatnonzero(is_rid)
    if not len(where):
        return pa.nulls(n, pa.string())
    vals = pc.take(value, pa.array(where))
    if pc.struct_field(vals, "doubleValue").null_count != len(vals) or pc.struct_field(
        vals, "boolValue"
    ).null_count != len(vals):
        raise _NotFast("rid is a double or a boolean")
    arrays = pc.struct_field(vals, "arrayValue")
    if arrays.null_count != len(arrays):
        raise _NotFast("rid is an array")
    ints = pc.cast(pc.cast(pc.struct_field(vals, "intValue"), pa.int64()), pa.string())
    text = pc.coalesce(pc.struct_field(vals, "stringValue"), ints)
    index = np.full(n, -1, dtype=np.int64)
    index[parent[where]] = np.arange(len(where))
    return pc.take(text, pa.array(index, mask=index < 0))


def _value_json(value: pa.Array, nested: bool) -> pa.Array:
    """JSON text of each OTLP AnyValue (decode.json_any_value, then orjson)."""
    s = pc.struct_field(value, "stringValue")
    i = pc.struct_field(value, "intValue")
    d = pc.struct_field(value, "doubleValue")
    b = pc.struct_field(value, "boolValue")
    parts = [s, i, d, b]
    if not nested:
        arr = pc.struct_field(value, "arrayValue")
        parts.append(arr)
    set_count = np.zeros(len(value), dtype=np.int64)
    for part in parts:
        set_count += part.is_valid().to_numpy(zero_copy_only=False)
    if len(value) and set_count.max() > 1:
        raise _NotFast("AnyValue with several fields")
    texts = [
        _json_strings(s),
        pc.cast(pc.cast(i, pa.int64()), pa.string()),  # int("0012") == 12; raises on "12x"
        _json_doubles(d),
        pc.if_else(b, "true", "false"),
    ]
    if not nested:
        elems, elem_parent, _ = _children(pc.struct_field(arr, "values"))
        elem_text = _value_json(elems, nested=True)
        lengths = np.bincount(elem_parent, minlength=len(value)) if len(elems) else np.zeros(len(value), np.int64)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        joined = pc.binary_join(pa.ListArray.from_arrays(offsets, elem_text), ",")
        array_text = pc.binary_join_element_wise("[", joined, "]", "")
        texts.append(pc.if_else(arr.is_valid(), array_text, pa.scalar(None, pa.string())))
    return pc.coalesce(*texts, pa.scalar("null"))


def _json_strings(s: pa.Array) -> pa.Array:
    """orjson's JSON text of each string: quoted as is unless it holds a quote, a backslash or
    a control character, which orjson escapes (those few go through orjson)."""
    quoted = pc.binary_join_element_wise('"', s, '"', "")
    needs = pc.fill_null(pc.match_substring_regex(s, r'[\x00-\x1f"\\]'), False)
    if not _any(needs):
        return quoted
    escaped = [orjson.dumps(x).decode() for x in pc.filter(s, needs).to_pylist()]
    return pc.replace_with_mask(quoted, needs, pa.array(escaped, pa.string()))


def _json_doubles(d: pa.Array) -> pa.Array:
    """orjson's JSON text of each double. Arrow's shortest round-trip text is the same digits;
    it is taken where the notation agrees too (plain decimals in [1e-3, 1e15), and integral
    values with '.0' added), the rest is formatted by orjson."""
    if d.null_count == len(d):
        return pa.nulls(len(d), pa.string())
    if not _all(pc.is_finite(d)):
        raise _NotFast("NaN or Infinity (not JSON; orjson rejects the line)")
    text = pc.cast(d, pa.string())
    magnitude = pc.abs(d)
    in_range = pc.or_(pc.equal(d, 0.0), pc.and_(pc.greater_equal(magnitude, 1e-3), pc.less(magnitude, 1e15)))
    plain = pc.and_(in_range, pc.match_substring_regex(text, r"^-?[0-9]+\.[0-9]+$"))
    integral = pc.and_(in_range, pc.match_substring_regex(text, r"^-?[0-9]+$"))
    out = pc.if_else(
        plain, text, pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), pa.scalar(None, pa.string()))
    )
    rest = pc.and_(d.is_valid(), out.is_null())
    if not _any(rest):
        return out
    formatted = [orjson.dumps(x).decode() for x in pc.filter(d, rest).to_pylist()]
    return pc.replace_with_mask(out, rest, pa.array(formatted, pa.string()))
