"""Overview page: what is in the store, and how it was ingested."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from kvtrace.app.data.common import INGEST_HINT, require
from kvtrace.app.store import Store


@dataclass(frozen=True)
class IngestSummary:
    spans: int
    requests: int
    instances: int
    hosts: int
    kv_events: int
    aborts: int
    feedback_reports: int
    files: int
    quarantined: int
    first_ns: int | None
    last_ns: int | None

    @property
    def span_hours(self) -> float:
        if self.first_ns is None or self.last_ns is None:
            return 0.0
        return (self.last_ns - self.first_ns) / 3.6e12


def ingest_summary(store: Store) -> IngestSummary:
    """Counts of the raw and normalised tables (one round trip, each a cheap aggregate)."""
    require(store, "spans", INGEST_HINT)
    has = store.has_table
    files = "(SELECT count(*) FROM ingested_files)" if has("ingested_files") else "0"
    quarantined = "(SELECT count(*) FROM quarantine)" if has("quarantine") else "0"
    row = store.frame(
        f"""
        SELECT (SELECT count(*) FROM spans) AS spans,
               (SELECT count(DISTINCT rid) FROM requests) AS requests,
               (SELECT count(DISTINCT instance_id) FROM resources) AS instances,
               (SELECT count(DISTINCT host_name) FROM resources) AS hosts,
               (SELECT count(*) FROM kv_events) AS kv_events,
               (SELECT count(*) FROM aborts) AS aborts,
               (SELECT count(*) FROM feedback) AS feedback_reports,
               {files} AS files,
               {quarantined} AS quarantined,
               (SELECT min(start_ns) FROM spans) AS first_ns,
               (SELECT max(end_ns) FROM spans) AS last_ns
        """
    ).row(0, named=True)
    return IngestSummary(
        **{k: int(row[k]) for k in ("spans", "requests", "instances", "hosts", "kv_events", "aborts")},
        feedback_reports=int(row["feedback_reports"]),
        files=int(row["files"]),
        quarantined=int(row["quarantined"]),
        first_ns=None if row["first_ns"] is None else int(row["first_ns"]),
        last_ns=None if row["last_ns"] is None else int(row["last_ns"]),
    )


def versions(store: Store) -> pl.DataFrame:
    """One row per deployed service version: its instances, requests and time span."""
    require(store, "requests", INGEST_HINT)
    return store.frame(
        """
        SELECT coalesce(service_version, '(none)') AS service_version,
               count(DISTINCT instance_id) AS instances,
               count(DISTINCT rid) AS requests,
               count(*) FILTER (WHERE finish_reason = 'abort') AS aborted_roots,
               to_timestamp(min(start_ns) / 1e9) AS first_seen,
               to_timestamp(max(end_ns) / 1e9) AS last_seen
        FROM requests
        GROUP BY ALL
        ORDER BY first_seen
        """
    )


def instances(store: Store) -> pl.DataFrame:
    """Serving instances by role and host, with their span counts."""
    require(store, "spans", INGEST_HINT)
    return store.frame(
        """
        SELECT r.instance_id, r.role, r.host_name, r.service_version, count(s.span_id) AS spans
        FROM resources r LEFT JOIN spans s USING (resource_id)
        GROUP BY ALL
        ORDER BY r.role, r.instance_id
        """
    )
