"""Findings page: incidents (one culprit action and its victims over every TP rank and KV pool),
the findings of one incident (per rank, pool and victim), one finding's timeline on raw and
corrected clocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from kvtrace.app import readable
from kvtrace.app.data.common import require
from kvtrace.app.store import Store

MAX_READS = 300
FOCUS_MARGIN = 8  # pages shown either side of the finding's pages


def filter_options(store: Store) -> dict[str, list[str]]:
    """Distinct values for the page's filters."""
    require(store, "findings")
    frame = store.frame(
        """
        SELECT 'kind' AS f, kind AS v FROM findings UNION
        SELECT 'confidence', confidence FROM findings UNION
        SELECT 'instance', instance FROM findings UNION
        SELECT 'kv_pool', kv_pool FROM findings UNION
        SELECT 'service_version', coalesce(service_version, '(none)') FROM findings
        ORDER BY 1, 2
        """
    )
    return {str(k): [str(v) for v in g["v"] if v is not None] for k, g in frame.groupby("f")}


def list_findings(
    store: Store,
    kinds: tuple[str, ...] = (),
    confidences: tuple[str, ...] = (),
    instances: tuple[str, ...] = (),
    rid: str = "",
    limit: int = 1000,
) -> pd.DataFrame:
    """Findings matching every non-empty filter (an empty filter keeps all), newest window first."""
    require(store, "findings")
    return store.frame(
        """
        SELECT finding_id, kind, confidence, instance, tp_rank, kv_pool, len(pages) AS n_pages,
               list_min(pages) AS page_lo, list_max(pages) AS page_hi, culprit_rid, victim_rid,
               (window_end_ns - window_start_ns) / 1e6 AS window_ms,
               to_timestamp(window_start_ns / 1e9) AS window_start, service_version, layers
        FROM findings
        WHERE (len($kinds) = 0 OR list_contains($kinds, kind))
          AND (len($conf) = 0 OR list_contains($conf, confidence))
          AND (len($inst) = 0 OR list_contains($inst, instance))
          AND ($rid = '' OR culprit_rid = $rid OR victim_rid = $rid)
        ORDER BY window_start_ns DESC, finding_id
        LIMIT $limit
        """,
        {"kinds": list(kinds), "conf": list(confidences), "inst": list(instances), "rid": rid.strip(),
         "limit": limit},
    )


_FILTERS = """
          (len($kinds) = 0 OR list_contains($kinds, f.kind))
          AND (len($conf) = 0 OR list_contains($conf, f.confidence))
          AND (len($inst) = 0 OR list_contains($inst, f.instance))
          AND ($rid = '' OR f.culprit_rid = $rid OR f.victim_rid = $rid)
"""


def _filter_params(kinds: tuple[str, ...], confidences: tuple[str, ...], instances: tuple[str, ...],
                   rid: str) -> dict[str, Any]:
    return {"kinds": list(kinds), "conf": list(confidences), "inst": list(instances), "rid": rid.strip()}


def list_incidents(
    store: Store,
    kinds: tuple[str, ...] = (),
    confidences: tuple[str, ...] = (),
    instances: tuple[str, ...] = (),
    rid: str = "",
    limit: int = 1000,
) -> pd.DataFrame:
    """Incidents with at least one finding matching every non-empty filter: races before near misses
    (unsafe_free, no victim), then the one with the latest finding first (so, within a kind, its
    newest finding is the newest finding of the filtered table)."""
    require(store, "incidents")
    require(store, "finding_incidents")
    return store.frame(
        f"""
        WITH matched AS (
            SELECT i.incident_id, max(f.window_start_ns) AS last_start_ns, count(*) AS n_matching
            FROM finding_incidents AS i JOIN findings AS f USING (finding_id)
            WHERE {_FILTERS}
            GROUP BY i.incident_id
        )
        SELECT n.incident_id, n.kind, n.instance, n.n_victims, n.n_findings, n.n_pages,
               (n.window_end_ns - n.window_start_ns) / 1e6 AS window_ms, n.confidence, n.culprit_rid,
               n.culprit_action, n.tp_ranks, n.kv_pools, to_timestamp(n.window_start_ns / 1e9) AS window_start,
               n.service_version, n.victim_rids, n.shape, n.bootstrap_room
        FROM incidents AS n JOIN matched AS m USING (incident_id)
        ORDER BY n.kind = 'unsafe_free', m.last_start_ns DESC, n.incident_id
        LIMIT $limit
        """,
        {**_filter_params(kinds, confidences, instances, rid), "limit": limit},
    )


def incident(store: Store, incident_id: str) -> dict[str, Any] | None:
    """One incident's row (None when there is no such incident)."""
    require(store, "incidents")
    found = store.frame("SELECT * FROM incidents WHERE incident_id = $id", {"id": incident_id})
    if found.empty:
        return None
    # pandas gives a missing text or number as NaN: None, so that `if row["shape"]` reads right
    return {k: (None if not hasattr(v, "__len__") and pd.isna(v) else v) for k, v in found.iloc[0].to_dict().items()}


def incident_of(store: Store, finding_id: str) -> str | None:
    """The incident a finding belongs to (None for an unknown finding)."""
    require(store, "finding_incidents")
    value = store.scalar("SELECT incident_id FROM finding_incidents WHERE finding_id = $id", {"id": finding_id})
    return None if value is None else str(value)


def finding_exists(store: Store, finding_id: str) -> bool:
    require(store, "findings")
    return bool(store.scalar("SELECT count(*) FROM findings WHERE finding_id = $id", {"id": finding_id}))


def incident_findings(store: Store, incident_id: str) -> pd.DataFrame:
    """The findings of one incident, one per rank, pool and victim, newest window first; page sets
    as ranges ('164-170, 80,690-80,695 (1,531 pages)') and windows as durations."""
    require(store, "finding_incidents")
    frame = store.frame(
        """
        SELECT f.finding_id, f.kind, f.confidence, f.tp_rank, f.kv_pool, f.pages, f.victim_rid,
               f.window_start_ns, f.window_end_ns, f.window_end_earliest_ns
        FROM findings AS f SEMI JOIN finding_incidents AS i
          ON i.finding_id = f.finding_id AND i.incident_id = $id
        ORDER BY f.window_start_ns DESC, f.finding_id
        """,
        {"id": incident_id},
    )
    rows = []
    for r in frame.itertuples(index=False):
        earliest = None if pd.isna(r.window_end_earliest_ns) else int(r.window_end_earliest_ns)
        rows.append({
            "finding": r.finding_id, "kind": r.kind, "confidence": r.confidence,
            "rank": None if pd.isna(r.tp_rank) else int(r.tp_rank), "pool": r.kv_pool,
            "pages": readable.page_ranges(list(r.pages) if r.pages is not None else []),
            "victim": r.victim_rid,
            "window": readable.window(int(r.window_start_ns), int(r.window_end_ns), earliest),
            "starts (UTC)": readable.clock_time(int(r.window_start_ns)),
        })
    return pd.DataFrame(rows, columns=["finding", "kind", "confidence", "rank", "pool", "pages", "victim", "window",
                                       "starts (UTC)"])


@dataclass(frozen=True)
class Timeline:
    """One finding and its evidence as drawable intervals.

    `events`: one row per (event, contiguous page run): label, who (culprit / victim), op, rid,
    span_id, page_lo, page_hi, clock_host, x0_raw_ms, x1_raw_ms, x0_ms, x1_ms (corrected onto the
    clock of the finding's instance), all relative to the window start.
    """

    finding: dict[str, Any]
    events: pd.DataFrame
    window_ms: tuple[float, float]
    window_raw_ms: tuple[float, float]
    corrected_hosts: dict[str, float]  # clock host -> offset (ms) removed to reach the instance's clock
    layers: pd.DataFrame  # loads' layer-done and reads' layer-read times: who, op, span_id, layer, t_ms


def timeline(store: Store, finding_id: str) -> Timeline:
    """The culprit's write or load, the abort, the free, the reuse, and the victim's accesses."""
    require(store, "findings")
    require(store, "kv_events")
    found = store.frame("SELECT * FROM findings WHERE finding_id = $id", {"id": finding_id})
    if found.empty:
        raise KeyError(f"no finding {finding_id}")
    f = found.iloc[0].to_dict()
    ws, we = int(f["window_start_ns"]), int(f["window_end_ns"])
    if not len(f["pages"]):  # request level (abort_during_transfer): its evidence spans, no pages
        return _request_level_timeline(store, f, ws, we)
    pad = max(we - ws, 5_000_000) * 2
    skew = "skew_bounds" if store.has_table("skew_bounds") else None
    events = store.frame(
        f"""
        WITH f AS (SELECT * FROM findings WHERE finding_id = $id),
        instance_host AS (
            SELECT any_value(host_name) AS host FROM requests, f WHERE requests.instance_id = f.instance
        ),
        ev AS (
            SELECT e.op, e.rid, e.span_id, e.page_ids, e.start_ns, e.end_ns, e.clock_host, e.free_mode,
                   e.free_reason, e.status_code, e.layer_offsets_ns,
                   -- the culprit's write or load; when culprit and victim are one request
                   -- (read_before_load), its other accesses are the victim side
                   CASE WHEN e.rid = f.culprit_rid AND (e.op IN ('transfer', 'load') OR f.victim_rid IS NULL
                                                        OR f.victim_rid <> f.culprit_rid)
                        THEN 'culprit' ELSE 'victim' END AS who
            FROM kv_events e, f
            WHERE e.instance_id = f.instance AND e.tp_rank = f.tp_rank AND e.kv_pool = f.kv_pool
              AND e.rid IN (f.culprit_rid, f.victim_rid)
              AND (e.op = 'read' OR list_has_any(e.page_ids, f.pages))
        ),
        reads AS (
            SELECT * FROM ev WHERE op = 'read' AND end_ns >= $lo AND start_ns <= $hi
            ORDER BY start_ns LIMIT {MAX_READS}
        ),
        aborts AS (
            SELECT 'abort' AS op, a.rid, a.span_id, NULL::INTEGER[] AS page_ids, a.time_ns AS start_ns,
                   a.time_ns AS end_ns, a.host_name AS clock_host, NULL AS free_mode, a.abort_reason AS free_reason,
                   NULL::TINYINT AS status_code, NULL::BIGINT[] AS layer_offsets_ns,
                   CASE WHEN a.rid = f.culprit_rid THEN 'culprit' ELSE 'victim' END AS who
            FROM aborts a, f WHERE a.rid IN (f.culprit_rid, f.victim_rid)
        ),
        picked AS (
            SELECT * FROM ev WHERE op <> 'read' UNION ALL BY NAME SELECT * FROM reads
            UNION ALL BY NAME SELECT * FROM aborts
        )
        SELECT p.*, coalesce(p.clock_host = (SELECT host FROM instance_host), true) AS on_instance_clock,
               {"coalesce(b.offset_est_ns, 0)" if skew else "0"} AS offset_ns,
               {"b.offset_est_ns IS NOT NULL" if skew else "false"} AS skew_known
        FROM picked p
        {"LEFT JOIN skew_bounds b ON b.prefill_host = p.clock_host AND b.decode_host = (SELECT host FROM instance_host)" if skew else ""}
        ORDER BY p.start_ns
        """,
        {"id": finding_id, "lo": ws - pad, "hi": we + pad},
    )
    pages = sorted(int(p) for p in f["pages"])
    focus = (pages[0] - FOCUS_MARGIN, pages[-1] + FOCUS_MARGIN)
    rows, layer_rows = [], []
    corrected: dict[str, float] = {}
    for e in events.itertuples(index=False):
        offset = 0 if e.on_instance_clock else int(e.offset_ns)
        if not e.on_instance_clock and e.skew_known:
            corrected[str(e.clock_host)] = offset / 1e6
        if e.layer_offsets_ns is not None and e.op in ("load", "read"):
            for layer, off in enumerate(e.layer_offsets_ns):
                layer_rows.append({"who": e.who, "op": e.op, "span_id": e.span_id, "layer": layer,
                                   "t_ms": (e.start_ns + int(off) - offset - ws) / 1e6})
        runs = _runs(pages) if e.op in ("read", "abort") or e.page_ids is None else _runs(sorted(e.page_ids))
        for lo, hi in _clip(runs, focus):
            rows.append({
                "label": _label(e), "who": e.who, "op": e.op, "rid": e.rid, "span_id": e.span_id,
                "page_lo": lo, "page_hi": hi, "clock_host": e.clock_host,
                "x0_raw_ms": (e.start_ns - ws) / 1e6, "x1_raw_ms": (e.end_ns - ws) / 1e6,
                "x0_ms": (e.start_ns - offset - ws) / 1e6, "x1_ms": (e.end_ns - offset - ws) / 1e6,
            })
    frame = pd.DataFrame(rows, columns=["label", "who", "op", "rid", "span_id", "page_lo", "page_hi",
                                        "clock_host", "x0_raw_ms", "x1_raw_ms", "x0_ms", "x1_ms"])
    raw_end = f.get("window_end_raw_ns")
    raw_end_ns = we if raw_end is None or pd.isna(raw_end) else int(raw_end)
    return Timeline(
        finding=f, events=frame, window_ms=(0.0, (we - ws) / 1e6),
        window_raw_ms=(0.0, (raw_end_ns - ws) / 1e6), corrected_hosts=corrected,
        layers=pd.DataFrame(layer_rows, columns=["who", "op", "span_id", "layer", "t_ms"]),
    )


def _request_level_timeline(store: Store, f: dict[str, Any], ws: int, we: int) -> Timeline:
    """A finding without pages, drawn from its evidence spans (the aborted decode request, its
    ERROR thread span, the prefill's write, the victim's root) on their own clocks: all on one row,
    since no page is known."""
    spans = store.frame(
        "SELECT span_id, name, rid, host_name, start_ns, end_ns FROM spans "
        "WHERE list_contains($ids, span_id) ORDER BY start_ns",
        {"ids": [str(i) for i in f["evidence_span_ids"]]},
    )
    rows = []
    for e in spans.itertuples(index=False):
        who = "victim" if f["victim_rid"] is not None and e.rid == f["victim_rid"] else "culprit"
        rows.append({
            "label": f"{who} {e.rid}: {e.name} on {e.host_name}", "who": who, "op": str(e.name), "rid": e.rid,
            "span_id": e.span_id, "page_lo": 0, "page_hi": 0, "clock_host": e.host_name,
            "x0_raw_ms": (e.start_ns - ws) / 1e6, "x1_raw_ms": (e.end_ns - ws) / 1e6,
            "x0_ms": (e.start_ns - ws) / 1e6, "x1_ms": (e.end_ns - ws) / 1e6,
        })
    frame = pd.DataFrame(rows, columns=["label", "who", "op", "rid", "span_id", "page_lo", "page_hi",
                                        "clock_host", "x0_raw_ms", "x1_raw_ms", "x0_ms", "x1_ms"])
    raw_end = f.get("window_end_raw_ns")
    raw_end_ns = we if raw_end is None or pd.isna(raw_end) else int(raw_end)
    return Timeline(
        finding=f, events=frame, window_ms=(0.0, (we - ws) / 1e6),
        window_raw_ms=(0.0, (raw_end_ns - ws) / 1e6), corrected_hosts={},
        layers=pd.DataFrame([], columns=["who", "op", "span_id", "layer", "t_ms"]),
    )


def _label(e: Any) -> str:
    op = str(e.op)
    text = {"transfer": "KV write (transfer)", "load": "HiCache load", "alloc": "alloc", "free": "free",
            "read": "read", "abort": "abort"}.get(op, op)
    mode = e.free_mode
    if op == "free" and isinstance(mode, str):
        text += f" ({mode})"
    return f"{e.who} {e.rid}: {text} on {e.clock_host}"


def _clip(runs: list[tuple[int, int]], focus: tuple[int, int]) -> list[tuple[int, int]]:
    """The parts of page runs inside the focus range (the finding's pages and a margin)."""
    out = []
    for lo, hi in runs:
        lo, hi = max(lo, focus[0]), min(hi, focus[1])
        if lo <= hi:
            out.append((lo, hi))
    return out


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sorted page ids: [1,2,3,7,8] -> [(1,3),(7,8)]."""
    runs: list[tuple[int, int]] = []
    for p in pages:
        if runs and p == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], p)
        else:
            runs.append((p, p))
    return runs
