"""Slow, stalled and careless clients against the receiver (issue 15), over real sockets.

Nothing a client does without working (trickling a request head, opening a connection and saying
nothing, sending headers and never the body, stalling a gRPC call) may keep a client with the
token from being acknowledged; and HTTP framing is read one way only.
"""

from __future__ import annotations

import http.client
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_support import (
    EXPORT,
    PROTO,
    TOKEN,
    Servers,
    export_request,
    keys,
    make_spans,
    run_servers,
    stored,
)

from kvtrace.app.cli import main
from kvtrace.ingest.receiver.front import Limits
from kvtrace.ingest.receiver.grpc_transport import start_grpc_server

ROOT = Path(__file__).resolve().parents[1]
STALLED_HEAD = (f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n").encode()


def _connect(port: int, source: str = "127.0.0.1", send: bytes = b"") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    if send:
        s.sendall(send)
    return s


def _answer(s: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection (or `timeout`), and whether it closed."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def _status_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode()


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes `s` within `seconds` (whatever it answers first)."""
    return _answer(s, seconds)[1]


def _wait_for_slots(servers: Servers, done: Callable[[dict[str, int]], bool]) -> None:
    """Until the HTTP server's connection table (counts by state) satisfies `done`."""
    deadline = time.monotonic() + 5
    while not done(servers.http.slots.counts()):
        assert time.monotonic() < deadline, servers.http.slots.counts()
        time.sleep(0.01)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from run_servers(tmp_path, Limits(max_request_bytes=64 << 10, max_decompressed_bytes=256 << 10))


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Servers]:
    """Servers with short timeouts and few slots, so that a test sees them act within a second."""
    yield from run_servers(tmp_path, Limits(max_request_bytes=1 << 20, max_inflight_bytes=1 << 20, max_connections=6,
                                         max_connections_per_client=6, header_timeout_s=0.5, body_timeout_s=1.0,
                                         idle_timeout_s=0.5))


# -------------------------------------------------------------------------- deadlines


def test_a_one_byte_or_trickling_request_head_gets_408_at_the_header_timeout(quick: Servers) -> None:
    one_byte = _connect(quick.http_port, send=b"P")
    trickle = _connect(quick.http_port)
    t0 = time.monotonic()
    for byte in b"POST /v1/traces HTTP/1.1\r\n":  # one byte every 0.1 s: each read is quick, the head is not
        if select.select([trickle], [], [], 0)[0]:
            break
        trickle.send(bytes([byte]))
        time.sleep(0.1)
    for s in (one_byte, trickle):
        data, closed = _answer(s)
        assert _status_line(data) == "HTTP/1.1 408 Request Timeout" and closed
        assert b"request head not received within 0.5 s" in data
    assert time.monotonic() - t0 < 2.5
    assert quick.front.snapshot().refused == {"header_timeout": 2}


def test_a_keep_alive_connection_is_closed_after_the_idle_timeout(quick: Servers) -> None:
    body = export_request(2).SerializeToString()
    s = _connect(quick.http_port)
    s.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
              f"Content-Type: application/x-protobuf\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    s.settimeout(5)
    assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
    assert _closed_within(s, 3.0)  # idle timeout 0.5 s, closed quietly
    assert quick.spooled() == [body]


def test_stalled_chunked_requests_hold_no_memory_and_get_408_at_the_body_timeout(quick: Servers) -> None:
    """Headers with the token, then no body: today each one reserved the whole request-size limit
    (1 MiB here, the whole memory budget), so every other client got 503 / UNAVAILABLE."""
    stalled = [_connect(quick.http_port, send=STALLED_HEAD) for _ in range(3)]
    time.sleep(0.2)
    body = export_request(3).SerializeToString()
    assert quick.post(body, PROTO)[0] == 200
    quick.grpc_export(body)
    t0 = time.monotonic()
    for s in stalled:
        data, closed = _answer(s)
        assert _status_line(data) == "HTTP/1.1 408 Request Timeout" and closed
    assert time.monotonic() - t0 < 2.5
    assert quick.front.budget.used == 0
    assert quick.front.snapshot().refused == {"body_timeout": 3}


# -------------------------------------------------------------------------- slots


def test_connections_that_send_nothing_cannot_keep_out_a_client_with_the_token(quick: Servers) -> None:
    """All 6 slots held by sockets that sent nothing (or one byte): a newcomer still gets in, by
    closing the oldest of them; only busy (authenticated, mid-request) connections keep their slot."""
    silent = [_connect(quick.http_port, send=b"P" if i % 2 else b"") for i in range(6)]
    time.sleep(0.1)
    body = export_request(2).SerializeToString()
    assert quick.post(body, PROTO)[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", quick.http_port, timeout=5)
    conn.request("GET", "/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert conn.getresponse().status == 200
    conn.close()
    assert _closed_within(silent[0], 1.0)  # the oldest made room
    for s in silent:
        s.close()
    _wait_for_slots(quick, lambda c: sum(c.values()) == 0)
    # When every slot is busy, the newcomer is told to retry.
    stalled = []
    for i in range(6):
        stalled.append(_connect(quick.http_port, send=STALLED_HEAD))
        _wait_for_slots(quick, lambda c, n=i + 1: c["busy"] == n)
    data, closed = _answer(_connect(quick.http_port))  # answered on accept, before it sends anything
    assert _status_line(data) == "HTTP/1.1 503 Service Unavailable" and closed
    assert b"\r\nRetry-After: 1\r\n" in data
    assert quick.front.snapshot().refused["connection_limit"] == 1
    for s in stalled:
        s.close()


def test_one_client_address_holds_at_most_its_cap(tmp_path: Path) -> None:
    """The per-client cap counts connections by source address: 127.0.0.2 fills its 2 slots with
    stalled requests and its next connection is refused, while 127.0.0.1 is served."""
    limits = Limits(max_connections=8, max_connections_per_client=2, body_timeout_s=10)
    for servers in run_servers(tmp_path, limits):
        stalled = [_connect(servers.http_port, "127.0.0.2", STALLED_HEAD) for _ in range(2)]
        time.sleep(0.2)
        body = export_request(2).SerializeToString()
        third = _connect(servers.http_port, "127.0.0.2")  # answered on accept, before it sends anything
        data, closed = _answer(third)
        assert _status_line(data) == "HTTP/1.1 503 Service Unavailable" and closed
        assert b"per-client connection limit" in data
        assert servers.post(body, PROTO)[0] == 200  # from 127.0.0.1
        assert servers.front.snapshot().refused == {"client_limit": 1}
        assert servers.spooled() == [body]
        for s in stalled:
            s.close()


def test_an_unauthenticated_expect_100_continue_is_refused_before_the_body(servers: Servers) -> None:
    s = _connect(servers.http_port, send=b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                 b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
    data, closed = _answer(s)
    assert _status_line(data) == "HTTP/1.1 401 Unauthorized" and closed


# -------------------------------------------------------------------------- gRPC


def _stalled_grpc_calls(port: int, n: int, release: threading.Event,
                        token: str = TOKEN) -> tuple[grpc.Channel, list[grpc.Future]]:
    """Calls whose headers go out and whose request message never comes (until `release`)."""
    def never() -> Iterator[bytes]:
        release.wait(30)
        yield from ()

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_unary(EXPORT)
    return channel, [call.future(never(), metadata=(("authorization", f"Bearer {token}"),), timeout=30)
                     for _ in range(n)]


def test_stalled_grpc_calls_hold_no_worker_thread_and_time_out(quick: Servers) -> None:
    """4 stalled calls against 2 worker threads: a real SDK exporter is still acknowledged at once,
    and the stalled calls end with DEADLINE_EXCEEDED at the body timeout."""
    release = threading.Event()
    channel, calls = _stalled_grpc_calls(quick.grpc_port, 4, release)
    try:
        time.sleep(0.2)
        exporter = GrpcExporter(endpoint=f"127.0.0.1:{quick.grpc_port}", insecure=True, timeout=5,
                                headers=(("authorization", f"Bearer {TOKEN}"),))
        t0 = time.monotonic()
        assert exporter.export(make_spans(20, "g")) == SpanExportResult.SUCCESS
        assert time.monotonic() - t0 < 2.0
        exporter.shutdown()
        for call in calls:
            assert call.exception(timeout=5).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert quick.front.snapshot().refused == {"body_timeout": 4}
    finally:
        release.set()
        channel.close()


def test_a_grpc_connection_that_never_finishes_its_handshake_is_closed(quick: Servers) -> None:
    sockets = [_connect(quick.grpc_port, send=b"P"), _connect(quick.grpc_port)]
    t0 = time.monotonic()
    assert all(_closed_within(s, 5.0) for s in sockets)  # the header timeout, 0.5 s (grpcio's default: 120 s)
    assert time.monotonic() - t0 < 2.5


def test_grpc_checks_the_token_before_the_message_and_caps_calls_per_client(tmp_path: Path) -> None:
    limits = Limits(max_connections_per_client=2, body_timeout_s=10)
    for servers in run_servers(tmp_path, limits):
        release = threading.Event()
        channel, calls = _stalled_grpc_calls(servers.grpc_port, 1, release, token="wrong")
        t0 = time.monotonic()
        assert calls[0].exception(timeout=5).code() == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - t0 < 2.0  # refused on its headers; its message never came
        channel.close()
        channel, calls = _stalled_grpc_calls(servers.grpc_port, 2, release)
        try:
            time.sleep(0.3)
            # A second connection from the same address (one connection carries at most 2 calls:
            # grpc.max_concurrent_streams; a third call on it would wait in the client).
            with grpc.insecure_channel(f"127.0.0.1:{servers.grpc_port}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as other, \
                    pytest.raises(grpc.RpcError) as err:
                other.unary_unary(EXPORT)(export_request(2).SerializeToString(), timeout=5,
                                          metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "per-client limit" in (err.value.details() or "")
            assert "google.rpc.retryinfo-bin" in dict(err.value.trailing_metadata() or ())
        finally:
            release.set()
            channel.close()
        assert servers.front.snapshot().refused["client_limit"] == 1


def test_a_grpc_port_in_use_is_an_error_not_a_shared_port(quick: Servers) -> None:
    """grpcio sets SO_REUSEPORT by default: a second receiver on the same port would bind and
    silently take half the calls."""
    with pytest.raises(OSError, match="cannot bind OTLP/gRPC"):
        start_grpc_server(quick.front, "127.0.0.1", quick.grpc_port)


# -------------------------------------------------------------------------- the low items


def test_the_bearer_scheme_is_case_insensitive(servers: Servers) -> None:
    """RFC 7235 2.1: `bearer` and `BEARER` are the same scheme; the token itself is case-sensitive."""
    body = export_request(2).SerializeToString()
    for scheme in ("bearer", "BEARER"):
        assert servers.post(body, {"Content-Type": "application/x-protobuf",
                                   "Authorization": f"{scheme} {TOKEN}"})[0] == 200
    assert servers.post(body, {"Content-Type": "application/x-protobuf",
                               "Authorization": f"bearer {TOKEN.upper()}"})[0] == 401
    servers.grpc_export(body, metadata=(("authorization", f"bearer {TOKEN}"),))
    assert len(servers.spooled()) == 3


def _raw_post(port: int, head: str, body: bytes) -> tuple[bytes, bool]:
    s = _connect(port, send=(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                             "Content-Type: application/x-protobuf\r\nConnection: close\r\n" + head + "\r\n").encode("latin-1")
                 + body)
    try:
        return _answer(s)
    finally:
        s.close()


def _chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def test_only_a_final_chunked_transfer_coding_is_read_as_chunked(servers: Servers) -> None:
    body = export_request(2).SerializeToString()
    for te in ("xchunked", "chunked-x", "chunked, gzip", "chunked, chunked"):
        data, closed = _raw_post(servers.http_port, f"Transfer-Encoding: {te}\r\n", _chunked(body))
        assert _status_line(data) == "HTTP/1.1 400 Bad Request" and closed, te
    data, closed = _raw_post(servers.http_port, "Transfer-Encoding: gzip, chunked\r\n", _chunked(body))
    assert _status_line(data) == "HTTP/1.1 501 Not Implemented" and closed
    data, _ = _raw_post(servers.http_port, f"Transfer-Encoding: chunked\r\nContent-Length: {len(body)}\r\n",
                        _chunked(body))
    assert _status_line(data) == "HTTP/1.1 400 Bad Request"
    assert servers.spooled() == []
    data, _ = _raw_post(servers.http_port, "Transfer-Encoding: Chunked\r\n", _chunked(body))
    assert _status_line(data) == "HTTP/1.1 200 OK"
    assert servers.spooled() == [body]


def test_a_duplicate_or_non_numeric_content_length_is_400(servers: Servers) -> None:
    body = export_request(2).SerializeToString()
    for head in (f"Content-Length: {len(body)}\r\nContent-Length: 5\r\n",
                 f"Content-Length: {len(body)}\r\nContent-Length: {len(body)}\r\n",
                 f"Content-Length: {len(body)}, {len(body)}\r\n",
                 "Content-Length: +5\r\n",
                 "Content-Length: \u00b2\r\n"):  # str.isdigit() says yes; int() says no
        data, closed = _raw_post(servers.http_port, head, body)
        assert _status_line(data) == "HTTP/1.1 400 Bad Request" and closed, head
    assert servers.spooled() == []


def test_a_negative_or_non_hex_chunk_size_is_answered_400(servers: Servers) -> None:
    """Today `-5` reached rfile.read(-5), which reads to EOF: the client waited for an answer that
    never came."""
    for size_line in (b"-5", b"0x5", b"+5", b"5_0", b" 5", b"g"):
        data, closed = _raw_post(servers.http_port, "Transfer-Encoding: chunked\r\n", size_line + b"\r\nhello\r\n")
        assert _status_line(data) == "HTTP/1.1 400 Bad Request" and closed, size_line
        assert b"bad chunk size line" in data
    assert servers.spooled() == []


# -------------------------------------------------------------------------- kvtrace serve


def _serve(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, int]:
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "serve", "--db", str(tmp_path / "kv.duckdb"),
             "--grpc-port", "0", "--http-port", "0", "--store-release", "0.05", "--status-interval", "0", *extra],
            stderr=log, cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "KVTRACE_TOKEN"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"OTLP/gRPC [\d.]+:(\d+), OTLP/HTTP http://[\d.]+:(\d+)/", log_path.read_text())
        if m:
            return proc, int(m.group(1)), int(m.group(2))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"kvtrace serve did not start:\n{log_path.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def _get_status(port: int, token: str | None) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/status", headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.slow
def test_a_token_file_keeps_the_token_out_of_ps(tmp_path: Path) -> None:
    token = "tf-" + os.urandom(8).hex()
    proc, _, http_port = _serve(tmp_path, "--token-file", str(_token_file(tmp_path, token)))
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"--token-file" in cmdline and token.encode() not in cmdline
        assert _get_status(http_port, None)[0] == 401
        assert _get_status(http_port, token)[0] == 200
    finally:
        _stop(proc)


def test_serve_help_and_readme_never_put_a_token_on_the_command_line() -> None:
    from click.testing import CliRunner

    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "visible" in help_text and "--token-file" in help_text
    readme = (ROOT / "README.md").read_text()
    live = re.split(r"\n## ", readme[readme.index("## Live OTLP"):])[0]
    token_value = re.compile(r"--token(?:=|[ \t]+)(?:[\"'$]|\.\.\.|[A-Za-z0-9_]{6,})")
    for name, text in (("kvtrace serve --help", help_text), ("README Live OTLP", live)):
        assert not token_value.search(text), f"{name} passes a token on the command line"


def test_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["serve", "--db", str(tmp_path / "kv.duckdb"), "--token", "a",
                                       "--token-file", str(_token_file(tmp_path, "b"))])
    assert result.exit_code == 2
    assert "give the token once: --token and --token-file are both set" in result.output


@pytest.mark.slow
def test_slow_and_stalled_clients_do_not_stop_real_sdk_exporters(tmp_path: Path) -> None:
    """The issue's bar, small: against a real `kvtrace serve --token-file` with 12 slots (10 per
    client, everyone on 127.0.0.1), 24 one-byte sockets and 4 stalled chunked requests with the
    token; real SDK exporters over HTTP and gRPC are acknowledged for every batch, every span is
    stored, and the attackers are closed (evicted, or 408 at the header/body timeout)."""
    token = "slow-" + os.urandom(8).hex()
    proc, grpc_port, http_port = _serve(
        tmp_path, "--token-file", str(_token_file(tmp_path, token)), "--max-connections", "12",
        "--max-connections-per-client", "10", "--header-timeout", "1", "--body-timeout", "2", "--idle-timeout", "5")
    attackers: list[socket.socket] = []
    try:
        attackers += [_connect(http_port, send=b"P") for _ in range(24)]
        attackers += [_connect(http_port, send=STALLED_HEAD.replace(TOKEN.encode(), token.encode())) for _ in range(4)]
        time.sleep(0.3)
        batches = [make_spans(200, f"h{i}") for i in range(5)] + [make_spans(200, f"g{i}") for i in range(5)]
        t0 = time.monotonic()
        http_exporter = HttpExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces", timeout=5,
                                     headers={"Authorization": f"Bearer {token}"})
        grpc_exporter = GrpcExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True, timeout=5,
                                     headers=(("authorization", f"Bearer {token}"),))
        results = [http_exporter.export(b) for b in batches[:5]] + [grpc_exporter.export(b) for b in batches[5:]]
        assert results == [SpanExportResult.SUCCESS] * 10
        assert time.monotonic() - t0 < 5.0
        http_exporter.shutdown()
        grpc_exporter.shutdown()
        for s in attackers:  # every attacker is closed: evicted, or 408 at its timeout
            assert _closed_within(s, 5.0)
        _, status = _get_status(http_port, token)
        refused = status["refused_requests"]
        connections = status["http_connections"]
        assert isinstance(refused, dict) and isinstance(connections, dict)
        assert refused.get("body_timeout") == 4 and connections["evicted"] >= 14
    finally:
        for s in attackers:
            s.close()
        _stop(proc)
    want = {k for b in batches for k in keys(b)}
    assert stored(tmp_path / "kv.duckdb") == (want, len(want))
