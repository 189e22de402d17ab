"""Compare page: two versions side by side by context-length bucket (`version_comparison`)."""

from __future__ import annotations

import polars as pl

from kvtrace.app.data.common import require
from kvtrace.app.store import Store

BUCKET_ORDER = ["<16K", "16-32K", "32-64K", "64-128K", ">=128K"]
METRICS = ["output_tokens_per_s", "ttft_p50_s", "ttft_p90_s", "cache_hit_rate", "anomalies_per_10k"]


def versions(store: Store) -> list[str]:
    """Compared versions in order of their first request (so A = older, B = newer by default)."""
    require(store, "version_comparison")
    frame = store.frame(
        """
        SELECT v.service_version
        FROM (SELECT DISTINCT service_version FROM version_comparison) v
        LEFT JOIN (SELECT service_version, min(start_ns) AS first_ns FROM requests GROUP BY ALL) r
               USING (service_version)
        ORDER BY r.first_ns NULLS LAST, v.service_version
        """
    )
    return [str(v) for v in frame["service_version"]]


def side_by_side(store: Store, a: str, b: str) -> pl.DataFrame:
    """One row per context bucket: each metric for A and B, and B's throughput relative to A."""
    require(store, "version_comparison")
    frame = store.frame(
        """
        SELECT coalesce(a.context_bucket, b.context_bucket) AS context_bucket,
               a.requests AS requests_a, b.requests AS requests_b,
               a.output_tokens_per_s AS output_tokens_per_s_a, b.output_tokens_per_s AS output_tokens_per_s_b,
               b.output_tokens_per_s / nullif(a.output_tokens_per_s, 0) - 1 AS throughput_gain,
               a.ttft_p50_s AS ttft_p50_s_a, b.ttft_p50_s AS ttft_p50_s_b,
               a.ttft_p90_s AS ttft_p90_s_a, b.ttft_p90_s AS ttft_p90_s_b,
               a.cache_hit_rate AS cache_hit_rate_a, b.cache_hit_rate AS cache_hit_rate_b,
               a.anomalies_per_10k AS anomalies_per_10k_a, b.anomalies_per_10k AS anomalies_per_10k_b
        FROM (SELECT * FROM version_comparison WHERE service_version = $a) a
        FULL OUTER JOIN (SELECT * FROM version_comparison WHERE service_version = $b) b USING (context_bucket)
        """,
        {"a": a, "b": b},
    )
    order = {k: i for i, k in enumerate(BUCKET_ORDER)}
    rank = pl.col("context_bucket").replace_strict(order, default=99, return_dtype=pl.Int64)
    return frame.sort(rank, maintain_order=True)


def long_form(store: Store, a: str, b: str) -> pl.DataFrame:
    """Rows (service_version, context_bucket, metric, value) for the two versions, for charts: A's first."""
    require(store, "version_comparison")
    frame = store.frame(
        """
        UNPIVOT (SELECT service_version, context_bucket, output_tokens_per_s, ttft_p50_s, ttft_p90_s,
                        cache_hit_rate, anomalies_per_10k
                 FROM version_comparison WHERE service_version IN ($a, $b))
        ON output_tokens_per_s, ttft_p50_s, ttft_p90_s, cache_hit_rate, anomalies_per_10k
        INTO NAME metric VALUE value
        ORDER BY service_version = $b, context_bucket, metric
        """,
        {"a": a, "b": b},
    )
    return frame
