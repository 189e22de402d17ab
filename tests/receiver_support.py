"""Plain helpers for the receiver tests: the receiver front with both transports on free ports, OTLP
requests and real SDK spans to send, `kvtrace serve` started as a process, the store read back.
Not a test module."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kvtrace.ingest import open_store
from kvtrace.ingest.receiver.front import Front, Limits
from kvtrace.ingest.receiver.grpc_transport import start_grpc_server
from kvtrace.ingest.receiver.http_transport import OtlpHttpServer
from kvtrace.ingest.receiver.spool import Spool

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass
class Servers:
    front: Front
    spool: Spool
    grpc_port: int
    http_port: int
    http: OtlpHttpServer

    def spooled(self) -> list[bytes]:
        return [f.payload for f in self.spool.read_frames(1 << 30)]

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request("POST", "/v1/traces", body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def grpc_export(
        self,
        body: bytes,
        metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {TOKEN}"),),
        compression: grpc.Compression = grpc.Compression.NoCompression,
    ) -> bytes:
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", compression=compression) as channel:
            call = channel.unary_unary(EXPORT)
            return bytes(call(body, metadata=metadata, timeout=10))


def run_servers(tmp_path: Path, limits: Limits) -> Iterator[Servers]:
    spool = Spool(tmp_path / "spool", max_bytes=limits.max_spool_bytes)
    front = Front(spool, limits, TOKEN)
    grpc_server, grpc_port = start_grpc_server(front, "127.0.0.1", 0, workers=2)
    http_server = OtlpHttpServer(("127.0.0.1", 0), front, lambda: {})
    thread = threading.Thread(target=http_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Servers(front, spool, grpc_port, http_server.server_address[1], http_server)
    finally:
        http_server.shutdown()
        http_server.server_close()
        grpc_server.stop(0).wait()
        spool.close()


def export_request(n: int, *, bad_ids: int = 0) -> ExportTraceServiceRequest:
    spans = [
        trace_pb2.Span(trace_id=bytes(range(1, 17)), span_id=(i + 1).to_bytes(8, "big"), name=f"s{i}")
        for i in range(n)
    ]
    spans += [
        trace_pb2.Span(trace_id=bytes(16), span_id=(900 + i).to_bytes(8, "big"), name=f"zero{i}")
        for i in range(bad_ids)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=spans)])]
    )


PROTO = {"Content-Type": "application/x-protobuf", **AUTH}


def with_invalid_utf8(request: ExportTraceServiceRequest, text: str) -> bytes:
    """`request` as the SDK's exporter sends it, with the one occurrence of `text` on the wire (a
    string field: a span's name, a resource attribute) made invalid UTF-8, its length unchanged:
    its last byte becomes 0xff. upb then refuses the whole request."""
    data = request.SerializeToString()
    raw = text.encode()
    assert data.count(raw) == 1, f"{text!r} occurs {data.count(raw)} times on the wire"
    end = data.index(raw) + len(raw)
    return data[: end - 1] + b"\xff" + data[end:]


Key = tuple[str, str, str]  # (trace_id, span_id, name)


def make_spans(n: int, prefix: str) -> list[ReadableSpan]:
    """Real SDK spans: a `decode Req` root per request with a `kv.alloc` child."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "sglang-decode", "service.instance.id": "decode-0"})
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("kvtrace-test")
    for i in range(n // 2):
        rid = f"{prefix}{i:06d}"
        with (
            tracer.start_as_current_span(f"decode Req {rid[:8]}", attributes={"rid": rid}),
            tracer.start_as_current_span(
                "kv.alloc", attributes={"rid": rid, "tp_rank": 0, "kv.pool": "kv", "kv.page_ids": [i, i + 1]}
            ),
        ):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def keys(spans: Sequence[ReadableSpan]) -> set[Key]:
    return {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}", s.name) for s in spans}


def stored(db: Path) -> tuple[set[Key], int]:
    if not db.exists():
        return set(), 0
    con = open_store(db, read_only=True)
    try:
        rows = con.execute("SELECT trace_id, span_id, name FROM spans").fetchall()
    finally:
        con.close()
    return {(r[0], r[1], r[2]) for r in rows}, len(rows)


def start_serve(db: Path, extra: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start a real `kvtrace serve` on free ports; its stderr goes to `serve.log` beside the store."""
    log_path = db.parent / "serve.log"
    started_before = log_path.read_text().count("listening on") if log_path.exists() else 0
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from app.cli import main; main()",
                "serve",
                "--db",
                str(db),
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--store-release",
                "0.05",
                "--status-interval",
                "0",
                *extra,
            ],
            stderr=log,
            cwd=Path(__file__).resolve().parents[1],
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        ports = re.findall(r"OTLP/gRPC [\d.]+:(\d+), OTLP/HTTP http://[\d.]+:(\d+)/", log_path.read_text())
        if len(ports) > started_before:
            return proc, int(ports[-1][0]), int(ports[-1][1])
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"kvtrace serve did not start:\n{log_path.read_text()}")
