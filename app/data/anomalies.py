"""Anomalies page: linkage to findings, relative risk, attribute attribution, unexplained leads."""

from __future__ import annotations

import pandas as pd

from kvtrace.app.data.common import require
from kvtrace.app.store import Store


def linkage(store: Store) -> pd.DataFrame:
    """Anomalous requests and the findings that explain them, with the symptom delay in ms."""
    require(store, "anomaly_linkage")
    return store.frame(
        """
        SELECT rid, anomaly, explained, finding_kinds, finding_ids, instance_id, service_version,
               delay_ns / 1e6 AS delay_ms, first_abnormal_tokens, reasons
        FROM anomaly_linkage ORDER BY explained DESC, delay_ns NULLS LAST, rid LIMIT 5000
        """
    )


def linkage_counts(store: Store) -> pd.DataFrame:
    require(store, "anomaly_linkage")
    return store.frame(
        """
        SELECT anomaly, CASE WHEN explained THEN 'explained by a finding' ELSE 'unexplained' END AS linkage,
               count(*) AS requests
        FROM anomaly_linkage GROUP BY ALL ORDER BY anomaly, linkage
        """
    )


def relative_risk(store: Store) -> pd.DataFrame:
    require(store, "relative_risk")
    return store.frame("SELECT * FROM relative_risk ORDER BY exposure = 'any' DESC, exposure")


def attribution(store: Store, top: int = 20) -> pd.DataFrame:
    """Attribute values whose share among anomalous requests differs most from normal ones."""
    require(store, "attribute_attribution")
    return store.frame(
        "SELECT * FROM attribute_attribution ORDER BY abs(difference) DESC, attribute, value LIMIT $top",
        {"top": top},
    )


def leads(store: Store) -> pd.DataFrame:
    require(store, "anomaly_leads")
    return store.frame("SELECT * FROM anomaly_leads ORDER BY evidence_strength DESC, rid LIMIT 1000")
