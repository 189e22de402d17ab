"""Requests: search by rid; the request's span waterfall, speculative steps and output text."""

from __future__ import annotations

import streamlit as st

from kvtrace.app import charts
from kvtrace.app.data import analysis, requests
from kvtrace.app.escape import md_code
from kvtrace.app.ui import cached, section

st.title("Requests")

query = st.text_input("rid (or its first characters)", key="requests_rid_search",
                      value=st.query_params.get("rid", ""))
rid: str | None = None
with section():
    found = cached(requests.search, query, 50)
    if found.empty:
        st.info(f"no request rid starts with {md_code(query)}" if query else "no requests in the store")
    else:
        st.dataframe(found, hide_index=True, key="requests_found", height=240)
        options = list(found["rid"])
        rid = st.selectbox("request", options, index=0, key="requests_pick")

if rid:
    st.subheader(f"Request {md_code(rid)}")
    with section():
        st.dataframe(cached(requests.roots, rid), hide_index=True, key="requests_roots")
    tab_spans, tab_spec, tab_kv, tab_text = st.tabs(["Span waterfall", "Speculative steps", "KV events", "Output"])
    with tab_spans, section():
        spans = cached(requests.waterfall, rid)
        if spans.empty:
            st.info("no spans for this request")
        else:
            st.plotly_chart(charts.waterfall(spans), key="requests_waterfall")
            st.caption("Times are each host's own clock: prefill and decode hosts may differ by milliseconds.")
    with tab_spec, section():
        steps = cached(requests.spec_steps, rid)
        if steps.empty:
            st.info("this request has no speculative-decoding steps")
        else:
            thresholds = cached(analysis.detector_thresholds)
            st.plotly_chart(charts.spec_steps(steps, thresholds.min_accept_length), key="requests_spec_chart")
            st.caption(thresholds.describe())
    with tab_kv, section():
        st.dataframe(cached(requests.kv_events, rid), hide_index=True, key="requests_kv_events")
    with tab_text, section():
        text = cached(requests.completion_text, rid)
        if text is None:
            st.info("no output text recorded (gen_ai.completion is often redacted)")
        else:
            st.caption("gen_ai.completion")
            st.code(text, language=None, wrap_lines=True)
