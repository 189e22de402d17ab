"""Requests page: find a request by rid, its spans across hosts, its speculative steps and output."""

from __future__ import annotations

import pandas as pd

from kvtrace.app.data.common import INGEST_HINT, require
from kvtrace.app.store import Store

MAX_SPANS = 2_000


def search(store: Store, text: str, limit: int = 50) -> pd.DataFrame:
    """Requests whose rid starts with `text` (case-insensitive), or the latest ones when empty."""
    require(store, "requests", INGEST_HINT)
    # Top-N roots first (no grouping over the whole table), then aggregate only those requests.
    return store.frame(
        """
        WITH latest AS (
            SELECT rid, start_ns FROM requests
            WHERE $text = '' OR starts_with(lower(rid), lower($text))
            ORDER BY start_ns DESC LIMIT $limit * 4
        ),
        picked AS (SELECT rid FROM latest GROUP BY rid ORDER BY max(start_ns) DESC LIMIT $limit)
        SELECT rid,
               string_agg(DISTINCT role, '+' ORDER BY role) AS roles,
               any_value(service_version) AS service_version,
               to_timestamp(min(start_ns) / 1e9) AS started,
               max(prompt_tokens) AS prompt_tokens,
               max(completion_tokens) AS completion_tokens,
               max(spec_accept_length) AS spec_accept_length,
               max(spec_accept_rate) AS spec_accept_rate,
               max(finish_reason) AS finish_reason
        FROM requests
        WHERE rid IN (SELECT rid FROM picked)
        GROUP BY rid
        ORDER BY started DESC, rid
        LIMIT $limit
        """,
        {"text": text.strip(), "limit": limit},
    )


def roots(store: Store, rid: str) -> pd.DataFrame:
    """The request's root spans, one per role (prefill / decode / unified)."""
    require(store, "requests", INGEST_HINT)
    return store.frame(
        "SELECT * EXCLUDE (completion_text) FROM requests WHERE rid = $rid ORDER BY start_ns", {"rid": rid}
    )


def completion_text(store: Store, rid: str) -> str | None:
    require(store, "requests", INGEST_HINT)
    value = store.scalar(
        "SELECT max(completion_text) FROM requests WHERE rid = $rid AND completion_text IS NOT NULL", {"rid": rid}
    )
    return None if value is None or pd.isna(value) else str(value)


def waterfall(store: Store, rid: str) -> pd.DataFrame:
    """Spans of the request's traces plus any span tagged with its rid, on each host's raw clock.

    Columns: span_id, name, instance_id, host_name, role, start_ns, end_ns, start_ms, duration_ms
    (start_ms is relative to the request's earliest span, on that span's host clock).
    """
    require(store, "spans", INGEST_HINT)
    return store.frame(
        """
        WITH own_traces AS (SELECT DISTINCT trace_id FROM requests WHERE rid = $rid),
        -- two single-column scans (UNION dedups) are several times faster than one OR-ed scan
        picked AS (
            SELECT span_id, name, instance_id, host_name, start_ns, end_ns, status_code, resource_id
            FROM spans WHERE rid = $rid
            UNION
            SELECT span_id, name, instance_id, host_name, start_ns, end_ns, status_code, resource_id
            FROM spans WHERE trace_id IN (SELECT trace_id FROM own_traces)
        )
        SELECT p.span_id, p.name, p.instance_id, p.host_name, r.role, p.start_ns, p.end_ns, p.status_code,
               (p.start_ns - min(p.start_ns) OVER ()) / 1e6 AS start_ms,
               greatest(p.end_ns - p.start_ns, 0) / 1e6 AS duration_ms
        FROM picked p LEFT JOIN resources r USING (resource_id)
        ORDER BY p.start_ns, p.name
        LIMIT $cap
        """,
        {"rid": rid, "cap": MAX_SPANS},
    )


def spec_steps(store: Store, rid: str) -> pd.DataFrame:
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


def kv_events(store: Store, rid: str) -> pd.DataFrame:
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
