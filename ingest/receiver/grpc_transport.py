"""OTLP/gRPC transport: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on grpcio's asyncio server.

The method is registered with raw-bytes (de)serialisers rather than through the generated
`add_TraceServiceServicer_to_server`: the receiver spools exactly the bytes it received, so
decoding into a message and re-encoding it would only cost time. The service and method names
come from the opentelemetry-proto descriptor, so they cannot drift from the definition.

Status codes per the OTLP specification: OK with `partial_success` when spans were rejected;
INVALID_ARGUMENT undecodable; UNAUTHENTICATED without the bearer token; RESOURCE_EXHAUSTED
(spool full) and UNAVAILABLE (memory budget, per-client limit) carrying google.rpc.RetryInfo, both
in the standard `grpc-status-details-bin` trailer and in `google.rpc.retryinfo-bin`, which is where
the Python exporter looks; DEADLINE_EXCEEDED when the request message does not arrive within
`body_timeout_s`. gRPC itself enforces the decompressed size limit (`grpc.max_receive_message_length`,
RESOURCE_EXHAUSTED) and gzip decompression; a call over `maximum_concurrent_rpcs` is refused with
RESOURCE_EXHAUSTED by grpcio before it reaches us.

Stalled clients hold no thread. The server is grpc.aio on one event-loop thread, and Export is
registered as stream-unary (the same bytes on the wire as unary), so the handler runs when the
call's headers arrive, before its message: it checks the token first (an unauthenticated call is
refused without its message being waited for), then the per-client cap (in-flight calls per
source IP address), then waits at most `body_timeout_s` for the message. Only a complete message
takes a worker thread (`workers`), for the check and the fsync'd spool append. Connections that
carry no call are closed after `idle_timeout_s` (`grpc.max_connection_idle_ms`), a client must
finish the HTTP/2 handshake within `header_timeout_s`, the server pings quiet connections to find
dead peers (keepalive), and no connection lives longer than `MAX_CONNECTION_AGE_S` (clients
reconnect transparently after GOAWAY; calls in flight get `body_timeout_s` to finish).
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
MAX_CONNECTION_AGE_S = 30 * 60
KEEPALIVE_S = 60


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


def peer_host(peer: str) -> str:
    """The client of a gRPC peer string: `ipv4:127.0.0.1:5000` -> `127.0.0.1`, `ipv6:[::1]:5000` -> `::1`."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


class ClientCounter:
    """Calls in flight per client, capped."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_enter(self, client: str) -> bool:
        with self._lock:
            n = self._counts.get(client, 0)
            if n >= self.cap:
                return False
            self._counts[client] = n + 1
            return True

    def leave(self, client: str) -> None:
        with self._lock:
            n = self._counts.get(client, 0) - 1
            if n > 0:
                self._counts[client] = n
            else:
                self._counts.pop(client, None)


class OtlpGrpcService:
    """The Export handler (a coroutine on the server's event loop); the CPU and disk work of a
    request runs on `pool`."""

    def __init__(self, front: Front, pool: ThreadPoolExecutor) -> None:
        self.front = front
        self.pool = pool
        self.clients = ClientCounter(front.limits.max_connections_per_client)

    async def export(self, requests: Any, context: Any) -> bytes:
        front = self.front
        limits = front.limits
        metadata = dict(context.invocation_metadata() or ())
        if not front.authorized(metadata.get("authorization")):
            front.count_refusal("unauthenticated")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        client = peer_host(context.peer() or "")
        if not self.clients.try_enter(client):
            front.count_refusal("client_limit")
            await context.abort_with_status(_retry_status(
                grpc.StatusCode.UNAVAILABLE, f"client {client} has {self.clients.cap} calls in flight already "
                "(the per-client limit)", limits.retry_after_s))
        try:
            try:
                request = await asyncio.wait_for(context.read(), timeout=limits.body_timeout_s)
            except TimeoutError:
                front.count_refusal("body_timeout")
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"request message not received within {limits.body_timeout_s:g} s")
            if not isinstance(request, bytes):
                # grpc.aio.EOF: no message came. Mostly grpcio refused it already (over
                # max_receive_message_length: RESOURCE_EXHAUSTED, which the client gets); the two
                # look alike here, so this is not counted as a refusal of ours.
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
            return await self._export_one(request, context)
        finally:
            self.clients.leave(client)

    async def _export_one(self, request: bytes, context: Any) -> bytes:
        front = self.front
        try:
            front.reserve(len(request))
        except Overloaded as exc:
            front.count_refusal("overloaded")
            await context.abort_with_status(_retry_status(grpc.StatusCode.UNAVAILABLE, str(exc), exc.retry_after_s))
        try:
            loop = asyncio.get_running_loop()
            batch = await loop.run_in_executor(self.pool, front.accept, request, KIND_PROTOBUF, None)
        except MalformedPayload as exc:
            front.count_refusal(refusal_reason(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ReceiverRefusal as exc:
            front.count_refusal(refusal_reason(exc))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Throttled as exc:
            front.count_refusal("spool_full")
            await context.abort_with_status(_retry_status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc),
                                                          exc.retry_after_s))
        except Overloaded as exc:
            front.count_refusal("overloaded")
            await context.abort_with_status(_retry_status(grpc.StatusCode.UNAVAILABLE, str(exc), exc.retry_after_s))
        finally:
            front.budget.release(len(request))
        response = ExportTraceServiceResponse()
        if batch.rejected_spans:
            response.partial_success.rejected_spans = batch.rejected_spans
            response.partial_success.error_message = batch.message
        return bytes(response.SerializeToString())


class GrpcServer:
    """A grpc.aio server running on its own event-loop thread; `stop()` from any thread."""

    def __init__(self, front: Front, host: str, port: int, workers: int = 8) -> None:
        self.front = front
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otlp-grpc")
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-grpc-loop", daemon=True)
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(host, port, workers), self._loop).result(30)
        except BaseException:
            self._close_loop()
            raise

    async def _start(self, host: str, port: int, workers: int) -> int:
        limits = self.front.limits
        ms = 1000
        server = grpc.aio.server(
            maximum_concurrent_rpcs=limits.max_connections,
            options=[
                ("grpc.max_receive_message_length", limits.max_decompressed_bytes),
                ("grpc.max_send_message_length", 4 << 20),
                ("grpc.max_concurrent_streams", limits.max_connections_per_client),
                ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * ms)),
                ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_S * ms),
                ("grpc.max_connection_age_grace_ms", int(limits.body_timeout_s * ms)),
                ("grpc.server_handshake_timeout_ms", int(limits.header_timeout_s * ms)),
                ("grpc.keepalive_time_ms", KEEPALIVE_S * ms),
                ("grpc.keepalive_timeout_ms", 20 * ms),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not two receivers sharing it
            ],
        )
        service = OtlpGrpcService(self.front, self._pool)
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME, {EXPORT_METHOD: grpc.stream_unary_rpc_method_handler(service.export)}
        )
        server.add_generic_rpc_handlers((handler,))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc.aio raises where grpcio's own server returned 0
            raise OSError(f"cannot bind OTLP/gRPC to {address}: {exc}") from exc
        if bound == 0:
            raise OSError(f"cannot bind OTLP/gRPC to {address}")
        await server.start()
        self._server = server
        return int(bound)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop serving (calls in flight get `grace` seconds); the returned event is already set,
        for the `server.stop(grace).wait()` spelling of grpcio's own server."""
        done = threading.Event()
        if self._server is not None and not self._loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
            try:
                future.result(timeout=(grace or 0) + 10)
            except Exception:  # a loop already stopping; nothing is left to wait for
                log.debug("grpc server stop", exc_info=True)
            self._server = None
        self._close_loop()
        done.set()
        return done

    def _close_loop(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._loop.is_running():
                self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def start_grpc_server(front: Front, host: str, port: int, workers: int = 8) -> tuple[GrpcServer, int]:
    """Start the gRPC server; return it and the bound port (useful when `port` is 0)."""
    server = GrpcServer(front, host, port, workers)
    return server, server.port
