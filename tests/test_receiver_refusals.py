"""What the receiver refuses, and how it says so (OTLP/HTTP statuses, gRPC codes), over real sockets.

Every refused request must leave the spool, which is the only way into the store, untouched.
"""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from receiver_support import AUTH, PROTO, Servers, export_request, make_spans, run_servers, with_invalid_utf8

from kvtrace.ingest.receiver.front import Limits


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    yield from run_servers(tmp_path, Limits(max_request_bytes=64 << 10, max_decompressed_bytes=256 << 10))


def test_http_without_or_with_a_wrong_token_is_401(servers: Servers) -> None:
    body = export_request(3).SerializeToString()
    for headers in ({"Content-Type": "application/x-protobuf"},
                    {"Content-Type": "application/x-protobuf", "Authorization": "Bearer nope"}):
        status, resp_headers, _ = servers.post(body, headers)
        assert (status, resp_headers["www-authenticate"]) == (401, "Bearer")
    assert servers.spooled() == []


def test_grpc_without_the_token_is_unauthenticated(servers: Servers) -> None:
    with pytest.raises(grpc.RpcError) as err:
        servers.grpc_export(export_request(3).SerializeToString(), metadata=())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert servers.spooled() == []


def test_undecodable_payloads_are_400_and_invalid_argument(servers: Servers) -> None:
    garbage = b"\xff\xff\xff\xff not a protobuf"
    status, _, body = servers.post(garbage, PROTO)
    assert status == 400
    assert "undecodable OTLP protobuf" in status_pb2.Status.FromString(body).message
    status, _, body = servers.post(b'{"resourceSpans": [', {"Content-Type": "application/json", **AUTH})
    assert status == 400
    assert orjson.loads(body)["message"].startswith("undecodable OTLP/JSON")
    status, _, _ = servers.post(b"\x1f\x8b\x08\x00garbage", {**PROTO, "Content-Encoding": "gzip"})
    assert status == 400
    with pytest.raises(grpc.RpcError) as err:
        servers.grpc_export(garbage)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servers.spooled() == []


def test_over_size_and_gzip_bombs_are_413(servers: Servers) -> None:
    status, headers, _ = servers.post(b"\x00" * (65 << 10), PROTO)
    assert (status, headers["connection"]) == (413, "close")
    bomb = gzip.compress(b"\x00" * (8 << 20))  # 8 MiB of zeros in ~8 KiB
    assert len(bomb) < 64 << 10
    status, _, body = servers.post(bomb, {**PROTO, "Content-Encoding": "gzip"})
    assert status == 413
    assert "decompressed request is over the limit" in status_pb2.Status.FromString(body).message
    # gRPC: the decompressed-size limit is grpc.max_receive_message_length.
    with pytest.raises(grpc.RpcError) as err:
        servers.grpc_export(b"\x0a\x80\x80\x20" + bytes(512 << 10), compression=grpc.Compression.Gzip)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert servers.spooled() == []
    assert servers.front.snapshot().refused == {"too_large": 2}


def test_unknown_media_type_or_encoding_is_415(servers: Servers) -> None:
    body = export_request(1).SerializeToString()
    assert servers.post(body, {"Content-Type": "text/plain", **AUTH})[0] == 415
    assert servers.post(body, {**PROTO, "Content-Encoding": "br"})[0] == 415
    assert servers.spooled() == []


def test_invalid_span_ids_get_a_partial_success_and_are_not_spooled(servers: Servers) -> None:
    status, headers, body = servers.post(export_request(3, bad_ids=2).SerializeToString(), PROTO)
    assert (status, headers["content-type"]) == (200, "application/x-protobuf")
    response = ExportTraceServiceResponse.FromString(body)
    assert response.partial_success.rejected_spans == 2
    assert response.partial_success.error_message.startswith(
        "2 span(s) rejected: resource_spans[0].scope_spans[0].spans[3] 'zero0': trace id is all zeros"
    )
    grpc_response = ExportTraceServiceResponse.FromString(
        servers.grpc_export(export_request(3, bad_ids=1).SerializeToString())
    )
    assert grpc_response.partial_success.rejected_spans == 1
    spooled = [ExportTraceServiceRequest.FromString(p) for p in servers.spooled()]
    assert [[s.name for s in r.resource_spans[0].scope_spans[0].spans] for r in spooled] == [
        ["s0", "s1", "s2"], ["s0", "s1", "s2"]
    ]


def test_a_span_upb_refuses_is_rejected_alone_and_the_others_are_spooled(servers: Servers) -> None:
    """A real SDK request with invalid UTF-8 in one span's name, which upb refuses as a whole: over
    HTTP and gRPC, that span is rejected with its position and reason, and the request without it
    is spooled. The id rules still hold for the rest (a span with a zero trace id is added)."""
    request = encode_spans(make_spans(6, "x"))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans.add(trace_id=bytes(16), span_id=(9).to_bytes(8, "big"), name="zero")
    bad = [s.name for s in spans].index("decode Req x000001")
    body = with_invalid_utf8(request, "decode Req x000001")
    with pytest.raises(DecodeError, match="UTF-8"):
        ExportTraceServiceRequest.FromString(body)
    reason = (f"2 span(s) rejected: resource_spans[0].scope_spans[0].spans[{bad}] (span id {spans[bad].span_id.hex()}): "
              "undecodable protobuf Span: invalid UTF-8 in its name; "
              "resource_spans[0].scope_spans[0].spans[6] 'zero': trace id is all zeros")
    status, _, http_body = servers.post(body, PROTO)
    assert status == 200
    for response in (ExportTraceServiceResponse.FromString(http_body),
                     ExportTraceServiceResponse.FromString(servers.grpc_export(body))):
        assert (response.partial_success.rejected_spans, response.partial_success.error_message) == (2, reason)
    del spans[6]
    del spans[bad]
    assert [ExportTraceServiceRequest.FromString(p) for p in servers.spooled()] == [request, request]
    stats = servers.front.snapshot()
    assert (stats.accepted_spans, stats.rejected_spans, stats.refused) == (10, 4, {})


def test_a_resource_upb_refuses_rejects_its_spans_and_broken_framing_is_400(servers: Servers) -> None:
    """Invalid UTF-8 in the resource (service.instance.id) costs every span of it, each reported;
    nothing is spooled. A request cut in the middle, whose framing does not hold, is still 400."""
    request = encode_spans(make_spans(4, "y"))
    body = with_invalid_utf8(request, "decode-0")
    status, _, http_body = servers.post(body, PROTO)
    assert status == 200
    partial = ExportTraceServiceResponse.FromString(http_body).partial_success
    assert partial.rejected_spans == 4
    assert partial.error_message.startswith("4 span(s) rejected: resource_spans[0].scope_spans[0].spans[0] (span id ")
    assert "resource: undecodable protobuf ResourceSpans: " in partial.error_message
    assert partial.error_message.endswith("; and 1 more")
    status, _, http_body = servers.post(request.SerializeToString()[:-7], PROTO)
    assert status == 400
    assert "undecodable OTLP protobuf" in status_pb2.Status.FromString(http_body).message
    assert servers.spooled() == []


def test_json_partial_success_is_answered_in_json(servers: Servers) -> None:
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0000000000000001", "name": "ok"},
        {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "nothex", "name": "bad"},
    ]}]}]}
    status, _, body = servers.post(orjson.dumps(doc), {"Content-Type": "application/json", **AUTH})
    assert status == 200
    partial = orjson.loads(body)["partialSuccess"]
    assert partial["rejectedSpans"] in ("1", 1)
    assert "resourceSpans[0].scopeSpans[0].spans[1] 'bad'" in partial["errorMessage"]
    assert [[s["name"] for s in orjson.loads(p)["resourceSpans"][0]["scopeSpans"][0]["spans"]]
            for p in servers.spooled()] == [["ok"]]


def test_a_full_spool_answers_429_and_resource_exhausted_with_a_retry_delay(tmp_path: Path) -> None:
    for servers in run_servers(tmp_path, Limits(max_spool_bytes=1000, retry_after_s=3)):
        body = export_request(20).SerializeToString()
        assert servers.post(body, PROTO)[0] == 200  # fills most of the spool
        status, headers, _ = servers.post(body, PROTO)
        assert (status, headers["retry-after"]) == (429, "3")
        with pytest.raises(grpc.RpcError) as err:
            servers.grpc_export(body)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(err.value.trailing_metadata())
        assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 3
        rich = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        detail = error_details_pb2.RetryInfo()
        assert rich.details[0].Unpack(detail) and detail.retry_delay.seconds == 3
        assert len(servers.spooled()) == 1


def test_the_memory_budget_answers_503_and_unavailable(tmp_path: Path) -> None:
    for servers in run_servers(tmp_path, Limits(max_inflight_bytes=100, retry_after_s=2)):
        body = export_request(20).SerializeToString()
        status, headers, _ = servers.post(body, PROTO)
        assert (status, headers["retry-after"]) == (503, "2")
        with pytest.raises(grpc.RpcError) as err:
            servers.grpc_export(body)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servers.spooled() == []


def _post_chunked(port: int, chunks: list[bytes], headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/traces", body=iter(chunks), headers=headers, encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_chunked_body_is_read_and_one_over_the_limit_is_413(servers: Servers) -> None:
    """Transfer-Encoding: chunked (no Content-Length), as proxies and some clients send: read and
    spooled like any request; past the request-size limit, 413 and nothing spooled."""
    body = export_request(3).SerializeToString()
    status, reply = _post_chunked(servers.http_port, [body[:7], body[7:20], body[20:]],
                                  {**PROTO, "Transfer-Encoding": "chunked"})
    assert status == 200
    assert ExportTraceServiceResponse.FromString(reply).partial_success.rejected_spans == 0
    assert servers.spooled() == [body]
    status, _ = _post_chunked(servers.http_port, [b"\x00" * (40 << 10)] * 2, {**PROTO, "Transfer-Encoding": "chunked"})
    assert status == 413
    assert servers.spooled() == [body]
    assert servers.front.snapshot().refused == {"too_large": 1}
