"""Time windows that overlap: how the race analyses are split so that each piece fits an executor.

Every race hazard is local to one page resource (instance, TP rank, KV pool) and to a stretch of
time no longer than the longest in-flight interval: a request's lifetime (its pages are allocated,
written, read and released inside it) plus the clock offset between hosts. A window reads the
rows that touch [core_start - overlap, core_end + overlap) and keeps the findings whose anchor
(window_start_ns: the reuse, the release, the first early read) lies in its core
[core_start, core_end). Cores tile the time line, so each finding is kept by exactly one window;
the overlap is at least the longest interval, so that window saw every row the finding rests on
and computes it exactly as one pass over everything would (tests/test_spark_partition.py plants
findings across boundaries). Within a window, Spark splits the joins across executors by their
equi-join keys (instance, rank, pool, 1 s bucket); docs/spark.md says what bounds memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# The column(s) that place a row of each lake table in time: (start, end). A row belongs to every
# window whose read range its [start, end] interval touches; rows without a time go to every window.
ROW_TIMES: Final[dict[str, tuple[str, str]]] = {
    "spans": ("start_ns", "end_ns"),
    "kv_events": ("start_ns", "end_ns"),
    "requests": ("start_ns", "end_ns"),
    "request_stages": ("start_ns", "end_ns"),
    "aborts": ("time_ns", "time_ns"),
    "spec_steps": ("step_end_ns", "step_end_ns"),
    "feedback": ("time_ns", "time_ns"),
    "span_events": ("time_ns", "time_ns"),
}
# Analyses that aggregate over all of the time line (one bound per host pair): computed once over
# everything before the windows, and read by every window as they are.
GLOBAL_ANALYSES: Final = ("skew_bounds",)
# The analysis whose rows the windows produce (its requirements, less the global ones, run per window).
WINDOWED_RESULT: Final = "findings"
ANCHOR: Final = "window_start_ns"
# slack on top of the measured interval: the 1 s time buckets of the interval joins
SLACK_NS: Final = 2_000_000_000


@dataclass(frozen=True)
class Window:
    """One piece of the time line: its core (whose findings it keeps) and what it reads."""

    index: int
    core_start: int | None  # None: unbounded (the first window)
    core_end: int | None  # None: unbounded (the last window)
    overlap_ns: int

    @property
    def read_start(self) -> int | None:
        return None if self.core_start is None else self.core_start - self.overlap_ns

    @property
    def read_end(self) -> int | None:
        return None if self.core_end is None else self.core_end + self.overlap_ns

    def row_filter(self, start_col: str, end_col: str) -> str:
        """A Spark SQL predicate keeping rows whose [start, end] touches the read range."""
        terms = []
        if self.read_end is not None:
            terms.append(f"({start_col} IS NULL OR {start_col} < {self.read_end})")
        if self.read_start is not None:
            terms.append(
                f"(coalesce({end_col}, {start_col}) IS NULL OR coalesce({end_col}, {start_col}) >= {self.read_start})"
            )
        return " AND ".join(terms) or "true"

    def core_filter(self, anchor: str = ANCHOR) -> str:
        """A Spark SQL predicate keeping the findings this window owns (a NULL anchor: the first)."""
        if self.core_start is None:
            return "true" if self.core_end is None else f"({anchor} IS NULL OR {anchor} < {self.core_end})"
        upper = "" if self.core_end is None else f" AND {anchor} < {self.core_end}"
        return f"{anchor} >= {self.core_start}{upper}"


def windows(boundaries: Sequence[int], overlap_ns: int) -> list[Window]:
    """Windows cut at `boundaries` (ns, any order): n boundaries give n + 1 windows."""
    cuts = sorted(set(int(b) for b in boundaries))
    edges: list[int | None] = [None, *cuts, None]
    return [Window(i, edges[i], edges[i + 1], overlap_ns) for i in range(len(edges) - 1)]


def even_boundaries(t_min: int, t_max: int, count: int) -> list[int]:
    """`count - 1` cuts splitting [t_min, t_max] into `count` windows of equal length."""
    if count <= 1 or t_max <= t_min:
        return []
    step = (t_max - t_min) / count
    return [t_min + round(step * i) for i in range(1, count)]


# The longest in-flight interval, over the lake's views: a request's span of time over every row
# that names it (its root span, stages, KV events), and the largest clock offset between hosts.
LONGEST_INTERVAL_SQL: Final = """
WITH per_rid AS (
    SELECT rid, max(end_ns) - min(start_ns) AS span_ns FROM requests WHERE rid IS NOT NULL GROUP BY rid
    UNION ALL
    SELECT rid, max(coalesce(end_ns, start_ns)) - min(start_ns) FROM kv_events WHERE rid IS NOT NULL GROUP BY rid
    UNION ALL
    SELECT rid, max(coalesce(end_ns, start_ns)) - min(start_ns) FROM request_stages WHERE rid IS NOT NULL GROUP BY rid
),
per_room AS (
    SELECT bootstrap_room, max(coalesce(end_ns, start_ns)) - min(start_ns) AS span_ns
    FROM request_stages WHERE bootstrap_room IS NOT NULL GROUP BY bootstrap_room
)
SELECT greatest(coalesce((SELECT max(span_ns) FROM per_rid), 0), coalesce((SELECT max(span_ns) FROM per_room), 0)),
       coalesce((SELECT max(greatest(abs(coalesce(offset_lo_ns, 0)), abs(coalesce(offset_hi_ns, 0)),
                                     abs(coalesce(offset_est_ns, 0)))) FROM {skew_bounds}), 0),
       (SELECT min(start_ns) FROM kv_events), (SELECT max(coalesce(end_ns, start_ns)) FROM kv_events)
"""
