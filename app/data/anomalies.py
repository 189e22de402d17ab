"""Anomalies page: linkage to findings, relative risk, attribute attribution, unexplained leads."""

from __future__ import annotations

import polars as pl

from kvtrace.app.data.common import require
from kvtrace.app.store import Store


def linkage(store: Store) -> pl.DataFrame:
    """Anomalous requests and the findings that explain them, with the symptom delay in ms."""
    require(store, "anomaly_linkage")
    return store.frame(
        """
        SELECT rid, anomaly, explained, finding_kinds, finding_ids, instance_id, service_version,
               delay_ns / 1e6 AS delay_ms, first_abnormal_tokens, reasons
        FROM anomaly_linkage ORDER BY explained DESC, delay_ns NULLS LAST, rid LIMIT 5000
        """
    )


def linkage_counts(store: Store) -> pl.DataFrame:
    require(store, "anomaly_linkage")
    return store.frame(
        """
        SELECT anomaly, CASE WHEN explained THEN 'explained by a finding' ELSE 'unexplained' END AS linkage,
               count(*) AS requests
        FROM anomaly_linkage GROUP BY ALL ORDER BY anomaly, linkage
        """
    )


def relative_risk(store: Store) -> pl.DataFrame:
    require(store, "relative_risk")
    return store.frame("SELECT * FROM relative_risk ORDER BY exposure = 'any' DESC, exposure")


def attribution(store: Store, top: int = 20) -> pl.DataFrame:
    """Attribute values whose share among anomalous requests differs most from normal ones."""
    require(store, "attribute_attribution")
    return store.frame(
        "SELECT * FROM attribute_attribution ORDER BY abs(difference) DESC, attribute, value LIMIT $top",
        {"top": top},
    )


def leads(store: Store) -> pl.DataFrame:
    require(store, "anomaly_leads")
    return store.frame("SELECT * FROM anomaly_leads ORDER BY evidence_strength DESC, rid LIMIT 1000")


# -- BubbleUp: an outlier region of one measure against the rest -----------------------------------

# measure -> (table, column, label, the tail that is the usual outlier: 'high' or 'low')
MEASURES: dict[str, tuple[str, str, str, str]] = {
    "e2e_s": ("request_anomalies", "e2e_s", "end-to-end latency (s)", "high"),
    "ttft_s": ("request_anomalies", "ttft_s", "time to first token (s)", "high"),
    "spec_accept_length": ("request_anomalies", "spec_accept_length", "speculative accept length", "low"),
    "spec_accept_rate": ("request_anomalies", "spec_accept_rate", "speculative accept rate", "low"),
    "prompt_tokens": ("request_anomalies", "prompt_tokens", "prompt tokens", "high"),
    "completion_tokens": ("request_anomalies", "completion_tokens", "completion tokens", "high"),
    "transfer_ms": ("request_attributes", "transfer_ms", "KV transfer duration (ms)", "high"),
    "concurrency": ("request_attributes", "concurrency", "requests in flight on the decode instance", "high"),
    "n_pages": ("request_attributes", "n_pages", "KV pages (one rank and pool)", "high"),
}

# request_attributes columns compared value by value (attribute name -> SQL over the table `b`),
# then every key of its `attributes` map
_ATTRIBUTES = {
    "anomaly": "coalesce(b.anomaly, 'unknown')",
    "context_bucket": "b.context_bucket",
    "concurrency_bucket": "b.concurrency_bucket",
    "instance": "coalesce(b.instance_id, 'unknown')",
    "prefill_instance": "b.prefill_instance",
    "version": "coalesce(b.service_version, 'unknown')",
    "transfer_backend": "b.transfer_backend",
    "hicache_load": "CASE WHEN b.had_hicache_load THEN 'yes' ELSE 'no' END",
    "transfer_duration": "b.transfer_bucket",
    "pages": "b.pages_bucket",
}
_DUPLICATE_KEYS = [
    "resource.service.instance.id",
    "resource.service.version",
    "prefill.resource.service.instance.id",
]


def _measure(name: str) -> tuple[str, str]:
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}: one of {', '.join(MEASURES)}")
    table, column, _label, _tail = MEASURES[name]
    return table, column


def measure_stats(store: Store, measure: str) -> dict[str, float | None]:
    """min, max, p5, p95 and the count of a measure over the labelled requests."""
    require(store, "request_attributes")
    table, column = _measure(measure)
    require(store, table)
    row = store.frame(
        f"""
        SELECT min(x) AS lo, max(x) AS hi, quantile_cont(x, 0.05) AS p5, quantile_cont(x, 0.95) AS p95,
               count(*) AS n
        FROM (SELECT CAST(m.{column} AS DOUBLE) AS x FROM {table} m SEMI JOIN request_attributes b USING (rid)
              WHERE m.{column} IS NOT NULL)
        """
    ).row(0, named=True)
    return {k: (None if row[k] is None else float(row[k])) for k in ("lo", "hi", "p5", "p95", "n")}


def measure_histogram(store: Store, measure: str, bins: int = 60) -> pl.DataFrame:
    """The measure's distribution in `bins` equal bins: x0, x1, anomalous, other (request counts)."""
    require(store, "request_attributes")
    table, column = _measure(measure)
    require(store, table)
    return store.frame(
        f"""
        WITH v AS (
            SELECT CAST(m.{column} AS DOUBLE) AS x, b.anomaly IN ('garbled', 'repetition') AS bad
            FROM {table} m JOIN request_attributes b USING (rid) WHERE m.{column} IS NOT NULL
        ),
        r AS (SELECT min(x) AS lo, greatest(max(x) - min(x), 1e-9) / $bins AS w FROM v),
        b AS (SELECT least(CAST(floor((x - lo) / w) AS INTEGER), $bins - 1) AS bin, bad FROM v, r)
        SELECT bin, any_value(r.lo) + bin * any_value(r.w) AS x0, any_value(r.lo) + (bin + 1) * any_value(r.w) AS x1,
               count(*) FILTER (WHERE bad) AS anomalous, count(*) FILTER (WHERE NOT bad) AS other
        FROM b, r GROUP BY bin ORDER BY bin
        """,
        {"bins": bins},
    )


def bubbleup(store: Store, measure: str, lo: float, hi: float, top: int = 25) -> pl.DataFrame:
    """Requests whose `measure` is in [lo, hi] (the selection) against all other requests with a
    value (the baseline): per attribute value, its share in each and the difference, the values
    that set the selection apart first. Columns: attribute, value, selected, baseline,
    share_selected, share_baseline, difference."""
    require(store, "request_attributes")
    table, column = _measure(measure)
    require(store, table)
    columns = ",\n".join(f'({sql}) AS "{name}"' for name, sql in _ATTRIBUTES.items())
    names = ", ".join(f'"{n}"' for n in _ATTRIBUTES)
    return store.frame(
        f"""
        WITH base AS (
            SELECT b.*, CAST(m.{column} AS DOUBLE) BETWEEN $lo AND $hi AS sel
            FROM request_attributes b JOIN {table} m USING (rid) WHERE m.{column} IS NOT NULL
        ),
        long_form AS (
            UNPIVOT (SELECT rid, sel, {columns} FROM base b) ON {names} INTO NAME attribute VALUE value
            UNION ALL
            SELECT rid, sel, attribute, value
            FROM (SELECT rid, sel, unnest(map_keys(attributes)) AS attribute,
                         unnest(map_values(attributes)) AS value FROM base)
            WHERE NOT list_contains($dup, attribute)
        ),
        totals AS (SELECT count(*) FILTER (WHERE sel) AS n_sel, count(*) FILTER (WHERE NOT sel) AS n_base FROM base),
        counts AS (
            SELECT attribute, value, count(*) FILTER (WHERE sel) AS selected, count(*) FILTER (WHERE NOT sel) AS baseline
            FROM long_form GROUP BY ALL
        )
        SELECT c.attribute, c.value, c.selected, c.baseline,
               coalesce(c.selected / nullif(t.n_sel, 0), 0) AS share_selected,
               coalesce(c.baseline / nullif(t.n_base, 0), 0) AS share_baseline,
               coalesce(c.selected / nullif(t.n_sel, 0), 0) - coalesce(c.baseline / nullif(t.n_base, 0), 0) AS difference,
               t.n_sel AS n_selected, t.n_base AS n_baseline
        FROM counts c CROSS JOIN totals t
        ORDER BY abs(difference) DESC, attribute, value
        LIMIT $top
        """,
        {"lo": float(lo), "hi": float(hi), "top": top, "dup": _DUPLICATE_KEYS},
    )
