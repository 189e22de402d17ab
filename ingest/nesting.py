"""Protobuf messages nested too deep for upb: cut on the wire, so that the span is stored.

upb (the protobuf runtime) refuses a whole message nested deeper than 100 messages: an
attribute value with about 30 kvlist levels in one span made a receiver's batch, or a file's
ResourceSpans frame, undecodable, while the same value in OTLP JSON was stored. decode.py cuts
every array or kvlist value at level MAX_ATTRIBUTE_DEPTH (replaced by `decode.cut_marker(kind)`),
in JSON and protobuf alike; for a message upb cannot even parse, `cut_deep_values` does that cut
on the wire bytes first (the AnyValue becomes a string_value holding the marker; every other
byte is kept), and the result parses and decodes exactly as decode.py would decode the original.
It only walks the fields that lead to attribute values (resource, scope, span, event and link
attributes); its recursion ends at the cut, whatever the input's depth.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from kvtrace.ingest.decode import MAX_ATTRIBUTE_DEPTH, cut_marker

M = TypeVar("M", bound=Message)

# For each message type on the way to attribute values: field number -> (child type, whether
# the child's values are one level deeper). "traces" is TracesData / ExportTraceServiceRequest.
_CHILDREN: dict[str, dict[int, str]] = {
    "traces": {1: "resource_spans"},
    "resource_spans": {1: "resource", 2: "scope_spans"},
    "resource": {1: "key_value"},
    "scope_spans": {1: "scope", 2: "span"},
    "scope": {3: "key_value"},
    "span": {9: "key_value", 11: "event", 13: "link"},
    "event": {3: "key_value"},
    "link": {5: "key_value"},
    "key_value": {2: "any_value"},
    "any_value": {5: "array_value", 6: "kvlist_value"},
    "array_value": {1: "any_value"},
    "kvlist_value": {1: "key_value"},
}
_MARKERS = {5: cut_marker("array").encode(), 6: cut_marker("kvlist").encode()}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + 10, len(buf))):
        value |= (buf[i] & 0x7F) << shift
        if buf[i] < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("bad varint")


def _put_varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _rewrite(buf: bytes, kind: str, level: int, out: bytearray) -> None:
    children = _CHILDREN[kind]
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            _, pos = _varint(buf, pos)
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        elif wt == 2:
            n, body = _varint(buf, pos)
            pos = body + n
            if pos > len(buf):
                raise ValueError("truncated field")
            child = children.get(field)
            if child is not None:
                if kind == "any_value" and level >= MAX_ATTRIBUTE_DEPTH:
                    marker = _MARKERS[field]
                    out.append(0x0A)  # string_value
                    _put_varint(out, len(marker))
                    out += marker
                    continue
                # elements of an array or kvlist are one level deeper
                deeper = level + (kind in ("array_value", "kvlist_value"))
                inner = bytearray()
                _rewrite(buf[body:pos], child, deeper, inner)
                _put_varint(out, tag)
                _put_varint(out, len(inner))
                out += inner
                continue
        else:
            raise ValueError(f"wire type {wt}")
        if pos > len(buf):
            raise ValueError("truncated field")
        out += buf[start:pos]


def cut_deep_values(data: bytes, kind: str = "traces") -> bytes:
    """`data` (a TracesData / ExportTraceServiceRequest, or with kind="resource_spans" one
    ResourceSpans) with every array or kvlist attribute value at level MAX_ATTRIBUTE_DEPTH
    replaced by its cut marker. Raises ValueError for malformed wire data."""
    out = bytearray()
    _rewrite(data, kind, 0, out)
    return bytes(out)


def parse_cut(cls: type[M], data: bytes, kind: str = "traces") -> tuple[M, bytes]:
    """`cls.FromString(data)`; when upb refuses it for its depth, the same after
    cut_deep_values. Returns the message and the bytes it was parsed from; raises DecodeError
    (the first one) when neither parses."""
    try:
        return cls.FromString(data), data
    except DecodeError as exc:
        if "MaxDepth" not in str(exc):
            raise
        try:
            cut = cut_deep_values(data, kind)
            return cls.FromString(cut), cut
        except (ValueError, DecodeError):
            raise exc from None


__all__ = ["cut_deep_values", "parse_cut"]
