"""Emit span records through the real opentelemetry-sdk into OTLP files, one per instance.

One `TracerProvider` per (instance, service.version) with its `Resource`; spans are started and
ended with explicit times and preset ids (`PresetIdGenerator`: SGLang's 64-bit trace ids). A
`SpanExporter` encodes with opentelemetry-proto's own encoder (`encode_spans`) and writes what an
OpenTelemetry Collector file exporter writes: JSON lines, one `{"resourceSpans":[...]}` object
per export batch, ids as hex, int64 as decimal strings, enums as integers. With
`fmt="protobuf"` it writes a stream of varint-length-prefixed `TracesData` messages instead.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from google.protobuf import json_format
from google.protobuf.internal.encoder import _VarintBytes
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.version import __version__ as SDK_VERSION
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

from kvtrace.simulator.records import STATUS_ERROR, ResourceAttrs, SpanRecord

BATCH_SPANS = 256  # spans per written line / message, like a BatchSpanProcessor's export batch
FORMATS = ("json", "protobuf")


class PresetIdGenerator(IdGenerator):
    """Hands the SDK the ids the model chose (so both emitters agree); trace ids are < 2**64."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


def hexify_ids(doc: dict[str, Any]) -> dict[str, Any]:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping writes bytes as base64. Fix in place."""
    for rs in doc.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
                for link in span.get("links", ()):
                    for key in ("traceId", "spanId"):
                        link[key] = base64.b64decode(link[key]).hex()
    return doc


class OtlpFileWriter:
    """Writes encoded batches of one instance to `<out>/<instance>.otlp.jsonl` (or `.otlp.pb`)."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.fmt = fmt
        self._fh: BinaryIO = path.open("wb")
        self._batch: list[ReadableSpan] = []

    def add(self, spans: Sequence[ReadableSpan]) -> None:
        self._batch.extend(spans)
        if len(self._batch) >= BATCH_SPANS:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        request = encode_spans(self._batch)
        self._batch = []
        if self.fmt == "json":
            doc = json_format.MessageToDict(request, use_integers_for_enums=True)
            self._fh.write(orjson.dumps(hexify_ids(doc)) + b"\n")
        else:
            data = TracesData(resource_spans=request.resource_spans).SerializeToString()
            self._fh.write(_VarintBytes(len(data)) + data)

    def close(self) -> None:
        self.flush()
        self._fh.close()


class _WriterExporter(SpanExporter):
    def __init__(self, writer: OtlpFileWriter) -> None:
        self.writer = writer

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.writer.add(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def file_name(instance_id: str, fmt: str) -> str:
    return f"{instance_id}.otlp.jsonl" if fmt == "json" else f"{instance_id}.otlp.pb"


class SdkSink:
    """SpanSink that replays each record through a TracerProvider of its instance and version (or of
    the record's own process `resource` and `scope`, in stock SGLang mode)."""

    def __init__(self, out_dir: Path, fmt: str = "json") -> None:
        self.out_dir = out_dir
        self.fmt = fmt
        self._writers: dict[str, OtlpFileWriter] = {}
        # one provider per (instance, version, process resource, scope)
        self._tracers: dict[tuple[str, str, ResourceAttrs | None, str],
                            tuple[trace_api.Tracer, PresetIdGenerator, TracerProvider]] = {}

    def _tracer(self, record: SpanRecord) -> tuple[trace_api.Tracer, PresetIdGenerator]:
        inst, version = record.instance, record.version
        key = (inst.instance_id, version, record.resource, record.scope)
        if key not in self._tracers:
            writer = self._writers.get(inst.instance_id)
            if writer is None:
                writer = OtlpFileWriter(self.out_dir / file_name(inst.instance_id, self.fmt), self.fmt)
                self._writers[inst.instance_id] = writer
            ids = PresetIdGenerator()
            attrs = (dict(record.resource) if record.resource is not None
                     else inst.resource_attributes(version, SDK_VERSION))
            provider = TracerProvider(resource=Resource(attrs), id_generator=ids)
            provider.add_span_processor(SimpleSpanProcessor(_WriterExporter(writer)))
            self._tracers[key] = (provider.get_tracer(record.scope), ids, provider)
        tracer, ids, _ = self._tracers[key]
        return tracer, ids

    def emit(self, record: SpanRecord) -> None:
        tracer, ids = self._tracer(record)
        ids.trace_id, ids.span_id = record.trace_id, record.span_id
        sampled = TraceFlags(TraceFlags.SAMPLED)
        context = Context()
        if record.parent_id is not None:
            parent = SpanContext(record.trace_id, record.parent_id, is_remote=record.parent_remote,
                                 trace_flags=sampled)
            context = trace_api.set_span_in_context(trace_api.NonRecordingSpan(parent))
        remote = record.links_remote or (False,) * len(record.links)
        links = [Link(SpanContext(t, s, is_remote=r, trace_flags=sampled))
                 for (t, s), r in zip(record.links, remote, strict=True)]
        span = tracer.start_span(record.name, context=context, attributes=record.attributes, links=links,
                                 start_time=record.start_ns)
        if record.status_code == STATUS_ERROR:
            span.set_status(Status(StatusCode.ERROR, record.status_message))
        span.end(end_time=record.end_ns)

    def close(self) -> None:
        for _, _, provider in self._tracers.values():
            provider.shutdown()
        for writer in self._writers.values():
            writer.close()
