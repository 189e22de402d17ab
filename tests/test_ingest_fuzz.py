"""Property: corrupting records of a valid file never crashes ingest, never loses a span of an
untouched record, and sends every corrupted record to quarantine with a reason."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_otlp_builders import delimited_protobuf, json_lines, pd_request_spans
from ingest_support import query

from kvtrace.ingest import ingest_paths

N_LINES = 7  # 14 spans, 2 a line


@cache
def _lines() -> tuple[bytes, ...]:
    return tuple(json_lines(pd_request_spans(), per_line=2).splitlines())


def _span_ids(line: bytes) -> set[str]:
    doc = orjson.loads(line)
    return {s["spanId"] for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]}


def _corrupt_span(doc: dict, how: str) -> None:  # type: ignore[type-arg]
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    if how == "drop_span_id":
        del span["spanId"]
    elif how == "bad_trace_id":
        span["traceId"] = "zz" * 16
    elif how == "time_not_int":
        span["startTimeUnixNano"] = [1, 2]
    elif how == "attr_value_type":
        span["attributes"] = [{"key": "k", "value": {"intValue": "12x"}}]
    elif how == "status_not_object":
        span["status"] = "ERROR"


LINE_CORRUPTIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.05, 0.95)),
    st.tuples(st.just("control_byte"), st.floats(0.0, 1.0)),
    st.tuples(st.just("invalid_utf8"), st.floats(0.0, 1.0)),
    st.tuples(
        st.sampled_from(["drop_span_id", "bad_trace_id", "time_not_int", "attr_value_type", "status_not_object"]),
        st.just(0.0),
    ),
)


def _apply(line: bytes, how: str, at: float) -> tuple[bytes, bool]:
    """The corrupted line and whether the whole line is lost (else only its first span)."""
    cut = max(1, int(len(line) * at))
    if how == "truncate":
        return line[:cut], True
    if how == "control_byte":
        return line[:cut] + b"\x01" + line[cut:], True
    if how == "invalid_utf8":
        return line[:cut] + b"\xff" + line[cut:], True
    doc = orjson.loads(line)
    _corrupt_span(doc, how)
    return orjson.dumps(doc), False


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.integers(0, N_LINES - 1), LINE_CORRUPTIONS, min_size=1, max_size=4))
def test_corrupted_json_lines(corruptions: dict[int, tuple[str, float]]) -> None:
    lines = list(_lines())
    kept: set[str] = set()
    for i, line in enumerate(lines):
        ids = _span_ids(line)
        if i in corruptions:
            lines[i], whole = _apply(line, *corruptions[i])
            if not whole:
                first = orjson.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"]
                kept |= ids - {first}
        else:
            kept |= ids
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "fuzz.jsonl"
        f.write_bytes(b"\n".join(lines) + b"\n")
        db = Path(d) / "s.duckdb"
        summary = ingest_paths([f], db, progress=False)
        stored = {sid for (sid,) in query(db, "SELECT span_id FROM spans")}
        quarantined = query(db, "SELECT line, reason FROM quarantine")
    assert stored == kept
    assert summary.quarantined == len(corruptions)
    assert sorted(line for line, _ in quarantined) == sorted(i + 1 for i in corruptions)
    assert all(reason for _, reason in quarantined)


@cache
def _messages() -> tuple[bytes, ...]:
    spans = pd_request_spans()
    return tuple(delimited_protobuf(spans[i : i + 2], per_message=2) for i in range(0, 14, 2))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.integers(0, 6), st.binary(min_size=1, max_size=40), min_size=1, max_size=3))
def test_corrupted_protobuf_stream(garbage: dict[int, bytes]) -> None:
    """Messages replaced by random bytes (their length prefix kept): no crash, every span of an
    untouched message stored, and every replaced message either quarantined or decoded."""
    framed = []
    for i, msg in enumerate(_messages()):
        if i in garbage:
            body = garbage[i]
            framed.append(bytes([len(body)]) + body)
        else:
            framed.append(msg)
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "fuzz.pb"
        f.write_bytes(b"".join(framed))
        db = Path(d) / "s.duckdb"
        summary = ingest_paths([f], db, progress=False)
        n_spans = query(db, "SELECT count(*) FROM spans")[0][0]
        reasons = query(db, "SELECT reason FROM quarantine")
    untouched = 2 * (7 - len(garbage))
    assert summary.spans_read >= untouched and n_spans >= untouched
    assert all(r for (r,) in reasons)
