"""Every accepted input form stores the same thing: OTLP JSON lines (hex or base64 ids), one JSON
document, protobuf (one message or length-delimited), gzip and zstd; real-world quirks; and the
live-payload API the receiver calls."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

import orjson
import pytest
import zstandard
from click.testing import CliRunner
from ingest_otlp_builders import delimited_protobuf, json_lines, pd_request_spans, to_otlp_json, to_request
from ingest_support import query, snapshot

from kvtrace.app.cli import main
from kvtrace.ingest import PayloadError, ingest_paths, ingest_payload, open_store

DATA = Path(__file__).parent / "data" / "ingest"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ref")
    (d / "ref.jsonl").write_bytes(json_lines(pd_request_spans()))
    ingest_paths([d / "ref.jsonl"], d / "ref.duckdb", progress=False)
    return d / "ref.duckdb"


@cache
def _encodings() -> dict[str, bytes]:
    spans = pd_request_spans()
    doc = to_otlp_json(to_request(spans))
    return {
        "lines-hex.jsonl": json_lines(spans, per_line=3),
        "lines-base64.jsonl": json_lines(spans, per_line=5, ids="base64"),
        "document.json": json.dumps(doc, indent=2).encode(),
        "one-message.pb": to_request(spans).SerializeToString(),
        "delimited.pb": delimited_protobuf(spans, per_message=4),
        "lines.jsonl.gz": gzip.compress(json_lines(spans)),
        "delimited.pb.zst": zstandard.ZstdCompressor().compress(delimited_protobuf(spans)),
        "document.json.zst": zstandard.ZstdCompressor().compress(orjson.dumps(doc)),
        "crlf-and-blank-lines.jsonl": b"\r\n\n" + json_lines(spans, per_line=2).replace(b"\n", b"\r\n\n"),
    }


@pytest.mark.parametrize("name", list(_encodings()))
def test_each_encoding_stores_the_same_tables(tmp_path: Path, reference: Path, name: str) -> None:
    (tmp_path / name).write_bytes(_encodings()[name])
    summary = ingest_paths([tmp_path / name], tmp_path / "s.duckdb", progress=False)
    assert (summary.spans_read, summary.spans_new, summary.quarantined) == (14, 14, 0)
    assert snapshot(tmp_path / "s.duckdb") == snapshot(reference)


def test_hand_written_quirks_file(tmp_path: Path) -> None:
    """Upper-case hex ids, numeric nanoseconds, enum names, a 64-bit trace id, every value type."""
    db = tmp_path / "q.duckdb"
    summary = ingest_paths([DATA / "quirks_upper_hex_numeric_times.json"], db, progress=False)
    assert (summary.spans_read, summary.quarantined) == (2, 0)
    rows = query(db, """
        SELECT trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, status_code, status_message,
               scope_name, scope_version, service_name, host_name, attributes::VARCHAR
        FROM spans ORDER BY span_id""")
    assert rows == [
        ("0000000000000000d269b633813fc60c", "aae19b7ec3c1b175", None,
         "sglang-style 64-bit trace id, no parent, no times", 0, None, None, 0, None,
         "my.library", "1.0.0", "my.service", "host-a", "{}"),
        ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173", "I'm a server span", 2,
         1544712660000000000, 1544712661000000000, 2, "boom", "my.library", "1.0.0", "my.service", "host-a",
         '{"my.span.attr":"some value","an.int":42,"an.int.as.string":-7,"a.double":0.25,"a.bool":true,'
         '"some.bytes":{"bytesValue":"AQID"},"an.array":[1,"two",[false]],"a.kvlist":{"inner":1.5,"deep":{"x":"y"}},'
         '"an.empty":null}'),
    ]
    assert query(db, "SELECT name, time_ns, attributes::VARCHAR FROM span_events") == [
        ("an event", 1544712660500000000, '{"e":1}')
    ]
    assert query(db, "SELECT linked_trace_id, linked_span_id FROM span_links") == [
        ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b173")
    ]


def test_64_bit_trace_ids_are_left_padded_in_every_format(tmp_path: Path) -> None:
    spans = pd_request_spans(seed=5, trace_bits=64)
    (tmp_path / "a.jsonl").write_bytes(json_lines(spans))
    (tmp_path / "b.pb").write_bytes(to_request(spans).SerializeToString())
    for name in ("a.jsonl", "b.pb"):
        db = tmp_path / f"{name}.duckdb"
        ingest_paths([tmp_path / name], db, progress=False)
        (trace_id,), = query(db, "SELECT DISTINCT trace_id FROM spans")
        assert len(trace_id) == 32 and trace_id.startswith("0" * 16), trace_id
        assert query(db, "SELECT count(*) FROM kv_events") == [(6,)]


def test_ingest_payload_json_and_protobuf_are_idempotent(tmp_path: Path, reference: Path) -> None:
    spans = pd_request_spans()
    con = open_store(tmp_path / "live.duckdb")
    try:
        first = ingest_payload(con, to_request(spans[:8]).SerializeToString(), "protobuf", "otlp-grpc")
        second = ingest_payload(con, orjson.dumps(to_otlp_json(to_request(spans))), "json", "otlp-http")
        retry = ingest_payload(con, gzip.compress(to_request(spans).SerializeToString()), "protobuf", "otlp-http")
    finally:
        con.close()
    assert (first.accepted, first.new_spans, first.rejected) == (8, 8, 0)
    assert (second.accepted, second.new_spans, second.rejected) == (14, 6, 0)
    assert (retry.accepted, retry.new_spans, retry.rejected) == (14, 0, 0)
    assert snapshot(tmp_path / "live.duckdb") == snapshot(reference)


def test_ingest_payload_rejects_bad_spans_and_undecodable_payloads(tmp_path: Path) -> None:
    doc = to_otlp_json(to_request(pd_request_spans()[:3]))
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    del spans[0]["spanId"]
    spans[1]["startTimeUnixNano"] = "yesterday"
    con = open_store(tmp_path / "live.duckdb")
    try:
        result = ingest_payload(con, orjson.dumps(doc), "json", "otlp-http 10.0.0.7")
        assert (result.accepted, result.new_spans, result.rejected) == (1, 1, 2)
        assert result.reasons == ["span: span id is missing", "span: startTimeUnixNano 'yesterday' is not an integer"]
        assert con.execute("SELECT source, reason FROM quarantine ORDER BY reason").fetchall() == [
            ("otlp-http 10.0.0.7", "span: span id is missing"),
            ("otlp-http 10.0.0.7", "span: startTimeUnixNano 'yesterday' is not an integer"),
        ]
        with pytest.raises(PayloadError, match="not JSON"):
            ingest_payload(con, b"{nope", "json", "x")
        with pytest.raises(PayloadError, match="not an OTLP protobuf"):
            ingest_payload(con, b"\x0a\xff\xff\xff\x0f", "protobuf", "x")
        assert con.execute("SELECT count(*) FROM spans").fetchall() == [(1,)]
    finally:
        con.close()


def test_cli_ingest_export_parquet(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_bytes(json_lines(pd_request_spans()))
    db = str(tmp_path / "s.duckdb")
    runner = CliRunner()
    out = runner.invoke(main, ["ingest", str(tmp_path / "t.jsonl"), "--db", db, "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "spans        14 read, 14 new, 0 already stored" in out.output
    assert "hosts        host-d, host-p" in out.output
    out = runner.invoke(main, ["export", "--db", db, "--parquet", str(tmp_path / "pq")])
    assert out.exit_code == 0, out.output
    import duckdb

    got = duckdb.sql(
        f"SELECT service, day::VARCHAR, count(*) FROM read_parquet('{tmp_path}/pq/spans/*/*/*.parquet', hive_partitioning=true) "
        "GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert got == [("sglang-decode", "2025-11-24", 11), ("sglang-prefill", "2025-11-24", 3)]
    out = runner.invoke(main, ["ingest", str(tmp_path / "missing.jsonl"), "--db", db])
    assert out.exit_code == 1 and "no such file" in out.output
