"""Findings: incidents first (one culprit action and its victims over every TP rank and KV pool);
an incident's findings one click down; the chosen finding's timeline on raw and skew-corrected clocks."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from kvtrace.app import charts, readable
from kvtrace.app.data import findings
from kvtrace.app.escape import md, md_code
from kvtrace.app.ui import cached, ns_to_text, section

st.title("Findings")


def _picked_row(table_key: str, options: list[str], pick_key: str) -> None:
    """A click on a row of table `table_key` (new since the last run) picks that row in `pick_key`:
    set before the selectbox is drawn, so the box follows the table and the table the box."""
    state: Any = st.session_state.get(table_key)
    rows = list(state["selection"]["rows"]) if state and "selection" in state else []
    seen = f"_{table_key}_seen"
    if rows != st.session_state.get(seen):
        st.session_state[seen] = rows
        if rows and rows[0] < len(options):
            st.session_state[pick_key] = options[rows[0]]


def _default(options: list[str], wanted: str | None) -> int:
    return options.index(wanted) if wanted in options else 0


with section():
    options = cached(findings.filter_options)
    c1, c2, c3, c4 = st.columns([2, 1, 2, 2])
    kinds = c1.multiselect("kind", options.get("kind", []), key="findings_kind")
    confidence = c2.multiselect("confidence", options.get("confidence", []), key="findings_confidence")
    instances = c3.multiselect("instance", options.get("instance", []), key="findings_instance")
    rid = c4.text_input("culprit or victim rid", key="findings_rid")
    filters = (tuple(kinds), tuple(confidence), tuple(instances), rid)
    incidents = cached(findings.list_incidents, *filters)
    table = cached(findings.list_findings, *filters)

    # deep links: ?finding= opens its incident, ?incident= the incident; an unknown id says so
    wanted_finding = st.query_params.get("finding")
    wanted_incident = st.query_params.get("incident")
    if wanted_finding and not cached(findings.finding_exists, wanted_finding):
        st.warning(f"no finding {md_code(wanted_finding)} in this store: showing the latest incident instead")
        wanted_finding = None
    elif wanted_finding:
        wanted_incident = cached(findings.incident_of, wanted_finding) or wanted_incident
    elif wanted_incident and cached(findings.incident, wanted_incident) is None:
        st.warning(f"no incident {md_code(wanted_incident)} in this store: showing the latest incident instead")
        wanted_incident = None

    st.caption(f"{len(incidents)} incident(s) from {len(table)} finding(s) across ranks, pools and victims: "
               "an incident is one racing action (a transfer into pages released early, a HiCache load, an "
               "aborted request) and every request it hurt. Click a row to open it.")
    incident_ids = [str(i) for i in incidents["incident_id"]]
    _picked_row("findings_incidents_table", incident_ids, "findings_incident_pick")
    st.dataframe(incidents.drop(columns=["shape", "bootstrap_room"]), hide_index=True, key="findings_incidents_table",
                 height=260, on_select="rerun", selection_mode="single-row")
    with st.expander(f"all {len(table)} findings (per rank, pool and victim)"):
        st.dataframe(table, hide_index=True, key="findings_table", height=300)

    if incident_ids:
        by_id = incidents.set_index("incident_id")
        picked_incident = st.selectbox(
            "incident", incident_ids, index=_default(incident_ids, wanted_incident), key="findings_incident_pick",
            format_func=lambda i: f"{i} · {by_id.at[i, 'kind']} on {by_id.at[i, 'instance']} · "
                                  f"{by_id.at[i, 'n_findings']} finding(s)",
        )
        st.query_params["incident"] = picked_incident
        inc = cached(findings.incident, picked_incident) or {}
        shape = f" ({md(inc['shape'])})" if inc.get("shape") else ""
        room = f", room {md_code(inc['bootstrap_room'])}" if inc.get("bootstrap_room") else ""
        where = readable.ranks_and_pools(inc["tp_ranks"], inc["kv_pools"])
        where = "request level (no ranks or pools seen)" if where == "-" else md(where)
        st.markdown(f"**Incident {md_code(picked_incident)}**: {md(inc['kind'])}{shape} on {md(inc['instance'])}. "
                    f"Culprit action: {md(inc['culprit_action'])} of {md_code(inc['culprit_rid'])}{room}; "
                    f"{where}; "
                    f"window from {md(readable.clock_time(inc['window_start_ns']))} UTC, "
                    f"{md(readable.window(inc['window_start_ns'], inc['window_end_ns']))}.")
        im = st.columns(4)
        im[0].metric("victims", int(inc["n_victims"]))
        im[1].metric("findings", int(inc["n_findings"]), help=f"{int(inc['n_certain'])} of them certain")
        im[2].metric("page slots", f"{int(inc['n_pages']):,}" if inc["n_pages"] else "-",
                     help="distinct (rank, pool, page) slots its findings cover")
        im[3].metric("incident confidence", md(inc["confidence"]), help="certain if any of its findings is")
        named: Any = inc.get("victim_rids")
        victims = [str(v) for v in ([] if named is None else named) if v]
        if victims:
            victim_links = st.columns(min(len(victims), 4))
            for n, victim in enumerate(victims[:4]):
                victim_links[n].page_link("pages/requests.py", label=f"victim {md(victim[:12])}", icon=":material/person:",
                                   query_params={"rid": victim})
            if len(victims) > 4:
                st.markdown(f"and {len(victims) - 4} more victims: {md(', '.join(victims[4:]))}")

        members = cached(findings.incident_findings, picked_incident)
        member_ids = [str(i) for i in members["finding"]]
        st.markdown(f"**Its {len(member_ids)} finding(s)**, one per rank, pool and victim (click a row to open it):")
        _picked_row("findings_members_table", member_ids, "findings_pick")
        st.dataframe(members, hide_index=True, key="findings_members_table", on_select="rerun",
                     selection_mode="single-row", height=min(40 + 35 * len(member_ids), 300))
    else:
        member_ids, members = [], None

    if member_ids:
        picked = st.selectbox(
            "finding", member_ids, index=_default(member_ids, wanted_finding), key="findings_pick",
            format_func=lambda i: f"{i} · {table.set_index('finding_id').at[i, 'kind']}"
            if i in set(table["finding_id"]) else str(i),
        )
        st.query_params["finding"] = picked
        tl = cached(findings.timeline, picked)
        f = tl.finding
        resource = ("(request level)" if pd.isna(f["tp_rank"]) and pd.isna(f["kv_pool"])
                    else f"rank {md(f['tp_rank'])} pool {md(f['kv_pool'])}")
        st.subheader(f"{md(f['kind'])} on {md(f['instance'])} {resource}")
        m = st.columns(4)
        m[0].metric("confidence", md(f["confidence"]))
        m[1].metric("pages", len(f["pages"]))
        m[2].metric("unsafe window", f"{tl.window_ms[1]:.3f} ms")
        victim_rid = None if pd.isna(f["victim_rid"]) else str(f["victim_rid"])
        m[3].metric("victim", md(victim_rid) if victim_rid else "-")
        st.caption(f"culprit {md_code(f['culprit_rid'])}, window starts {ns_to_text(f['window_start_ns'])} UTC "
                   f"(clock of {md(f['instance'])}); evidence spans: {md(', '.join(map(str, f['evidence_span_ids'])))}")
        if len(f["pages"]):
            st.caption(f"pages {md(readable.page_ranges([int(p) for p in f['pages']]))}")
        if f.get("refute_margin"):  # cross-host: how strong the clock evidence is, in words
            st.info(f"Clocks: {md(f['refute_margin'])}.", icon=":material/schedule:")
        if f["kind"] == "abort_during_transfer":
            st.caption("request level (stock SGLang spans): no page is known to be shared, so the victim is a "
                       "candidate, admitted on this instance while the culprit's write was still running")
        links = st.columns(3)
        if victim_rid:
            links[0].page_link("pages/requests.py", label="victim in Requests", icon=":material/search:",
                               query_params={"rid": victim_rid})
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
        # the shift applies to the corrected clock only: in raw mode every host keeps its own clock
        if tl.corrected_hosts and clock != "raw":
            st.caption("corrected: " + ", ".join(f"{md(h)} shifted by {-ms:+.3f} ms" for h, ms in tl.corrected_hosts.items()))
        with st.expander("events"):
            st.dataframe(tl.events, hide_index=True, key="findings_events")
