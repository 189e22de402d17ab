"""Anomalies: linkage to findings, relative risk, attribute attribution and the unexplained leads."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from kvtrace.app.charts import plain_labels
from kvtrace.app.data import anomalies
from kvtrace.app.ui import cached, section

st.title("Anomalies")

st.subheader("Linkage: which anomalous outputs a finding explains")
with section():
    counts = cached(anomalies.linkage_counts)
    if counts.empty:
        st.success("no anomalous requests")
    else:
        fig = px.bar(plain_labels(counts), x="anomaly", y="requests", color="linkage", barmode="stack", height=300)
        st.plotly_chart(fig, key="anomalies_linkage_chart")
        st.dataframe(cached(anomalies.linkage), hide_index=True, key="anomalies_linkage", height=260)

st.subheader("Relative risk for findings' victims")
with section():
    rr = cached(anomalies.relative_risk)
    st.dataframe(rr, hide_index=True, key="anomalies_relative_risk")
    shown = rr.dropna(subset=["relative_risk"])
    if not shown.empty:
        fig = px.bar(plain_labels(shown), x="exposure", y="relative_risk", height=280, text_auto=".1f")
        fig.add_hline(y=1.0, line_dash="dot")
        st.plotly_chart(fig, key="anomalies_rr_chart")

st.subheader("Attribution: attribute values that set anomalies apart")
with section():
    attr = cached(anomalies.attribution, 20)
    if attr.empty:
        st.info("nothing to attribute")
    else:
        frame = plain_labels(attr.assign(label=attr["attribute"] + " = " + attr["value"].astype(str)))
        fig = px.bar(frame, x="difference", y="label", orientation="h", color="attribute",
                     hover_data=["share_anomalous", "share_normal", "anomalous", "normal"], height=420)
        fig.update_yaxes(autorange="reversed", title=None)
        st.plotly_chart(fig, key="anomalies_attribution_chart")

st.subheader("Unexplained anomalies: the leads")
with section():
    leads = cached(anomalies.leads)
    st.caption(f"{len(leads)} anomalous request(s) no finding explains")
    st.dataframe(leads, hide_index=True, key="anomalies_leads")
