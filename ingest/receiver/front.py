"""The transport-independent front door: limits, backpressure, checking and spooling one batch.

Both transports (gRPC, HTTP) call `Front.accept`; they differ only in how they read the request
and how they spell the answer. Refusals are exceptions that carry what each transport needs.
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass, field

from kvtrace.ingest.receiver.batch import (
    CheckedBatch,
    MalformedPayload,
    PayloadTooLarge,
    ReceiverRefusal,
    check_json,
    check_protobuf,
    decompress,
)
from kvtrace.ingest.receiver.spool import KIND_JSON, Spool, SpoolFull

__all__ = [
    "Front",
    "Limits",
    "MalformedPayload",
    "Overloaded",
    "PayloadTooLarge",
    "ReceiverRefusal",
    "Stats",
    "Throttled",
]


@dataclass(frozen=True)
class Limits:
    """Every bound the receiver enforces. Defaults suit one host; all are `kvtrace serve` options."""

    max_request_bytes: int = 16 << 20  # compressed body (HTTP Content-Length)
    max_decompressed_bytes: int = 64 << 20  # after gzip/deflate; also gRPC's max message size
    max_inflight_bytes: int = 256 << 20  # request bytes held in memory across all requests
    max_spool_bytes: int = 2 << 30  # acknowledged but not yet stored
    max_connections: int = 64  # HTTP connections; gRPC concurrent RPCs
    max_connections_per_client: int = 32  # of those, per client (source IP address)
    retry_after_s: int = 1  # Retry-After / RetryInfo delay under backpressure
    header_timeout_s: float = 10.0  # a request head (HTTP), the HTTP/2 handshake (gRPC), must arrive within this
    body_timeout_s: float = 30.0  # then its body (HTTP; the gRPC request message)
    idle_timeout_s: float = 60.0  # a keep-alive connection with no request in flight is closed after this


class Throttled(Exception):
    """The spool is full (the store writer is behind): HTTP 429, gRPC RESOURCE_EXHAUSTED + RetryInfo."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Overloaded(Exception):
    """The in-memory budget is spent: HTTP 503, gRPC UNAVAILABLE + RetryInfo."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Stats:
    """Counters since start; read with `Front.snapshot()`."""

    requests: int = 0
    accepted_spans: int = 0  # acknowledged: spooled and fsync'd
    rejected_spans: int = 0  # reported to the client in a partial success
    refused: dict[str, int] = field(default_factory=dict)  # whole requests refused, by reason


class InflightBudget:
    """A byte budget for request bodies in memory; never blocks, the caller answers 503 instead."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self._used + n > self.limit:
                return False
            self._used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._used -= n

    @property
    def used(self) -> int:
        with self._lock:
            return self._used


class Front:
    """Checks, spools and counts batches; shared by every transport thread."""

    def __init__(self, spool: Spool, limits: Limits, token: str | None) -> None:
        self.spool = spool
        self.limits = limits
        self._token = token.encode() if token else None
        self.budget = InflightBudget(limits.max_inflight_bytes)
        self._stats = Stats()
        self._lock = threading.Lock()

    def authorized(self, authorization: str | None) -> bool:
        """`Authorization: Bearer <token>` check in constant time; always true without a token.

        The scheme is case-insensitive (RFC 7235 2.1: `bearer`, `BEARER`); the token is not."""
        if self._token is None:
            return True
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def reserve(self, n: int) -> None:
        """Reserve `n` bytes of the in-memory budget or raise Overloaded."""
        if not self.budget.try_acquire(n):
            raise Overloaded(
                f"receiver holds its limit of {self.limits.max_inflight_bytes} request bytes in memory",
                self.limits.retry_after_s,
            )

    def accept(self, body: bytes, kind: int, encoding: str | None) -> CheckedBatch:
        """Decompress, check and durably spool one request. The caller holds a reservation for `body`."""
        payload = decompress(body, encoding, self.limits.max_decompressed_bytes)
        extra = len(payload) if payload is not body else 0
        self.reserve(extra)
        try:
            batch = check_json(payload) if kind == KIND_JSON else check_protobuf(payload)
            if batch.accepted_spans:
                try:
                    self.spool.append(batch.kind, batch.payload)
                except SpoolFull as exc:
                    raise Throttled(f"{exc}; the store writer is behind, retry later", self.limits.retry_after_s) from exc
        finally:
            self.budget.release(extra)
        with self._lock:
            self._stats.requests += 1
            self._stats.accepted_spans += batch.accepted_spans
            self._stats.rejected_spans += batch.rejected_spans
        return batch

    def count_refusal(self, reason: str) -> None:
        with self._lock:
            self._stats.refused[reason] = self._stats.refused.get(reason, 0) + 1

    def snapshot(self) -> Stats:
        with self._lock:
            return Stats(self._stats.requests, self._stats.accepted_spans, self._stats.rejected_spans,
                         dict(self._stats.refused))


def refusal_reason(exc: BaseException) -> str:
    """A short stable name for a refusal, used in counters and logs."""
    if isinstance(exc, PayloadTooLarge):
        return "too_large"
    if isinstance(exc, MalformedPayload):
        return "malformed"
    if isinstance(exc, ReceiverRefusal):
        return "unsupported"
    if isinstance(exc, Throttled):
        return "spool_full"
    if isinstance(exc, Overloaded):
        return "overloaded"
    return "error"
