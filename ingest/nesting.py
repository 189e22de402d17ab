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


def _fields(buf: bytes) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, start of the field, end of the field) of each field of `buf`;
    for a length-delimited field also where its body starts is start + header (see _body)."""
    out = []
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        wt = tag & 7
        if wt == 0:
            _, pos = _varint(buf, pos)
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        elif wt == 2:
            n, body = _varint(buf, pos)
            pos = body + n
        else:
            raise ValueError(f"wire type {wt}")
        if pos > len(buf):
            raise ValueError("truncated field")
        out.append((tag >> 3, wt, start, pos))
    return out


def _body(buf: bytes, start: int, end: int) -> bytes:
    """The body of the length-delimited field buf[start:end]."""
    _, pos = _varint(buf, start)
    _, body = _varint(buf, pos)
    return buf[body:end]


def split_resource_spans(data: bytes) -> tuple[bytes, list[tuple[bytes, list[bytes]]]]:
    """A ResourceSpans frame on the wire -> (the frame without its scope_spans, [(each ScopeSpans
    without its spans, [each Span's bytes])]), so that each part is parsed alone when upb refuses
    the whole (one span's invalid UTF-8 then costs that span only). Raises ValueError for
    malformed wire data."""
    head = bytearray()
    scopes: list[tuple[bytes, list[bytes]]] = []
    for field, wt, start, end in _fields(data):
        if field == 2 and wt == 2:
            ss = _body(data, start, end)
            scope_head = bytearray()
            spans: list[bytes] = []
            for f2, wt2, s2, e2 in _fields(ss):
                if f2 == 2 and wt2 == 2:
                    spans.append(_body(ss, s2, e2))
                else:
                    scope_head += ss[s2:e2]
            scopes.append((bytes(scope_head), spans))
        else:
            head += data[start:end]
    return bytes(head), scopes


def wire_span_id(span: bytes) -> str | None:
    """The hex span_id (field 2) of a Span's wire bytes, or None (for quarantine rows of spans
    that upb refuses)."""
    try:
        for field, wt, start, end in _fields(span):
            if field == 2 and wt == 2:
                return _body(span, start, end).hex() or None
    except ValueError:
        return None
    return None


# The string fields of a Span and of the messages inside it (field -> name), and the messages
# that hold more of them (field -> kind), for span_utf8_error.
_STRINGS: dict[str, dict[int, str]] = {
    "span": {3: "trace_state", 5: "name"},
    "event": {2: "event name"},
    "link": {3: "link trace_state"},
    "status": {2: "status message"},
    "key_value": {1: "attribute key"},
    "any_value": {1: "attribute string value"},
}
_HOLDERS: dict[str, dict[int, str]] = {
    "span": {9: "key_value", 11: "event", 13: "link", 15: "status"},
    "event": {3: "key_value"},
    "link": {4: "key_value"},
    "key_value": {2: "any_value"},
    "any_value": {5: "array_value", 6: "kvlist_value"},
    "array_value": {1: "any_value"},
    "kvlist_value": {1: "key_value"},
}


def span_utf8_error(span: bytes, kind: str = "span", depth: int = 0) -> str | None:
    """Which string field of a Span's wire bytes is not valid UTF-8 ("invalid UTF-8 in its name"),
    the usual reason upb refuses a span; None when none is (or the bytes are malformed)."""
    if depth > MAX_ATTRIBUTE_DEPTH * 2 + 4:
        return None
    try:
        fields = _fields(span)
    except ValueError:
        return None
    for field, wt, start, end in fields:
        if wt != 2:
            continue
        body = _body(span, start, end)
        name = _STRINGS.get(kind, {}).get(field)
        if name is not None:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                return f"invalid UTF-8 in its {name}"
        child = _HOLDERS.get(kind, {}).get(field)
        if child is not None:
            found = span_utf8_error(body, child, depth + 1)
            if found is not None:
                return found
    return None


__all__ = ["cut_deep_values", "parse_cut", "span_utf8_error", "split_resource_spans", "wire_span_id"]
