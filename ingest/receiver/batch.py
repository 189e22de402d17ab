"""What the receiver checks before it acknowledges a batch, shared by the gRPC and HTTP transports.

The receiver does not ingest (that is `ingest.ingest_payload`, run later by the store writer); it
only makes sure a batch is worth spooling and tells the exporter the truth about it:

- the request body is decompressed under a hard byte limit (a gzip bomb is refused);
- the payload must decode as an OTLP ExportTraceServiceRequest (protobuf or JSON), else 400;
- spans whose ids the store would refuse (the rules of `ingest.decode.normalise_trace_id` and
  `normalise_span_id`: trace id 16 bytes, or SGLang's 8, non-zero; span id 8 non-zero bytes; hex
  or base64 in JSON) are rejected and removed before spooling, and reported as a partial success
  with their count and the first few span positions. Everything spooled was accepted;
- a protobuf request upb refuses as a whole while its framing holds (one span with invalid UTF-8
  in a string, say) is taken apart as ingest takes a file's frame apart
  (`decode.add_proto_resource_spans_bytes`): each ResourceSpans, ScopeSpans and Span is parsed
  alone, the spans upb refuses (all of a refused resource or scope) are rejected like spans with
  bad ids, with their position and reason, and the rest are spooled. A request whose framing does
  not hold (bytes that are not OTLP) is refused whole: 400.

Checks deeper than ids (timestamps, attribute values) happen in `ingest.ingest_payload` after
the acknowledgement; a span refused there goes to the store's quarantine table with its reason
and is counted in the receiver's `rejected_after_ack`, so nothing is dropped silently.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from kvtrace.ingest.decode import normalise_span_id, normalise_trace_id
from kvtrace.ingest.errors import RecordError
from kvtrace.ingest.nesting import parse_cut, span_utf8_error, split_resource_spans, wire_span_id
from kvtrace.ingest.receiver.spool import KIND_JSON, KIND_PROTOBUF

_MAX_EXAMPLES = 3
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
M = TypeVar("M", bound=Message)


class ReceiverRefusal(Exception):
    """A request the receiver refuses as a whole; `status` is the HTTP status it maps to."""

    status = 400


class MalformedPayload(ReceiverRefusal):
    """The payload (or its compression) cannot be decoded: 400, not retryable."""

    status = 400


class PayloadTooLarge(ReceiverRefusal):
    """The request body or its decompressed form is over the configured limit: 413."""

    status = 413


class UnsupportedMediaType(ReceiverRefusal):
    """Content-Type or Content-Encoding that OTLP/HTTP does not define: 415."""

    status = 415


@dataclass(frozen=True)
class CheckedBatch:
    """A decoded request: the bytes to spool and what to tell the exporter."""

    kind: int
    payload: bytes  # what gets spooled: the original bytes, minus rejected spans if any
    accepted_spans: int
    rejected_spans: int
    message: str  # empty on full success


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo Content-Encoding (identity, gzip, deflate) without ever holding more than `max_bytes`."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"request body is {len(body)} bytes, limit {max_bytes}")
        return body
    if enc in ("gzip", "x-gzip"):
        wbits = 31
    elif enc == "deflate":
        # HTTP "deflate" is the zlib format; a few clients send raw deflate, so sniff the header.
        wbits = 15 if len(body) >= 2 and (body[0] & 0x0F) == 8 and ((body[0] << 8) | body[1]) % 31 == 0 else -15
    else:
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)")
    out = bytearray()
    rest = body
    try:
        while rest:
            d = zlib.decompressobj(wbits)
            out += d.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes or d.unconsumed_tail:
                raise PayloadTooLarge(f"decompressed request is over the limit of {max_bytes} bytes")
            if not d.eof:
                raise MalformedPayload(f"truncated {enc} stream")
            rest = d.unused_data  # a gzip body may hold several members
    except zlib.error as exc:
        raise MalformedPayload(f"invalid {enc} stream: {exc}") from exc
    return bytes(out)


def _id_problem(trace_id: object, span_id: object) -> str | None:
    """Why the store would refuse these ids, or None. Fast path for the common well-formed bytes."""
    if (
        isinstance(trace_id, bytes) and isinstance(span_id, bytes) and len(trace_id) == 16 and len(span_id) == 8
        and trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN
    ):
        return None
    if not trace_id:
        return "trace id is missing"
    if not span_id:
        return "span id is missing"
    try:
        normalise_trace_id(trace_id)
        normalise_span_id(span_id)
    except RecordError as exc:
        return str(exc)
    return None


def _message(rejected: int, examples: list[str]) -> str:
    if not rejected:
        return ""
    more = "" if rejected <= len(examples) else f"; and {rejected - len(examples)} more"
    return f"{rejected} span(s) rejected: " + "; ".join(examples) + more


@dataclass
class _Rejected:
    """Spans rejected so far: how many, and the first few positions with their reasons."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, problem: str) -> None:
        self.count += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{where}: {problem}")

    def message(self) -> str:
        return _message(self.count, self.examples)


def check_protobuf(payload: bytes) -> CheckedBatch:
    """Decode an OTLP/protobuf ExportTraceServiceRequest; drop and report spans with invalid ids,
    and, when upb refuses the request as a whole, the spans it refuses (_salvaged)."""
    try:
        # nested too deep for upb: values cut at decode.MAX_ATTRIBUTE_DEPTH, as ingest stores them
        request, payload = parse_cut(ExportTraceServiceRequest, payload)
    except DecodeError as exc:
        return _salvaged(payload, exc)
    accepted = 0
    rejected = _Rejected()
    for r, resource_spans in enumerate(request.resource_spans):
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            spans = scope_spans.spans
            bad: list[int] = []
            # The per-span field access is most of the receiver's CPU per request: one comprehension
            # with the common well-formed case inlined (~25% cheaper than a call per span); only the
            # spans it flags go through the full rules (SGLang's 8-byte trace ids pass there).
            for i in [i for i, span in enumerate(spans)
                      if not (len(t := span.trace_id) == 16 and t != _ZERO_TRACE
                              and len(p := span.span_id) == 8 and p != _ZERO_SPAN)]:
                span = spans[i]
                problem = _id_problem(span.trace_id, span.span_id)
                if problem is not None:
                    bad.append(i)
                    rejected.add(f"resource_spans[{r}].scope_spans[{s}].spans[{i}] {span.name!r}", problem)
            accepted += len(spans) - len(bad)
            for i in reversed(bad):
                del spans[i]
    if rejected.count:
        payload = request.SerializeToString()
    return CheckedBatch(KIND_PROTOBUF, payload, accepted, rejected.count, rejected.message())


def _parsed(cls: type[M], data: bytes, kind: str) -> tuple[M | None, str]:
    """`data` parsed alone as `cls` (cut where nested too deep, as parse_cut does), or None and
    upb's reason."""
    try:
        return parse_cut(cls, data, kind)[0], ""
    except DecodeError as exc:
        return None, str(exc)


def _salvaged(payload: bytes, refusal: DecodeError) -> CheckedBatch:
    """A request upb refused as a whole, taken apart on the wire (nesting.split_resource_spans)
    and each ResourceSpans head, ScopeSpans head and Span parsed alone. Rejected: the spans upb
    refuses, every span of a resource or scope it refuses, and spans with ids the store would
    refuse; the rest are spooled, re-encoded. MalformedPayload when the framing does not hold."""
    try:
        fields = UnknownFieldSet(empty_pb2.Empty.FromString(payload))  # the request's fields, unparsed
        frames = [f.data for f in fields if f.field_number == 1 and f.wire_type == 2]  # resource_spans
        parts = [split_resource_spans(frame) for frame in frames]
    except (DecodeError, ValueError):
        raise MalformedPayload(f"undecodable OTLP protobuf ExportTraceServiceRequest: {refusal}") from refusal
    request = ExportTraceServiceRequest()
    accepted = 0
    rejected = _Rejected()
    for r, (head, scopes) in enumerate(parts):
        resource, why = _parsed(trace_pb2.ResourceSpans, head, "resource_spans")
        for s, (scope_head, spans) in enumerate(scopes):
            scope, scope_why = _parsed(trace_pb2.ScopeSpans, scope_head, "scope_spans")
            if resource is None or scope is None:
                lost = f"resource: undecodable protobuf ResourceSpans: {why}" if resource is None else (
                    f"scope: undecodable protobuf ScopeSpans: {scope_why}")
                for i, data in enumerate(spans):
                    rejected.add(_wire_where(r, s, i, data), lost)
                continue
            for i, data in enumerate(spans):
                span, span_why = _parsed(trace_pb2.Span, data, "span")
                if span is None:
                    utf8 = span_utf8_error(data)
                    rejected.add(_wire_where(r, s, i, data), f"undecodable protobuf Span: {utf8 or span_why}")
                    continue
                problem = _id_problem(span.trace_id, span.span_id)
                if problem is not None:
                    rejected.add(f"resource_spans[{r}].scope_spans[{s}].spans[{i}] {span.name!r}", problem)
                    continue
                scope.spans.append(span)
                accepted += 1
            resource.scope_spans.append(scope)
        if resource is not None:
            request.resource_spans.append(resource)
    return CheckedBatch(KIND_PROTOBUF, request.SerializeToString(), accepted, rejected.count, rejected.message())


def _wire_where(r: int, s: int, i: int, span: bytes) -> str:
    """A span's position, and its span id as hex when its bytes hold one (upb could not parse it)."""
    span_id = wire_span_id(span)
    where = f"resource_spans[{r}].scope_spans[{s}].spans[{i}]"
    return f"{where} (span id {span_id})" if span_id else where


def _list_field(obj: dict[str, Any], camel: str, snake: str, where: str) -> list[Any]:
    value = obj.get(camel, obj.get(snake, []))
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"OTLP/JSON {where}.{camel} must be an array")
    return value


def check_json(payload: bytes) -> CheckedBatch:
    """Decode an OTLP/JSON ExportTraceServiceRequest; drop and report spans with invalid ids."""
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"undecodable OTLP/JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise MalformedPayload("OTLP/JSON ExportTraceServiceRequest must be an object")
    accepted = rejected = 0
    examples: list[str] = []
    for r, resource_spans in enumerate(_list_field(request, "resourceSpans", "resource_spans", "request")):
        where_r = f"resourceSpans[{r}]"
        if not isinstance(resource_spans, dict):
            raise MalformedPayload(f"OTLP/JSON {where_r} must be an object")
        for s, scope_spans in enumerate(_list_field(resource_spans, "scopeSpans", "scope_spans", where_r)):
            where_s = f"{where_r}.scopeSpans[{s}]"
            if not isinstance(scope_spans, dict):
                raise MalformedPayload(f"OTLP/JSON {where_s} must be an object")
            spans = _list_field(scope_spans, "spans", "spans", where_s)
            kept = []
            for i, span in enumerate(spans):
                if not isinstance(span, dict):
                    raise MalformedPayload(f"OTLP/JSON {where_s}.spans[{i}] must be an object")
                problem = _id_problem(span.get("traceId", span.get("trace_id")), span.get("spanId", span.get("span_id")))
                if problem is None:
                    kept.append(span)
                    continue
                rejected += 1
                if len(examples) < _MAX_EXAMPLES:
                    examples.append(f"{where_s}.spans[{i}] {span.get('name')!r}: {problem}")
            accepted += len(kept)
            if len(kept) != len(spans):
                scope_spans["spans"] = kept
    if rejected:
        payload = orjson.dumps(request)
    return CheckedBatch(KIND_JSON, payload, accepted, rejected, _message(rejected, examples))
