"""kvtrace ingest layer: OTLP trace files and live OTLP payloads -> the embedded DuckDB store.

Public API (stable; the live receiver and the CLI use only this):

- `open_store(path, read_only=False) -> duckdb.DuckDBPyConnection`
  Opens the store, creating it and applying `ingest/schema.sql` (idempotent) unless read-only.
- `ingest_paths(paths, db_path, progress=True) -> IngestSummary`
  Files, directories and globs of OTLP JSON / JSON lines / protobuf (optionally gzip or zstd).
  Each file is one transaction; committed unchanged files are skipped on re-run.
- `ingest_payload(con, payload, fmt, source) -> BatchResult`
  One OTLP ExportTraceServiceRequest / TracesData body (`fmt` "json" or "protobuf"), already
  decompressed, stored in one transaction. `BatchResult.accepted` counts valid spans (new or
  already stored: idempotent on (trace_id, span_id)), `.new_spans` the newly stored ones,
  `.rejected` the malformed records (quarantined under `source`), `.reasons` one line each.
  Raises `PayloadError` when the payload as a whole is undecodable.
- `export_parquet(db_path, out_dir)`: hive-partitioned Parquet copy (service, day).

Errors: `IngestError` (and its subclasses `PayloadError`, and `StoreError` from `open_store`, the one
door every layer opens the store through). Nothing here imports a UI library.
"""

from typing import TYPE_CHECKING, Any

from kvtrace.ingest.errors import IngestError, PayloadError
from kvtrace.ingest.store import StoreError, open_store

if TYPE_CHECKING:
    from kvtrace.ingest.pipeline import BatchResult, FileResult, IngestSummary, ingest_paths, ingest_payload

# The pipeline is imported on first use, so that opening the store (the app's SQL worker, replay's
# result writing) does not load the decoders.
_FROM_PIPELINE = frozenset({"BatchResult", "FileResult", "IngestSummary", "ingest_paths", "ingest_payload"})


def __getattr__(name: str) -> Any:
    if name in _FROM_PIPELINE:
        from kvtrace.ingest import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'kvtrace.ingest' has no attribute {name!r}")


__all__ = [
    "BatchResult",
    "FileResult",
    "IngestError",
    "IngestSummary",
    "PayloadError",
    "StoreError",
    "ingest_paths",
    "ingest_payload",
    "open_store",
]
