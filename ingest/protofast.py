"""Columnar fast path for OTLP protobuf: a TracesData / ExportTraceServiceRequest message -> the
very staging tables that the validating decoder (decode.add_proto_resource_spans over upb) builds
for it, with no Python per span or per attribute value.

The wire format is walked in C (ingest/_otlpfast.c, built with the package), which writes every
column straight into Arrow-layout buffers; only resources and scopes (a handful per message) are
finished here (from their message slices and schema URLs), through the validating decoder's own
code. The C side declines (returns None) whatever it does not reproduce byte for byte (malformed
wire data, invalid UTF-8, a bad or missing trace or span id, a time out of range, a duplicate
attribute key, a singular message given twice, a `rid` that is neither a string nor an integer);
the caller then runs the validating decoder, which quarantines or rejects as always.
`tests/test_ingest_protofast.py` checks both paths give identical tables, on real SDK output, on
every value type and on fuzzed bytes.

When the extension is not built (no C compiler at install time), `available()` is False and
every message takes the validating decoder: slower, same result.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from kvtrace.ingest.decode import (
    EVENT_SCHEMA,
    LINK_SCHEMA,
    SPAN_SCHEMA,
    Resource,
    Scope,
    StagedTables,
    proto_resource,
    proto_scope,
)
from kvtrace.ingest.errors import RecordError

_otlpfast: Any
try:  # the C extension, typed as Any (it has no stub)
    _otlpfast = importlib.import_module("kvtrace.ingest._otlpfast")
except ImportError:  # pragma: no cover - exercised only where the extension could not be built
    _otlpfast = None

_STRING = pa.string()


def available() -> bool:
    """Whether the C decoder is built (else every message takes the validating decoder)."""
    return _otlpfast is not None


def json_double(x: float) -> str:
    """The JSON text the C decoder writes for a double (orjson's, which tests hold it to)."""
    if _otlpfast is None:
        raise RuntimeError("ingest._otlpfast is not built")
    return str(_otlpfast.json_double(x))


def frame_resource_spans(records: Iterable[bytes]) -> bytes:
    """ResourceSpans messages -> one TracesData message holding them, in order."""
    parts: list[bytes] = []
    for data in records:
        parts.append(b"\x0a" + _varint(len(data)))
        parts.append(data)
    return b"".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_traces(data: bytes) -> StagedTables | None:
    """Spans, events and links staging tables of one TracesData / ExportTraceServiceRequest
    message, identical to what the validating decoder gives; None when that decoder must run."""
    got = decode_traces_located(data)
    return None if got is None else got[0]


def decode_traces_located(data: bytes) -> tuple[StagedTables, np.ndarray] | None:
    """decode_traces, and for each span the index of its ResourceSpans in the message (frame_resource_spans
    frames give one ResourceSpans each, so this tells which frame, and which file, a span came from)."""
    if _otlpfast is None:
        return None
    cols: dict[str, Any] | None = _otlpfast.decode(data)
    if cols is None:
        return None
    try:
        resources = _resources(data, cols["resources"])
        scopes = _scopes(data, cols["scopes"])
    except (DecodeError, RecordError, UnicodeDecodeError):
        return None
    tables = _spans(cols, resources, scopes), _events(cols), _links(cols)
    return tables, np.frombuffer(cols["res_idx"], dtype=np.int32)


# ------------------------------------------------------------------------------------ columns


def _mask(valid: bytes, n: int) -> tuple[pa.Buffer | None, int]:
    """A validity byte per row -> (Arrow bitmap or None when all valid, null count)."""
    v = np.frombuffer(valid, dtype=np.uint8)
    nulls = n - int(np.count_nonzero(v))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(v, bitorder="little").tobytes()), nulls


def _strings(col: tuple[bytes, bytes, bytes], n: int, nullable: bool) -> pa.Array:
    offsets, data, valid = col
    bitmap, nulls = _mask(valid, n) if nullable else (None, 0)
    return pa.Array.from_buffers(
        pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=nulls
    )


def _fixed_hex(data: bytes, width: int, n: int, valid: bytes | None = None) -> pa.Array:
    bitmap, nulls = _mask(valid, n) if valid is not None else (None, 0)
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), n, [bitmap, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)], null_count=nulls
    )


def _ints(data: bytes, dtype: pa.DataType, n: int, valid: bytes | None = None) -> pa.Array:
    bitmap, nulls = _mask(valid, n) if valid is not None else (None, 0)
    return pa.Array.from_buffers(dtype, n, [bitmap, pa.py_buffer(data)], null_count=nulls)


def _slice(data: bytes, off: int, length: int) -> bytes:
    return b"" if length < 0 else data[off : off + length]


def _resources(data: bytes, raw: bytes) -> list[Resource]:
    """Each ResourceSpans' Resource (message slice) and schema_url (string slice), finished by
    the validating decoder's own code."""
    cache: dict[tuple[bytes, bytes], Resource] = {}
    out = []
    for off, length, u_off, u_len in np.frombuffer(raw, dtype=np.int64).reshape(-1, 4).tolist():
        key = (_slice(data, off, length), _slice(data, u_off, u_len))
        res = cache.get(key)
        if res is None:
            res = cache[key] = proto_resource(resource_pb2.Resource.FromString(key[0]), key[1].decode())
        out.append(res)
    return out


def _scopes(data: bytes, raw: bytes) -> list[Scope]:
    """Each ScopeSpans' InstrumentationScope (message slice) and schema_url, as _resources."""
    cache: dict[tuple[bytes, bytes], Scope] = {}
    out = []
    for off, length, u_off, u_len in np.frombuffer(raw, dtype=np.int64).reshape(-1, 4).tolist():
        key = (_slice(data, off, length), _slice(data, u_off, u_len))
        scope = cache.get(key)
        if scope is None:
            scope = cache[key] = proto_scope(common_pb2.InstrumentationScope.FromString(key[0]), key[1].decode())
        out.append(scope)
    return out


def _spans(cols: dict[str, Any], resources: list[Resource], scopes: list[Scope]) -> pa.Table:
    n = int(cols["n"])
    res_idx = pa.array(np.frombuffer(cols["res_idx"], dtype=np.int32))
    scope_idx = pa.array(np.frombuffer(cols["scope_idx"], dtype=np.int32))

    def per_resource(values: list[Any], dtype: pa.DataType = _STRING) -> pa.Array:
        return pa.array(values, dtype).take(res_idx)

    def per_scope(values: list[Any], dtype: pa.DataType = _STRING) -> pa.Array:
        return pa.array(values, dtype).take(scope_idx)

    arrays = {
        "trace_id": _fixed_hex(cols["trace_id"], 32, n),
        "span_id": _fixed_hex(cols["span_id"], 16, n),
        "parent_span_id": _fixed_hex(cols["parent"], 16, n, cols["parent_valid"]),
        "name": _strings(cols["name"], n, nullable=False),
        "kind": _ints(cols["kind"], pa.int32(), n),
        "start_ns": _ints(cols["start"], pa.int64(), n, cols["start_valid"]),
        "end_ns": _ints(cols["end"], pa.int64(), n, cols["end_valid"]),
        "status_code": _ints(cols["status_code"], pa.int32(), n),
        "status_message": _strings(cols["status_message"], n, nullable=True),
        "scope_name": per_scope([s.name for s in scopes]),
        "scope_version": per_scope([s.version for s in scopes]),
        "service_name": per_resource([r.service_name for r in resources]),
        "instance_id": per_resource([r.instance_id for r in resources]),
        "host_name": per_resource([r.host_name for r in resources]),
        "service_version": per_resource([r.service_version for r in resources]),
        "role": per_resource([r.role for r in resources]),
        "resource_attributes": per_resource([r.attributes_json for r in resources]),
        "attributes": _strings(cols["attributes"], n, nullable=False),
        "rid": _strings(cols["rid"], n, nullable=True),
        "seq": pa.array(np.arange(n, dtype=np.int64)),
        "trace_state": _strings(cols["trace_state"], n, nullable=True),
        "flags": _ints(cols["flags"], pa.int64(), n),
        "dropped_attributes_count": _ints(cols["dropped_attrs"], pa.int64(), n),
        "dropped_events_count": _ints(cols["dropped_events"], pa.int64(), n),
        "dropped_links_count": _ints(cols["dropped_links"], pa.int64(), n),
        "scope_attributes": per_scope([s.attributes_json for s in scopes]),
        "scope_dropped_attributes_count": per_scope([s.dropped_attributes_count for s in scopes], pa.int64()),
        "scope_schema_url": per_scope([s.schema_url for s in scopes]),
        "resource_dropped_attributes_count": per_resource([r.dropped_attributes_count for r in resources], pa.int64()),
        "resource_schema_url": per_resource([r.schema_url for r in resources]),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in SPAN_SCHEMA], schema=SPAN_SCHEMA)


def _events(cols: dict[str, Any]) -> pa.Table:
    n = int(cols["n_ev"])
    own = [
        _strings(cols["ev_name"], n, nullable=True),
        _ints(cols["ev_time"], pa.int64(), n, cols["ev_time_valid"]),
        _strings(cols["ev_attributes"], n, nullable=False),
        _ints(cols["ev_dropped"], pa.int64(), n),
    ]
    return _per_span(cols, "ev", n, own, EVENT_SCHEMA)


def _links(cols: dict[str, Any]) -> pa.Table:
    n = int(cols["n_ln"])
    own = [
        _fixed_hex(cols["ln_trace"], 32, n, cols["ln_trace_valid"]),
        _fixed_hex(cols["ln_span_id"], 16, n, cols["ln_span_valid"]),
        _strings(cols["ln_attributes"], n, nullable=False),
        _strings(cols["ln_trace_state"], n, nullable=True),
        _ints(cols["ln_flags"], pa.int64(), n),
        _ints(cols["ln_dropped"], pa.int64(), n),
    ]
    return _per_span(cols, "ln", n, own, LINK_SCHEMA)


def _per_span(cols: dict[str, Any], prefix: str, n: int, own: list[pa.Array], schema: pa.Schema) -> pa.Table:
    """Events or links: span_seq, the span's trace and span ids, seq within the span, then `own`."""
    span_seq = _ints(cols[f"{prefix}_span"], pa.int64(), n)
    trace_id, span_id = _span_ids(cols, int(cols["n"]), span_seq)
    seq = _ints(cols[f"{prefix}_seq"], pa.int32(), n)
    return pa.Table.from_arrays([span_seq, trace_id, span_id, seq, *own], schema=schema)


def _span_ids(cols: dict[str, Any], spans_n: int, span_seq: pa.Array) -> tuple[pa.Array, pa.Array]:
    if not len(span_seq):
        return pa.array([], pa.string()), pa.array([], pa.string())
    trace_id = _fixed_hex(cols["trace_id"], 32, spans_n).take(span_seq)
    span_id = _fixed_hex(cols["span_id"], 16, spans_n).take(span_seq)
    return trace_id, span_id


__all__ = ["available", "decode_traces", "decode_traces_located", "frame_resource_spans", "json_double"]
