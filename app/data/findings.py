"""Findings page: incidents (one culprit action and its victims over every TP rank and KV pool),
the findings of one incident (per rank, pool and victim), one finding's view: its events (one row
each, page sets as ranges), its critical sequence, the default zoom and the whole window, on raw
and corrected clocks. A finding's window of KV events is analytics.finding_window's query, the one
`kvtrace replay export` reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from kvtrace.analytics.finding_window import FindingWindow, finding_window
from kvtrace.app import readable
from kvtrace.app.data.common import require
from kvtrace.app.store import Store


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
    return _options(frame)


def _options(frame: pl.DataFrame) -> dict[str, list[str]]:
    """(f, v) rows as {f: [v, ...]} in row order, missing values left out."""
    out: dict[str, list[str]] = {}
    for key, value in frame.iter_rows():
        values = out.setdefault(str(key), [])
        if value is not None:
            values.append(str(value))
    return out


def list_findings(
    store: Store,
    kinds: tuple[str, ...] = (),
    confidences: tuple[str, ...] = (),
    instances: tuple[str, ...] = (),
    rid: str = "",
    limit: int = 1000,
) -> pl.DataFrame:
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


def count_matching(
    store: Store,
    kinds: tuple[str, ...] = (),
    confidences: tuple[str, ...] = (),
    instances: tuple[str, ...] = (),
    rid: str = "",
) -> tuple[int, int]:
    """(incidents, findings) matching the filters, uncapped: the lists above stop at their limit."""
    require(store, "incidents")
    require(store, "finding_incidents")
    frame = store.frame(
        f"""
        SELECT count(DISTINCT i.incident_id) AS n_incidents, count(DISTINCT f.finding_id) AS n_findings
        FROM findings AS f LEFT JOIN finding_incidents AS i USING (finding_id)
        WHERE {_FILTERS}
        """,
        _filter_params(kinds, confidences, instances, rid),
    )
    return int(frame.item(0, "n_incidents")), int(frame.item(0, "n_findings"))


def list_incidents(
    store: Store,
    kinds: tuple[str, ...] = (),
    confidences: tuple[str, ...] = (),
    instances: tuple[str, ...] = (),
    rid: str = "",
    limit: int = 1000,
) -> pl.DataFrame:
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
    if found.is_empty():
        return None
    return found.row(0, named=True)  # a missing text or number is None, so `if row["shape"]` reads right


def incident_of(store: Store, finding_id: str) -> str | None:
    """The incident a finding belongs to (None for an unknown finding)."""
    require(store, "finding_incidents")
    value = store.scalar("SELECT incident_id FROM finding_incidents WHERE finding_id = $id", {"id": finding_id})
    return None if value is None else str(value)


def finding_exists(store: Store, finding_id: str) -> bool:
    require(store, "findings")
    return bool(store.scalar("SELECT count(*) FROM findings WHERE finding_id = $id", {"id": finding_id}))


def incident_findings(store: Store, incident_id: str) -> pl.DataFrame:
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
    for r in frame.iter_rows(named=True):
        earliest = r["window_end_earliest_ns"]
        rows.append({
            "finding": r["finding_id"], "kind": r["kind"], "confidence": r["confidence"],
            "rank": r["tp_rank"], "pool": r["kv_pool"],
            "pages": readable.page_ranges(list(r["pages"] or [])),
            "victim": r["victim_rid"],
            "window": readable.window(int(r["window_start_ns"]), int(r["window_end_ns"]),
                                      None if earliest is None else int(earliest)),
            "starts (UTC)": readable.clock_time(int(r["window_start_ns"])),
        })
    return pl.from_dicts(rows, schema=INCIDENT_FINDING_SCHEMA)


# -- one finding's view ---------------------------------------------------------------------------

MAX_READS = 300  # reads drawn per finding (the culprit's and the victim's, inside the window first)
MAX_WINDOW_ROWS = 20_000  # KV events of the culprit and the victim read for one finding
MAX_ABORTS = 20
FOCUS_MARGIN = 8  # page_lo/page_hi: the event's pages within the finding's page span and this margin
ZOOM_SPREAD = 6  # the default zoom takes in a neighbouring moment while its core keeps >= 1/6 of the width
ZOOM_PAD = 0.3  # either side of the default zoom, as a fraction of its width
MIN_ZOOM_MS = 0.001

# (who, lane kind) top to bottom: the culprit's story, then the victim's
LANE_ORDER = [("culprit", "access"), ("culprit", "abort"), ("culprit", "free"), ("culprit", "alloc"),
              ("culprit", "read"), ("victim", "alloc"), ("victim", "access"), ("victim", "read"),
              ("victim", "free"), ("victim", "abort")]
_LANE_NOUN = {"transfer": "write", "load": "HiCache load", "abort": "abort", "free": "free", "alloc": "alloc",
              "read": "reads"}
_OP_TEXT = {"transfer": "KV write (transfer)", "load": "HiCache load", "alloc": "alloc", "free": "free",
            "read": "read", "abort": "abort"}
# the moments the default zoom must show, per kind (others: the window's opening and closing)
ZOOM_CORE = {"abort_before_write_complete": ("free", "alloc"), "unsafe_free": ("free", "lands")}
_WINDOW_WORDS = {
    "read_before_load": ("first early layer read", "its layer's copy done"),
    "page_hazard": ("hazard opens", "hazard closes"),
    "abort_during_transfer": ("window opens", "write ends"),
}
_S, _I, _F = pl.String, pl.Int64, pl.Float64
EVENT_SCHEMA = {"label": _S, "who": _S, "op": _S, "lane": _S, "lane_order": _I, "rid": _S, "span_id": _S,
                "pages": _S, "n_pages": _I, "finding_pages": _I, "page_lo": _I, "page_hi": _I, "clock_host": _S,
                "x0_ms": _F, "x1_ms": _F, "x0_raw_ms": _F, "x1_raw_ms": _F, "instant": pl.Boolean}
EVENT_COLUMNS = list(EVENT_SCHEMA)
MOMENT_SCHEMA = {"key": _S, "label": _S, "who": _S, "lane": _S, "t_ms": _F, "t_raw_ms": _F, "span_id": _S}
MOMENT_COLUMNS = list(MOMENT_SCHEMA)
LAYER_SCHEMA = {"who": _S, "op": _S, "span_id": _S, "layer": _I, "t_ms": _F}
INCIDENT_FINDING_SCHEMA = {"finding": _S, "kind": _S, "confidence": _S, "rank": _I, "pool": _S, "pages": _S,
                           "victim": _S, "window": _S, "starts (UTC)": _S}


@dataclass(frozen=True)
class Timeline:
    """One finding and its evidence, drawable at any scale.

    `events`: one row per event (never per page run): label, who (culprit / victim), op, lane (its
    row in the chart), rid, span_id, pages (the event's page set as ranges), n_pages, finding_pages
    (how many of the finding's pages it touches), page_lo/page_hi (its pages near the finding's),
    clock_host, x0_ms/x1_ms (on the clock of the finding's instance), x0_raw_ms/x1_raw_ms (its
    host's own clock), instant; ms relative to the window start.
    `moments`: the critical sequence in time order (write posted, abort, free, victim alloc, write
    lands; or the window's opening and closing): key, label, who, lane, t_ms, t_raw_ms, span_id.
    """

    finding: dict[str, Any]
    events: pl.DataFrame
    window_ms: tuple[float, float]
    window_raw_ms: tuple[float, float]
    corrected_hosts: dict[str, float]  # clock host -> offset (ms) removed to reach the instance's clock
    layers: pl.DataFrame  # loads' layer-done and reads' layer-read times: who, op, span_id, layer, t_ms
    moments: pl.DataFrame
    focus_ms: tuple[float, float]  # the default zoom (instance clock), around the critical sequence
    focus_raw_ms: tuple[float, float]  # the same on the raw clocks
    context_ms: tuple[float, float]  # the whole window and every drawn event (instance clock)
    context_raw_ms: tuple[float, float]
    landing_bounds_ms: tuple[float | None, float | None]  # the write's end over every allowed clock offset
    truncated: bool  # more events than were read


def evidence_window(store: Store, finding_id: str) -> FindingWindow:
    """The finding's window of KV events of its culprit and victim: analytics.finding_window, the
    query `kvtrace replay export` reads (which adds the window's other requests)."""
    require(store, "findings")
    require(store, "kv_events")
    fw: FindingWindow = store.call(finding_window, finding_id, False, MAX_WINDOW_ROWS)
    return fw


def timeline(store: Store, finding_id: str) -> Timeline:
    """The culprit's write or load, the abort, the free, the reuse, and the victim's accesses."""
    require(store, "findings")
    found = store.frame("SELECT * FROM findings WHERE finding_id = $id", {"id": finding_id})
    if found.is_empty():
        raise KeyError(f"no finding {finding_id}")
    f = found.row(0, named=True)
    if not len(f["pages"]):  # request level (abort_during_transfer): its evidence spans, no pages
        return _request_level_timeline(store, f)
    fw = evidence_window(store, finding_id)
    w = fw.window
    ws = int(f["window_start_ns"])
    pages = frozenset(int(p) for p in f["pages"])
    culprit, victim = str(f["culprit_rid"]), None if f["victim_rid"] is None else str(f["victim_rid"])
    pool = str(f["kv_pool"])
    kept = [e for e in w.events if e.kv_pool == pool and (e.op == "read" or not pages.isdisjoint(e.pages))]
    reads = [e for e in kept if e.op == "read"]
    inside = [e for e in reads if e.end_on_instance_ns >= w.lo_ns and e.start_on_instance_ns <= w.hi_ns]
    after = [e for e in reads if e.rid == victim and e.start_on_instance_ns > w.hi_ns][:2]
    drawn_reads = {e.span_id + e.rid for e in (inside[:MAX_READS] + after)}
    picked = [e for e in kept if e.op != "read" or e.span_id + e.rid in drawn_reads]
    rows, layer_rows = [], []
    corrected: dict[str, float] = {}
    for e in picked:
        who = _who(e.rid, e.op, culprit, victim)
        if e.skew_known and e.clock_host:
            corrected[e.clock_host] = e.clock_offset_ns / 1e6
        if e.layer_offsets and e.op in ("load", "read"):
            for layer, off in enumerate(e.layer_offsets):
                layer_rows.append({"who": who, "op": e.op, "span_id": e.span_id, "layer": layer,
                                   "t_ms": (e.start_on_instance_ns + int(off) - ws) / 1e6})
        runs = e.runs if e.op != "read" else ()
        rows.append(_event_row(who, e.op, e.rid, e.span_id, e.clock_host, runs, len(pages.intersection(e.pages)),
                               pages, e.start_ns, e.end_ns, e.clock_offset_ns, ws, e.free_mode))
    for a in _aborts(store, culprit, victim):
        offset = w.clock_offsets_ns.get(str(a["host_name"]), 0) if a["host_name"] != w.instance_host else 0
        who = "culprit" if a["rid"] == culprit else "victim"
        rows.append(_event_row(who, "abort", str(a["rid"]), str(a["span_id"]), a["host_name"], (), 0, pages,
                               int(a["time_ns"]), int(a["time_ns"]), offset, ws, None, a["abort_reason"]))
    events = pl.from_dicts(rows, schema=EVENT_SCHEMA).sort("x0_ms", "lane_order", maintain_order=True)
    moments = _moments(f, events)
    layers = pl.from_dicts(layer_rows, schema=LAYER_SCHEMA)
    return _timeline(f, events, moments, corrected, layers,
                     ((w.lo_ns - ws) / 1e6, (w.hi_ns - ws) / 1e6), w.truncated)


def _request_level_timeline(store: Store, f: dict[str, Any]) -> Timeline:
    """A finding without pages, drawn from its evidence spans (the aborted decode request, its
    ERROR thread span, the prefill's write, the victim's root) on their own clocks, one lane per
    request and span name, since no page is known."""
    ws, we = int(f["window_start_ns"]), int(f["window_end_ns"])
    spans = store.frame(
        "SELECT span_id, name, rid, host_name, start_ns, end_ns FROM spans "
        "WHERE list_contains($ids, span_id) ORDER BY start_ns LIMIT 100",
        {"ids": [str(i) for i in f["evidence_span_ids"]]},
    )
    rows = []
    for e in spans.iter_rows(named=True):
        who = "victim" if f["victim_rid"] is not None and e["rid"] == f["victim_rid"] else "culprit"
        row = _event_row(who, str(e["name"]), e["rid"], e["span_id"], e["host_name"], (), 0, frozenset(),
                         int(e["start_ns"]), int(e["end_ns"]), 0, ws, None)
        row["label"] = f"{who} {e['rid']}: {e['name']} on {e['host_name']}"
        rows.append(row)
    events = pl.from_dicts(rows, schema=EVENT_SCHEMA)
    pad = max(we - ws, 5_000_000) / 1e6
    return _timeline(f, events, _moments(f, events), {}, pl.DataFrame(schema=LAYER_SCHEMA),
                     (-pad, (we - ws) / 1e6 + pad), False)


def _timeline(f: dict[str, Any], events: pl.DataFrame, moments: pl.DataFrame, corrected: dict[str, float],
              layers: pl.DataFrame, window_context_ms: tuple[float, float], truncated: bool) -> Timeline:
    """The Timeline of a finding's events and moments: zooms, context and the clock bounds."""
    ws, we = int(f["window_start_ns"]), int(f["window_end_ns"])
    raw_end = f.get("window_end_raw_ns")
    raw_end_ns = we if raw_end is None else int(raw_end)
    core = ZOOM_CORE.get(str(f["kind"]), ("opens", "closes"))

    def rel(value: Any) -> float | None:
        return None if value is None else (int(value) - ws) / 1e6

    return Timeline(
        finding=f, events=events, window_ms=(0.0, (we - ws) / 1e6), window_raw_ms=(0.0, (raw_end_ns - ws) / 1e6),
        corrected_hosts=corrected, layers=layers, moments=moments,
        focus_ms=default_zoom(list(zip(moments["key"], moments["t_ms"], strict=True)), core),
        focus_raw_ms=default_zoom(list(zip(moments["key"], moments["t_raw_ms"], strict=True)), core),
        context_ms=_extent(window_context_ms, events["x0_ms"], events["x1_ms"]),
        context_raw_ms=_extent(window_context_ms, events["x0_raw_ms"], events["x1_raw_ms"]),
        landing_bounds_ms=(rel(f.get("window_end_earliest_ns")), rel(f.get("window_end_latest_ns")))
        if f.get("culprit_clock_host") is not None else (None, None),
        truncated=truncated,
    )


def default_zoom(points: list[tuple[str, float]], core: tuple[str, ...]) -> tuple[float, float]:
    """The x range shown first: the `core` moments (e.g. the culprit's free and the victim's alloc),
    widened to take in each other moment, nearest first, while the core keeps at least
    1/ZOOM_SPREAD of the width; padded either side. A 26 s write and a 93 ms gap between free and
    reuse: the zoom is the 93 ms, the write's ends are in the context strip."""
    times = [t for k, t in points if k in core]
    if len(times) < 2:
        times = [t for _, t in points] or [0.0]
    lo, hi = min(times), max(times)
    width = max(hi - lo, MIN_ZOOM_MS)
    others = sorted((t for k, t in points if k not in core), key=lambda t: max(lo - t, t - hi, 0.0))
    for t in others:
        if max(hi, t) - min(lo, t) <= ZOOM_SPREAD * width:
            lo, hi = min(lo, t), max(hi, t)
    pad = ZOOM_PAD * max(hi - lo, MIN_ZOOM_MS)
    return (lo - pad, hi + pad)


def _extent(window: tuple[float, float], x0: pl.Series, x1: pl.Series) -> tuple[float, float]:
    low, high = x0.min(), x1.max()
    lo = min([window[0], *([] if low is None else [float(low)])])  # type: ignore[arg-type]
    hi = max([window[1], *([] if high is None else [float(high)])])  # type: ignore[arg-type]
    return (lo, hi)


def _who(rid: str, op: str, culprit: str, victim: str | None) -> str:
    """The culprit's write or load; when culprit and victim are one request (read_before_load), its
    other accesses are the victim side."""
    if rid == culprit and (op in ("transfer", "load") or victim is None or victim != culprit):
        return "culprit"
    return "victim"


def _event_row(who: str, op: str, rid: str, span_id: str, clock_host: str | None, runs: tuple[tuple[int, int], ...],
               touched: int, finding_pages: frozenset[int], start_ns: int, end_ns: int, offset_ns: int, ws: int,
               free_mode: str | None, reason: str | None = None) -> dict[str, Any]:
    text = _OP_TEXT.get(op, op)
    if op == "free" and isinstance(free_mode, str):
        text += f" ({free_mode})"
    if op == "abort" and isinstance(reason, str):
        text += f" ({reason})"
    kind = "access" if op in ("transfer", "load") else op
    lane = f"{who} {_LANE_NOUN.get(op, op)}"
    near = _clip(list(runs), (min(finding_pages, default=0) - FOCUS_MARGIN, max(finding_pages, default=0) + FOCUS_MARGIN))
    n = sum(hi - lo + 1 for lo, hi in runs)
    return {
        "label": f"{who} {rid}: {text} on {clock_host}", "who": who, "op": op,
        "lane": lane, "lane_order": LANE_ORDER.index((who, kind)) if (who, kind) in LANE_ORDER else len(LANE_ORDER),
        "rid": rid, "span_id": span_id,
        "pages": runs_text(runs) if runs else ("the request's pages" if op == "read" else "-"),
        "n_pages": n, "finding_pages": touched,
        "page_lo": near[0][0] if near else min(finding_pages, default=0),
        "page_hi": near[-1][1] if near else max(finding_pages, default=0),
        "clock_host": clock_host,
        "x0_ms": (start_ns - offset_ns - ws) / 1e6, "x1_ms": (end_ns - offset_ns - ws) / 1e6,
        "x0_raw_ms": (start_ns - ws) / 1e6, "x1_raw_ms": (end_ns - ws) / 1e6,
        "instant": op in ("alloc", "free", "abort"),
    }


def _moments(f: dict[str, Any], events: pl.DataFrame) -> pl.DataFrame:
    """The critical sequence: the culprit's access posted, its abort, its free of the pages, the
    victim's alloc, the access landing; kinds without those, the window's opening and closing."""
    evidence = {str(i) for i in (f["evidence_span_ids"] if f["evidence_span_ids"] is not None else [])}
    ws_ms, we_ms = 0.0, (int(f["window_end_ns"]) - int(f["window_start_ns"])) / 1e6
    out: list[dict[str, Any]] = []

    def pick(who: str, ops: tuple[str, ...], near: float) -> dict[str, Any] | None:
        rows = events.filter((pl.col("who") == who) & pl.col("op").is_in(list(ops)))
        if rows.is_empty():
            return None
        named = rows.filter(pl.col("span_id").is_in(list(evidence)))
        rows = named if not named.is_empty() else rows
        nearest = (rows["x0_ms"] - near).abs().arg_min()
        return rows.row(nearest or 0, named=True)

    def add(key: str, label: str, row: Any, at: str = "x0") -> None:
        out.append({"key": key, "label": label, "who": row["who"], "lane": row["lane"], "t_ms": float(row[f"{at}_ms"]),
                    "t_raw_ms": float(row[f"{at}_raw_ms"]), "span_id": row["span_id"]})

    access = pick("culprit", ("transfer", "load"), ws_ms)
    if access is not None:
        load = access["op"] == "load"
        add("posted", "load posted" if load else "write posted", access)
        add("lands", "load done" if load else "write lands", access, "x1")
    for key, who, ops, label in (("abort", "culprit", ("abort",), "abort"), ("free", "culprit", ("free",), "free"),
                                 ("alloc", "victim", ("alloc",), "victim alloc")):
        row = pick(who, ops, ws_ms)
        if row is not None:
            add(key, label, row)
    if str(f["kind"]) not in ZOOM_CORE:  # the victim's access the culprit's write or load runs into
        victims = events.filter((pl.col("who") == "victim") & ~pl.col("instant"))
        hit = victims.filter((pl.col("x0_ms") <= ws_ms) & (pl.col("x1_ms") >= ws_ms))
        hit = hit if not hit.is_empty() else victims.filter(pl.col("x0_ms") >= ws_ms)
        if not hit.is_empty():
            row = hit.sort("x0_ms", maintain_order=True).row(0, named=True)
            add("target", f"victim {_OP_TEXT.get(str(row['op']), str(row['op']))}", row)
    if str(f["kind"]) not in ZOOM_CORE or len(out) < 2:
        opens, closes = _WINDOW_WORDS.get(str(f["kind"]), ("window opens", "window closes"))
        lane = events.sort("lane_order", maintain_order=True)["lane"][0] if not events.is_empty() else ""
        for key, label, t in (("opens", opens, ws_ms), ("closes", closes, we_ms)):
            out.append({"key": key, "label": label, "who": "window", "lane": lane, "t_ms": t, "t_raw_ms": t,
                        "span_id": None})
    return pl.from_dicts(out, schema=MOMENT_SCHEMA).sort("t_ms", maintain_order=True)


def _aborts(store: Store, culprit: str, victim: str | None) -> list[dict[str, Any]]:
    if not store.has_table("aborts"):
        return []
    frame = store.frame(
        f"SELECT rid, span_id, host_name, time_ns, abort_reason FROM aborts WHERE rid IN ($c, $v) "
        f"ORDER BY time_ns LIMIT {MAX_ABORTS}",
        {"c": culprit, "v": victim or culprit},
    )
    return frame.to_dicts()  # a missing value is None


def runs_text(runs: tuple[tuple[int, int], ...] | list[tuple[int, int]], max_runs: int = 6) -> str:
    """Page runs as text, in readable.page_ranges' format: '164-200, 512-600 (1,531 pages)'; the runs
    come from SQL (analytics/finding_window.sql), so no page list is walked here."""
    if not runs:
        return "-"
    n = sum(hi - lo + 1 for lo, hi in runs)

    def run(r: tuple[int, int]) -> str:
        return f"{r[0]:,}" if r[0] == r[1] else f"{r[0]:,}-{r[1]:,}"

    runs = list(runs)
    if len(runs) <= max_runs:
        shown = ", ".join(run(r) for r in runs)
    else:
        shown = ", ".join(run(r) for r in runs[: max_runs - 1]) + ", ..., " + run(runs[-1])
    count = f"{n:,} page{'' if n == 1 else 's'}"
    if len(runs) > max_runs:
        count += f" in {len(runs):,} runs"
    return f"{shown} ({count})"


def _clip(runs: list[tuple[int, int]], focus: tuple[int, int]) -> list[tuple[int, int]]:
    """The parts of page runs inside the focus range (the finding's pages and a margin)."""
    out = []
    for lo, hi in runs:
        lo, hi = max(lo, focus[0]), min(hi, focus[1])
        if lo <= hi:
            out.append((lo, hi))
    return out


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of sorted page ids: [1,2,3,7,8] -> [(1,3),(7,8)] (the view gets its runs from
    SQL now; tests/test_app_data.py still pins this name)."""
    return readable.page_runs(pages)
