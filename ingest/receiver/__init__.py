"""Live OTLP receiver (`kvtrace serve`): OTLP/gRPC and OTLP/HTTP in, the DuckDB store out.

The durability contract: a batch is acknowledged only after it is in the fsync'd write-ahead
spool (`spool.py`); a single store writer (`store_writer.py`), in its own supervised process
(`writer_process.py`) so that it never competes with request threads for the GIL, moves spooled
batches into the store through `ingest.ingest_payload`, which is idempotent per (trace_id, span_id). So a SIGKILL
at any moment loses no acknowledged span, a restart stores whatever was spooled, and a client's
retry of a batch it never saw acknowledged is not stored twice.

Everything a request can cost is bounded (`front.Limits`): body and decompressed sizes, bytes in
memory (reserved as body bytes arrive), connections in all and per client, the spool itself, and
time (header, body and idle timeouts); past a bound the client is told to retry later
(HTTP 429/503 + Retry-After, gRPC RESOURCE_EXHAUSTED/UNAVAILABLE + RetryInfo). Nothing is dropped
silently: whole-request refusals get an error status, refused spans a partial success. Slow or
stalled clients cannot hold the receiver: see `http_transport` (deadlines, eviction of connections
that hold a slot without working) and `grpc_transport` (asyncio server: a stalled call holds no thread).

Never imports streamlit, plotly or torch.
"""

from kvtrace.ingest.receiver.front import Limits
from kvtrace.ingest.receiver.server import Receiver, ReceiverConfig, default_spool_dir

__all__ = ["Limits", "Receiver", "ReceiverConfig", "default_spool_dir"]
