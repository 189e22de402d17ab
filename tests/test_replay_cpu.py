"""The CPU executor: the outcome predicted from the recorded order, both modes, whole expected results."""

from __future__ import annotations

from kvtrace.replay.cpu import run_cpu
from kvtrace.replay.examples import pr35049_plan, read_before_load_plan, synthetic_plan
from kvtrace.replay.plan import check_well_formed


def test_pr35049_as_recorded_corrupts_pages_14_to_32_of_b():
    v = run_cpu(pr35049_plan(), "as-recorded").verdict
    assert v.damaged_pages() == list(range(14, 33))
    assert [(f["page"], f["holder"], f["found_rid"], f["found_kind"]) for f in v.foreign_pages] == [
        (p, "B", "A", "data") for p in range(14, 33)
    ]
    # A's write lands on all 31 of its pages after their release: 14..32 now B's, 33..44 free.
    assert sorted({w["page"] for w in v.late_writes}) == list(range(14, 45))
    assert {w["found_kind"] for w in v.late_writes if w["page"] > 32} == {"free-poison"}
    assert v.victim_rid == "B"
    assert v.divergence is not None and v.divergence["cosine"] < 0.9


def test_pr35049_fixed_corrupts_nothing_and_matches_the_clean_output():
    v = run_cpu(pr35049_plan(), "fixed").verdict
    assert not v.corrupted
    assert (v.foreign_pages, v.late_writes, v.stale_reads) == ([], [], [])
    assert v.divergence == {"cosine": 1.0, "max_abs_err": 0.0}


def test_read_before_load_reads_layers_2_and_3_early_and_the_fix_waits():
    plan = read_before_load_plan()
    v = run_cpu(plan, "as-recorded").verdict
    assert v.summary()["stale_layers"] == [2, 3]
    assert sorted((r["page"], r["layer"]) for r in v.stale_reads) == [(p, k) for p in range(8) for k in (2, 3)]
    assert {r["found_kind"] for r in v.stale_reads} == {"alloc-stamp"}  # the layer's copy had not landed
    fixed = run_cpu(plan, "fixed")
    assert not fixed.verdict.corrupted
    assert fixed.schedule.delayed_ns > 0  # the reads of layers 2 and 3 waited for their load events


def test_synthetic_window_is_well_formed_and_its_aborts_write_late_only_as_recorded():
    plan = synthetic_plan(400, seed=3)
    assert check_well_formed(plan) == []
    assert run_cpu(plan, "as-recorded").verdict.late_writes
    assert not run_cpu(plan, "fixed").verdict.corrupted


def test_prediction_is_deterministic():
    plan = synthetic_plan(300, seed=1)
    a, b = run_cpu(plan, "as-recorded").verdict, run_cpu(plan, "as-recorded").verdict
    assert a.to_json() == b.to_json()
