"""A finding's window of KV events: one query, shared by `kvtrace replay export` and the app's finding view.

The window of a finding on (instance, tp_rank): from the earlier of the window start and the start
of the culprit's access in flight over it (its transfer or load), to the window end, padded by a
tenth of the window (at least 1 ms) either side; times on the instance's clock. Its events: every
KV event there of the culprit and the victim and (with `neighbours`) of every request with an
event overlapping the window, over their whole lifetimes on that rank, each with the clock offset
that puts it on the instance's clock (skew_bounds' estimate for its host; 0 on the instance's own
clock). The replay export turns them into a plan; the app draws the culprit's and the victim's.

The SQL is analytics/finding_window.sql. Headless: duckdb only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import duckdb

from kvtrace.analytics.errors import AnalyticsError

QUERIES_SQL: Final = Path(__file__).resolve().with_name("finding_window.sql")
MIN_PAD_NS: Final = 1_000_000
ACCESS_OPS: Final = ("transfer", "load")
_SECTION: Final = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


class FindingWindowError(AnalyticsError):
    """The store cannot give the window: no findings table, no such finding, a request-level finding."""


@dataclass(frozen=True)
class KvEvent:
    """One row of kv_events in a window; times on `clock_host`'s clock."""

    span_id: str
    op: str
    rid: str
    kv_pool: str
    pages: tuple[int, ...]
    runs: tuple[tuple[int, int], ...]  # pages as contiguous runs (lo, hi), computed in SQL
    start_ns: int
    end_ns: int
    clock_host: str | None
    emit_instance: str | None
    layer_offsets: tuple[int, ...]
    free_mode: str | None
    free_reason: str | None
    status_code: int | None
    bootstrap_room: str | None
    clock_offset_ns: int  # subtract to put a time on the instance's clock
    skew_known: bool  # on another host's clock, with an estimated offset

    @property
    def start_on_instance_ns(self) -> int:
        return self.start_ns - self.clock_offset_ns

    @property
    def end_on_instance_ns(self) -> int:
        return self.end_ns - self.clock_offset_ns


@dataclass(frozen=True)
class Window:
    """A window [lo_ns, hi_ns] on (instance, tp_rank), instance clock, and its KV events by start."""

    instance: str
    tp_rank: int
    lo_ns: int
    hi_ns: int
    instance_host: str | None
    clock_offsets_ns: dict[str, int]  # host -> its clock - the instance host's clock
    events: tuple[KvEvent, ...]
    truncated: bool  # `max_rows` events were returned and there may be more


@dataclass(frozen=True)
class FindingWindow:
    finding: dict[str, Any]  # the findings row, plus access_start_ns
    window: Window


@cache
def queries() -> dict[str, str]:
    """The named sections of finding_window.sql."""
    text = QUERIES_SQL.read_text(encoding="utf-8")
    parts = _SECTION.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def instance_host(con: duckdb.DuckDBPyConnection, instance: str) -> str | None:
    row = con.execute(queries()["instance_host"], {"instance": instance}).fetchone()
    return None if row is None else str(row[0])


def clock_offsets(con: duckdb.DuckDBPyConnection, host: str | None) -> dict[str, int]:
    """Host -> estimated offset against `host` (empty where skew_bounds was never computed)."""
    if host is None:
        return {}
    try:
        rows = con.execute(queries()["clock_offsets"], {"host": host}).fetchall()
    except duckdb.CatalogException:
        return {}
    return {str(h): int(o) for h, o in rows}


def window_events(
    con: duckdb.DuckDBPyConnection,
    instance: str,
    tp_rank: int,
    lo_ns: int,
    hi_ns: int,
    rids: frozenset[str] | set[str] | tuple[str, ...] = (),
    neighbours: bool = True,
    max_rows: int | None = None,
) -> Window:
    """The KV events of the window [lo_ns, hi_ns] (instance clock) on (instance, tp_rank): of `rids`
    and, with `neighbours`, of every request with an event overlapping it."""
    host = instance_host(con, instance)
    offsets = clock_offsets(con, host)
    reach = max((abs(o) for o in offsets.values()), default=0)
    hosts = sorted(offsets)
    cur = con.execute(
        queries()["events"],
        {
            "instance": instance,
            "tp_rank": tp_rank,
            "lo_ns": lo_ns,
            "hi_ns": hi_ns,
            "reach_ns": reach,
            "rids": sorted(rids),
            "neighbours": neighbours,
            "host": host,
            "offset_hosts": hosts,
            "offset_ns": [offsets[h] for h in hosts],
            "max_rows": max_rows,
        },
    )
    events = tuple(_event(r) for r in cur.fetchall())
    truncated = max_rows is not None and len(events) >= max_rows
    return Window(instance, tp_rank, lo_ns, hi_ns, host, offsets, events, truncated)


def finding_window(
    con: duckdb.DuckDBPyConnection, finding_id: str, neighbours: bool = True, max_rows: int | None = None
) -> FindingWindow:
    """The window of a page-level finding (see the module docstring) and its events."""
    try:
        cur = con.execute(queries()["finding"], {"finding_id": finding_id})
    except duckdb.CatalogException as exc:
        raise FindingWindowError("no findings table: run `kvtrace analyze` first") from exc
    row = cur.fetchone()
    if row is None:
        raise FindingWindowError(f"no finding {finding_id!r}")
    finding = dict(zip([d[0] for d in cur.description], row, strict=True))
    if finding["tp_rank"] is None or finding["kv_pool"] is None:
        raise FindingWindowError(f"finding {finding_id!r} is request level: it names no KV pages")
    ws, we = int(finding["window_start_ns"]), int(finding["window_end_ns"])
    start = finding["access_start_ns"]
    lo = ws if start is None else min(ws, int(start))
    pad = max((we - ws) // 10, MIN_PAD_NS)
    rids = frozenset(str(r) for r in (finding["culprit_rid"], finding["victim_rid"]) if r)
    window = window_events(
        con, str(finding["instance"]), int(finding["tp_rank"]), lo - pad, we + pad, rids, neighbours, max_rows
    )
    return FindingWindow(finding, window)


def _event(r: tuple[Any, ...]) -> KvEvent:
    (
        span_id,
        op,
        rid,
        pool,
        pages,
        starts,
        ends,
        start_ns,
        end_ns,
        clock_host,
        emit,
        layers,
        free_mode,
        free_reason,
        status_code,
        room,
        offset,
        skew_known,
    ) = r
    return KvEvent(
        span_id=str(span_id),
        op=str(op),
        rid=str(rid),
        kv_pool=str(pool),
        pages=tuple(pages),
        runs=tuple(zip(starts, ends, strict=True)),
        start_ns=int(start_ns),
        end_ns=int(end_ns),
        clock_host=clock_host,
        emit_instance=emit,
        layer_offsets=tuple(layers),
        free_mode=free_mode,
        free_reason=free_reason,
        status_code=status_code,
        bootstrap_room=room,
        clock_offset_ns=int(offset),
        skew_known=bool(skew_known),
    )
