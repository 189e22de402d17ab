"""`kvtrace replay export | run | store | minimize` on a real DuckDB store made from sample_traces/pr35049."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from kvtrace.app.cli import main
from kvtrace.replay.plan import check_well_formed, load_plan


def _rids(plan_path: Path) -> tuple[str, str]:
    """(A, B): the aborted request whose write to [14..44] was late, and the one that got [1..32]."""
    plan = load_plan(plan_path)
    a = next(o.rid for o in plan.ops if o.op == "transfer" and o.pages[0] == 14)
    b = next(o.rid for o in plan.ops if o.op == "alloc" and o.pages[0] == 1 and o.pages[-1] == 32)
    return a, b


@pytest.fixture(scope="module")
def store(ingested_only_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of conftest's pr35049 store (sample_traces/pr35049 ingested): the replay commands
    write their records into it."""
    db = tmp_path_factory.mktemp("replay") / "pr35049.duckdb"
    shutil.copyfile(ingested_only_store, db)
    return db


def _invoke(*args: str) -> str:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_export_of_the_pr35049_finding_holds_the_recorded_interleaving(store, tmp_path):
    out = tmp_path / "plans"
    _invoke("replay", "export", "--db", str(store), "--all-findings", "--out", str(out))
    (path,) = sorted(out.glob("*.json"))
    plan = load_plan(path)
    A, B = _rids(path)
    assert plan.expected["kind"] == "abort_before_write_complete"
    assert (plan.expected["culprit_rid"], plan.expected["victim_rid"]) == (A, B)
    ops = [(o.op, o.rid, o.pages[0], o.pages[-1], o.actor.split(":")[0]) for o in plan.ops]
    assert ops[:5] == [
        ("alloc", A, 14, 44, "compute"),
        ("transfer", A, 14, 44, "prefill"),
        ("free", A, 14, 44, "compute"),
        ("alloc", B, 1, 32, "compute"),
        ("transfer", B, 1, 32, "prefill"),
    ]
    # B's reads are resolved to what B held then: [1..32] plus the 5 pages it allocated later.
    reads = [o for o in plan.ops if o.op == "read"]
    assert [o.pages for o in reads] == [tuple(range(1, 33)) + tuple(range(45, 50))] * 2
    # Recorded seconds survive, relative to the plan's t0 (A's alloc at 878.70 s on decode's clock);
    # the write's ~878.80 .. ~884.80 s is on prefill's clock (a few ms off decode's in this sample).
    assert plan.t0_ns == 878_700_000_000
    assert abs(plan.ops[1].start_ns - 100_000_000) < 10_000_000
    assert abs(plan.ops[1].end_ns - 6_100_000_000) < 10_000_000
    assert plan.ops[2].info["free_mode"] == "immediate"
    assert check_well_formed(plan) == []


def test_run_stores_verdicts_in_replay_runs(store, tmp_path):
    out = tmp_path / "plans"
    _invoke("replay", "export", "--db", str(store), "--all-findings", "--out", str(out))
    (path,) = sorted(out.glob("*.json"))
    text = _invoke("replay", "run", str(path), "--device", "cpu", "--sweep", "5", "--db", str(store))
    assert "stored 2 replay records" in text
    with duckdb.connect(str(store), read_only=True) as con:
        rows = con.execute(
            "SELECT mode, corrupted, damaged_pages, n_stale_reads, stale_layers, corruption_rate, device "
            "FROM replay_runs ORDER BY mode"
        ).fetchall()
    assert rows == [
        # A's 8 layers land 0.75 s apart from ~879.55 s; layers 0..2 land before B's alloc (881.31 s),
        # so they harm nobody. B's read at 883.0 s sees layers 3 and 4 of A's, its read at 886.0 s layers 3..7.
        ("as-recorded", True, list(range(14, 33)), 19 * (2 + 5), [3, 4, 5, 6, 7], 1.0, "cpu"),
        ("fixed", False, [], 0, [], 0.0, "cpu"),
    ]


def test_window_export_and_minimize(store, tmp_path):
    plan_path = tmp_path / "w.json"
    _invoke("replay", "export", "--db", str(store), "--window", "decode-0:878.6s..886.1s", "--out", str(plan_path))
    plan = load_plan(plan_path)
    A, B = _rids(plan_path)
    assert {o.rid for o in plan.ops} >= {A, B}
    small = tmp_path / "min.json"
    text = _invoke("replay", "minimize", str(plan_path), "--out", str(small))
    assert [(o.op, o.rid) for o in load_plan(small).ops][:3] == [("alloc", A), ("transfer", A), ("free", A)]
    assert "still corrupt as recorded" in text


def test_store_imports_records_written_on_a_gpu_host(store, tmp_path):
    rec = {"plan": "p", "mode": "fixed", "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
           "verdict": {"corrupted": False, "damaged_pages": [], "n_late_writes": 0}, "gpu_ms": 21.5,
           "agrees_with_cpu": True}
    results = tmp_path / "gpu.jsonl"
    results.write_text(json.dumps(rec) + "\n")
    _invoke("replay", "store", str(results), "--db", str(store))
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("SELECT device_name, gpu_ms, agrees_with_cpu FROM replay_runs WHERE plan = 'p'").fetchall() == [
            ("NVIDIA H100 80GB HBM3", 21.5, True)
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--finding", "nope"], "no finding 'nope'"),
        (["--window", "decode-0:5s"], "expected INSTANCE:T0..T1"),
        (["--finding", "x", "--window", "decode-0:1..2"], "give exactly one of"),
    ],
)
def test_export_errors_are_one_clear_line(store, tmp_path, args, message):
    res = CliRunner().invoke(main, ["replay", "export", "--db", str(store), *args, "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 1
    assert message in res.output
    assert "Traceback" not in res.output


def test_run_min_gap_ms_sets_the_device_time_floor(store, tmp_path):
    """`--min-gap-ms` reaches the time warp: the records carry it, and the smallest gap between
    racing accesses on the device is at least that."""
    out = tmp_path / "plans"
    _invoke("replay", "export", "--db", str(store), "--all-findings", "--out", str(out))
    (path,) = sorted(out.glob("*.json"))
    for gap_ms in (1.0, 3.0):
        records = tmp_path / f"r{gap_ms}.jsonl"
        _invoke("replay", "run", str(path), "--device", "cpu", "--min-gap-ms", str(gap_ms), "--json", str(records))
        recs = [json.loads(line) for line in records.read_text().splitlines()]
        assert {r["floor_us"] for r in recs} == {gap_ms * 1e3}
        as_recorded = next(r for r in recs if r["mode"] == "as-recorded")
        assert as_recorded["critical_gap_us"] >= gap_ms * 1e3
