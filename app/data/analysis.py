"""Results of `kvtrace analyze` read for the Overview and Requests pages (rates, verdict, thresholds)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb
import polars as pl

from kvtrace.analytics.registry import default_registry
from kvtrace.analytics.summary import Summary, summarise
from kvtrace.app.data.common import require
from kvtrace.app.store import Store

NICE_BUCKETS_S = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 6 * 3600, 86400, 7 * 86400)


# The materialised results that analytics.summary.summarise reads (it reads temp.main.<name>).
_SUMMARY_INPUTS = ("findings", "anomaly_linkage", "request_anomalies", "anomaly_rate_by_version", "coverage",
                   "incidents", "finding_incidents")


@dataclass(frozen=True)
class Verdict:
    """The report's verdict sentence (analytics.summary) and the per-version rates behind it."""

    headline: str
    rates: pl.DataFrame
    findings_by_kind: dict[str, int]
    coverage: pl.DataFrame   # evidence, what it is, records, present, how to get it


def verdict(store: Store) -> Verdict:
    """The verdict of `analytics.summary.summarise`, computed from the stored analysis results."""
    for table in _SUMMARY_INPUTS:
        require(store, table)
    summary = store.call(_summarise_stored)
    rates = pl.DataFrame(
        [(r.version, r.requests, r.anomalies, round(r.per_10k, 2)) for r in summary.rates],
        schema={"service_version": pl.String, "requests": pl.Int64, "anomalies": pl.Int64, "per_10k": pl.Float64},
        orient="row",
    )
    coverage = pl.DataFrame(
        [(e.key, e.label, e.n, bool(e.present and not e.n_missing), e.how_to_get)
         for e in summary.coverage.evidence.values()],
        schema={"evidence": pl.String, "what": pl.String, "records": pl.Int64, "present": pl.Boolean,
                "how to get it": pl.String},
        orient="row",
    )
    return Verdict(headline=summary.verdict, rates=rates, findings_by_kind=dict(summary.findings_by_kind),
                   coverage=coverage)


def _summarise_stored(cur: duckdb.DuckDBPyConnection) -> Summary:
    # `main.x` would resolve to the temporary view itself: name the store's catalog explicitly.
    row = cur.execute("SELECT current_database()").fetchone()
    catalog = str(row[0]).replace('"', '""') if row else "main"
    for table in _SUMMARY_INPUTS:
        cur.execute(f'CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM "{catalog}".main.{table}')
    return summarise(cur)


def bucket_seconds(span_s: float, target_buckets: int = 30) -> int:
    """A round bucket width giving about `target_buckets` buckets over `span_s` seconds."""
    want = max(span_s / target_buckets, 1.0)
    return next((b for b in NICE_BUCKETS_S if b >= want), NICE_BUCKETS_S[-1])


def anomaly_rate(store: Store, target_buckets: int = 30) -> pl.DataFrame:
    """Anomaly rate per 10,000 finished requests per time bucket and version (from `request_anomalies`).

    The bucket width is a round number of seconds chosen from the data's time span (column bucket_s).
    """
    require(store, "request_anomalies")
    span_ns = store.scalar("SELECT max(start_ns) - min(start_ns) FROM request_anomalies")
    seconds = bucket_seconds(0.0 if span_ns is None else float(span_ns) / 1e9, target_buckets)
    return store.frame(
        """
        SELECT to_timestamp((start_ns // ($s::BIGINT * 1000000000)) * $s::BIGINT) AS bucket,
               coalesce(service_version, '(none)') AS service_version,
               count(*) AS requests,
               count(*) FILTER (WHERE anomaly IN ('garbled', 'repetition')) AS anomalies,
               1e4 * count(*) FILTER (WHERE anomaly IN ('garbled', 'repetition')) / count(*) AS per_10k,
               $s::BIGINT AS bucket_s
        FROM request_anomalies
        WHERE start_ns IS NOT NULL
        GROUP BY ALL
        ORDER BY bucket, service_version
        """,
        {"s": seconds},
    )


@dataclass(frozen=True)
class Thresholds:
    """The speculative-acceptance detector's parameters, as the last `analyze` run used them."""

    min_accept_length: float | None
    max_accept_rate: float | None
    min_tokens: int | None
    window_steps: int | None
    source: str

    def describe(self) -> str:
        return (f"Detector ({self.source}): over a window of {self.window_steps} steps, garbled when the accept "
                f"length < {self.min_accept_length} once past {self.min_tokens} output tokens; repetition "
                f"when the accept rate > {self.max_accept_rate}.")


def detector_thresholds(store: Store) -> Thresholds:
    """Defaults from the analysis's own header, overridden by the params of the last analyze run."""
    params = {p.name: p.default for p in default_registry().get("spec_step_detector").params}
    source = "defaults of spec_step_detector.sql"
    if store.has_table("analysis_runs"):
        last = store.scalar("SELECT params FROM analysis_runs ORDER BY run_at DESC LIMIT 1")
        if last is not None:
            overrides = json.loads(last) if isinstance(last, str) else dict(last)
            params.update({k: v for k, v in overrides.items() if k in params})
            source = "as the last `kvtrace analyze` ran it"

    def num(key: str) -> float | None:
        value = params.get(key)
        return None if value is None else float(value)

    min_tokens, window = num("min_tokens"), num("window_steps")
    return Thresholds(
        min_accept_length=num("low_accept_length"),
        max_accept_rate=num("high_accept_rate"),
        min_tokens=None if min_tokens is None else int(min_tokens),
        window_steps=None if window is None else int(window),
        source=source,
    )
