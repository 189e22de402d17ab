"""Domain exceptions of the ingest layer. The CLI turns them into one clear line."""

from __future__ import annotations


class IngestError(Exception):
    """Ingest could not proceed (unreadable path, unknown format, store problem)."""


class PayloadError(IngestError):
    """A whole OTLP payload could not be decoded (not JSON / not protobuf / not an OTLP message)."""


class RecordError(ValueError):
    """One record (a span, a line, a frame) is malformed; it goes to quarantine with this reason."""
