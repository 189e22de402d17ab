"""Dedup through span_keys: a re-ingested or overlapping file stores no double, a key that is in
span_keys without its span (what a hash collision looks like) never drops a span, and a store
whose span_keys disagrees with spans (written before the table existed) is rebuilt on open."""

from __future__ import annotations

from pathlib import Path

from ingest_otlp_builders import json_lines, pd_request_spans
from ingest_support import query, snapshot

from kvtrace.ingest import ingest_paths, open_store


def test_overlapping_files_store_each_span_once(tmp_path: Path) -> None:
    lines = json_lines(pd_request_spans(), per_line=1).splitlines(keepends=True)
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines[:10]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(lines[4:]))
    (tmp_path / "all.jsonl").write_bytes(b"".join(lines))
    db = tmp_path / "s.duckdb"
    first = ingest_paths([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], db, progress=False)
    assert (first.spans_read, first.spans_new) == (20, 14)
    again = ingest_paths([tmp_path / "all.jsonl"], db, progress=False)
    assert (again.spans_read, again.spans_new) == (14, 0)
    assert query(db, "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans") == [(14, 14)]
    assert query(db, "SELECT count(*) FROM span_keys") == [(14,)]
    ref = tmp_path / "ref.duckdb"
    ingest_paths([tmp_path / "all.jsonl"], ref, progress=False)
    assert snapshot(db) == snapshot(ref)


def test_a_key_without_its_span_drops_nothing(tmp_path: Path) -> None:
    """span_keys holds the key of a span that is not stored (what a hash collision with a stored
    span looks like): the span is still stored, because a key hit is confirmed on the ids."""
    data = json_lines(pd_request_spans())
    (tmp_path / "a.jsonl").write_bytes(data)
    trace_id = data.split(b'"traceId":"')[1][:32].decode()
    span_id = data.split(b'"spanId":"')[1][:16].decode()
    db = tmp_path / "s.duckdb"
    con = open_store(db)
    con.execute("INSERT INTO spans (trace_id, span_id, name) VALUES (?, '00000000000000ff', 'other')", ["f" * 32])
    con.execute("INSERT INTO span_keys VALUES (hash(?, ?))", [trace_id, span_id])  # the other span's "key"
    con.close()
    summary = ingest_paths([tmp_path / "a.jsonl"], db, progress=False)
    assert (summary.spans_read, summary.spans_new) == (14, 14)
    assert query(db, f"SELECT count(*) FROM spans WHERE trace_id = '{trace_id}' AND span_id = '{span_id}'") == [(1,)]


def test_span_keys_rebuilt_when_they_disagree_with_spans(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(json_lines(pd_request_spans()))
    db = tmp_path / "s.duckdb"
    ingest_paths([tmp_path / "a.jsonl"], db, progress=False)
    con = open_store(db)
    con.execute("DELETE FROM span_keys")  # as in a store written before span_keys existed
    con.close()
    open_store(db).close()
    assert query(db, "SELECT count(*) FROM span_keys") == [(14,)]
    (tmp_path / "b.jsonl").write_bytes(json_lines(pd_request_spans(), per_line=2))
    assert ingest_paths([tmp_path / "b.jsonl"], db, progress=False).spans_new == 0


def test_a_span_twice_in_one_batch_gives_one_row_everywhere_from_its_first_copy(tmp_path: Path) -> None:
    """At-least-once delivery inside one file: every span twice in the same batch, the second
    copies with other attribute values. Raw and normalised tables hold each span once, from its
    first copy, exactly as if the file held each span once."""
    data = json_lines(pd_request_spans(), per_line=1)
    altered = data.replace(b'"kv.pool"', b'"kv.pool.was"').replace(b'"abort.reason"', b'"abort.reason.was"')
    assert altered != data
    (tmp_path / "twice.jsonl").write_bytes(data + altered)
    (tmp_path / "once.jsonl").write_bytes(data)
    db, ref = tmp_path / "s.duckdb", tmp_path / "ref.duckdb"
    summary = ingest_paths([tmp_path / "twice.jsonl"], db, progress=False)
    assert (summary.spans_read, summary.spans_new) == (28, 14)
    ingest_paths([tmp_path / "once.jsonl"], ref, progress=False)
    assert snapshot(db) == snapshot(ref)
    assert query(db, "SELECT count(*) FROM kv_events WHERE kv_pool IS NULL AND op <> 'read'") == [(0,)]
