"""Delta debugging (Zeller's ddmin) of a plan down to the fewest operations that still corrupt.

The test is the CPU executor in as-recorded mode: a sub-plan "still fails" when it is well-formed
(no alloc of a held page, no free of a page not held: replay.plan.check_well_formed) and its
verdict keeps a hazard of the original's most severe sort (damage to a request: a foreign page or a
stale read; only when there is none, a late write onto freed pages). The result is 1-minimal: removing any single op makes the hazard go away.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from kvtrace.replay.cpu import run_cpu
from kvtrace.replay.plan import Op, Plan, PlanError, check_well_formed, recorded_edges
from kvtrace.replay.verdict import Verdict


def _hazard_kinds(v: Verdict) -> set[str]:
    """Damage to a request (foreign pages, stale reads) outranks a late write onto free pages."""
    kinds = set()
    if v.foreign_pages:
        kinds.add("foreign")
    if v.stale_reads:
        kinds.add("stale")
    if not kinds and v.late_writes:
        kinds.add("late")
    return kinds


def reproduces(original: Plan) -> Callable[[Plan], bool]:
    """The ddmin test for `original`: does a sub-plan still show one of its hazards?"""
    wanted = _hazard_kinds(run_cpu(original, "as-recorded").verdict)

    def test(sub: Plan) -> bool:
        if not sub.ops or check_well_formed(sub):
            return False
        try:
            v = run_cpu(sub, "as-recorded").verdict
        except PlanError:
            return False
        return bool(_hazard_kinds(v) & wanted)

    return test


def _subplan(plan: Plan, ops: list[Op]) -> Plan:
    """A sub-plan keeps its ops' recorded edges (re-derived: a dropped op may have carried one)."""
    return replace(plan, ops=tuple(ops), edges=tuple(recorded_edges(ops)))


def _ddmin_units(units: list[list[Op]], test: Callable[[list[Op]], bool]) -> list[list[Op]]:
    """Classic ddmin over units (each a list of ops that go or stay together)."""
    n = 2
    while len(units) >= 2:
        chunk = max(1, len(units) // n)
        parts = [units[i : i + chunk] for i in range(0, len(units), chunk)]
        reduced = False
        for i, part in enumerate(parts):
            if test([o for u in part for o in u]):
                units, n, reduced = part, 2, True
                break
            complement = [u for j, p in enumerate(parts) if j != i for u in p]
            if len(parts) > 2 and test([o for u in complement for o in u]):
                units, n, reduced = complement, max(n - 1, 2), True
                break
        if not reduced:
            if n >= len(units):
                break
            n = min(len(units), 2 * n)
    return units


def ddmin(plan: Plan, test: Callable[[Plan], bool] | None = None) -> Plan:
    """The smallest sub-plan (1-minimal) for which `test` holds; raises PlanError if the plan does not fail.

    Two passes: whole requests first (dropping a request with all its ops keeps the allocator
    consistent, so most candidates are testable), then single ops of the requests that remain.
    """
    test = test or reproduces(plan)

    def test_ops(ops: list[Op]) -> bool:
        return test(_subplan(plan, sorted(ops, key=lambda o: (o.start_ns, o.id))))

    ops = sorted(plan.ops, key=lambda o: (o.start_ns, o.id))
    if not test_ops(ops):
        raise PlanError("the plan shows no corruption as recorded: nothing to minimize")
    by_rid: dict[str, list[Op]] = {}
    for o in ops:
        by_rid.setdefault(o.rid, []).append(o)
    units = _ddmin_units(list(by_rid.values()), test_ops)
    units = _ddmin_units([[o] for u in units for o in u], test_ops)
    out = _subplan(plan, sorted((o for u in units for o in u), key=lambda o: (o.start_ns, o.id)))
    meta = {**plan.meta, "source": "minimized", "minimized_from_ops": len(plan.ops)}
    return replace(out, meta=meta)
