"""Traces written by SGLang 0.5.23's own tracing code (tests/data/sglang_stock/, README there says
how they were made): read as they are, the request-level finding right, the verdict honest."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from kvtrace.app.cli import main

DATA = Path(__file__).resolve().parent / "data" / "sglang_stock"
EXPECTED = json.loads((DATA / "expected.json").read_text())


def _kv(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module", params=["pd_abort_during_transfer.jsonl", "pd_abort_during_transfer.pbld"])
def pd_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PD pair's traces, as OTLP JSON lines and as the receiver got them (length-delimited protobuf)."""
    db = tmp_path_factory.mktemp("sglang") / "s.duckdb"
    _kv("ingest", str(DATA / request.param), "--db", str(db))
    return db


def test_every_request_once_per_role_and_no_transfer_as_a_request(pd_store: Path) -> None:
    reqs = EXPECTED["requests"]
    want = sorted((r["rid"], role, r[role]["instance"], r[role]["finish_reason"], r["bootstrap_room_hex"][2:].zfill(16))
                  for r in reqs.values() for role in ("prefill", "decode"))
    got = _rows(pd_store, "SELECT rid, role, instance_id, finish_reason, bootstrap_room FROM requests ORDER BY ALL")
    assert got == want  # no `Sender Req 0x...` root among them, finish_reason decoded from '["abort"]'
    assert not _rows(pd_store, "SELECT rid FROM requests WHERE finish_reason LIKE '[%' OR rid LIKE '0x%'")


def test_the_mooncake_write_is_a_stage_of_its_room(pd_store: Path) -> None:
    a = EXPECTED["requests"]["A"]
    got = _rows(pd_store, f"""SELECT max(end_ns) FROM request_stages
                             WHERE name = 'mooncake_worker_send_session'
                               AND bootstrap_room = '{a["bootstrap_room_hex"][2:].zfill(16)}'""")
    assert got == [(EXPECTED["window"]["end_ns"],)]


def test_the_abort_during_the_transfer_names_the_culprit_and_the_candidate_victim(pd_store: Path) -> None:
    found = [json.loads(line) for line in _kv("findings", "--db", str(pd_store)).splitlines()]
    assert [(f["kind"], f["instance"], f["culprit_rid"], f["victim_rid"], f["confidence"]) for f in found] == [
        ("abort_during_transfer", "decode-0", EXPECTED["culprit"]["rid"], EXPECTED["candidate_victims"][0]["rid"],
         "possible")]
    f = found[0]
    # the last mooncake_worker_send* end of the room: the session's, or its enclosing worker send's
    assert 0 <= f["window_end_raw_ns"] - EXPECTED["window"]["end_ns"] < 1_000_000
    assert f["culprit_clock_host"] == "gpu-node-p0"
    assert f["refute_margin"].startswith("holds unless the clock of decode-0 is more than ")
    assert not {f["victim_rid"]} & set(EXPECTED["not_victims"])


def test_the_aborted_request_is_not_labelled_ok(pd_store: Path, tmp_path: Path) -> None:
    verdict = _kv("report", "--db", str(pd_store), "--out", str(tmp_path / "r")).splitlines()[0]
    assert "No race findings" not in verdict
    assert "abort_during_transfer" in verdict and "Coverage:" in verdict
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{pd_store}' AS s (READ_ONLY)")
        con.execute("USE s")
        from kvtrace.analytics import runner

        runner.compute(con, ["request_anomalies"])
        labels = dict(con.execute("SELECT rid, anomaly FROM temp.main.request_anomalies").fetchall())
    finally:
        con.close()
    assert labels[EXPECTED["culprit"]["rid"]] == "aborted"


def test_a_unified_server_roots_are_requests(tmp_path: Path) -> None:
    db = tmp_path / "u.duckdb"
    _kv("ingest", str(DATA / "unified.jsonl"), "--db", str(db))
    want = sorted((r["rid"], "unified", "unified-0", r["finish_reason"]) for r in EXPECTED["unified"]["requests"])
    assert _rows(db, "SELECT rid, role, instance_id, finish_reason FROM requests ORDER BY ALL") == want


def test_without_resource_attributes_one_server_stays_one_instance(tmp_path: Path) -> None:
    """Each process of the server has the SDK's random service.instance.id: kvtrace takes
    service.name instead (never one instance per process), keeps the raw id, and says so."""
    db = tmp_path / "u.duckdb"
    _kv("ingest", str(DATA / "unified_no_resource_attrs.jsonl"), "--db", str(db))
    raw = _rows(db, "SELECT DISTINCT attributes->>'$.\"service.instance.id\"' FROM resources")
    assert len(raw) >= 2  # tokenizer and scheduler processes
    assert _rows(db, "SELECT DISTINCT instance_id FROM spans") == [("sglang",)]
    assert _rows(db, "SELECT rid, role, instance_id FROM requests") == [
        (EXPECTED["unified_no_resource_attrs"]["requests"][0]["rid"], "unified", "sglang")]
    verdict = _kv("report", "--db", str(db), "--out", str(tmp_path / "r")).splitlines()[0]
    assert "carry only the SDK's random service.instance.id" in verdict
    assert "OTEL_RESOURCE_ATTRIBUTES=" in verdict
