"""OTLP/HTTP transport: `POST /v1/traces`, protobuf or JSON, optional gzip/deflate (standard library).

Answers per the OTLP/HTTP specification: 200 with an ExportTraceServiceResponse in the request's
own encoding (with `partial_success` when spans were rejected); 400 undecodable or badly framed
(two Content-Length fields, a Transfer-Encoding whose final coding is not chunked, a chunk size
that is not hex); 401 without the bearer token; 408 when the request head or body does not arrive
in time; 411 without Content-Length or a chunked body (read within the size limit); 413 over a size
limit; 415 unknown media type or encoding; 429 (spool full) and 503 (memory budget or connection
limit) with `Retry-After`; 501 a transfer coding other than chunked. Error bodies are
google.rpc.Status. `GET /status` returns the receiver's counters as JSON.

What a connection can hold, and for how long (`front.Limits`):

- every read has a deadline: the request head must arrive within `header_timeout_s` of the
  connection opening (or of the first byte of a keep-alive request), the body within
  `body_timeout_s` of the head, and a keep-alive connection may wait `idle_timeout_s` for its next
  request. A socket that sends one byte and then nothing is answered 408 and closed;
- the bearer token is checked as soon as the head is parsed (before `100 Continue`, before any
  body byte is read or any memory reserved); only then does the connection count as busy;
- the memory budget is reserved piece by piece as body bytes arrive (`_PIECE`), never the whole
  request-size limit up front, so a stalled request holds at most one piece;
- connection slots: at most `max_connections` in all and `max_connections_per_client` per client,
  a client being a source IP address (all its ports together; behind a NAT, a proxy or a Collector
  that is one client). When a new connection finds the slots full, a connection that holds a slot
  without doing work (still waiting for its request head, or idle between requests) is closed to
  make room: first those of the new connection's own client, else the oldest of the client that
  holds the most. Busy (authenticated, mid-request) connections are never evicted; only when every
  slot is busy is the newcomer answered 503.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
_RPC_CODE = {400: 3, 401: 16, 404: 5, 408: 4, 411: 3, 413: 8, 415: 3, 429: 8, 501: 12, 503: 14}
_PIECE = 256 << 10  # body bytes read (and reserved in the memory budget) at a time
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_MAX_TRAILER_LINES = 64

# connection states
PENDING = "pending"  # waiting for (or reading) a request head: evictable
IDLE = "idle"  # keep-alive, between requests: evictable
BUSY = "busy"  # head read and authorized, request being served: never evicted


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


class _ReadTimeout(TimeoutError):
    """The deadline of the current read phase (head, body or idle wait) passed."""


class _DeadlineReader(io.RawIOBase):
    """The read side of a connection where every `recv` waits at most until `deadline`
    (time.monotonic()), so a peer that trickles bytes cannot stretch a phase past it. Between reads
    the socket keeps `send_timeout_s`, which bounds writes to a peer that does not read."""

    def __init__(self, sock: socket.socket, send_timeout_s: float) -> None:
        super().__init__()
        self._sock = sock
        self._send_timeout_s = send_timeout_s
        self.deadline = time.monotonic()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _ReadTimeout("read deadline passed")
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise _ReadTimeout("read deadline passed") from None
        finally:
            self._sock.settimeout(self._send_timeout_s)


@dataclass(eq=False)
class _Slot:
    """One accepted connection in the slot table."""

    sock: socket.socket
    client: str
    since: float  # when it was accepted, then when it last changed state
    state: str = PENDING
    evicted: bool = False


class ConnectionSlots:
    """The HTTP connection table: a total cap, a per-client cap, and eviction of connections that
    hold a slot without working (see the module docstring)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = max(1, min(per_client, total))
        self._slots: dict[socket.socket, _Slot] = {}
        self._by_client: dict[str, list[_Slot]] = {}
        self._lock = threading.Lock()
        self.evicted = 0

    def admit(self, sock: socket.socket, client: str) -> _Slot | str:
        """A slot for a new connection (evicting an idle or pending one if need be), or the reason
        it gets none: "client_limit" or "connection_limit"."""
        with self._lock:
            mine = self._by_client.get(client, [])
            victim: _Slot | None = None
            full = len(self._slots) >= self.total
            if len(mine) >= self.per_client:
                victim = self._pick(mine)
                if victim is None:
                    return "connection_limit" if full else "client_limit"
            elif full:
                victim = self._pick(list(self._slots.values()))
                if victim is None:
                    return "connection_limit"
            if victim is not None:
                victim.evicted = True
                self._remove(victim)
                self.evicted += 1
            slot = _Slot(sock, client, time.monotonic())
            self._slots[sock] = slot
            self._by_client.setdefault(client, []).append(slot)
        if victim is not None:
            with contextlib.suppress(OSError):  # its thread's blocked read returns at once
                victim.sock.shutdown(socket.SHUT_RDWR)
        return slot

    def _pick(self, candidates: list[_Slot]) -> _Slot | None:
        """The connection to evict: pending before idle, then from the client that holds the most
        slots, then the oldest; None when every candidate is busy."""
        evictable = [s for s in candidates if s.state != BUSY]
        if not evictable:
            return None
        return min(evictable, key=lambda s: (s.state != PENDING, -len(self._by_client[s.client]), s.since))

    def _remove(self, slot: _Slot) -> None:
        if self._slots.pop(slot.sock, None) is None:
            return
        peers = self._by_client[slot.client]
        peers.remove(slot)
        if not peers:
            del self._by_client[slot.client]

    def set_state(self, slot: _Slot, state: str) -> bool:
        """Move a connection to `state`; False when it was evicted meanwhile (it must close)."""
        with self._lock:
            if slot.evicted:
                return False
            slot.state, slot.since = state, time.monotonic()
            return True

    def release(self, slot: _Slot) -> None:
        with self._lock:
            self._remove(slot)

    def get(self, sock: socket.socket) -> _Slot | None:
        with self._lock:
            return self._slots.get(sock)

    def close_all(self) -> None:
        """Shut every connection down (on server close), so no handler thread lingers in a read."""
        with self._lock:
            slots = list(self._slots.values())
            for slot in slots:
                slot.evicted = True
                self._remove(slot)
        for slot in slots:
            with contextlib.suppress(OSError):
                slot.sock.shutdown(socket.SHUT_RDWR)

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {PENDING: 0, IDLE: 0, BUSY: 0}
            for slot in self._slots.values():
                out[slot.state] += 1
            return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without NODELAY, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    server: OtlpHttpServer

    def setup(self) -> None:
        super().setup()
        limits = self.server.front.limits
        self.rfile.close()  # the buffered makefile() reader: replaced by one with deadlines
        self._reader = _DeadlineReader(self.connection, max(limits.body_timeout_s, limits.header_timeout_s))
        self._buffered = io.BufferedReader(self._reader, 64 << 10)
        self.rfile = self._buffered
        # None: evicted before this thread started (its socket is shut down; the first read ends it)
        slot = self.server.slots.get(self.connection)
        self._slot = slot or _Slot(self.connection, "", time.monotonic(), evicted=True)
        self._reader.deadline = self._slot.since + limits.header_timeout_s
        self._served = 0
        self._admitted = False
        self._held = 0  # bytes of the memory budget this request holds

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)

    # -- one request: the deadlines, the token, the slot state ---------------------------------

    def handle_one_request(self) -> None:
        front = self.server.front
        limits = front.limits
        slots = self.server.slots
        self.command, self.requestline, self.request_version = "", "", self.protocol_version
        self._admitted = False
        try:
            if self._served:  # keep-alive: wait for the next request's first byte
                if not slots.set_state(self._slot, IDLE):
                    self.close_connection = True
                    return
                self._reader.deadline = time.monotonic() + limits.idle_timeout_s
                if not self._buffered.peek(1) or not slots.set_state(self._slot, PENDING):
                    self.close_connection = True
                    return
                self._reader.deadline = time.monotonic() + limits.header_timeout_s
        except _ReadTimeout:
            self.close_connection = True  # idle past the idle timeout: close quietly
            return
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():  # it answered already (a 400, or our 401 before 100 Continue)
                return
        except _ReadTimeout:
            front.count_refusal("header_timeout")
            self.close_connection = True
            if self.request_version == "HTTP/0.9":
                self.request_version = self.protocol_version
            self._send_error(408, f"request head not received within {limits.header_timeout_s:g} s", KIND_JSON)
            return
        self._served += 1
        if not self._admitted and not self._admit():
            return
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.close_connection = True
            self.send_error(501, f"Unsupported method ({self.command!r})")
            return
        method()
        self.wfile.flush()

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue`: the token is checked before the client is told to send the body."""
        if not self._admit():
            return False
        return super().handle_expect_100()

    def _admit(self) -> bool:
        """The bearer-token check, as soon as the head is parsed; then the connection is busy (not
        evictable) and its body has `body_timeout_s` to arrive. False: answered or evicted."""
        front = self.server.front
        if not front.authorized(self.headers.get("Authorization")):
            front.count_refusal("unauthenticated")
            self.close_connection = True  # the body (if any) is unread: the connection is unusable
            self._send_error(401, "missing or wrong bearer token", KIND_JSON, {"WWW-Authenticate": "Bearer"})
            return False
        if not self.server.slots.set_state(self._slot, BUSY):
            self.close_connection = True
            return False
        self._admitted = True
        self._reader.deadline = time.monotonic() + front.limits.body_timeout_s
        return True

    # -- answers -----------------------------------------------------------------------------

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
        self._send(200, orjson.dumps(self.server.status()), "application/json")

    # -- the body ----------------------------------------------------------------------------

    def _framing(self) -> int | None:
        """The body's length from its framing headers (RFC 9112 6), None for chunked; _BodyError
        for framing that two parties could read differently (the request-smuggling shapes)."""
        te = self.headers.get_all("Transfer-Encoding") or []
        cl = self.headers.get_all("Content-Length") or []
        if te:
            codings = [c.strip().lower() for value in te for c in value.split(",") if c.strip()]
            if cl:
                raise _BodyError(400, "malformed", "both Transfer-Encoding and Content-Length are given")
            if not codings or codings[-1] != "chunked" or codings.count("chunked") > 1:
                raise _BodyError(400, "malformed", f"Transfer-Encoding {', '.join(te)!r}: the final (and only) "
                                 "transfer coding must be chunked")
            if len(codings) > 1:
                raise _BodyError(501, "unsupported", f"transfer coding {codings[0]!r} is not supported "
                                 "(send chunked alone; compress with Content-Encoding)")
            return None
        if not cl:
            raise _BodyError(411, "no_length", "Content-Length (or Transfer-Encoding: chunked) is required")
        if len(cl) > 1:
            raise _BodyError(400, "malformed", f"Content-Length is given {len(cl)} times")
        if not _CONTENT_LENGTH.fullmatch(cl[0].strip()):
            raise _BodyError(400, "malformed", f"Content-Length {cl[0][:40]!r} is not a byte count")
        return int(cl[0])

    def _reserve(self, n: int) -> None:
        self.server.front.reserve(n)  # Overloaded past the budget
        self._held += n

    def _read_exact(self, n: int, keep: bool) -> bytes:
        """`n` body bytes, reserving each piece in the memory budget before reading it (when kept)."""
        parts: list[bytes] = []
        left = n
        while left:
            want = min(left, _PIECE)
            if keep:
                self._reserve(want)
            data = self.rfile.read(want)
            if len(data) < want:
                raise _BodyError(400, "malformed", f"request body ended after {n - left + len(data)} of {n} bytes")
            if keep:
                parts.append(data)
            left -= want
        return b"".join(parts)

    def _read_chunked(self, limit: int) -> bytes:
        """A Transfer-Encoding: chunked body (RFC 9112 7.1), refused past `limit` bytes. Past the
        limit the rest is read and dropped, up to 4x the limit, so that the client gets its 413
        rather than a reset connection; beyond that the connection is closed unread."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1026)
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise _BodyError(400, "malformed", f"bad chunk size line {line[:40]!r} (want hex digits)")
            size = int(match.group(1), 16)
            if size == 0:
                for _ in range(_MAX_TRAILER_LINES):  # trailer fields, then the empty line
                    if not self.rfile.readline(1026).strip():
                        break
                else:
                    raise _BodyError(400, "malformed", f"more than {_MAX_TRAILER_LINES} trailer lines")
                if total > limit:
                    raise _BodyError(413, "too_large", f"chunked request body of {total} bytes is over the limit "
                                     f"of {limit} bytes", drained=True)
                return b"".join(parts)
            total += size
            if total > 4 * limit:
                raise _BodyError(413, "too_large", f"chunked request body exceeds the limit of {limit} bytes")
            if total > limit and parts:  # over the limit: what was kept is dropped, and its budget freed
                parts.clear()
                self.server.front.budget.release(self._held)
                self._held = 0
            data = self._read_exact(size, keep=total <= limit)
            if self.rfile.read(2) != b"\r\n":
                raise _BodyError(400, "malformed", "chunked request body ended early")
            if total <= limit:
                parts.append(data)

    def do_POST(self) -> None:
        front = self.server.front
        limits = front.limits
        media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        kind = _MEDIA.get(media, KIND_PROTOBUF)

        def refuse(status: int, reason: str, message: str, headers: dict[str, str] | None = None,
                   body_unread: bool = True) -> None:
            front.count_refusal(reason)
            if body_unread:
                self.close_connection = True  # we did not read the body; the connection is unusable
            self._send_error(status, message, kind, headers)

        if self.path.split("?", 1)[0] != TRACES_PATH:
            refuse(404, "not_found", f"no such path {self.path}; OTLP traces go to POST {TRACES_PATH}")
            return
        if media not in _MEDIA:
            refuse(415, "unsupported", f"Content-Type {media!r} is not OTLP (application/x-protobuf or application/json)")
            return
        try:
            length = self._framing()
        except _BodyError as exc:
            refuse(exc.status, exc.reason, str(exc))
            return
        if length is not None and length > limits.max_request_bytes:
            refuse(413, "too_large", f"request body is {length} bytes, limit {limits.max_request_bytes}")
            return
        self._held = 0
        try:
            try:
                body = (self._read_chunked(limits.max_request_bytes) if length is None
                        else self._read_exact(length, keep=True))
            except _BodyError as exc:
                refuse(exc.status, exc.reason, str(exc), body_unread=not exc.drained)
                return
            except Overloaded as exc:
                refuse(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after_s)})
                return
            except _ReadTimeout:
                refuse(408, "body_timeout", f"request body not received within {limits.body_timeout_s:g} s")
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
            front.budget.release(self._held)
            self._held = 0
        response = _response_body(batch)
        if kind == KIND_JSON:
            self._send(200, json_format.MessageToJson(response, indent=None).encode(), "application/json")
        else:
            self._send(200, response.SerializeToString(), "application/x-protobuf")


class OtlpHttpServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server whose connections hold slots of a `ConnectionSlots` table."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # a burst of connections queues in the kernel instead of being dropped

    def __init__(self, address: tuple[str, int], front: Front, status: Callable[[], dict[str, Any]]) -> None:
        self.front = front
        self.status = status
        self.slots = ConnectionSlots(front.limits.max_connections, front.limits.max_connections_per_client)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        admitted = self.slots.admit(request, str(client_address[0]))
        if isinstance(admitted, str):
            self.front.count_refusal(admitted)
            what = "per-client connection limit" if admitted == "client_limit" else "connection limit"
            body = orjson.dumps({"code": 14, "message": f"{what} reached, every connection is busy"})
            with contextlib.suppress(OSError):
                request.settimeout(0.5)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    + f"Retry-After: {self.front.limits.retry_after_s}\r\nContent-Length: {len(body)}\r\n".encode()
                    + b"Connection: close\r\n\r\n" + body
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release(admitted)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        slot = self.slots.get(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            if slot is not None:
                self.slots.release(slot)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke mid-request (reset, evicted, shut down): not worth a traceback."""
        log.debug("http %s: connection error", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        self.slots.close_all()
