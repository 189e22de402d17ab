"""The receiver end to end: real opentelemetry-sdk OTLP exporters in, the DuckDB store out.

Includes the durability test: a real `kvtrace serve` subprocess killed with SIGKILL under load,
restarted, keeps every acknowledged span, stores no span twice, and refusals never touch the store.
"""

from __future__ import annotations

import gzip
import http.client
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from receiver_support import Key, keys, make_spans, start_serve, stored, with_invalid_utf8

from kvtrace.ingest.receiver import Receiver, ReceiverConfig


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    rx = Receiver(ReceiverConfig(db_path=tmp_path / "kv.duckdb", grpc_port=0, http_port=0, store_release_s=0.05))
    rx.start()
    yield rx
    rx.stop(drain_timeout_s=10)


def test_grpc_and_http_exporters_store_every_span_once(receiver: Receiver) -> None:
    spans = make_spans(600, "req")
    grpc_exporter = GrpcExporter(endpoint=f"127.0.0.1:{receiver.grpc_port}", insecure=True, compression=None)
    http_exporter = HttpExporter(endpoint=f"http://127.0.0.1:{receiver.http_port}/v1/traces",
                                 compression=HttpCompression.Gzip)
    assert grpc_exporter.export(spans[:300]) == SpanExportResult.SUCCESS
    assert http_exporter.export(spans[300:]) == SpanExportResult.SUCCESS
    # A client retrying a batch it already sent (its ack was lost) must not store it twice.
    assert http_exporter.export(spans[300:400]) == SpanExportResult.SUCCESS
    grpc_exporter.shutdown()
    http_exporter.shutdown()
    assert receiver.stop(drain_timeout_s=10)
    got, rows = stored(receiver.config.db_path)
    assert got == keys(spans)
    assert rows == 600
    status = receiver.status()
    assert (status["accepted_spans"], status["store_stored_spans"], status["store_new_spans"]) == (700, 700, 600)


def test_otlp_json_over_http_is_stored(receiver: Receiver) -> None:
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                              "scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "json-span",
         "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000000001000"}]}]}]}
    body = gzip.compress(orjson.dumps(doc))
    conn = http.client.HTTPConnection("127.0.0.1", receiver.http_port, timeout=10)
    conn.request("POST", "/v1/traces", body=body,
                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Content-Type"), orjson.loads(resp.read())) == (200, "application/json", {})
    conn.close()
    assert receiver.stop(drain_timeout_s=10)
    assert stored(receiver.config.db_path) == (
        {("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "json-span")}, 1
    )


def test_a_span_upb_refuses_costs_only_itself(receiver: Receiver) -> None:
    """A real SDK batch in which one span's name is invalid UTF-8 (upb refuses the request as a
    whole): the exporter is told that span is rejected, and every other span is stored."""
    spans = make_spans(8, "u")
    bad = next(s for s in spans if s.name == "decode Req u000002")
    body = with_invalid_utf8(encode_spans(spans), bad.name)
    conn = http.client.HTTPConnection("127.0.0.1", receiver.http_port, timeout=10)
    conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
    resp = conn.getresponse()
    assert resp.status == 200
    partial = ExportTraceServiceResponse.FromString(resp.read()).partial_success
    conn.close()
    assert partial.rejected_spans == 1
    assert partial.error_message.endswith(
        f"(span id {bad.context.span_id:016x}): undecodable protobuf Span: invalid UTF-8 in its name")
    assert receiver.stop(drain_timeout_s=10)
    assert stored(receiver.config.db_path) == (keys([s for s in spans if s is not bad]), 7)
    status = receiver.status()
    assert (status["accepted_spans"], status["rejected_spans"], status["store_stored_spans"]) == (7, 1, 7)


def test_refused_requests_leave_the_store_untouched_and_readers_get_in(tmp_path: Path) -> None:
    rx = Receiver(ReceiverConfig(db_path=tmp_path / "kv.duckdb", grpc_port=0, http_port=0, token="t0k",
                                 store_release_s=0.05))
    rx.start()
    try:
        good = make_spans(20, "good")
        ok = HttpExporter(endpoint=f"http://127.0.0.1:{rx.http_port}/v1/traces", headers={"Authorization": "Bearer t0k"})
        assert ok.export(good) == SpanExportResult.SUCCESS
        deadline = time.monotonic() + 10
        while rx.status()["store_new_spans"] < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        # While the receiver runs and is idle, a reader (kvtrace report, the app's snapshot) gets in.
        deadline = time.monotonic() + 5
        while rx.writer.holds_store() and time.monotonic() < deadline:
            time.sleep(0.02)
        before = stored(rx.config.db_path)
        assert before == (keys(good), 20)

        anonymous = HttpExporter(endpoint=f"http://127.0.0.1:{rx.http_port}/v1/traces")
        assert anonymous.export(make_spans(10, "anon")) == SpanExportResult.FAILURE
        wrong = GrpcExporter(endpoint=f"127.0.0.1:{rx.grpc_port}", insecure=True, headers={"authorization": "Bearer x"})
        assert wrong.export(make_spans(10, "wrong")) == SpanExportResult.FAILURE
        for body, headers in ((b"\x0a\xff\xff\xff\xff\x0f", {}),
                              (gzip.compress(b"\x00" * (80 << 20)), {"Content-Encoding": "gzip"})):
            conn = http.client.HTTPConnection("127.0.0.1", rx.http_port, timeout=10)
            conn.request("POST", "/v1/traces", body=body,
                         headers={"Content-Type": "application/x-protobuf", "Authorization": "Bearer t0k", **headers})
            assert conn.getresponse().status in (400, 413)
            conn.close()
        assert rx.status()["refused_requests"] == {"unauthenticated": 2, "malformed": 1, "too_large": 1}
    finally:
        assert rx.stop(drain_timeout_s=10)
    assert stored(rx.config.db_path) == before


# -------------------------------------------------------------------------- kill -9 under load


@pytest.mark.slow
def test_sigkill_under_load_then_restart_keeps_exactly_the_acknowledged_spans(tmp_path: Path) -> None:
    db = tmp_path / "kv.duckdb"
    proc, grpc_port, http_port = start_serve(db)
    batches = [make_spans(200, f"b{i:03d}") for i in range(60)]
    acked: list[int] = []
    failed: list[int] = []  # in flight when the receiver died: the exporter saw an error
    lock = threading.Lock()
    killed = threading.Event()

    def load(indices: range, make_exporter: Callable[[], SpanExporter]) -> None:
        exporter = make_exporter()
        for i in indices:
            if killed.is_set():
                break
            result = exporter.export(batches[i])
            with lock:
                (acked if result == SpanExportResult.SUCCESS else failed).append(i)
        exporter.shutdown()

    threads = [
        threading.Thread(target=load, args=(range(0, 30), lambda: GrpcExporter(
            endpoint=f"127.0.0.1:{grpc_port}", insecure=True, timeout=1))),
        threading.Thread(target=load, args=(range(30, 60), lambda: HttpExporter(
            endpoint=f"http://127.0.0.1:{http_port}/v1/traces", timeout=1))),
    ]
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=10) as resp:
        writer_pid = int(orjson.loads(resp.read())["store_writer_pid"])
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 12 and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    killed.set()
    proc.wait()
    # The store-writer process dies with its parent (it must not keep the store's lock, or write on).
    deadline = time.monotonic() + 5
    while _alive(writer_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(writer_pid)
    for t in threads:
        t.join()
    assert 12 <= len(acked) < 60, "the kill must land in the middle of the load"
    unsent = sorted(set(range(60)) - set(acked) - set(failed))

    proc, grpc_port, http_port = start_serve(db)  # the spool is replayed into the store
    try:
        got, rows = _wait_for_store(proc, db, {k for i in acked for k in keys(batches[i])})
        acked_keys = {k for i in acked for k in keys(batches[i])}
        assert acked_keys <= got  # every acknowledged span survived the kill
        # Beyond them, at most the batches that were in flight (spooled, ack lost) -- whole batches.
        extra = got - acked_keys
        assert extra == {k for i in failed for k in keys(batches[i]) if k in extra}
        assert rows == len(got)
        # The exporters retry what failed and send the rest: then everything is there exactly once.
        retry = HttpExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces")
        for i in failed + unsent:
            assert retry.export(batches[i]) == SpanExportResult.SUCCESS
        retry.shutdown()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    got, rows = stored(db)
    assert got == {k for b in batches for k in keys(b)}
    assert rows == 60 * 200


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie awaiting its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_store_writer_is_restarted_and_nothing_is_lost_or_doubled(receiver: Receiver) -> None:
    spans = make_spans(400, "wk")
    exporter = GrpcExporter(endpoint=f"127.0.0.1:{receiver.grpc_port}", insecure=True, compression=None)
    assert exporter.export(spans[:200]) == SpanExportResult.SUCCESS
    first = receiver.writer.pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)  # maybe mid-transaction: the spool still holds what is not committed
    assert exporter.export(spans[200:]) == SpanExportResult.SUCCESS  # acknowledged while no writer runs
    exporter.shutdown()
    deadline = time.monotonic() + 20
    while receiver.writer.pid() in (None, first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert receiver.writer.pid() not in (None, first)
    assert receiver.stop(drain_timeout_s=20)
    assert receiver.status()["store_writer_restarts"] == 1
    assert stored(receiver.config.db_path) == (keys(spans), 400)


def _wait_for_store(proc: subprocess.Popen[bytes], db: Path, want: set[Key]) -> tuple[set[Key], int]:
    """Read the store while `kvtrace serve` runs (between writer spells) until `want` is in it."""
    deadline = time.monotonic() + 20
    while True:
        try:
            got, rows = stored(db)
            if want <= got or time.monotonic() > deadline:
                return got, rows
        except Exception:  # the writer holds the file right now; a reader retries
            if time.monotonic() > deadline:
                raise
        assert proc.poll() is None
        time.sleep(0.1)
