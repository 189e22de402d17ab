"""bench/receiver: `kvtrace serve` under 4 concurrent real opentelemetry-sdk OTLP exporters on loopback.

For each transport (OTLP/HTTP protobuf, OTLP/gRPC) and each client encoding it runs, side by side:

- `null sink`: a baseline receiver that acknowledges without decoding or persisting anything
  (grpcio generic handler / http.server returning an empty ExportTraceServiceResponse): the ceiling
  the clients and the loopback transport allow on this machine;
- `kvtrace serve`: the real receiver subprocess (fsync'd spool, store writer into DuckDB).

Client encodings:
- `sdk`: spans created with the SDK and encoded by the exporter itself (`encode_spans`), the
  path SGLang takes. The SDK's pure-Python encoder is the bottleneck of this mode.
- `prebuilt`: the same SDK exporter objects (retries, compression, transport, timeouts), with
  `encode_spans` swapped for a pre-built ExportTraceServiceRequest of 512 spans whose trace id is
  rewritten per batch (every span stays unique). This measures the receiver, not the encoder.

Reported: acknowledged spans/s, p50/p99 export latency, spans stored (after the store writer
drained the spool) == spans acknowledged, and the split between the receiving process and the
store-writer process: spans stored per second while the load ran, the sustained stored rate (spans
stored / time from the start of the load until the spool was empty), CPU seconds each process used
during the load, and the 1-minute load average (other work on the machine shows there). `--soak S` adds one long
run of gRPC prebuilt clients against kvtrace serve, sampling the receiver's RSS and spool backlog.

`--slow-clients` runs the hostile-client rows instead (issue 15): a real `kvtrace serve --token-file`
with its default limits and timeouts, N one-byte sockets (each sends one byte, then nothing) and M
stalled requests (valid token, headers sent, body never comes), opened before a real SDK exporter
sends `--slow-spans` SDK-made spans over HTTP or gRPC. Attackers and exporter all come from
127.0.0.1, so the per-client cap cannot tell them apart: the timeouts and the eviction of
connections that hold a slot without working must. Reported per row: spans acknowledged (of
those sent), stored, seconds from the first export until every acknowledged span was stored, and
the receiver's refusal counters. Bounded: each row gives up after `--slow-deadline` seconds.

Run: .venv/bin/python bench/receiver.py [--seconds 15] [--soak 300]
     .venv/bin/python bench/receiver.py --slow-clients [--slow-sockets 64] [--stalled 16] [--slow-spans 20000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path.pop(0)  # bench/ingest.py (another bench) would shadow the `ingest` package
OUT = ROOT / "bench" / "out" / "receiver"
BATCH = 512
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# ------------------------------------------------------------------------------ null sink


def run_null_sink(grpc_port: int, http_port: int) -> None:
    """Baseline: acknowledge everything, decode and persist nothing."""
    import grpc

    def export(request: bytes, context: Any) -> bytes:
        return b""

    server = grpc.server(ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)}),))
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    server.start()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    httpd = ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
    import socket
    httpd.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown).start())
    print("null sink ready", flush=True)
    httpd.serve_forever()
    server.stop(0)


# ------------------------------------------------------------------------------ clients


def _prebuilt_template() -> tuple[bytes, bytes]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    def kv(key: str, value: Any) -> common_pb2.KeyValue:
        v = common_pb2.AnyValue()
        if isinstance(value, str):
            v.string_value = value
        elif isinstance(value, int):
            v.int_value = value
        else:
            v.array_value.values.extend(common_pb2.AnyValue(int_value=x) for x in value)
        return common_pb2.KeyValue(key=key, value=v)

    marker = b"\xfe\xed" * 8
    now = time.time_ns()
    spans = [
        trace_pb2.Span(trace_id=marker, span_id=struct.pack(">Q", i + 1), name="kv.alloc",
                       start_time_unix_nano=now + i * 1000, end_time_unix_nano=now + i * 1000 + 500,
                       attributes=[kv("rid", f"req-{i // 4}"), kv("tp_rank", i % 8), kv("kv.pool", "kv"),
                                   kv("kv.page_ids", [i, i + 1, i + 2])])
        for i in range(BATCH)
    ]
    request = ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[kv("service.name", "sglang-decode"),
                                                   kv("service.instance.id", "decode-0")]),
        scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])
    return request.SerializeToString(), marker


def client_main(transport: str, encoding: str, endpoint: str, seconds: float, client_id: int,
                rate_spans: float, results: Any) -> None:
    """One exporter process: export batches until the deadline; report acks and latencies."""
    from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_mod
    from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_mod
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    counter = [0]
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sglang-decode"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")

    def sdk_batch() -> list[Any]:
        memory.clear()
        for i in range(BATCH):
            with tracer.start_as_current_span("kv.alloc", attributes={
                    "rid": f"req-{i // 4}", "tp_rank": i % 8, "kv.pool": "kv", "kv.page_ids": [i, i + 1, i + 2]}):
                pass
        return list(memory.get_finished_spans())

    if encoding == "prebuilt":
        template, marker = _prebuilt_template()

        def fast_encode(_spans: Any) -> ExportTraceServiceRequest:
            counter[0] += 1
            trace_id = struct.pack(">IIQ", 0xBE4C0000 + client_id, os.getpid(), counter[0])
            return ExportTraceServiceRequest.FromString(template.replace(marker, trace_id))

        grpc_mod.encode_spans = fast_encode  # the exporters' only encoding hook
        http_mod.encode_spans = fast_encode

    if transport == "grpc":
        exporter: Any = grpc_mod.OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=30)
    else:
        exporter = http_mod.OTLPSpanExporter(endpoint=endpoint, timeout=30)
    placeholder = [None] * BATCH
    latencies: list[float] = []
    acked = failed = 0
    start = time.monotonic()
    deadline = start + seconds
    interval = BATCH / rate_spans if rate_spans else 0.0
    next_at = start
    while time.monotonic() < deadline:
        spans = sdk_batch() if encoding == "sdk" else placeholder
        t0 = time.perf_counter()
        result = exporter.export(spans)
        latencies.append(time.perf_counter() - t0)
        if result == SpanExportResult.SUCCESS:
            acked += BATCH
        else:
            failed += BATCH
        if interval:
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    exporter.shutdown()
    results.put({"acked": acked, "failed": failed, "latencies": latencies, "elapsed": time.monotonic() - start})


def run_clients(transport: str, encoding: str, endpoint: str, seconds: float, n: int,
                rate_spans: float = 0.0) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=client_main, args=(transport, encoding, endpoint, seconds, i, rate_spans / n, results))
             for i in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    latencies = sorted(x for o in out for x in o["latencies"])
    elapsed = max(o["elapsed"] for o in out)
    return {
        "acked": sum(o["acked"] for o in out),
        "failed": sum(o["failed"] for o in out),
        "elapsed": elapsed,
        "spans_per_s": sum(o["acked"] for o in out) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
    }


# ------------------------------------------------------------------------------ servers


def start_serve(db: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    log = db.with_suffix(".log")
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "serve", "--db", str(db),
             "--grpc-port", "0", "--http-port", "0", "--status-interval", "0", *extra],
            stderr=fh, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"OTLP/gRPC [\d.]+:(\d+), OTLP/HTTP http://[\d.]+:(\d+)/", log.read_text())
        if m:
            return proc, int(m.group(1)), int(m.group(2)), log
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"kvtrace serve did not start: {log.read_text()}")


def serve_status(http_port: int, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/status", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def stored_spans(db: Path) -> int:
    from kvtrace.ingest import open_store
    con = open_store(db, read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM spans").fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


def free_ports() -> tuple[int, int]:
    import socket
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    return ports[0], ports[1]


def bench_null(transport: str, encoding: str, seconds: float, clients: int) -> dict[str, Any]:
    grpc_port, http_port = free_ports()
    proc = subprocess.Popen([sys.executable, __file__, "--null-sink", str(grpc_port), str(http_port)],
                            stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    proc.stdout.readline()
    try:
        endpoint = f"127.0.0.1:{grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{http_port}/v1/traces"
        return run_clients(transport, encoding, endpoint, seconds, clients)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def bench_serve(transport: str, encoding: str, seconds: float, clients: int, tag: str) -> dict[str, Any]:
    db = OUT / f"{tag}.duckdb"
    for p in OUT.glob(f"{tag}.duckdb*"):
        if p.is_dir():
            import shutil
            shutil.rmtree(p)
        else:
            p.unlink()
    import psutil

    proc, grpc_port, http_port, _log = start_serve(db, ["--store-release", "0.2"])
    try:
        endpoint = f"127.0.0.1:{grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{http_port}/v1/traces"
        receiver_ps = psutil.Process(proc.pid)
        writer_ps = psutil.Process(int(serve_status(http_port)["store_writer_pid"]))
        cpu0 = (sum(receiver_ps.cpu_times()[:2]), sum(writer_ps.cpu_times()[:2]))
        t0 = time.monotonic()
        res = run_clients(transport, encoding, endpoint, seconds, clients)
        status = serve_status(http_port)
        # The split: the receiving process vs the store-writer process, during the load.
        res["stored_during_load_per_s"] = status["store_new_spans"] / res["elapsed"]
        res["receiver_cpu_s"] = sum(receiver_ps.cpu_times()[:2]) - cpu0[0]
        res["writer_cpu_s"] = sum(writer_ps.cpu_times()[:2]) - cpu0[1]
        res["loadavg"] = os.getloadavg()[0]
        while status["spool_backlog_bytes"] > 0:
            time.sleep(0.2)
            status = serve_status(http_port)
        drained_at = time.monotonic() - t0
        res["acked_by_server"] = status["accepted_spans"]
        res["store_drain_spans_per_s"] = status["store_new_spans"] / drained_at
        res["drain_s"] = drained_at
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    res["stored"] = stored_spans(db)
    return res


def soak(seconds: float, clients: int, rate: float) -> dict[str, Any]:
    import psutil

    db = OUT / "soak.duckdb"
    import shutil
    for p in OUT.glob("soak.duckdb*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    proc, grpc_port, http_port, _log = start_serve(db, ["--store-release", "0.2"])
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, int, int, int, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(5.0):
            st = serve_status(http_port)
            try:  # the writer is a child process; its RSS is reported apart (DuckDB's buffers live there)
                writer_rss = psutil.Process(int(st["store_writer_pid"])).memory_info().rss
            except (psutil.Error, TypeError, ValueError):
                writer_rss = 0
            samples.append((time.monotonic() - t0, ps.memory_info().rss, st["spool_backlog_bytes"], writer_rss,
                            os.getloadavg()[0]))

    th = threading.Thread(target=sample)
    th.start()
    try:
        res = run_clients("grpc", "prebuilt", f"127.0.0.1:{grpc_port}", seconds, clients, rate_spans=rate)
    finally:
        stop.set()
        th.join()
    status = serve_status(http_port)
    while status["spool_backlog_bytes"] > 0:
        time.sleep(0.5)
        status = serve_status(http_port)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    res["stored"] = stored_spans(db)
    res["samples"] = samples
    return res


# ------------------------------------------------------------------------------ slow clients


def exporter_main(transport: str, endpoint: str, token: str, n_spans: int, results: Any) -> None:
    """One real SDK exporter: SDK-made spans, encoded by the exporter, in 512-span batches."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sglang-decode"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench-slow-clients")
    for i in range(n_spans):
        with tracer.start_as_current_span("kv.alloc", attributes={"rid": f"req-{i // 4}", "tp_rank": i % 8}):
            pass
    spans = list(memory.get_finished_spans())
    if transport == "grpc":
        exporter: Any = GrpcExporter(endpoint=endpoint, insecure=True, headers=(("authorization", f"Bearer {token}"),))
    else:
        exporter = HttpExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {token}"})
    acked = failed = 0
    latencies = []
    start = time.monotonic()
    started_at = time.time()  # wall clock: the bench process measures "until stored" from here
    for at in range(0, len(spans), BATCH):
        batch = spans[at: at + BATCH]
        t0 = time.monotonic()
        ok = exporter.export(batch) == SpanExportResult.SUCCESS
        latencies.append(time.monotonic() - t0)
        acked += len(batch) if ok else 0
        failed += 0 if ok else len(batch)
    exporter.shutdown()
    results.put({"acked": acked, "failed": failed, "elapsed": time.monotonic() - start,
                 "max_export_s": max(latencies), "started_at": started_at})


class Attackers:
    """Hostile clients on loopback: one-byte sockets and stalled requests, optionally reopened
    whenever the receiver closes them (a slowloris that keeps trying). One thread, bounded."""

    def __init__(self, port: int, grpc_port: int, token: str, one_byte: int, stalled_http: int, stalled_grpc: int,
                 one_byte_port: int | None = None, reconnect: bool = False) -> None:
        import socket

        self._socket = socket
        self.port, self.grpc_port, self.token, self.reconnect = port, grpc_port, token, reconnect
        self.one_byte_port = one_byte_port or port
        self.closed_by_server = 0
        self.opened = 0
        self.started_at = time.time()
        self.last_closed_at = 0.0
        self.answers: dict[str, int] = {}
        self._socks: dict[Any, str] = {}
        for _ in range(one_byte):
            self._open("one_byte")
        for _ in range(stalled_http):
            self._open("stalled")
        self._grpc_calls: list[Any] = []
        self._grpc_done_at: dict[int, float] = {}
        self._grpc_release = threading.Event()
        if stalled_grpc:
            import grpc

            self._channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            call = self._channel.stream_unary(EXPORT)

            def never() -> Any:
                self._grpc_release.wait(300)
                return
                yield b""

            self._grpc_calls = [call.future(never(), metadata=(("authorization", f"Bearer {token}"),), timeout=300)
                                for _ in range(stalled_grpc)]
            for f in self._grpc_calls:
                f.add_done_callback(lambda f: self._grpc_done_at.__setitem__(id(f), time.time()))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _open(self, kind: str) -> None:
        s = self._socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", self.one_byte_port if kind == "one_byte" else self.port))
            if kind == "one_byte":
                s.sendall(b"P")
            else:
                s.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                          "Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        except OSError:
            s.close()
            return
        s.setblocking(False)
        self._socks[s] = kind
        self.opened += 1

    def _watch(self) -> None:
        import select

        while not self._stop.is_set():
            socks = list(self._socks)
            readable = select.select(socks, [], [], 0.1)[0] if socks else []
            if not socks:
                time.sleep(0.1)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 "):
                    code = data[9:12].decode(errors="replace")
                    self.answers[code] = self.answers.get(code, 0) + 1
                kind = self._socks.pop(s)
                s.close()
                self.closed_by_server += 1
                self.last_closed_at = time.time()
                if self.reconnect and not self._stop.is_set():
                    self._open(kind)

    def wait_until_closed(self, timeout_s: float) -> bool:
        """Stop reopening, then wait (bounded) until the receiver has closed every attacker."""
        self.reconnect = False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._socks and all(f.done() for f in self._grpc_calls):
                for f in self._grpc_calls:
                    self.last_closed_at = max(self.last_closed_at, self._grpc_done_at.get(id(f), 0.0))
                return True
            time.sleep(0.1)
        return False

    def grpc_outcomes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self._grpc_calls:
            if f.done():
                try:
                    f.result()
                    name = "OK"
                except Exception as exc:
                    code = getattr(exc, "code", None)
                    name = code().name if callable(code) else type(exc).__name__
            else:
                name = "open at the end of the row"
            out[name] = out.get(name, 0) + 1
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in list(self._socks):
            s.close()
        self._grpc_release.set()
        if self._grpc_calls:
            self._channel.close()


def bench_slow_clients(name: str, transport: str, n_spans: int, one_byte: int, stalled_http: int,
                       stalled_grpc: int, attack_grpc_port: bool, reconnect: bool, deadline_s: float) -> dict[str, Any]:
    import secrets
    import shutil

    tag = "slow-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    db = OUT / f"{tag}.duckdb"
    for p in OUT.glob(f"{tag}.duckdb*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    token = secrets.token_hex(16)
    token_file = OUT / f"{tag}.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    proc, grpc_port, http_port, _log = start_serve(db, ["--token-file", str(token_file), "--store-release", "0.2"])
    try:
        attackers = Attackers(http_port, grpc_port, token, one_byte, stalled_http, stalled_grpc,
                              one_byte_port=grpc_port if attack_grpc_port else None, reconnect=reconnect)
        time.sleep(0.5)  # the attackers hold their slots before the exporter starts
        endpoint = f"127.0.0.1:{grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{http_port}/v1/traces"
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        t0 = time.monotonic()
        exporter = ctx.Process(target=exporter_main, args=(transport, endpoint, token, n_spans, results))
        exporter.start()
        out = results.get(timeout=deadline_s + 60)
        exporter.join()
        status = serve_status(http_port, token)
        while status["store_stored_spans"] < status["accepted_spans"] and time.monotonic() - t0 < deadline_s:
            time.sleep(0.1)
            status = serve_status(http_port, token)
        seconds = time.time() - out["started_at"]
        # Then the attackers' fate: every one of them closed by the receiver (eviction, or the
        # header / body timeout: 10 s / 30 s by default), bounded by the body timeout + 15 s.
        all_closed = attackers.wait_until_closed(45.0)
        grpc_outcomes = attackers.grpc_outcomes()
        final = serve_status(http_port, token)
        attackers.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return {"name": name, "transport": transport, "sent": n_spans, "acked": out["acked"], "failed": out["failed"],
            "stored": stored_spans(db), "seconds": seconds, "export_s": out["elapsed"],
            "max_export_s": out["max_export_s"], "refused": status["refused_requests"],
            "connections": status["http_connections"], "attackers_closed": attackers.closed_by_server,
            "attackers_opened": attackers.opened + stalled_grpc, "all_closed": all_closed,
            "last_closed_s": attackers.last_closed_at - attackers.started_at,
            "refused_in_the_end": final["refused_requests"], "evicted_in_the_end": final["http_connections"]["evicted"],
            "loadavg": os.getloadavg()[0],
            "attacker_answers": attackers.answers, "stalled_grpc": grpc_outcomes}


def slow_clients(args: argparse.Namespace) -> None:
    n, stalled = args.slow_sockets, args.stalled
    rows = [
        (f"{n} one-byte sockets + {stalled} stalled chunked requests (HTTP port)", "http", n, stalled, 0, False, False),
        (f"{n} one-byte sockets + {stalled} stalled chunked requests (HTTP port)", "grpc", n, stalled, 0, False, False),
        (f"{n} one-byte sockets + {stalled} stalled chunked requests, reopened when closed", "http", n, stalled, 0,
         False, True),
        (f"{n} one-byte sockets (gRPC port) + {stalled} stalled gRPC calls", "grpc", n, 0, stalled, True, False),
    ]
    results = []
    for name, transport, one_byte, stalled_http, stalled_grpc, grpc_port, reconnect in rows:
        res = bench_slow_clients(name, transport, args.slow_spans, one_byte, stalled_http, stalled_grpc, grpc_port,
                                 reconnect, args.slow_deadline)
        results.append(res)
        print(json.dumps(res), flush=True)
    print()
    print("| scenario | exporter | acked / sent | stored | seconds, first export to all stored | slowest export s | "
          "attackers closed by the receiver (last at s) | how: refusals, evictions | load avg |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    for r in results:
        closed = r["attackers_closed"] + sum(v for k, v in r["stalled_grpc"].items() if k != "open at the end of the row")
        how = ", ".join(f"{k} {v}" for k, v in sorted(r["refused_in_the_end"].items()) if k != "malformed")
        grpc_part = "; stalled gRPC calls: " + ", ".join(f"{k} {v}" for k, v in sorted(r["stalled_grpc"].items())) \
            if r["stalled_grpc"] else ""
        print(f"| {r['name']} | OTLP/{'gRPC' if r['transport'] == 'grpc' else 'HTTP protobuf'} | "
              f"{r['acked']:,} / {r['sent']:,} | {r['stored']:,} | {r['seconds']:.1f} | {r['max_export_s']:.2f} | "
              f"{closed:,} of {r['attackers_opened']:,} ({r['last_closed_s']:.1f}) | {how or '-'}; evicted "
              f"{r['evicted_in_the_end']:,}{grpc_part} | {r['loadavg']:.1f} |")


# ------------------------------------------------------------------------------ main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--null-sink":
        run_null_sink(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="load per configuration")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--soak", type=float, default=0.0, help="soak length in seconds (0: skip)")
    ap.add_argument("--soak-rate", type=float, default=10000.0, help="total spans/s offered during the soak")
    ap.add_argument("--encodings", default="prebuilt,sdk")
    ap.add_argument("--slow-clients", action="store_true", help="run the hostile-client rows only")
    ap.add_argument("--slow-sockets", type=int, default=64, help="one-byte sockets per slow-client row")
    ap.add_argument("--stalled", type=int, default=16, help="stalled requests per slow-client row")
    ap.add_argument("--slow-spans", type=int, default=20000, help="spans the exporter sends per slow-client row")
    ap.add_argument("--slow-deadline", type=float, default=60.0, help="seconds a slow-client row may take")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}")
    if args.slow_clients:
        slow_clients(args)
        return
    rows = []
    for encoding in filter(None, args.encodings.split(",")):  # --encodings "": the soak only
        for transport in ("http", "grpc"):
            base = bench_null(transport, encoding, args.seconds, args.clients)
            ours = bench_serve(transport, encoding, args.seconds, args.clients, f"{transport}-{encoding}")
            rows.append((transport, encoding, base, ours))
            print(json.dumps({"transport": transport, "encoding": encoding, "null": base, "serve": ours}), flush=True)
    if rows:
        print()
        print("| transport | client encoding | receiver | acked spans/s | p50 ms | p99 ms | stored == acked | "
              "stored spans/s during load | sustained stored spans/s | CPU s receiver / writer | load avg |")
        print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |")
        for transport, encoding, base, ours in rows:
            name = "OTLP/HTTP protobuf" if transport == "http" else "OTLP/gRPC"
            print(f"| {name} | {encoding} | null sink (baseline) | {base['spans_per_s']:,.0f} | {base['p50_ms']:.1f} | "
                  f"{base['p99_ms']:.1f} | - | - | - | - | - |")
            ok = "yes" if ours["stored"] == ours["acked"] == ours["acked_by_server"] else (
                f"NO ({ours['stored']} stored, {ours['acked']} acked by clients, {ours['acked_by_server']} by server)")
            print(f"| {name} | {encoding} | kvtrace serve | {ours['spans_per_s']:,.0f} "
                  f"({ours['spans_per_s'] / base['spans_per_s']:.2f}x) | {ours['p50_ms']:.1f} | {ours['p99_ms']:.1f} | "
                  f"{ok} ({ours['stored']:,}) | {ours['stored_during_load_per_s']:,.0f} | "
                  f"{ours['store_drain_spans_per_s']:,.0f} | {ours['receiver_cpu_s']:.1f} / {ours['writer_cpu_s']:.1f} | "
                  f"{ours['loadavg']:.1f} |")
    if args.soak:
        res = soak(args.soak, args.clients, args.soak_rate)
        rss = [s[1] / (1 << 20) for s in res["samples"]]
        backlog = [s[2] / (1 << 20) for s in res["samples"]]
        writer_rss = [s[3] / (1 << 20) for s in res["samples"]]
        n = len(rss)
        print()
        print(f"soak: {args.soak:.0f} s, {args.clients} gRPC clients offering {args.soak_rate:,.0f} spans/s: "
              f"acked {res['acked']:,} ({res['spans_per_s']:,.0f}/s), failed {res['failed']:,}, stored {res['stored']:,}, "
              f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
        print(f"receiver RSS MB: first {rss[0]:.0f}, median of first quarter {statistics.median(rss[: max(1, n // 4)]):.0f}, "
              f"median of last quarter {statistics.median(rss[-max(1, n // 4):]):.0f}, max {max(rss):.0f}; "
              f"spool backlog MB: max {max(backlog):.1f}, last {backlog[-1]:.1f}")
        print(f"writer process RSS MB: first {writer_rss[0]:.0f}, median of first quarter "
              f"{statistics.median(writer_rss[: max(1, n // 4)]):.0f}, median of last quarter "
              f"{statistics.median(writer_rss[-max(1, n // 4):]):.0f}, max {max(writer_rss):.0f}; "
              f"load average (1 min) median {statistics.median(s[4] for s in res['samples']):.1f}")
        print(json.dumps({"soak_samples": res["samples"]}))


if __name__ == "__main__":
    main()
