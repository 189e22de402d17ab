"""OTLP/gRPC transport: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on grpcio.

The method is registered with raw-bytes (de)serialisers rather than through the generated
`add_TraceServiceServicer_to_server`: the receiver spools exactly the bytes it received, so
decoding into a message and re-encoding it would only cost time. The service and method names
come from the opentelemetry-proto descriptor, so they cannot drift from the definition.

Status codes per the OTLP specification: OK with `partial_success` when spans were rejected;
INVALID_ARGUMENT undecodable; UNAUTHENTICATED without the bearer token; RESOURCE_EXHAUSTED
(spool full) and UNAVAILABLE (memory budget) carrying google.rpc.RetryInfo, both in the standard
`grpc-status-details-bin` trailer and in `google.rpc.retryinfo-bin`, which is where the Python
exporter looks. gRPC itself enforces the decompressed size limit (`grpc.max_receive_message_length`,
RESOURCE_EXHAUSTED) and gzip decompression; a request over `maximum_concurrent_rpcs` is refused
with RESOURCE_EXHAUSTED by grpcio before it reaches us.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from kvtrace.ingest.receiver.batch import MalformedPayload, ReceiverRefusal
from kvtrace.ingest.receiver.front import Front, Overloaded, Throttled, refusal_reason
from kvtrace.ingest.receiver.spool import KIND_PROTOBUF

log = logging.getLogger(__name__)

SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]
SERVICE_NAME = SERVICE.full_name
EXPORT_METHOD = SERVICE.methods_by_name["Export"].name


class _Status(NamedTuple):
    """A grpc.Status for `context.abort_with_status` (grpc.Status is a bare interface)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, bytes], ...]


def _retry_status(code: grpc.StatusCode, message: str, retry_after_s: int) -> _Status:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s))
    detail = any_pb2.Any()
    detail.Pack(retry)
    rich = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return _Status(code, message, (("grpc-status-details-bin", rich.SerializeToString()),
                                   ("google.rpc.retryinfo-bin", retry.SerializeToString())))


class OtlpGrpcService:
    """The Export handler; one instance serves every gRPC worker thread."""

    def __init__(self, front: Front) -> None:
        self.front = front

    def export(self, request: bytes, context: Any) -> bytes:
        front = self.front
        metadata = dict(context.invocation_metadata())
        if not front.authorized(metadata.get("authorization")):
            front.count_refusal("unauthenticated")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            front.reserve(len(request))
        except Overloaded as exc:
            front.count_refusal("overloaded")
            context.abort_with_status(_retry_status(grpc.StatusCode.UNAVAILABLE, str(exc), exc.retry_after_s))
        try:
            batch = front.accept(request, KIND_PROTOBUF, None)
        except MalformedPayload as exc:
            front.count_refusal(refusal_reason(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ReceiverRefusal as exc:
            front.count_refusal(refusal_reason(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Throttled as exc:
            front.count_refusal("spool_full")
            context.abort_with_status(_retry_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.retry_after_s))
        except Overloaded as exc:
            front.count_refusal("overloaded")
            context.abort_with_status(_retry_status(grpc.StatusCode.UNAVAILABLE, str(exc), exc.retry_after_s))
        finally:
            front.budget.release(len(request))
        response = ExportTraceServiceResponse()
        if batch.rejected_spans:
            response.partial_success.rejected_spans = batch.rejected_spans
            response.partial_success.error_message = batch.message
        return bytes(response.SerializeToString())


def start_grpc_server(front: Front, host: str, port: int, workers: int = 8) -> tuple[Any, int]:
    """Start the gRPC server; return it and the bound port (useful when `port` is 0)."""
    limits = front.limits
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otlp-grpc"),
        maximum_concurrent_rpcs=limits.max_connections,
        options=[
            ("grpc.max_receive_message_length", limits.max_decompressed_bytes),
            ("grpc.max_send_message_length", 4 << 20),
        ],
    )
    service = OtlpGrpcService(front)
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME, {EXPORT_METHOD: grpc.unary_unary_rpc_method_handler(service.export)}
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind OTLP/gRPC to {host}:{port}")
    server.start()
    return server, bound
