"""Sweeps: replay a plan N times with every recorded duration jittered by up to PCT percent, in both
modes, and report how often it corrupts: is the window a near miss or a sure thing?

Seeds are 0..N-1, so a CPU sweep and a GPU sweep of the same plan replay the same N variants and
can be compared variant by variant. Standard library only (the GPU side passes its own runner).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvtrace.replay.cpu import run_cpu
from kvtrace.replay.plan import Plan, jittered
from kvtrace.replay.verdict import Verdict

Runner = Callable[[Plan, str], Verdict]


def cpu_runner(plan: Plan, mode: str) -> Verdict:
    return run_cpu(plan, mode).verdict


def sweep(plan: Plan, n: int, jitter_pct: float, mode: str, runner: Runner = cpu_runner) -> dict[str, Any]:
    """Corruption rate of `mode` over n jittered variants, with the CPU prediction of each beside it."""
    hits = cpu_hits = agree = 0
    pages: dict[int, int] = {}
    for seed in range(n):
        variant = jittered(plan, jitter_pct, seed)
        v = runner(variant, mode)
        c = v if runner is cpu_runner else cpu_runner(variant, mode)
        hits += v.corrupted
        cpu_hits += c.corrupted
        agree += v.claims() == c.claims()
        for p in v.corrupted_pages:
            pages[p] = pages.get(p, 0) + 1
    return {
        "mode": mode,
        "n": n,
        "jitter_pct": jitter_pct,
        "corruption_rate": hits / n if n else 0.0,
        "cpu_corruption_rate": cpu_hits / n if n else 0.0,
        "agree_rate": agree / n if n else 0.0,
        "page_hit_rate": {p: c / n for p, c in sorted(pages.items())},
    }
