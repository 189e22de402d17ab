"""Ingest of OTLP JSON lines into the normalised tables that the analyses read.

One PD request recorded with the real opentelemetry-sdk (tests/ingest_otlp_builders.py) is
ingested, and the normalised rows are checked whole. Then the same spans are split across files
in an order where children come before their parents (forward.read before its forward, stage
slices before their request roots), and every table must come out identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_otlp_builders import MS, T0, json_lines, pd_request_spans
from ingest_support import query, snapshot

from kvtrace.ingest import ingest_paths, open_store

RID = "a1b2c3d4e5f60718"


@pytest.fixture(scope="module")
def pd_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pd")
    (d / "pd.jsonl").write_bytes(json_lines(pd_request_spans()))
    summary = ingest_paths([d / "pd.jsonl"], d / "store.duckdb", progress=False)
    assert (summary.spans_read, summary.spans_new, summary.quarantined) == (14, 14, 0)
    return d / "store.duckdb"


def test_kv_events_rows(pd_store: Path) -> None:
    rows = query(pd_store, """
        SELECT op, rid, instance_id, tp_rank, kv_pool, page_ids, page_lo, page_hi, n_pages,
               start_ns - 1764000000000000000, end_ns - 1764000000000000000, clock_host, emit_instance_id,
               service_version, status_code, page_size, free_mode, free_reason, bootstrap_room,
               transfer_bytes, transfer_backend, layer_offsets_ns, hicache_num_tokens,
               forward_batch_id, forward_mode
        FROM kv_events ORDER BY op, rid""")
    pages = [3, 4, 5, 16, 17]
    assert rows == [
        ("alloc", RID, "decode-0", 0, "kv", pages, 3, 17, 5, 2 * MS, 2 * MS, "host-d", "decode-0", "v1.2.0", 0,
         64, None, None, None, None, None, None, None, None, None),
        ("free", RID, "decode-0", 0, "kv", pages, 3, 17, 5, 14 * MS, 14 * MS, "host-d", "decode-0", "v1.2.0", 0,
         None, "immediate", "aborted", None, None, None, None, None, None, None),
        ("load", RID, "decode-0", 0, "index_k", [40, 41], 40, 41, 2, 10 * MS, 12 * MS, "host-d", "decode-0",
         "v1.2.0", 0, None, None, None, None, None, None, [500_000, 1_000_000, 1_500_000], 128, None, None),
        ("read", RID, "decode-0", 0, "index_k", [], None, None, None, 11 * MS, 13 * MS, "host-d", "decode-0",
         "v1.2.0", 0, None, None, None, None, None, None, [100_000, 900_000, 1_200_000], None, "b-77", "decode"),
        ("read", "other-rid-0001", "decode-0", 0, "index_k", [], None, None, None, 11 * MS, 13 * MS, "host-d",
         "decode-0", "v1.2.0", 0, None, None, None, None, None, None, [100_000, 900_000, 1_200_000], None,
         "b-77", "decode"),
        # a transfer is keyed on its destination pages; its times stay on the prefill host's clock
        ("transfer", RID, "decode-0", 1, "kv", pages, 3, 17, 5, 3 * MS, 9 * MS, "host-p", "prefill-0", "v1.2.0",
         2, None, None, None, "0000000000005f3a", 327680, "mooncake", None, None, None, None),
    ]


def test_requests_and_spec_steps(pd_store: Path) -> None:
    rows = query(pd_store, """
        SELECT rid, role, instance_id, host_name, service_version, bootstrap_room, start_ns - 1764000000000000000,
               prompt_tokens, completion_tokens, cached_tokens, finish_reason, ttft_s, e2e_s, spec_verify_ct,
               spec_num_proposed_drafts, spec_num_correct_drafts, spec_accept_rate, spec_accept_length,
               spec_draft_tokens, completion_text
        FROM requests ORDER BY role""")
    assert rows == [
        (RID, "decode", "decode-0", "host-d", "v1.2.0", "0000000000005f3a", 1 * MS, 70_000, 9, 64, "abort", 0.012, 0.015,
         3, 9, 6, 0.5, 3.0, 4, "hello wor"),
        (RID, "prefill", "prefill-0", "host-p", "v1.2.0", "0000000000005f3a", 0, None, None, None, None, None, None,
         None, None, None, None, None, None, None),
    ]
    steps = query(pd_store, "SELECT rid, instance_id, step, accepted, step_end_ns FROM spec_steps ORDER BY step")
    assert steps == [
        (RID, "decode-0", 0, 3, T0 + 13 * MS),
        (RID, "decode-0", 1, 2, T0 + 14 * MS),
        (RID, "decode-0", 2, 1, T0 + 15 * MS),
    ]


def test_stages_aborts_feedback(pd_store: Path) -> None:
    assert query(pd_store, """
        SELECT name, rid, bootstrap_room, instance_id, host_name, start_ns - 1764000000000000000,
               end_ns - 1764000000000000000
        FROM request_stages ORDER BY name""") == [
        ("decode_bootstrap", RID, "0000000000005f3a", "decode-0", "host-d", 1 * MS, 2 * MS),
        ("decode_transferred", RID, "0000000000005f3a", "decode-0", "host-d", 2 * MS, 10 * MS),
        ("prefill_forward", RID, "0000000000005f3a", "prefill-0", "host-p", 1 * MS, 4 * MS),
    ]
    assert query(pd_store, "SELECT rid, instance_id, host_name, time_ns, abort_reason, poll_state FROM aborts") == [
        (RID, "decode-0", "host-d", T0 + 14 * MS, "transfer_timeout", "Transferring")
    ]
    assert query(pd_store, "SELECT rid, label, time_ns FROM feedback") == [(RID, "garbled", T0 + 20 * MS)]
    assert query(pd_store, "SELECT count(*) FROM ingest_pending") == [(0,)]


def test_raw_tables_keep_types_events_links(pd_store: Path) -> None:
    assert query(pd_store, """
        SELECT attributes->>'$.rid', attributes->'$."kv.page_ids"', json_type(attributes, '$."kv.transfer.bytes"'),
               kind, status_code, status_message, scope_name, service_name, instance_id, host_name
        FROM spans WHERE name = 'kv.transfer'""") == [
        (RID, "[17,3,4,5,16]", "UBIGINT", 1, 2, "transfer failed", "sglang", "sglang-prefill", "prefill-0", "host-p")
    ]
    assert query(pd_store, "SELECT name, time_ns, attributes FROM span_events") == [
        ("first_token", T0 + 13 * MS, '{"token.index":0}')
    ]
    assert query(pd_store, """
        SELECT s.name, t.name, l.attributes FROM span_links l
        JOIN spans s USING (trace_id, span_id)
        JOIN spans t ON t.trace_id = l.linked_trace_id AND t.span_id = l.linked_span_id""") == [
        ("prefill_forward", "decode_bootstrap", '{"link.kind":"follows"}')
    ]
    assert query(pd_store, "SELECT service_name, instance_id, host_name, role FROM resources ORDER BY 1") == [
        ("sglang-decode", "decode-0", "host-d", "decode"),
        ("sglang-prefill", "prefill-0", "host-p", "prefill"),
    ]


def test_each_span_points_at_its_resource_stored_once(pd_store: Path) -> None:
    """resource_id is the hash of the resource's attribute text; each resource is stored once
    and every span's resource_id finds its own resource (same instance and host)."""
    assert query(pd_store, "SELECT count(*), count(DISTINCT resource_id) FROM resources") == [(2, 2)]
    assert query(pd_store, "SELECT count(*) FROM resources WHERE resource_id <> hash(attributes::VARCHAR)") == [(0,)]
    assert query(pd_store, """
        SELECT count(*) FROM spans s JOIN resources r USING (resource_id)
        WHERE s.instance_id = r.instance_id AND s.host_name = r.host_name""") == [(14,)]


@pytest.mark.parametrize("batch_spans", [1, 3, 1000])
@pytest.mark.parametrize("parents_first", [False, True], ids=["children-first", "parents-first"])
def test_children_before_parents_across_files(
    tmp_path: Path, pd_store: Path, batch_spans: int, parents_first: bool
) -> None:
    """Reads and stage slices in an early file, their forward and roots in later files and
    batches (a read waits for its parent: read_targets_pending.sql), or the other way round (a
    read finds its parent stored: read_parents_stored.sql): once all are ingested, every table
    equals the one-file store."""
    spans = pd_request_spans()
    parents = {"forward", "scheduler", f"decode Req {RID[:8]}", f"prefill Req {RID[:8]}"}
    children = [s for s in spans if s.name not in parents]
    later = [s for s in spans if s.name in parents]
    (tmp_path / "1-children.jsonl").write_bytes(json_lines(children, per_line=2))
    (tmp_path / "2-parents.jsonl").write_bytes(json_lines(later[::-1], per_line=1))
    db = tmp_path / "split.duckdb"
    first, second = ("2-parents.jsonl", "1-children.jsonl") if parents_first else ("1-children.jsonl", "2-parents.jsonl")
    ingest_paths([tmp_path / first], db, progress=False, batch_spans=batch_spans)
    if not parents_first:
        assert query(db, "SELECT count(*) FROM kv_events WHERE op = 'read'") == [(0,)]
        assert query(db, "SELECT count(*) FROM request_stages WHERE rid IS NULL") == [(2,)]
    ingest_paths([tmp_path / second], db, progress=False, batch_spans=batch_spans)
    assert snapshot(db) == snapshot(pd_store)
    assert query(db, "SELECT count(*) FROM ingest_pending") == [(0,)]


def test_reingest_and_overlap_store_no_duplicates(tmp_path: Path, pd_store: Path) -> None:
    spans = pd_request_spans()
    (tmp_path / "a.jsonl").write_bytes(json_lines(spans[:10]))
    (tmp_path / "b.jsonl").write_bytes(json_lines(spans[5:]))  # overlaps a.jsonl on 5 spans
    (tmp_path / "labels.json").write_text('{"format": "kvtrace-labels/1", "races": []}')  # not traces: skipped
    db = tmp_path / "s.duckdb"
    first = ingest_paths([tmp_path], db, progress=False)
    assert first.quarantined == 0
    assert (first.spans_read, first.spans_new, first.files_ingested) == (19, 14, 2)
    again = ingest_paths([tmp_path], db, progress=False)
    assert (again.files_skipped, again.spans_new) == (2, 0)
    # a changed file is read again; the dedup keeps the store exact
    (tmp_path / "b.jsonl").write_bytes(json_lines(spans))
    third = ingest_paths([tmp_path / "b.jsonl"], db, progress=False)
    assert (third.spans_read, third.spans_new) == (14, 0)
    assert snapshot(db) == snapshot(pd_store)


def test_live_payload_and_file_give_the_same_tables(tmp_path: Path, pd_store: Path) -> None:
    """A file's batches are normalised ahead by the Deriver (its own in-memory DuckDB); a live
    payload by the same SQL on the store's connection: the tables come out identical."""
    from kvtrace.ingest import ingest_payload

    db = tmp_path / "live.duckdb"
    con = open_store(db)
    try:
        result = ingest_payload(con, json_lines(pd_request_spans(), per_line=100), "json", "test")
        again = ingest_payload(con, json_lines(pd_request_spans(), per_line=100), "json", "test")
    finally:
        con.close()
    assert (result.accepted, result.new_spans, again.new_spans) == (14, 14, 0)
    assert snapshot(db) == snapshot(pd_store)


def test_a_batch_the_deriver_cannot_hold_is_normalised_on_the_store(tmp_path: Path, pd_store: Path) -> None:
    """When the Deriver's private DuckDB fails on a batch (here: 1 MB of memory for a span with
    200,000 page ids), the merge runs the same SQL on the store's connection: nothing is lost and
    the tables match those of a batch the Deriver took."""
    from kvtrace.ingest.jsonfast import decode_json_chunk
    from kvtrace.ingest.pipeline import Deriver, Staged, merge_staged

    spans = pd_request_spans()
    pages = b",".join(b'{"intValue":"%d"}' % i for i in range(200_000))
    # the first kv.page_ids attribute (of a kv span) gets 200,000 page ids
    big = json_lines(spans, per_line=100).replace(
        b'{"key":"kv.page_ids","value":{"arrayValue":{"values":[',
        b'{"key":"kv.page_ids","value":{"arrayValue":{"values":[' + pages + b",", 1)
    stores = {}
    for name, deriver in (("starved", Deriver(memory_limit="1MB")), ("normal", Deriver())):
        tables = decode_json_chunk(big)
        assert tables is not None
        staged = Staged.from_columnar(tables).prepare(deriver)
        assert (staged.derived is None) == (name == "starved")
        db = tmp_path / f"{name}.duckdb"
        con = open_store(db)
        try:
            con.execute("BEGIN TRANSACTION")
            result = merge_staged(con, staged, None, "test")
            con.execute("COMMIT")
        finally:
            con.close()
            deriver.close()
        assert result.new_spans == 14
        stores[name] = snapshot(db)
    assert stores["starved"] == stores["normal"]
    assert query(tmp_path / "normal.duckdb", "SELECT max(n_pages) > 200_000 FROM kv_events") == [(True,)]
