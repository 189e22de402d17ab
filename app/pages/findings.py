"""Findings: a filterable table; the chosen finding's timeline on raw and skew-corrected clocks."""

from __future__ import annotations

import streamlit as st

from kvtrace.app import charts
from kvtrace.app.data import findings
from kvtrace.app.escape import md, md_code
from kvtrace.app.ui import cached, ns_to_text, section

st.title("Findings")

with section():
    options = cached(findings.filter_options)
    c1, c2, c3, c4 = st.columns([2, 1, 2, 2])
    kinds = c1.multiselect("kind", options.get("kind", []), key="findings_kind")
    confidence = c2.multiselect("confidence", options.get("confidence", []), key="findings_confidence")
    instances = c3.multiselect("instance", options.get("instance", []), key="findings_instance")
    rid = c4.text_input("culprit or victim rid", key="findings_rid")
    table = cached(findings.list_findings, tuple(kinds), tuple(confidence), tuple(instances), rid)
    st.caption(f"{len(table)} finding(s)")
    st.dataframe(table, hide_index=True, key="findings_table", height=300)

    if not table.empty:
        ids = list(table["finding_id"])
        wanted = st.query_params.get("finding")
        picked = st.selectbox(
            "finding", ids, index=ids.index(wanted) if wanted in ids else 0, key="findings_pick",
            format_func=lambda i: f"{i} · {table.set_index('finding_id').at[i, 'kind']}",
        )
        st.query_params["finding"] = picked
        tl = cached(findings.timeline, picked)
        f = tl.finding
        st.subheader(f"{md(f['kind'])} on {md(f['instance'])} rank {md(f['tp_rank'])} pool {md(f['kv_pool'])}")
        m = st.columns(4)
        m[0].metric("confidence", md(f["confidence"]))
        m[1].metric("pages", len(f["pages"]))
        m[2].metric("unsafe window", f"{tl.window_ms[1]:.3f} ms")
        m[3].metric("victim", md(f["victim_rid"]) if f["victim_rid"] else "-")
        st.caption(f"culprit {md_code(f['culprit_rid'])}, window starts {ns_to_text(f['window_start_ns'])} UTC "
                   f"(clock of {md(f['instance'])}); evidence spans: {md(', '.join(map(str, f['evidence_span_ids'])))}")
        if f.get("refute_margin"):  # cross-host: how strong the clock evidence is, in words
            st.info(f"Clocks: {md(f['refute_margin'])}.", icon=":material/schedule:")
        if f["kind"] == "abort_during_transfer":
            st.caption("request level (stock SGLang spans): no page is known to be shared, so the victim is a "
                       "candidate, admitted on this instance while the culprit's write was still running")
        links = st.columns(3)
        if f["victim_rid"]:
            links[0].page_link("pages/requests.py", label="victim in Requests", icon=":material/search:",
                               query_params={"rid": str(f["victim_rid"])})
        links[1].page_link("pages/requests.py", label="culprit in Requests", icon=":material/search:",
                           query_params={"rid": str(f["culprit_rid"])})
        links[2].page_link("pages/replay.py", label="replay this finding", icon=":material/replay:",
                           query_params={"finding": str(picked)})
        clock = st.radio("clock", ["skew-corrected", "raw"], horizontal=True, key="findings_clock",
                         help="raw: each span on its emitting host's clock; skew-corrected: prefill-host "
                              "times moved onto the decode instance's clock by the estimated offset.")
        events = tl.events.copy()
        if clock == "raw":
            events["x0_ms"], events["x1_ms"] = events["x0_raw_ms"], events["x1_raw_ms"]
            window, label = tl.window_raw_ms, "raw clocks: each host its own"
        else:
            window, label = tl.window_ms, f"clock of {f['instance']}"  # an axis title: charts escape it
        if events.empty:
            st.info("no KV events of the culprit or the victim on these pages")
        else:
            st.plotly_chart(charts.finding_timeline(events, label, window), key="findings_timeline")
        if f["kind"] == "read_before_load" and not tl.layers.empty:
            st.markdown("**Per layer**: a read before its layer's copy finished is the hazard (flagged layers shaded).")
            st.plotly_chart(charts.layer_timeline(tl.layers, [int(x) for x in f["layers"]], tl.window_ms),
                            key="findings_layers")
        if tl.corrected_hosts:
            st.caption("corrected: " + ", ".join(f"{md(h)} shifted by {-ms:+.3f} ms" for h, ms in tl.corrected_hosts.items()))
        with st.expander("events"):
            st.dataframe(tl.events, hide_index=True, key="findings_events")
