"""Happens-before and the time warp (replay.timing): the fixed plan's edges order every conflicting
pair of accesses (so the fixed replay is sanitizer-clean by construction), and the device program
keeps every race at least the floor apart while predicting the same outcome."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvtrace.replay.cpu import observe, run_cpu, schedule
from kvtrace.replay.examples import pr35049_plan, read_before_load_plan, synthetic_plan
from kvtrace.replay.plan import load_plan
from kvtrace.replay.timing import conflicts, device_timing, unordered_conflicts
from kvtrace.replay.verdict import judge

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "replay" / "plans" / "samples").glob("*/*.json"))


def test_pr35049_races_are_the_late_write_against_the_free_and_the_realloc():
    races = unordered_conflicts(pr35049_plan(), "as-recorded")
    pairs = {(r.first[1], r.second[1]) for r in races}
    assert pairs == {("poison", "write"), ("stamp", "write")}  # A's write lands after A's free and B's alloc
    assert sorted({r.cell[1] for r in races}) == list(range(14, 45))
    assert unordered_conflicts(pr35049_plan(), "fixed") == []


def test_read_before_load_races_are_the_reads_of_layers_the_load_has_not_copied():
    races = unordered_conflicts(read_before_load_plan(), "as-recorded")
    assert {(r.first[1], r.second[1]) for r in races} == {("write", "read"), ("read", "write")}
    assert unordered_conflicts(read_before_load_plan(), "fixed") == []


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_fixed_mode_orders_every_conflicting_pair_of_every_sample_plan(path):
    plan = load_plan(path)
    assert unordered_conflicts(plan, "fixed") == []
    if plan.expected.get("confidence") == "certain":
        assert unordered_conflicts(plan, "as-recorded")  # the race the fix removes is there as recorded


def test_synthetic_window_with_several_compute_lanes_is_race_free_when_fixed():
    plan = synthetic_plan(400, seed=3)
    assert unordered_conflicts(plan, "as-recorded")
    assert unordered_conflicts(plan, "fixed") == []


@pytest.mark.parametrize("make", [pr35049_plan, read_before_load_plan, lambda: synthetic_plan(300, seed=1)])
@pytest.mark.parametrize("mode", ["as-recorded", "fixed"])
def test_device_program_keeps_races_a_floor_apart_and_predicts_the_same_verdict(make, mode):
    plan = make()
    scale, floor = 1e-4, 1_000_000.0  # compress 10,000x: recorded gaps under 10 s would fall below 1 ms
    dt = device_timing(plan, mode, scale, floor)
    # The device program, run on the CPU executor's clock in device ns, is the warped schedule.
    dev_sched = schedule(dt.program, 0)
    dev_races = [c for c in conflicts(dt.program, dev_sched) if not c.ordered]
    assert len(dev_races) == dt.n_races
    assert all(r.gap_ns >= floor - 1e-3 for r in dev_races)
    want = run_cpu(plan, mode).verdict
    got = judge(plan, observe(plan, dev_sched))
    assert got.claims() == want.claims()
    assert dt.makespan_ns == pytest.approx(dev_sched.makespan_ns())
    if mode == "as-recorded" and dt.n_races:
        assert dt.device_critical_gap_ns is not None and dt.device_critical_gap_ns >= floor - 1e-3
        assert dt.critical_gap_ns is not None and dt.critical_gap_ns * scale < floor  # the floor did something


def test_without_a_floor_the_warp_is_the_linear_time_scale():
    plan = pr35049_plan()
    dt = device_timing(plan, "as-recorded", 0.001, floor_ns=0)
    start = plan.window_ns()[0]
    assert dt.makespan_ns == pytest.approx((run_cpu(plan, "as-recorded").schedule.makespan_ns() - start) * 0.001)
