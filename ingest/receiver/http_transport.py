"""OTLP/HTTP transport: `POST /v1/traces`, protobuf or JSON, optional gzip/deflate (standard library).

Answers per the OTLP/HTTP specification: 200 with an ExportTraceServiceResponse in the request's
own encoding (with `partial_success` when spans were rejected); 400 undecodable; 401 without the
bearer token; 411 without Content-Length or a chunked body (read within the size limit); 413 over
a size limit; 415 unknown media type or encoding; 429 (spool full) and 503 (memory budget or
connection limit) with `Retry-After`. Error bodies are google.rpc.Status. `GET /status` returns the
receiver's counters as JSON.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from kvtrace.ingest.receiver.batch import CheckedBatch, ReceiverRefusal
from kvtrace.ingest.receiver.front import Front, Overloaded, Throttled, refusal_reason
from kvtrace.ingest.receiver.spool import KIND_JSON, KIND_PROTOBUF

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
_MEDIA = {"application/x-protobuf": KIND_PROTOBUF, "application/protobuf": KIND_PROTOBUF, "application/json": KIND_JSON}
# google.rpc.Code numbers for the Status body
_RPC_CODE = {400: 3, 401: 16, 404: 5, 411: 3, 413: 8, 415: 3, 429: 8, 503: 14}


def _response_body(batch: CheckedBatch) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if batch.rejected_spans:
        response.partial_success.rejected_spans = batch.rejected_spans
        response.partial_success.error_message = batch.message
    return response


class _BodyError(Exception):
    """A request body refused while it was read: the HTTP status and reason to answer with, and
    whether the body was read to its end (else the connection must close)."""

    def __init__(self, status: int, reason: str, message: str, drained: bool = False) -> None:
        super().__init__(message)
        self.status, self.reason, self.drained = status, reason, drained


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OtlpHttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes: without NODELAY, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str, kind: int, headers: dict[str, str] | None = None) -> None:
        st = status_pb2.Status(code=_RPC_CODE.get(status, 2), message=message)
        if kind == KIND_JSON:
            self._send(status, orjson.dumps({"code": st.code, "message": message}), "application/json", headers)
        else:
            self._send(status, st.SerializeToString(), "application/x-protobuf", headers)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/status":
            self._send_error(404, f"no such path {self.path}; OTLP traces go to POST {TRACES_PATH}", KIND_JSON)
            return
        if not self.server.front.authorized(self.headers.get("Authorization")):
            self._send_error(401, "missing or wrong bearer token", KIND_JSON, {"WWW-Authenticate": "Bearer"})
            return
        self._send(200, orjson.dumps(self.server.status()), "application/json")

    def _read_chunked(self, limit: int) -> bytes:
        """A Transfer-Encoding: chunked body (RFC 9112 7.1), refused past `limit` bytes. Past the
        limit the rest is read and dropped, up to 4x the limit, so that the client gets its 413
        rather than a reset connection; beyond that the connection is closed unread."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1026)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BodyError(400, "malformed", f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while self.rfile.readline(1026).strip():  # trailer fields, then the empty line
                    pass
                if total > limit:
                    raise _BodyError(413, "too_large", f"chunked request body of {total} bytes is over the limit "
                                     f"of {limit} bytes", drained=True)
                return b"".join(parts)
            total += size
            if total > 4 * limit:
                raise _BodyError(413, "too_large", f"chunked request body exceeds the limit of {limit} bytes")
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.read(2) != b"\r\n":
                raise _BodyError(400, "malformed", "chunked request body ended early")
            if total <= limit:
                parts.append(data)

    def do_POST(self) -> None:
        front = self.server.front
        media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        kind = _MEDIA.get(media, KIND_PROTOBUF)
        length_header = self.headers.get("Content-Length")

        def refuse(status: int, reason: str, message: str, headers: dict[str, str] | None = None,
                   body_unread: bool = True) -> None:
            front.count_refusal(reason)
            if body_unread:
                self.close_connection = True  # we did not read the body; the connection is unusable
            self._send_error(status, message, kind, headers)

        if self.path.split("?", 1)[0] != TRACES_PATH:
            refuse(404, "not_found", f"no such path {self.path}; OTLP traces go to POST {TRACES_PATH}")
            return
        if not front.authorized(self.headers.get("Authorization")):
            refuse(401, "unauthenticated", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            return
        if media not in _MEDIA:
            refuse(415, "unsupported", f"Content-Type {media!r} is not OTLP (application/x-protobuf or application/json)")
            return
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if not chunked and (length_header is None or not length_header.strip().isdigit()):
            refuse(411, "no_length", "Content-Length (or Transfer-Encoding: chunked) is required")
            return
        # A chunked body's length is known only once read: hold the request-size limit meanwhile.
        length = front.limits.max_request_bytes if chunked else int(length_header or 0)
        if length > front.limits.max_request_bytes:
            refuse(413, "too_large", f"request body is {length} bytes, limit {front.limits.max_request_bytes}")
            return
        retry = {"Retry-After": str(front.limits.retry_after_s)}
        try:
            front.reserve(length)
        except Overloaded as exc:
            refuse(503, "overloaded", str(exc), retry)
            return
        try:
            if chunked:
                try:
                    body = self._read_chunked(front.limits.max_request_bytes)
                except _BodyError as exc:
                    refuse(exc.status, exc.reason, str(exc), body_unread=not exc.drained)
                    return
            else:
                body = self.rfile.read(length)
                if len(body) != length:
                    refuse(400, "malformed", f"request body ended after {len(body)} of {length} bytes")
                    return
            try:
                batch = front.accept(body, kind, self.headers.get("Content-Encoding"))
            except ReceiverRefusal as exc:
                refuse(exc.status, refusal_reason(exc), str(exc), body_unread=False)
                return
            except Throttled as exc:
                refuse(429, "spool_full", str(exc), {"Retry-After": str(exc.retry_after_s)}, body_unread=False)
                return
            except Overloaded as exc:
                refuse(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after_s)}, body_unread=False)
                return
        finally:
            front.budget.release(length)
        response = _response_body(batch)
        if kind == KIND_JSON:
            self._send(200, json_format.MessageToJson(response, indent=None).encode(), "application/json")
        else:
            self._send(200, response.SerializeToString(), "application/x-protobuf")


class OtlpHttpServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server with a hard cap on concurrent connections."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], front: Front, status: Callable[[], dict[str, Any]]) -> None:
        self.front = front
        self.status = status
        self._connections = threading.BoundedSemaphore(front.limits.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self.front.count_refusal("connection_limit")
            body = b'{"code":14,"message":"connection limit reached"}'
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    + f"Retry-After: {self.front.limits.retry_after_s}\r\nContent-Length: {len(body)}\r\n".encode()
                    + b"Connection: close\r\n\r\n" + body
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()
