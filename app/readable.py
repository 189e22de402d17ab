"""Evidence in words a person reads at a glance: page sets as ranges, durations, clock times.

Shared by the report (app/report/) and the app's Findings page; no streamlit, no plotly. The
results are plain text: callers still escape them for Markdown (`md()`) or HTML.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime


def page_runs(pages: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous runs of page ids, sorted, duplicates merged: [7, 1, 2, 3, 8] -> [(1, 3), (7, 8)]."""
    runs: list[tuple[int, int]] = []
    for p in sorted(set(int(p) for p in pages)):
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs


def page_ranges(pages: Iterable[int] | None, max_runs: int = 6) -> str:
    """A page set as ranges: '164-170, 80,690-80,695 (1,531 pages)'.

    At most `max_runs` runs are written (the first ones and the last); the count says how many
    there are. A single page reads '17 (1 page)'; no pages, '-'.
    """
    runs = page_runs([] if pages is None else pages)
    if not runs:
        return "-"
    n = sum(hi - lo + 1 for lo, hi in runs)

    def run(r: tuple[int, int]) -> str:
        return f"{r[0]:,}" if r[0] == r[1] else f"{r[0]:,}-{r[1]:,}"

    if len(runs) <= max_runs:
        shown = ", ".join(run(r) for r in runs)
    else:
        shown = ", ".join(run(r) for r in runs[: max_runs - 1]) + ", ..., " + run(runs[-1])
    count = f"{n:,} page{'' if n == 1 else 's'}"
    if len(runs) > max_runs:
        count += f" in {len(runs):,} runs"
    return f"{shown} ({count})"


def duration(ns: float | int | None) -> str:
    """A duration for a person ('3.49 s', '4.5 ms', '12.0 us', '800 ns'; macros.sql's duration_words)."""
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "-"
    value = float(ns)
    if abs(value) >= 1e9:
        return f"{value / 1e9:.2f} s"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f} ms"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f} us"
    return f"{int(value)} ns"


def clock_time(ns: int | None) -> str:
    """A timestamp (ns since the epoch) as UTC wall-clock time to the millisecond: '2025-11-24 16:00:01.789'."""
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "-"
    seconds, rest = divmod(int(ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{rest // 1_000_000:03d}"


def window(start_ns: int | None, end_ns: int | None, earliest_end_ns: int | None = None) -> str:
    """An unsafe window's length on the best clock estimate, and how short the clock bounds allow it
    to be: '825.8 ms (at least 12.0 ms for every allowed clock offset)', or '(empty for some allowed
    clock offsets)' when the write may have ended before the window began.

    `earliest_end_ns` is the earliest end the clock bounds allow (findings' window_end_earliest_ns);
    a window cut short by the victim's own release (window_end < earliest) is that long at every
    offset, so nothing is added.
    """
    if start_ns is None or end_ns is None or _missing(start_ns) or _missing(end_ns):
        return "-"
    start, end = int(start_ns), int(end_ns)
    text = duration(end - start)
    if earliest_end_ns is None or _missing(earliest_end_ns):
        return text
    shortest = min(end, max(int(earliest_end_ns), start)) - start
    if shortest <= 0 < end - start:
        text += " (empty for some allowed clock offsets)"
    elif shortest < end - start:
        text += f" (at least {duration(shortest)} for every allowed clock offset)"
    return text


def _missing(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def ranks_and_pools(ranks: Iterable[int | None] | None, pools: Iterable[str | None] | None) -> str:
    """'ranks 0, 1 · pools index_k, kv' ('-' for a request-level incident, which sees neither)."""
    r = [str(x) for x in ([] if ranks is None else ranks) if x is not None]
    p = [str(x) for x in ([] if pools is None else pools) if x is not None]
    if not r and not p:
        return "-"
    parts = []
    if r:
        parts.append(("rank " if len(r) == 1 else "ranks ") + ", ".join(r))
    if p:
        parts.append(("pool " if len(p) == 1 else "pools ") + ", ".join(p))
    return " · ".join(parts)
