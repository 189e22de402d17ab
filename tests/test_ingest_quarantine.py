"""Malformed records go to quarantine with where and why; every good record of the file is kept."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner
from ingest_otlp_builders import delimited_protobuf, json_lines, pd_request_spans, to_otlp_json, to_request
from ingest_support import query

from kvtrace.app.cli import main
from kvtrace.ingest import ingest_paths


def _line(spans_doc: dict[str, object]) -> bytes:
    return orjson.dumps(spans_doc)


def test_bad_lines_and_spans_are_quarantined_good_ones_kept(tmp_path: Path) -> None:
    spans = pd_request_spans()
    good = json_lines(spans[:6], per_line=3).splitlines()          # lines 1-2: 6 spans
    doc = to_otlp_json(to_request(spans[6:10]))                      # line 4: 4 spans, 2 of them bad
    bad_spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]  # type: ignore[index]
    bad_spans[0]["traceId"] = "not-an-id"
    bad_spans[2]["attributes"] = {"rid": "x"}
    bad_id = bad_spans[2]["spanId"]
    lines = [
        good[0],
        good[1],
        b'{"resourceSpans": [ truncated',                            # line 3: not JSON
        _line(doc),                                                  # line 4
        b"[1, 2, 3]",                                                # line 5: JSON, not an object
        json_lines(spans[10:], per_line=4).strip(),                  # line 6: 4 spans
    ]
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    db = tmp_path / "q.duckdb"
    summary = ingest_paths([f], db, progress=False)
    assert (summary.spans_read, summary.spans_new, summary.quarantined) == (12, 12, 4)
    rows = query(db, "SELECT line, byte_offset, span_id, reason, raw_bytes FROM quarantine ORDER BY line, reason")
    offset3 = len(good[0]) + len(good[1]) + 2
    assert [(r[0], r[2], r[3].split(":")[0]) for r in rows] == [
        (3, None, "invalid JSON"),
        (4, bad_id, "span"),
        (4, bad_spans[0]["spanId"], "span"),
        (5, None, "top-level JSON is list, expected an object"),
    ]
    assert rows[0][1] == offset3 and rows[0][4] == len(lines[2])
    assert "attributes is not a list" in rows[1][3] and "trace id 'not-an-id' is neither hex nor base64" in rows[2][3]
    stored = {sid for (sid,) in query(db, "SELECT span_id FROM spans")}
    expected = {s.context.span_id.to_bytes(8, "big").hex() for s in spans}
    assert expected - stored == {bad_id, bad_spans[0]["spanId"]}

    out = CliRunner().invoke(main, ["quarantine", "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0] == "4 quarantined record(s)"
    assert f"{f.resolve()}:line 3: invalid JSON" in out.output

    # re-ingesting the (changed) file replaces its quarantine rows instead of doubling them
    f.write_bytes(b"\n".join(lines) + b"\n\n")
    again = ingest_paths([f], db, progress=False)
    assert (again.spans_new, again.quarantined) == (0, 4)
    assert query(db, "SELECT count(*) FROM quarantine") == [(4,)]


def test_corrupt_protobuf_frames_are_quarantined_with_offsets(tmp_path: Path) -> None:
    spans = pd_request_spans()
    good = delimited_protobuf(spans[:4], per_message=4)
    middle = b"\x05\x0a\x03\xff\xff\xff"       # message of 5 bytes: a frame whose body is not a ResourceSpans
    tail = delimited_protobuf(spans[4:], per_message=5)
    f = tmp_path / "stream.pb"
    f.write_bytes(good + middle + tail)
    db = tmp_path / "p.duckdb"
    summary = ingest_paths([f], db, progress=False)
    assert (summary.spans_read, summary.quarantined) == (14, 1)
    ((offset, reason),) = query(db, "SELECT byte_offset, reason FROM quarantine")
    assert offset == len(good) + 1 and reason.startswith("undecodable protobuf ResourceSpans")

    # a length prefix that runs past the end: the rest is quarantined, what came before is kept
    f2 = tmp_path / "truncated.pb"
    f2.write_bytes(good + b"\xff\x7f" + b"\x0a" * 10)
    db2 = tmp_path / "p2.duckdb"
    summary = ingest_paths([f2], db2, progress=False)
    assert (summary.spans_read, summary.quarantined) == (4, 1)
    ((offset, reason),) = query(db2, "SELECT byte_offset, reason FROM quarantine")
    assert offset == len(good) and reason == "message truncated: 10 of 16383 bytes"


def test_stream_whose_first_message_is_ten_corrupt_bytes_keeps_the_rest(tmp_path: Path) -> None:
    """A first byte 0x0A reads as a TracesData tag and as a length of 10. When the first message
    of a delimited stream is 10 bytes of garbage, the file is still read as a stream: that
    message is quarantined and every later span is stored (it used to lose the whole file)."""
    spans = pd_request_spans()
    f = tmp_path / "stream.pb"
    f.write_bytes(b"\x0a" + bytes(10) + delimited_protobuf(spans, per_message=2))
    db = tmp_path / "p.duckdb"
    summary = ingest_paths([f], db, progress=False)
    assert (summary.spans_read, summary.quarantined) == (14, 1)
    ((offset, reason),) = query(db, "SELECT byte_offset, reason FROM quarantine")
    assert offset == 1 and "tag 0" in reason

    # one TracesData message (first byte 0x0A too) is still read as one message
    one = tmp_path / "one.pb"
    one.write_bytes(delimited_protobuf(spans, per_message=14)[2:])  # the message without its prefix
    summary = ingest_paths([one], tmp_path / "one.duckdb", progress=False)
    assert (summary.spans_read, summary.quarantined) == (14, 0)
