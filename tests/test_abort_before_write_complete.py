"""abort_before_write_complete and unsafe_free on hand-stated stores: the PR #35049 log, a skewed
prefill clock, the fixed (deferred) free, and a lost kv.free span."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from analytics_store import insert, new_store, s

from kvtrace.analytics import findings

P_HOST, D_HOST = "host-p0", "host-d0"


def _pr35049(con: duckdb.DuckDBPyConnection, *, skew_ns: int = 0, deferred: bool = False,
             free_span: bool = True) -> dict[str, str]:
    """The logged case: A holds [14..44], written 878.80..884.80 (prefill clock + skew); A aborts
    at 881.28; B allocates [1..32] at 881.31. Causal pairs of a healthy request C bound the skew."""
    ids: dict[str, str] = {}
    common = {"instance_id": "decode-0", "tp_rank": 0, "kv_pool": "kv", "service_version": "v1"}
    ids["alloc_a"] = insert(con, "kv_events", op="alloc", rid="A", page_ids=list(range(14, 45)),
                            start_ns=s(878.70), end_ns=s(878.70), clock_host=D_HOST, emit_instance_id="decode-0",
                            **common)
    ids["transfer"] = insert(con, "kv_events", op="transfer", rid="A", page_ids=list(range(14, 45)),
                             start_ns=s(878.80) + skew_ns, end_ns=s(884.80) + skew_ns, clock_host=P_HOST,
                             emit_instance_id="prefill-0", bootstrap_room="aa", transfer_backend="mooncake",
                             **common)
    free_at = s(884.90) if deferred else s(881.28)
    if free_span:
        ids["free"] = insert(con, "kv_events", op="free", rid="A", page_ids=list(range(14, 45)), start_ns=free_at,
                             end_ns=free_at, clock_host=D_HOST, emit_instance_id="decode-0",
                             free_mode="deferred" if deferred else "immediate", free_reason="aborted", **common)
    ids["abort"] = insert(con, "aborts", rid="A", instance_id="decode-0", host_name=D_HOST, service_version="v1",
                          time_ns=s(881.28), abort_reason="transfer_timeout", poll_state="Transferring")
    ids["alloc_b"] = insert(con, "kv_events", op="alloc", rid="B", page_ids=list(range(1, 33)),
                            start_ns=(s(884.95) if deferred else s(881.31)), end_ns=s(881.31), clock_host=D_HOST,
                            emit_instance_id="decode-0", **common)
    # request C: bootstrap end 870.000 (decode) -> transfer 870.0002 .. 871.000 (prefill) -> transferred 871.0003
    insert(con, "request_stages", name="decode_bootstrap", rid="C", bootstrap_room="cc", instance_id="decode-0",
           host_name=D_HOST, start_ns=s(869.9), end_ns=s(870.0))
    insert(con, "kv_events", op="transfer", rid="C", page_ids=[100, 101], start_ns=s(870.0002) + skew_ns,
           end_ns=s(871.0) + skew_ns, clock_host=P_HOST, emit_instance_id="prefill-0", bootstrap_room="cc", **common)
    insert(con, "request_stages", name="decode_transferred", rid="C", bootstrap_room="cc", instance_id="decode-0",
           host_name=D_HOST, start_ns=s(870.0), end_ns=s(871.0003))
    insert(con, "requests", rid="C", role="decode", instance_id="decode-0", host_name=D_HOST,
           service_version="v1", start_ns=s(869.9), end_ns=s(880.0))
    return ids


@pytest.mark.parametrize("skew_ns", [0, 5_000_000, -5_000_000, 1_234_567])
def test_pr35049_gives_the_logged_pages_and_window_at_any_skew(tmp_path: Path, skew_ns: int) -> None:
    con = new_store(tmp_path / "s.duckdb")
    ids = _pr35049(con, skew_ns=skew_ns)
    rows = findings.compute(con).to_pylist()
    assert [r["kind"] for r in rows] == ["abort_before_write_complete"]
    f = rows[0]
    assert f["pages"] == list(range(14, 33))
    assert (f["instance"], f["tp_rank"], f["kv_pool"]) == ("decode-0", 0, "kv")
    assert (f["culprit_rid"], f["victim_rid"]) == ("A", "B")
    assert f["window_start_ns"] == s(881.31)
    # request C's causal pairs bound the skew to [true, true + 0.3 ms]: the corrected end is the
    # latest the evidence allows, 0.3 ms after the true end, whatever the skew
    assert f["window_end_ns"] == s(884.80) + 300_000
    assert round(f["window_end_ns"] / 1e9, 2) == 884.80
    assert f["window_end_raw_ns"] == s(884.80) + skew_ns
    assert f["confidence"] == "certain"
    assert f["evidence_span_ids"] == [ids["transfer"], ids["free"], ids["alloc_b"], ids["abort"]]
    assert f["service_version"] == "v1"


def test_deferred_free_after_the_write_gives_no_finding(tmp_path: Path) -> None:
    con = new_store(tmp_path / "s.duckdb")
    _pr35049(con, skew_ns=3_000_000, deferred=True)
    assert findings.compute(con).num_rows == 0


def test_lost_free_span_falls_back_to_the_abort_and_is_only_possible(tmp_path: Path) -> None:
    con = new_store(tmp_path / "s.duckdb")
    ids = _pr35049(con, free_span=False)
    rows = findings.compute(con).to_pylist()
    assert [(r["kind"], r["victim_rid"], r["confidence"], r["pages"]) for r in rows] == [
        ("abort_before_write_complete", "B", "possible", list(range(14, 33)))]
    assert rows[0]["evidence_span_ids"] == [ids["transfer"], ids["abort"], ids["alloc_b"]]


def test_no_skew_evidence_makes_a_cross_host_finding_possible(tmp_path: Path) -> None:
    con = new_store(tmp_path / "s.duckdb")
    _pr35049(con)
    con.execute("DELETE FROM request_stages")
    rows = findings.compute(con).to_pylist()
    assert [(r["kind"], r["confidence"]) for r in rows] == [("abort_before_write_complete", "possible")]


def test_free_during_write_without_reuse_is_an_unsafe_free(tmp_path: Path) -> None:
    con = new_store(tmp_path / "s.duckdb")
    ids = _pr35049(con)
    con.execute("DELETE FROM kv_events WHERE rid = 'B'")
    rows = findings.compute(con).to_pylist()
    assert [(r["kind"], r["culprit_rid"], r["victim_rid"], r["confidence"]) for r in rows] == [
        ("unsafe_free", "A", None, "certain")]
    assert rows[0]["pages"] == list(range(14, 45))
    assert rows[0]["window_start_ns"] == s(881.28)
    assert rows[0]["evidence_span_ids"] == [ids["transfer"], ids["free"], ids["abort"]]
