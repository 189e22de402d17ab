"""Export a replay plan from the DuckDB store: one finding's window, or any window of an instance.

Reads `kv_events` (ingest/schema.sql) and, for a finding, `findings` and `skew_bounds` (analytics'
result tables). Needs duckdb; the executors never import this module.

What goes into a plan for a window [lo, hi] on (instance, tp_rank):
- every KV op on that resource of the requests involved: the finding's culprit and victim, and any
  request whose ops touch the finding's pages inside the window;
- of those requests, every alloc, free, transfer and load (a request's lifecycle is a handful of
  ops, and its allocs make its writes well-formed), and its reads inside the window, extended to
  the victim's first two reads after it (the corruption shows at the victim's later reads);
- a read's pages are what its request held in that pool at the read's start (kv_events stores
  none for reads, by the conventions);
- times are put on the instance's clock: an op recorded on another host's clock (a transfer, on
  prefill's) is shifted by the skew_bounds estimate for that host pair, and the shift is written
  into the op (`clock_offset_ns`) and the plan's meta.

The window and its events come from analytics.finding_window, the query the app's finding view
reads too.
"""

from __future__ import annotations

from typing import Any

import duckdb

from kvtrace.analytics.finding_window import (
    FindingWindowError,
    KvEvent,
    Window,
    finding_window,
    window_events,
)
from kvtrace.replay.plan import Holding, Op, Plan, PlanError, recorded_edges


class ExportError(PlanError):
    """The store lacks what the export needs (no such finding, no events in the window)."""


def _num_layers(con: duckdb.DuckDBPyConnection, instance: str, tp_rank: int) -> int:
    row = con.execute(
        "SELECT max(len(layer_offsets_ns)) FROM kv_events WHERE instance_id = ? AND tp_rank = ? AND layer_offsets_ns IS NOT NULL",
        [instance, tp_rank],
    ).fetchone()
    return int(row[0]) if row and row[0] else 1


def _holdings(rows: list[KvEvent]) -> dict[tuple[str, str], list[tuple[int, int, frozenset[int]]]]:
    """(rid, pool) -> [(from_ns, to_ns, pages held)]: each request's holdings over time."""
    out: dict[tuple[str, str], list[tuple[int, int, frozenset[int]]]] = {}
    held: dict[tuple[str, str], tuple[int, frozenset[int]]] = {}
    end = 2**62
    for r in rows:
        if r.op not in ("alloc", "free"):
            continue
        key = (r.rid, r.kv_pool)
        since, pages = held.get(key, (r.start_ns, frozenset()))
        new = pages | set(r.pages) if r.op == "alloc" else pages - set(r.pages)
        if pages:
            out.setdefault(key, []).append((since, r.start_ns, pages))
        held[key] = (r.start_ns, frozenset(new))
    for key, (since, pages) in held.items():
        if pages:
            out.setdefault(key, []).append((since, end, pages))
    return out


def _read_pages(hold: dict[tuple[str, str], list[tuple[int, int, frozenset[int]]]], r: KvEvent) -> tuple[int, ...]:
    for since, until, pages in hold.get((r.rid, r.kv_pool), []):
        if since <= r.start_ns < until:
            return tuple(sorted(pages))
    return ()


def _to_op(i: int, r: KvEvent, pages: tuple[int, ...], instance: str, tp_rank: int, shift: int, t0: int) -> Op:
    if r.op == "transfer":
        actor = f"prefill:{r.emit_instance or 'unknown'}"
    elif r.op == "load":
        actor = f"hicache-load:{instance}/{tp_rank}"
    else:
        actor = f"compute:{instance}/{tp_rank}"  # the scheduler: allocator, forward steps, releases
    info: dict[str, Any] = {}
    end = max(r.end_ns, r.start_ns)
    if r.op in ("load", "read") and r.layer_offsets and r.start_ns + max(r.layer_offsets) > end:
        # A layer offset past the span's end (seen in traces): the span lasted at least that long.
        info["end_extended_ns"] = r.start_ns + max(r.layer_offsets) - end
        end = r.start_ns + max(r.layer_offsets)
    if shift:
        info["clock_offset_ns"] = shift
    if r.clock_host:
        info["clock_host"] = r.clock_host
    for key, value in (
        ("free_mode", r.free_mode),
        ("free_reason", r.free_reason),
        ("bootstrap_room", r.bootstrap_room),
        ("status_code", r.status_code),
    ):
        if value is not None:
            info[key] = value
    return Op(
        id=i,
        op=r.op,
        actor=actor,
        rid=r.rid,
        kv_pool=r.kv_pool,
        pages=pages,
        start_ns=r.start_ns - shift - t0,
        end_ns=end - shift - t0,
        layer_offsets_ns=r.layer_offsets if r.op in ("load", "read") else (),
        span_id=r.span_id,
        info=info,
    )


def build_plan(
    con: duckdb.DuckDBPyConnection,
    instance: str,
    tp_rank: int,
    lo: int,
    hi: int,
    *,
    pages: set[int] | None = None,
    kv_pool: str | None = None,
    rids: set[str] | None = None,
    victim: str | None = None,
    meta: dict[str, Any] | None = None,
    expected: dict[str, Any] | None = None,
) -> Plan:
    """The plan of the window [lo, hi] (instance clock) on (instance, tp_rank).

    Reads only what the plan can contain: the requests with an event near the window (a time-range
    query) and the given ones, and of those every event (their lifetimes): a store of days costs
    what the window's requests cost, not what the instance's history does."""
    window = window_events(con, instance, tp_rank, lo, hi, set(rids or ()))
    return plan_of_window(con, window, pages=pages, kv_pool=kv_pool, rids=rids, victim=victim, meta=meta,
                          expected=expected)


def plan_of_window(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    *,
    pages: set[int] | None = None,
    kv_pool: str | None = None,
    rids: set[str] | None = None,
    victim: str | None = None,
    meta: dict[str, Any] | None = None,
    expected: dict[str, Any] | None = None,
) -> Plan:
    """The plan of a window's events (analytics.finding_window.window_events)."""
    instance, tp_rank, lo, hi = window.instance, window.tp_rank, window.lo_ns, window.hi_ns
    rows, host, offsets = list(window.events), window.instance_host, window.clock_offsets_ns
    if not rows:
        raise ExportError(f"no KV events on {instance} rank {tp_rank} between {lo} and {hi} ns")

    def shift(r: KvEvent) -> int:
        return r.clock_offset_ns

    hold = _holdings(rows)
    resolved = [(r, r.pages if r.op != "read" else _read_pages(hold, r)) for r in rows]
    inside = [(r, p) for r, p in resolved if r.start_ns - shift(r) <= hi and r.end_ns - shift(r) >= lo]
    involved = set(rids or ())
    for r, p in inside:
        if (pages is None or set(p) & pages) and (kv_pool is None or r.kv_pool == kv_pool):
            involved.add(r.rid)
    if not involved:
        raise ExportError(f"no KV events on {instance} rank {tp_rank} between {lo} and {hi} ns")
    victim_reads_after = [r for r, _ in resolved if r.rid == victim and r.op == "read" and r.start_ns - shift(r) > hi][:2]
    read_hi = max([hi] + [r.end_ns - shift(r) for r in victim_reads_after])
    chosen: list[tuple[KvEvent, tuple[int, ...]]] = []
    for r, p in resolved:
        if r.rid not in involved:
            continue
        if r.op == "read" and not (r.start_ns - shift(r) <= read_hi and r.end_ns - shift(r) >= lo):
            continue
        if r.op == "read" and not p:
            continue  # a step of a request that held nothing in this pool
        chosen.append((r, p))
    t0 = min(r.start_ns - shift(r) for r, _ in chosen)
    ops = [_to_op(i, r, p, instance, tp_rank, shift(r), t0) for i, (r, p) in enumerate(chosen)]
    # At equal times the allocator's causal order: a release before the alloc that reuses its pages,
    # an alloc before the writes into its pages, writes before reads.
    rank = {"free": 0, "alloc": 1, "transfer": 2, "load": 2, "read": 3}
    ops.sort(key=lambda o: (o.start_ns, rank[o.op], o.id))
    ops = [Op(i, o.op, o.actor, o.rid, o.kv_pool, o.pages, o.start_ns, o.end_ns, o.layer_offsets_ns, o.span_id, o.info) for i, o in enumerate(ops)]
    num_layers = max((len(o.layer_offsets_ns) for o in ops), default=0) or _num_layers(con, instance, tp_rank)
    ops = [o if not o.layer_offsets_ns or len(o.layer_offsets_ns) == num_layers else _pad_offsets(o, num_layers) for o in ops]
    initial = _initial(ops)
    m = {
        **(meta or {}),
        "instance": instance,
        "tp_rank": tp_rank,
        "window_ns": [lo, hi],
        "clock_host": host,
        "clock_offsets_ns": offsets,
    }
    return Plan(
        ops=tuple(ops),
        num_layers=num_layers,
        edges=tuple(recorded_edges(ops)),
        initial=tuple(initial),
        resource={"instance": instance, "tp_rank": tp_rank},
        t0_ns=t0,
        meta=m,
        expected=expected or {},
    )


def _pad_offsets(o: Op, num_layers: int) -> Op:
    offs = list(o.layer_offsets_ns[:num_layers])
    while len(offs) < num_layers:
        offs.append(offs[-1] if offs else 0)
    return Op(o.id, o.op, o.actor, o.rid, o.kv_pool, o.pages, o.start_ns, o.end_ns, tuple(offs), o.span_id, o.info)


def _initial(ops: list[Op]) -> list[Holding]:
    """Pages a request reads or frees in the window without allocating them there first: it held
    them (with its data) when the window opened."""
    allocated: set[tuple[str, str, int]] = set()
    initial: dict[tuple[str, str], set[int]] = {}
    for o in ops:
        if o.op == "alloc":
            allocated.update((o.rid, o.kv_pool, p) for p in o.pages)
        else:
            for p in o.pages:
                if (o.rid, o.kv_pool, p) not in allocated:
                    initial.setdefault((o.rid, o.kv_pool), set()).add(p)
    claimed: set[tuple[str, int]] = set()
    out = []
    for (rid, pool), pages in sorted(initial.items()):
        free_pages = sorted(p for p in pages if (pool, p) not in claimed)
        claimed.update((pool, p) for p in free_pages)
        if free_pages:
            out.append(Holding(rid, pool, tuple(free_pages)))
    return out


def export_finding(con: duckdb.DuckDBPyConnection, finding_id: str, db: str = "") -> Plan:
    """The plan of a finding's window (analytics.finding_window: the query the app's finding view reads)."""
    try:
        fw = finding_window(con, finding_id)
    except FindingWindowError as exc:
        raise ExportError(f"{db or 'store'}: {exc}") from exc
    f, w = fw.finding, fw.window
    pages = [int(p) for p in f["pages"] or []]
    expected = {
        "finding_id": f["finding_id"],
        "kind": f["kind"],
        "kv_pool": f["kv_pool"],
        "pages": pages,
        "layers": [int(x) for x in f["layers"] or []],
        "culprit_rid": f["culprit_rid"],
        "victim_rid": f["victim_rid"],
        "confidence": f["confidence"],
    }
    return plan_of_window(
        con,
        w,
        pages=set(pages),
        kv_pool=f["kv_pool"],
        rids={r for r in (f["culprit_rid"], f["victim_rid"]) if r},
        victim=f["victim_rid"],
        meta={"source": "finding", "finding_id": f["finding_id"], "db": db, "kind": f["kind"],
              "confidence": f["confidence"]},
        expected=expected,
    )


def parse_window(spec: str) -> tuple[str, int, int]:
    """`INSTANCE:T0..T1` with T0/T1 in ns on the instance's clock (suffixes s, ms, us allowed)."""
    try:
        instance, span = spec.rsplit(":", 1)
        t0, t1 = span.split("..", 1)
        lo, hi = _time(t0), _time(t1)
    except ValueError as exc:
        raise ExportError(f"window {spec!r}: expected INSTANCE:T0..T1, e.g. decode-0:881.2s..884.9s") from exc
    if hi < lo or not instance:
        raise ExportError(f"window {spec!r}: T1 is before T0")
    return instance, lo, hi


def _time(text: str) -> int:
    text = text.strip()
    for suffix, mult in (("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000)):
        if text.endswith(suffix):
            return round(float(text[: -len(suffix)]) * mult)
    return int(text)


def export_window(con: duckdb.DuckDBPyConnection, spec: str, tp_rank: int = 0, db: str = "") -> Plan:
    instance, lo, hi = parse_window(spec)
    return build_plan(con, instance, tp_rank, lo, hi, meta={"source": "window", "db": db, "window": spec})
