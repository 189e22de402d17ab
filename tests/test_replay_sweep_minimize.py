"""Sweeps (near miss or sure thing) and delta debugging down to a minimal reproducer."""

from __future__ import annotations

import dataclasses

import pytest

from kvtrace.replay.cpu import run_cpu
from kvtrace.replay.examples import MS, pr35049_plan, read_before_load_plan, synthetic_plan
from kvtrace.replay.minimize import ddmin, reproduces
from kvtrace.replay.plan import PlanError, check_well_formed
from kvtrace.replay.sweep import sweep


def test_pr35049_is_a_sure_thing_and_the_fix_always_holds():
    plan = pr35049_plan()
    assert sweep(plan, 30, 20, "as-recorded")["corruption_rate"] == 1.0
    assert sweep(plan, 30, 20, "fixed")["corruption_rate"] == 0.0


def test_a_near_miss_corrupts_only_in_part_of_the_jittered_variants():
    # Layer 3 lands at 50 ms and is read at 42 ms; the read op starts at 30 ms, layer 2 lands at
    # 40 ms and is read at 38 ms: with durations jittered by 40%, some variants land in time.
    plan = read_before_load_plan()
    rate = sweep(plan, 60, 40, "as-recorded")["corruption_rate"]
    assert 0.0 < rate < 1.0
    assert sweep(plan, 60, 40, "fixed")["corruption_rate"] == 0.0


def test_sweep_is_repeatable():
    plan = read_before_load_plan()
    assert sweep(plan, 20, 30, "as-recorded") == sweep(plan, 20, 30, "as-recorded")


def test_minimize_pr35049_keeps_the_four_ops_of_the_race():
    small = ddmin(pr35049_plan())
    assert [(o.op, o.rid) for o in small.ops] == [("alloc", "A"), ("transfer", "A"), ("free", "A"), ("alloc", "B")]
    assert small.meta["source"] == "minimized"


def test_minimize_a_busy_window_to_a_one_minimal_well_formed_reproducer():
    plan = synthetic_plan(300, seed=1)
    small = ddmin(plan)
    assert len(small.ops) < 10
    assert check_well_formed(small) == []
    assert run_cpu(small, "as-recorded").verdict.corrupted
    assert not run_cpu(small, "fixed").verdict.corrupted
    still_fails = reproduces(plan)
    assert still_fails(small)
    for op in small.ops:  # 1-minimal: without any one op the damage is gone (or the plan is ill-formed)
        assert not still_fails(small.with_ops(o for o in small.ops if o.id != op.id))


def test_minimize_refuses_a_plan_that_does_not_corrupt():
    plan = read_before_load_plan()
    late_read = dataclasses.replace(plan.ops[2], start_ns=60 * MS, end_ns=75 * MS)
    with pytest.raises(PlanError, match="no corruption"):
        ddmin(dataclasses.replace(plan, ops=(plan.ops[0], plan.ops[1], late_read)))
