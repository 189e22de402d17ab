"""Requests page: find a request (rid, rid prefix, trace id, bootstrap room, attribute filters), its
span tree across hosts with each span's attributes, events, links and resource, the findings that
cite it, its speculative steps and output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from kvtrace.app.data.common import INGEST_HINT, require
from kvtrace.app.store import Store

MAX_SPANS = 2_000


def search(
    store: Store,
    text: str,
    limit: int = 50,
    versions: tuple[str, ...] = (),
    instances: tuple[str, ...] = (),
    anomalies: tuple[str, ...] = (),
    min_ms: float | None = None,
    max_ms: float | None = None,
) -> pl.DataFrame:
    """Requests whose rid starts with `text` (case-insensitive) or whose trace id or bootstrap room
    is `text`, or the latest ones when empty; every non-empty filter must hold too: version and
    instance (of any of its roots: a prefill instance finds the requests it prefilled), anomaly
    label, duration range (first root start to last root end, ms). Only the `requests` table
    (root spans) and `request_anomalies` are read, never `spans`."""
    require(store, "requests", INGEST_HINT)
    t = text.strip()
    use_anomaly = bool(anomalies) and store.has_table("request_anomalies")
    # unfiltered (the page's first view): the latest roots first, no grouping over the whole table
    plain = not t and not versions and not instances and not anomalies and min_ms is None and max_ms is None
    source = "(SELECT * FROM requests ORDER BY start_ns DESC LIMIT $limit * 4)" if plain else "requests"
    anomaly_join = "LEFT JOIN request_anomalies a USING (rid)" if store.has_table("request_anomalies") else ""
    anomaly_col = "any_value(a.anomaly)" if anomaly_join else "CAST(NULL AS VARCHAR)"
    return store.frame(
        f"""
        WITH matched AS (
            SELECT rid FROM {source}
            WHERE ($text = '' OR starts_with(lower(rid), lower($text)) OR trace_id = $trace
                   OR lower(bootstrap_room) = lower($text))
            GROUP BY rid
            HAVING (len($versions) = 0 OR bool_or(list_contains($versions, service_version)))
               AND (len($instances) = 0 OR bool_or(list_contains($instances, instance_id)))
               AND ($min_ms IS NULL OR (max(end_ns) - min(start_ns)) / 1e6 >= $min_ms)
               AND ($max_ms IS NULL OR (max(end_ns) - min(start_ns)) / 1e6 <= $max_ms)
        ),
        labelled AS (
            SELECT m.rid FROM matched m
            {"JOIN request_anomalies a USING (rid) WHERE list_contains($anomalies, a.anomaly)" if use_anomaly else ""}
        ),
        picked AS (
            SELECT rid, max(start_ns) AS latest FROM requests WHERE rid IN (SELECT rid FROM labelled)
            GROUP BY rid ORDER BY latest DESC, rid LIMIT $limit
        )
        SELECT q.rid,
               string_agg(DISTINCT q.role, '+' ORDER BY q.role) AS roles,
               any_value(q.service_version) AS service_version,
               string_agg(DISTINCT q.instance_id, '+' ORDER BY q.instance_id) AS instances,
               {anomaly_col} AS anomaly,
               to_timestamp(min(q.start_ns) / 1e9) AS started,
               (max(q.end_ns) - min(q.start_ns)) / 1e6 AS duration_ms,
               max(q.prompt_tokens) AS prompt_tokens,
               max(q.completion_tokens) AS completion_tokens,
               max(q.spec_accept_length) AS spec_accept_length,
               max(q.spec_accept_rate) AS spec_accept_rate,
               max(q.finish_reason) AS finish_reason
        FROM requests q {anomaly_join.replace("USING (rid)", "ON a.rid = q.rid")}
        WHERE q.rid IN (SELECT rid FROM picked)
        GROUP BY q.rid
        ORDER BY started DESC, q.rid
        LIMIT $limit
        """,
        {
            "text": t,
            "trace": normalise_trace_id(t),
            "limit": limit,
            "versions": list(versions),
            "instances": list(instances),
            "min_ms": min_ms,
            "max_ms": max_ms,
            **({"anomalies": list(anomalies)} if use_anomaly else {}),
        },
    )


def normalise_trace_id(text: str) -> str:
    """A trace id as the store keeps it: lower-case hex, 32 digits (SGLang's 64-bit ids, 16 digits,
    left-padded with zeros the way their 16-byte protobuf form is); `0x` and dashes dropped."""
    t = text.strip().lower().removeprefix("0x").replace("-", "")
    if len(t) == 16 and all(c in "0123456789abcdef" for c in t):
        return "0" * 16 + t
    return t


def filter_options(store: Store) -> dict[str, list[str]]:
    """Distinct values for the attribute filters: versions, instances, anomaly labels."""
    require(store, "requests", INGEST_HINT)
    anomalies = (
        "UNION SELECT 'anomaly', anomaly FROM request_anomalies"
        if store.has_table("request_anomalies")
        else ""
    )
    frame = store.frame(
        f"""
        SELECT 'version' AS f, service_version AS v FROM requests UNION
        SELECT 'instance', instance_id FROM requests {anomalies}
        ORDER BY 1, 2
        """
    )
    out: dict[str, list[str]] = {}
    for key, value in frame.iter_rows():
        values = out.setdefault(str(key), [])
        if value is not None:
            values.append(str(value))
    return out


def exists(store: Store, rid: str) -> bool:
    """Whether a request with exactly this rid is in the store."""
    require(store, "requests", INGEST_HINT)
    return bool(store.scalar("SELECT count(*) > 0 FROM requests WHERE rid = $rid", {"rid": rid}))


def rids_of_trace(store: Store, trace_id: str) -> list[str]:
    """The rids whose root spans are in trace `trace_id` (16 or 32 hex digits)."""
    require(store, "requests", INGEST_HINT)
    frame = store.frame(
        "SELECT DISTINCT rid FROM requests WHERE trace_id = $t ORDER BY rid LIMIT 50",
        {"t": normalise_trace_id(trace_id)},
    )
    return [str(r) for r in frame["rid"]]


def roots(store: Store, rid: str) -> pl.DataFrame:
    """The request's root spans, one per role (prefill / decode / unified)."""
    require(store, "requests", INGEST_HINT)
    return store.frame(
        "SELECT * EXCLUDE (completion_text) FROM requests WHERE rid = $rid ORDER BY start_ns", {"rid": rid}
    )


def completion_text(store: Store, rid: str) -> str | None:
    require(store, "requests", INGEST_HINT)
    value = store.scalar(
        "SELECT max(completion_text) FROM requests WHERE rid = $rid AND completion_text IS NOT NULL",
        {"rid": rid},
    )
    return None if value is None else str(value)


def waterfall(store: Store, rid: str) -> pl.DataFrame:
    """Spans of the request's traces plus any span tagged with its rid, on each host's raw clock.

    Columns: trace_id, span_id, parent_span_id, name, kind, service_name, instance_id, host_name,
    role, start_ns, end_ns, status_code, status_message, resource_id, attributes (JSON text),
    start_ms, duration_ms (start_ms is relative to the request's earliest span, on that span's
    host clock). Two equality scans of `spans` (rid, then the request's trace ids), at most
    MAX_SPANS rows.
    """
    require(store, "spans", INGEST_HINT)
    return store.frame(
        """
        WITH own_traces AS (SELECT DISTINCT trace_id FROM requests WHERE rid = $rid),
        -- two single-column scans (UNION dedups) are several times faster than one OR-ed scan
        rows AS (
            SELECT trace_id, span_id, parent_span_id, name, kind, service_name, instance_id, host_name, start_ns,
                   end_ns, status_code, status_message, resource_id, CAST(attributes AS VARCHAR) AS attributes
            FROM spans WHERE rid = $rid
            UNION
            SELECT trace_id, span_id, parent_span_id, name, kind, service_name, instance_id, host_name, start_ns,
                   end_ns, status_code, status_message, resource_id, CAST(attributes AS VARCHAR) AS attributes
            FROM spans WHERE trace_id IN (SELECT trace_id FROM own_traces)
        )
        SELECT p.trace_id, p.span_id, p.parent_span_id, p.name, p.kind, p.service_name, p.instance_id,
               p.host_name, r.role, p.start_ns, p.end_ns, p.status_code, p.status_message, p.resource_id,
               p.attributes,
               (p.start_ns - min(p.start_ns) OVER ()) / 1e6 AS start_ms,
               greatest(p.end_ns - p.start_ns, 0) / 1e6 AS duration_ms
        FROM rows p LEFT JOIN resources r USING (resource_id)
        ORDER BY p.start_ns, p.name, p.span_id
        LIMIT $cap
        """,
        {"rid": rid, "cap": MAX_SPANS},
    )


def span_events(store: Store, trace_id: str, span_id: str) -> pl.DataFrame:
    """One span's events, in order: name, time (ns, the span's host clock), attributes (JSON text)."""
    require(store, "span_events", INGEST_HINT)
    return store.frame(
        """
        SELECT seq, name, time_ns, CAST(attributes AS VARCHAR) AS attributes
        FROM span_events WHERE trace_id = $t AND span_id = $s ORDER BY seq LIMIT $cap
        """,
        {"t": trace_id, "s": span_id, "cap": MAX_SPANS},
    )


def span_links(store: Store, trace_id: str, span_id: str) -> pl.DataFrame:
    """One span's links: the linked trace and span, and the link's attributes (JSON text)."""
    require(store, "span_links", INGEST_HINT)
    return store.frame(
        """
        SELECT seq, linked_trace_id, linked_span_id, CAST(attributes AS VARCHAR) AS attributes
        FROM span_links WHERE trace_id = $t AND span_id = $s ORDER BY seq LIMIT $cap
        """,
        {"t": trace_id, "s": span_id, "cap": MAX_SPANS},
    )


def resource(store: Store, resource_id: int) -> dict[str, Any] | None:
    """A resource's attributes (service, instance, host, version, role and every other one)."""
    require(store, "resources", INGEST_HINT)
    frame = store.frame(
        "SELECT CAST(attributes AS VARCHAR) AS attributes FROM resources WHERE resource_id = $r",
        {"r": int(resource_id)},
    )
    if frame.is_empty() or frame.item(0, 0) is None:
        return None
    value = json.loads(str(frame.item(0, 0)))
    return value if isinstance(value, dict) else {"attributes": value}


def evidence(store: Store, rid: str) -> pl.DataFrame:
    """The findings that cite this request (as culprit or victim) and the spans they cite:
    one row per (finding, evidence span): finding_id, incident_id, kind, role ('culprit' /
    'victim'), span_id. Empty without findings."""
    if not store.has_table("findings"):
        return pl.DataFrame(
            schema=dict.fromkeys(["finding_id", "incident_id", "kind", "role", "span_id"], pl.String)
        )
    incident = (
        "(SELECT incident_id FROM finding_incidents i WHERE i.finding_id = f.finding_id LIMIT 1)"
        if store.has_table("finding_incidents")
        else "CAST(NULL AS VARCHAR)"
    )
    return store.frame(
        f"""
        SELECT f.finding_id, {incident} AS incident_id, f.kind,
               CASE WHEN f.culprit_rid = $rid THEN 'culprit' ELSE 'victim' END AS role,
               unnest(f.evidence_span_ids) AS span_id
        FROM findings f
        WHERE f.culprit_rid = $rid OR f.victim_rid = $rid
        ORDER BY f.finding_id
        """,
        {"rid": rid},
    )


@dataclass(frozen=True)
class RequestContext:
    """What the request view says first: the request's label, and the incidents it is part of."""

    anomaly: str | None
    reasons: list[str]
    victim_of: list[tuple[str, str]]  # (incident_id, kind)
    culprit_of: list[tuple[str, str]]


def context(store: Store, rid: str) -> RequestContext:
    anomaly, reasons = None, []
    if store.has_table("request_anomalies"):
        row = store.frame(
            "SELECT anomaly, reasons FROM request_anomalies WHERE rid = $rid LIMIT 1", {"rid": rid}
        )
        if not row.is_empty():
            anomaly = None if row.item(0, "anomaly") is None else str(row.item(0, "anomaly"))
            named: Any = row.item(0, "reasons")
            reasons = [str(r) for r in ([] if named is None else named)]
    victim_of: list[tuple[str, str]] = []
    culprit_of: list[tuple[str, str]] = []
    if store.has_table("incidents"):
        frame = store.frame(
            """
            SELECT incident_id, kind, culprit_rid = $rid AS culprit,
                   coalesce(list_contains(victim_rids, $rid), false) AS victim
            FROM incidents WHERE culprit_rid = $rid OR list_contains(victim_rids, $rid)
            ORDER BY window_start_ns, incident_id
            """,
            {"rid": rid},
        )
        # a self-race (a HiCache load racing the same request's reads) lists the request as both
        for r in frame.iter_rows(named=True):
            entry = (str(r["incident_id"]), str(r["kind"]))
            if bool(r["culprit"]):
                culprit_of.append(entry)
            if bool(r["victim"]):
                victim_of.append(entry)
    return RequestContext(anomaly, reasons, victim_of, culprit_of)


def host_order(store: Store) -> list[str]:
    """Every host in the store, sorted: the request view colours host i of this list with colour i,
    so a host keeps its colour from one request to the next."""
    require(store, "resources", INGEST_HINT)
    frame = store.frame("SELECT DISTINCT coalesce(host_name, '?') AS h FROM resources ORDER BY h")
    return [str(h) for h in frame["h"]]


def spec_steps(store: Store, rid: str) -> pl.DataFrame:
    """Accepted draft tokens per verify step, with the running accept length."""
    require(store, "spec_steps", INGEST_HINT)
    return store.frame(
        """
        SELECT s.step, s.accepted, s.step_end_ns,
               avg(s.accepted + 1) OVER (ORDER BY s.step ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                   AS running_accept_length
        FROM spec_steps s
        WHERE s.rid = $rid
        ORDER BY s.step
        """,
        {"rid": rid},
    )


def kv_events(store: Store, rid: str) -> pl.DataFrame:
    """The request's KV lifecycle spans (alloc, transfer, load, free, read), raw clocks."""
    require(store, "kv_events", INGEST_HINT)
    return store.frame(
        """
        SELECT op, instance_id, tp_rank, kv_pool, n_pages, page_lo, page_hi, start_ns, end_ns, clock_host,
               free_mode, free_reason, status_code, span_id
        FROM kv_events WHERE rid = $rid
        ORDER BY start_ns, op
        LIMIT $cap
        """,
        {"rid": rid, "cap": MAX_SPANS},
    )
