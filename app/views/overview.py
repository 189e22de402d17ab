"""Overview: the ingest summary, the anomaly rate over time by version, and the report's verdict."""

from __future__ import annotations

import streamlit as st

from kvtrace.app import charts
from kvtrace.app.data import analysis, overview
from kvtrace.app.escape import md
from kvtrace.app.ui import cached, ns_to_text, section

st.title("Overview")

with section():
    summary = cached(overview.ingest_summary)
    cols = st.columns(6)
    cols[0].metric("spans", f"{summary.spans:,}")
    cols[1].metric("requests", f"{summary.requests:,}")
    cols[2].metric("instances", f"{summary.instances:,}", help=f"on {summary.hosts} hosts")
    cols[3].metric("aborts", f"{summary.aborts:,}")
    cols[4].metric("feedback reports", f"{summary.feedback_reports:,}")
    cols[5].metric("quarantined records", f"{summary.quarantined:,}", help=f"from {summary.files} ingested files")
    st.caption(f"spans from {ns_to_text(summary.first_ns)} to {ns_to_text(summary.last_ns)} UTC "
               f"({summary.span_hours:.2f} h)")

st.subheader("Verdict")
with section():
    verdict = cached(analysis.verdict)
    st.markdown(f"**{md(verdict.headline)}**")  # the sentence quotes instance ids and versions
    kinds = verdict.findings_by_kind
    if kinds:
        for col, (kind, count) in zip(st.columns(len(kinds)), sorted(kinds.items()), strict=True):
            col.metric(kind, count)
    st.dataframe(verdict.rates, hide_index=True, key="overview_verdict_rates")
    # coverage before conclusions: what the store holds, and how to get what it lacks
    with st.expander("Coverage: what the store could show", expanded=not bool(verdict.coverage["present"].all())):
        st.dataframe(verdict.coverage, hide_index=True, key="overview_coverage")

st.subheader("Anomaly rate per 10,000 requests, by version")
with section():
    rates = cached(analysis.anomaly_rate, 30)
    if rates.is_empty():
        st.info("no labelled requests yet")
    else:
        st.plotly_chart(charts.rate_over_time(rates), key="overview_rate_chart")
        st.caption(f"buckets of {rates['bucket_s'][0]} s, by request start; small buckets are noisy")

st.subheader("Versions")
with section():
    st.dataframe(cached(overview.versions), hide_index=True, key="overview_versions")
