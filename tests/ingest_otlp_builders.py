"""Small real OTLP traces for the ingest tests, built with the opentelemetry-sdk.

`pd_request_spans()` records one PD-disaggregated request as kvtrace's conventions describe it
(prefill and decode instances on two hosts, stage slices, KV lifecycle spans, a forward with
its per-pool reads, a HiCache load, speculative-decoding attributes, an abort and a feedback
span), through real TracerProviders into an InMemorySpanExporter. The encoders below turn the
finished spans into the wire formats ingest accepts: protobuf ExportTraceServiceRequest (the
SDK's own encoder), and OTLP JSON with hex ids (the collector file exporter's form) or base64
ids (the protobuf JSON mapping).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, Status, StatusCode

T0 = 1_764_000_000_000_000_000  # 2025-11-24, ns
MS = 1_000_000


class SeededIds(IdGenerator):
    """Deterministic ids; `trace_bits=64` gives SGLang-style 64-bit trace ids."""

    def __init__(self, seed: int, trace_bits: int = 128) -> None:
        self._rng = random.Random(seed)
        self._trace_bits = trace_bits

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) | 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(self._trace_bits) | 1


def _provider(exporter: InMemorySpanExporter, ids: IdGenerator, instance: str, role: str, host: str) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": f"sglang-{role}",
                "service.instance.id": instance,
                "service.version": "v1.2.0",
                "host.name": host,
                "sglang.role": role,
            }
        ),
        id_generator=ids,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def pd_request_spans(seed: int = 1, rid: str = "a1b2c3d4e5f60718", trace_bits: int = 128) -> list[ReadableSpan]:
    """One request through prefill-0 (host-p) and decode-0 (host-d); spans in end order."""
    exporter = InMemorySpanExporter()
    ids = SeededIds(seed, trace_bits)
    p_tracer = _provider(exporter, ids, "prefill-0", "prefill", "host-p").get_tracer("sglang")
    d_tracer = _provider(exporter, ids, "decode-0", "decode", "host-d").get_tracer("sglang")
    room = "0x5f3a"
    pages = [17, 3, 4, 5, 16]

    def child(tracer: trace.Tracer, parent: trace.Span, name: str, start: int, end: int, attrs: dict[str, Any],
              links: Sequence[Link] = (), error: bool = False) -> trace.Span:
        span = tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=T0 + start,
                                 attributes=attrs, links=links)
        if error:
            span.set_status(Status(StatusCode.ERROR, "transfer failed"))
        span.end(end_time=T0 + end)
        return span

    p_root = p_tracer.start_span(f"prefill Req {rid[:8]}", start_time=T0, attributes={"rid": rid, "bootstrap_room": room})
    d_root = d_tracer.start_span(
        f"decode Req {rid[:8]}", context=trace.set_span_in_context(p_root), start_time=T0 + 1 * MS,
        attributes={"rid": rid, "bootstrap_room": room},
    )
    d_thread = d_tracer.start_span("scheduler", context=trace.set_span_in_context(d_root), start_time=T0 + 1 * MS,
                                   attributes={"tp_rank": 0, "pid": 4242})
    boot = child(d_tracer, d_thread, "decode_bootstrap", 1 * MS, 2 * MS, {})
    child(d_tracer, d_root, "kv.alloc", 2 * MS, 2 * MS,
          {"rid": rid, "tp_rank": 0, "kv.pool": "kv", "kv.page_ids": pages, "kv.page_size": 64})
    child(p_tracer, p_root, "prefill_forward", 1 * MS, 4 * MS, {"rid": rid},
          links=[Link(boot.get_span_context(), {"link.kind": "follows"})])
    child(p_tracer, p_root, "kv.transfer", 3 * MS, 9 * MS, {
        "rid": rid, "tp_rank": 0, "kv.pool": "kv", "kv.page_ids": pages, "bootstrap_room": room,
        "kv.transfer.dst_instance": "decode-0", "kv.transfer.dst_rank": 1, "kv.transfer.bytes": 327680,
        "kv.transfer.backend": "mooncake"}, error=True)
    child(d_tracer, d_thread, "decode_transferred", 2 * MS, 10 * MS, {})
    child(d_tracer, d_root, "hicache.load", 10 * MS, 12 * MS, {
        "rid": rid, "tp_rank": 0, "kv.pool": "index_k", "kv.page_ids": [40, 41], "hicache.direction": "L2_to_L1",
        "hicache.num_tokens": 128, "hicache.layer_done_offsets_ns": [500_000, 1_000_000, 1_500_000]})
    fwd = d_tracer.start_span("forward", context=trace.set_span_in_context(d_thread), start_time=T0 + 11 * MS,
                              attributes={"forward.rids": [rid, "other-rid-0001"], "forward.mode": "decode",
                                          "forward.batch_id": "b-77", "tp_rank": 0})
    child(d_tracer, fwd, "forward.read", 11 * MS, 13 * MS, {
        "rid": rid, "tp_rank": 0, "kv.pool": "index_k", "forward.layer_read_offsets_ns": [100_000, 900_000, 1_200_000]})
    fwd.end(end_time=T0 + 13 * MS)
    d_root.add_event("first_token", {"token.index": 0}, timestamp=T0 + 13 * MS)
    child(d_tracer, d_root, "request.abort", 14 * MS, 14 * MS,
          {"rid": rid, "abort.reason": "transfer_timeout", "kv.poll_state": "Transferring"})
    child(d_tracer, d_root, "kv.free", 14 * MS, 14 * MS, {
        "rid": rid, "tp_rank": 0, "kv.pool": "kv", "kv.page_ids": pages, "kv.free.mode": "immediate",
        "kv.free.reason": "aborted"})
    child(d_tracer, d_root, "feedback", 20 * MS, 20 * MS, {"rid": rid, "feedback.label": "garbled"})
    d_thread.end(end_time=T0 + 15 * MS)
    d_root.set_attributes({
        "gen_ai.usage.prompt_tokens": 70_000, "gen_ai.usage.completion_tokens": 9,
        "gen_ai.usage.cached_tokens": 64, "gen_ai.response.finish_reasons": ["abort"],
        "gen_ai.latency.time_to_first_token": 0.012, "gen_ai.latency.e2e": 0.015,
        "spec.verify_ct": 3, "spec.num_proposed_drafts": 9, "spec.num_correct_drafts": 6,
        "spec.accept_rate": 0.5, "spec.accept_length": 3.0, "spec.draft_tokens": 4,
        "spec.accepted_per_step": [3, 2, 1], "spec.step_end_offsets_ns": [12 * MS, 13 * MS, 14 * MS],
        "gen_ai.completion": "hello wor",
    })
    d_root.end(end_time=T0 + 15 * MS)
    p_root.end(end_time=T0 + 9 * MS)
    return list(exporter.get_finished_spans())


def to_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The SDK's own protobuf encoding of `spans`."""
    request: ExportTraceServiceRequest = encode_spans(spans)
    return request


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def to_otlp_json(request: ExportTraceServiceRequest, ids: str = "hex") -> dict[str, Any]:
    """OTLP JSON of `request`: ids as lower-case hex (OTLP/file exporter) or base64 (proto3 JSON)."""
    doc: dict[str, Any] = MessageToDict(request)
    if ids == "base64":
        return doc
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _b64_to_hex(span[key])
                for link in span.get("links", []):
                    link["traceId"] = _b64_to_hex(link["traceId"])
                    link["spanId"] = _b64_to_hex(link["spanId"])
    return doc


def json_lines(spans: Sequence[ReadableSpan], per_line: int = 4, ids: str = "hex") -> bytes:
    """JSON lines as the collector's file exporter writes them: one request per line."""
    lines = [
        orjson.dumps(to_otlp_json(to_request(spans[i : i + per_line]), ids))
        for i in range(0, len(spans), per_line)
    ]
    return b"\n".join(lines) + b"\n"


def delimited_protobuf(spans: Sequence[ReadableSpan], per_message: int = 4) -> bytes:
    """A length-delimited stream of ExportTraceServiceRequest messages."""
    out = bytearray()
    for i in range(0, len(spans), per_message):
        msg = to_request(spans[i : i + per_message]).SerializeToString()
        n = len(msg)
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                break
        out += msg
    return bytes(out)
