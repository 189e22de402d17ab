"""Incidents: findings grouped by culprit action (one transfer released early, one HiCache load, one
aborted request) over every TP rank, KV pool and victim, checked against the simulator's ground
truth, on hand-stated stores for the grouping rules, and as the unit of the verdict."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pytest
from analytics_store import insert, new_store, s
from click.testing import CliRunner

from kvtrace.analytics import runner
from kvtrace.analytics.summary import summarise
from kvtrace.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_traces"


def _kv(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _analysed(traces: Path, db: Path) -> Path:
    _kv("ingest", str(traces), "--db", str(db))
    _kv("analyze", "--db", str(db))
    return db


def _rows(db: Path, sql: str) -> list[dict[str, Any]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def _truth(labels: Path) -> dict[tuple[str, str, str], dict[str, set[Any]]]:
    """The injected races grouped by culprit action: (family, instance, culprit) -> victims, ranks,
    pools (an abort's reuses and near misses are one action; every sample has one load per culprit)."""
    out: dict[tuple[str, str, str], dict[str, set[Any]]] = defaultdict(lambda: defaultdict(set))
    for race in json.loads(labels.read_text())["races"]:
        family = "abort" if race["kind"] in ("abort_before_write_complete", "unsafe_free") else race["kind"]
        key = (family, race["instance"], race["culprit_rid"])
        out[key]["kinds"].add(race["kind"])
        out[key]["ranks"].add(race["tp_rank"])
        out[key]["pools"].add(race["kv_pool"])
        if race["victim_rid"] is not None:
            out[key]["victims"].add(race["victim_rid"])
    return out


@pytest.fixture(scope="module")
def pd_abort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _analysed(SAMPLES / "pd-abort-race", tmp_path_factory.mktemp("pd") / "s.duckdb")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _analysed(SAMPLES / "mixed", tmp_path_factory.mktemp("mixed") / "s.duckdb")


def _check_against_truth(db: Path, labels: Path) -> list[dict[str, Any]]:
    incidents = _rows(db, "SELECT * FROM incidents")
    truth = _truth(labels)
    found = {}
    for i in incidents:
        family = "abort" if i["kind"] in ("abort_before_write_complete", "unsafe_free") else i["kind"]
        key = (family, i["instance"], i["culprit_rid"])
        assert key not in found, f"two incidents for one culprit action {key}"
        found[key] = i
    assert set(found) == set(truth)  # one incident per culprit action, none missing, none extra
    for key, want in truth.items():
        got = found[key]
        assert set(got["victim_rids"]) == want["victims"], key
        assert set(got["tp_ranks"]) == want["ranks"] and set(got["kv_pools"]) == want["pools"], key
        kind = "abort_before_write_complete" if "abort_before_write_complete" in want["kinds"] else min(want["kinds"])
        assert got["kind"] == kind, key
    # every finding is in exactly one incident, and each incident lists exactly its findings
    pairs = _rows(db, "SELECT finding_id, incident_id FROM finding_incidents")
    assert sorted(p["finding_id"] for p in pairs) == sorted(r["finding_id"] for r in _rows(db, "SELECT finding_id FROM findings"))
    members: dict[str, list[str]] = defaultdict(list)
    for p in pairs:
        members[p["incident_id"]].append(p["finding_id"])
    for i in incidents:
        assert i["finding_ids"] == sorted(members[i["incident_id"]]) and i["n_findings"] == len(members[i["incident_id"]])
    return incidents


def test_pd_abort_race_findings_are_one_incident_per_abort(pd_abort: Path) -> None:
    incidents = _check_against_truth(pd_abort, SAMPLES / "pd-abort-race" / "labels.json")
    aborts = [i for i in incidents if i["kind"] == "abort_before_write_complete"]
    assert len(aborts) == 4 and sum(i["n_findings"] for i in aborts) == 40  # 40 findings, 4 aborts
    for i in incidents:
        assert i["culprit_action"] == "kv.transfer" and i["bootstrap_room"]
        assert len(i["culprit_span_ids"]) == 4  # the culprit's transfer spans: 2 ranks x 2 pools
        # pages: distinct (rank, pool, page) slots over the findings
        [(slots,)] = [tuple(r.values()) for r in _rows(pd_abort, f"""
            SELECT count(*) FROM (SELECT DISTINCT f.tp_rank, f.kv_pool, unnest(f.pages)
                                  FROM findings f WHERE list_contains({i['finding_ids']!r}, f.finding_id))""")]
        assert i["n_pages"] == slots
        certain = _rows(pd_abort, f"SELECT count(*) AS n FROM findings WHERE confidence = 'certain' "
                                  f"AND list_contains({i['finding_ids']!r}, finding_id)")[0]["n"]
        assert i["confidence"] == ("certain" if certain else "possible")


def test_mixed_gives_abort_and_hicache_load_incidents(mixed: Path) -> None:
    incidents = _check_against_truth(mixed, SAMPLES / "mixed" / "labels.json")
    loads = [i for i in incidents if i["kind"] == "read_before_load"]
    assert loads and all(i["culprit_action"] == "hicache.load" and i["bootstrap_room"] is None for i in loads)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["hicache-race", "offload-race", "pr35049"])
def test_other_samples_give_one_incident_per_culprit_action(scenario: str, tmp_path: Path) -> None:
    _check_against_truth(_analysed(SAMPLES / scenario, tmp_path / "s.duckdb"), SAMPLES / scenario / "labels.json")


@pytest.mark.slow
def test_incident_ids_do_not_depend_on_the_ingest_order_or_the_run(pd_abort: Path, tmp_path: Path) -> None:
    """The same traces, ingested file by file in the reverse order into another store and analysed
    there, give the same incident ids with the same findings; a second analyze changes nothing."""
    again = tmp_path / "again.duckdb"
    for f in sorted((SAMPLES / "pd-abort-race").glob("*.otlp.jsonl"), reverse=True):
        shutil.copy(f, tmp_path / f.name)
        _kv("ingest", str(tmp_path / f.name), "--db", str(again))
    _kv("analyze", "--db", str(again))
    sql = "SELECT incident_id, finding_ids FROM incidents ORDER BY incident_id"
    first = _rows(pd_abort, sql)
    assert _rows(again, sql) == first
    _kv("analyze", "--db", str(again))
    assert _rows(again, sql) == first


# --- the grouping rules, on hand-stated stores -------------------------------------------------

P_HOST, D_HOST = "host-p0", "host-d0"


def _abort_on_two_ranks(con: duckdb.DuckDBPyConnection) -> None:
    """A's transfer (room aa) into decode-0 ranks 0 and 1; A aborts and frees both mid-write; B gets
    A's rank-0 pages before the write lands (abort_before_write_complete), nobody gets rank 1's
    (unsafe_free). Request C's causal pairs bound the clocks."""
    for rank in (0, 1):
        common = {"instance_id": "decode-0", "tp_rank": rank, "kv_pool": "kv", "service_version": "v1"}
        insert(con, "kv_events", op="alloc", rid="A", page_ids=list(range(14, 45)), start_ns=s(878.70),
               end_ns=s(878.70), clock_host=D_HOST, emit_instance_id="decode-0", **common)
        insert(con, "kv_events", op="transfer", rid="A", page_ids=list(range(14, 45)), start_ns=s(878.80),
               end_ns=s(884.80), clock_host=P_HOST, emit_instance_id="prefill-0", bootstrap_room="aa", **common)
        insert(con, "kv_events", op="free", rid="A", page_ids=list(range(14, 45)), start_ns=s(881.28),
               end_ns=s(881.28), clock_host=D_HOST, emit_instance_id="decode-0", free_mode="immediate",
               free_reason="aborted", **common)
        insert(con, "kv_events", op="transfer", rid="C", page_ids=[100 + rank], start_ns=s(870.0002),
               end_ns=s(871.0), clock_host=P_HOST, emit_instance_id="prefill-0", bootstrap_room="cc", **common)
    insert(con, "kv_events", op="alloc", rid="B", page_ids=list(range(1, 33)), start_ns=s(881.31), end_ns=s(881.31),
           clock_host=D_HOST, emit_instance_id="decode-0", instance_id="decode-0", tp_rank=0, kv_pool="kv",
           service_version="v1")
    insert(con, "aborts", rid="A", instance_id="decode-0", host_name=D_HOST, service_version="v1", time_ns=s(881.28))
    insert(con, "request_stages", name="decode_bootstrap", rid="C", bootstrap_room="cc", instance_id="decode-0",
           host_name=D_HOST, start_ns=s(869.9), end_ns=s(870.0))
    insert(con, "request_stages", name="decode_transferred", rid="C", bootstrap_room="cc", instance_id="decode-0",
           host_name=D_HOST, start_ns=s(870.0), end_ns=s(871.0003))
    insert(con, "requests", rid="C", role="decode", instance_id="decode-0", host_name=D_HOST,
           service_version="v1", start_ns=s(869.9), end_ns=s(880.0))


def _incidents(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return runner.run(con, "incidents").to_pylist()


def test_a_reuse_and_a_near_miss_of_one_abort_are_one_incident(tmp_path: Path) -> None:
    con = new_store(tmp_path / "s.duckdb")
    _abort_on_two_ranks(con)
    kinds = sorted(r["kind"] for r in runner.run(con, "findings").to_pylist())
    assert kinds == ["abort_before_write_complete", "unsafe_free"]
    [incident] = _incidents(con)
    assert incident["kind"] == "abort_before_write_complete"
    assert incident["finding_kinds"] == ["abort_before_write_complete", "unsafe_free"]
    assert (incident["culprit_rid"], incident["victim_rids"], incident["tp_ranks"]) == ("A", ["B"], [0, 1])
    assert incident["bootstrap_room"] == "aa" and incident["n_findings"] == 2
    assert incident["n_pages"] == len(range(14, 33)) + len(range(14, 45))  # rank 0's reused, rank 1's freed


def _load_and_early_read(con: duckdb.DuckDBPyConnection, rid: str, rank: int, at: float) -> None:
    """A HiCache load of `rid` at `at` s whose layers land every 2 ms, and the step reading them
    0.5 ms apart from 1 ms on: layer 0 read before it landed."""
    common = {"rid": rid, "instance_id": "prefill-0", "tp_rank": rank, "kv_pool": "kv", "clock_host": P_HOST,
              "emit_instance_id": "prefill-0", "service_version": "v1"}
    insert(con, "kv_events", op="load", page_ids=[7, 8, 9], start_ns=s(at), end_ns=s(at + 0.010),
           layer_offsets_ns=[2_000_000, 4_000_000, 6_000_000], **common)
    insert(con, "kv_events", op="read", start_ns=s(at + 0.001), end_ns=s(at + 0.008),
           layer_offsets_ns=[500_000, 4_000_000, 6_500_000], **common)


def test_loads_of_one_request_are_one_incident_per_load_in_time(tmp_path: Path) -> None:
    """Rank 0's and rank 1's parallel loads of R are one incident; R's load a second later is another."""
    con = new_store(tmp_path / "s.duckdb")
    _load_and_early_read(con, "R", 0, 100.0)
    _load_and_early_read(con, "R", 1, 100.0)
    _load_and_early_read(con, "R", 0, 101.0)
    incidents = sorted(_incidents(con), key=lambda i: i["window_start_ns"])
    assert [(i["kind"], i["tp_ranks"], i["n_findings"]) for i in incidents] == [
        ("read_before_load", [0, 1], 2), ("read_before_load", [0], 1)]
    assert all(i["culprit_action"] == "hicache.load" for i in incidents)
    assert len({i["incident_id"] for i in incidents}) == 2


# --- the verdict counts incidents --------------------------------------------------------------

def test_the_verdict_counts_incidents_then_findings(pd_abort: Path) -> None:
    truth = _truth(SAMPLES / "pd-abort-race" / "labels.json")
    races = [k for k, v in truth.items() if v["victims"]]
    near = [k for k, v in truth.items() if not v["victims"]]
    victims = set().union(*(truth[k]["victims"] for k in races))
    instances = sorted({k[1] for k in races})
    [(n_abort,)] = [tuple(r.values()) for r in _rows(pd_abort, "SELECT count(*) FROM findings WHERE kind = "
                                                               "'abort_before_write_complete'")]
    [(n_free,)] = [tuple(r.values()) for r in _rows(pd_abort, "SELECT count(*) FROM findings WHERE kind = 'unsafe_free'")]
    con = runner.connect(pd_abort)
    runner.compute(con)
    summary = summarise(con)
    con.close()
    verdict = summary.verdict
    assert verdict.startswith(f"{len(races)} incidents: {len(races)} abort_before_write_complete "
                              f"({len(victims)} victims) on {' and '.join(instances)}, all in version after-fix-2; "
                              f"{n_abort} abort_before_write_complete findings across ranks, pools and victims; ")
    assert f"; {len(near)} unsafe frees were near misses ({n_free} unsafe_free findings" in verdict
    assert summary.incidents_by_kind["abort_before_write_complete"].incidents == len(races)
    assert summary.findings_by_kind["abort_before_write_complete"] == n_abort  # per-finding counts stay


def test_one_finding_per_incident_says_no_finding_count(tmp_path: Path) -> None:
    db = _analysed(SAMPLES / "pr35049", tmp_path / "s.duckdb")
    verdict = _kv("report", "--db", str(db), "--out", str(tmp_path / "r")).splitlines()[0]
    assert verdict.startswith("1 incident: 1 abort_before_write_complete (1 victim) on decode-0, all in version "
                              "before-fix; its victim is 1 of the 1 anomalous outputs")
    assert "across ranks" not in verdict
