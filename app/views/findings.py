"""Findings: incidents first (one culprit action and its victims over every TP rank and KV pool);
an incident's findings one click down; the chosen finding's view: its critical sequence in words
and at a zoom that shows it, the whole window as context, both clocks and the clock bounds, one
row per event with links to the requests."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import polars as pl
import streamlit as st

from kvtrace.app import charts, finding_chart, readable
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


def _signed(ms: float) -> str:
    """A time from the window start: '+3.49 s', '−30.0 ms', '0'."""
    if ms == 0:
        return "0"
    return ("+" if ms > 0 else "−") + readable.duration(abs(ms) * 1e6)


def _request_url(rid: object, span_id: object) -> str:
    """The Requests page on a span's request (`?rid=` opens it; `span` names the span in it)."""
    return f"requests?{urlencode({'rid': str(rid), 'span': str(span_id)})}"


_SPAN_ROLE = {("culprit", "transfer"): "the write", ("culprit", "load"): "the load", ("culprit", "free"): "the free",
              ("culprit", "abort"): "the abort", ("victim", "alloc"): "the victim's alloc",
              ("victim", "read"): "the victim's read"}


def _evidence_links(f: dict[str, Any], events: pl.DataFrame) -> str:
    """The evidence span ids as links to their request (the rid only in the URL, encoded), with
    what each span is."""
    known = {str(r["span_id"]): r for r in events.iter_rows(named=True)}
    parts = []
    for sid in [str(s) for s in (f["evidence_span_ids"] if f["evidence_span_ids"] is not None else [])]:
        row = known.get(sid)
        if row is None:
            parts.append(md_code(sid))
        else:
            role = _SPAN_ROLE.get((str(row["who"]), str(row["op"])), f"{row['who']} {row['op']}")
            parts.append(f"[{md(sid)}]({_request_url(row['rid'], sid)}) ({md(role)})")
    return ", ".join(parts) or "-"


def _sequence(moments: pl.DataFrame) -> str:
    return " → ".join(f"{md(m['label'])} **{_signed(float(m['t_ms']))}**" for m in moments.iter_rows(named=True))


def _finding_view(picked: str) -> None:
    """One finding: the critical sequence in words and at a zoom that shows it, the whole window as
    context, both clocks with the clock bounds, the refute margin, one row per event."""
    tl = cached(findings.timeline, picked)
    f = tl.finding
    resource = ("(request level)" if f["tp_rank"] is None and f["kv_pool"] is None
                else f"rank {md(f['tp_rank'])} pool {md(f['kv_pool'])}")
    st.subheader(f"{md(f['kind'])} on {md(f['instance'])} {resource}")
    m = st.columns(4)
    m[0].metric("confidence", md(f["confidence"]))
    m[1].metric("pages", len(f["pages"]))
    m[2].metric("unsafe window", readable.duration(tl.window_ms[1] * 1e6), help=f"{tl.window_ms[1]:,.3f} ms")
    victim_rid = None if f["victim_rid"] is None else str(f["victim_rid"])
    m[3].metric("victim", md(victim_rid) if victim_rid else "-")
    st.caption(f"culprit {md_code(f['culprit_rid'])}, window starts {ns_to_text(f['window_start_ns'])} UTC "
               f"(clock of {md(f['instance'])})")
    st.caption(f"Evidence spans (each opens its request): {_evidence_links(f, tl.events)}")
    if len(f["pages"]):
        st.caption(f"pages {md(readable.page_ranges([int(p) for p in f['pages']]))}")
    if f.get("refute_margin"):  # cross-host: how strong the clock evidence is, in words
        st.info(f"Clocks: {md(f['refute_margin'])}.", icon=":material/schedule:")
    if f["kind"] == "abort_during_transfer":
        st.caption("request level (stock SGLang spans): no page is known to be shared, so the victim is a "
                   "candidate, admitted on this instance while the culprit's write was still running")
    links = st.columns(3)
    if victim_rid:
        links[0].page_link("views/requests.py", label="victim in Requests", icon=":material/search:",
                           query_params={"rid": victim_rid})
    links[1].page_link("views/requests.py", label="culprit in Requests", icon=":material/search:",
                       query_params={"rid": str(f["culprit_rid"])})
    links[2].page_link("views/replay.py", label="replay this finding", icon=":material/replay:",
                       query_params={"finding": str(picked)})
    clock = st.radio("clock", ["skew-corrected", "raw"], horizontal=True, key="findings_clock",
                     help="raw: each span on its emitting host's clock; skew-corrected: prefill-host "
                          "times moved onto the decode instance's clock by the estimated offset.")
    events, moments = tl.events, tl.moments
    hosts = ", ".join(tl.corrected_hosts) or "the other host"
    bounds: tuple[float | None, float | None] = (None, None)  # the landing's bounds are on the instance's clock
    if clock == "raw":
        events = events.with_columns(x0_ms=pl.col("x0_raw_ms"), x1_ms=pl.col("x1_raw_ms"))
        moments = moments.with_columns(t_ms=pl.col("t_raw_ms"), t_other_ms=pl.col("t_ms"))  # both from the old
        window, label, other = tl.window_raw_ms, "raw clocks: each host its own", f"clock of {f['instance']}"
        focus, context = tl.focus_raw_ms, tl.context_raw_ms
    else:
        moments = moments.with_columns(t_other_ms=pl.col("t_raw_ms"))
        window, label, other = tl.window_ms, f"clock of {f['instance']}", f"raw clock of {hosts}"
        focus, context, bounds = tl.focus_ms, tl.context_ms, tl.landing_bounds_ms
    moments = moments.sort("t_ms", maintain_order=True)
    if not moments.is_empty():
        st.markdown(f"**Critical sequence** ({md(label)}, from the window start): {_sequence(moments)}")
    if events.is_empty():
        st.info("no KV events of the culprit or the victim on these pages")
    else:
        st.plotly_chart(finding_chart.finding_figure(events, moments, clock=label, window=window, focus=focus,
                                                     context=context, landing_bounds=bounds, other_clock=other),
                        key="findings_timeline")
        shown = f"{_signed(focus[0])} .. {_signed(focus[1])}"
        st.caption(f"Shown first: {readable.duration((focus[1] - focus[0]) * 1e6)} around the critical moments "
                   f"({md(shown)}); the strip under the chart holds the whole window "
                   f"({readable.duration((context[1] - context[0]) * 1e6)}): drag or resize its handles."
                   + (" Open ticks: the same moments on the other clock; hatched band: where the write may have "
                      "landed for every clock offset the evidence allows." if clock != "raw" and bounds != (None, None)
                      else ""))
    if tl.truncated:
        st.warning(f"the culprit's and the victim's KV events were cut at {findings.MAX_WINDOW_ROWS:,} rows")
    if f["kind"] == "read_before_load" and not tl.layers.is_empty():
        st.markdown("**Per layer**: a read before its layer's copy finished is the hazard (flagged layers shaded).")
        st.plotly_chart(charts.layer_timeline(tl.layers, [int(x) for x in f["layers"]], tl.window_ms),
                        key="findings_layers")
    # the shift applies to the corrected clock only: in raw mode every host keeps its own clock
    if tl.corrected_hosts and clock != "raw":
        st.caption("corrected: " + ", ".join(f"{md(h)} shifted by {-ms:+.3f} ms" for h, ms in tl.corrected_hosts.items()))
    with st.expander(f"events ({len(tl.events)}, one row per event)"):
        table = tl.events.drop("lane", "lane_order", "instant", "page_lo", "page_hi")
        table = table.with_columns(span_id=pl.Series(
            [_request_url(r, s) for r, s in zip(table["rid"], table["span_id"], strict=True)], dtype=pl.String))
        st.dataframe(table, hide_index=True, key="findings_events", column_config={
            "label": st.column_config.TextColumn("event"),
            "span_id": st.column_config.LinkColumn("span (opens its request)", display_text=r"span=([^&]+)$"),
            "pages": st.column_config.TextColumn("pages (ranges)"),
            "finding_pages": st.column_config.NumberColumn("of the finding's pages"),
            "x0_ms": st.column_config.NumberColumn("start ms (instance clock)", format="%.3f"),
            "x1_ms": st.column_config.NumberColumn("end ms (instance clock)", format="%.3f"),
            "x0_raw_ms": st.column_config.NumberColumn("start ms (raw)", format="%.3f"),
            "x1_raw_ms": st.column_config.NumberColumn("end ms (raw)", format="%.3f"),
        })


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

    n_incidents, n_findings = cached(findings.count_matching, *filters)
    shown = (f"{n_incidents:,} incident(s) from {n_findings:,} finding(s)" if len(incidents) >= n_incidents
             else f"the newest {len(incidents):,} of {n_incidents:,} incidents ({n_findings:,} findings; "
                  "narrow the filters to see the rest)")
    st.caption(f"{shown} across ranks, pools and victims: "
               "an incident is one racing action (a transfer into pages released early, a HiCache load, an "
               "aborted request) and every request it hurt. Click a row to open it.")
    incident_ids = [str(i) for i in incidents["incident_id"]]
    _picked_row("findings_incidents_table", incident_ids, "findings_incident_pick")
    st.dataframe(incidents.drop("shape", "bootstrap_room"), hide_index=True, key="findings_incidents_table",
                 height=260, on_select="rerun", selection_mode="single-row")
    with st.expander(f"all {len(table)} findings (per rank, pool and victim)"):
        st.dataframe(table, hide_index=True, key="findings_table", height=300)

    # a deep link opens its incident even when the list (newest first, LIMITed) does not reach it;
    # once a filter is set, the filtered list decides
    pick_ids = list(incident_ids)
    filtered = bool(kinds or confidence or instances or rid.strip())
    if (wanted_incident and not filtered and wanted_incident not in pick_ids
            and cached(findings.incident, wanted_incident)):
        pick_ids.append(wanted_incident)
    if pick_ids:
        by_id = {str(r["incident_id"]): r for r in incidents.iter_rows(named=True)}

        def _incident_label(i: str) -> str:
            row = by_id.get(i) or cached(findings.incident, i) or {}
            return f"{i} · {row['kind']} on {row['instance']} · {row['n_findings']} finding(s)"

        picked_incident = st.selectbox(
            "incident", pick_ids, index=_default(pick_ids, wanted_incident), key="findings_incident_pick",
            format_func=_incident_label,
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
                victim_links[n].page_link("views/requests.py", label=f"victim {md(victim[:12])}", icon=":material/person:",
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
        member_ids = []

    if member_ids:
        kind_of = dict(zip(table["finding_id"], table["kind"], strict=True))
        picked = st.selectbox(
            "finding", member_ids, index=_default(member_ids, wanted_finding), key="findings_pick",
            format_func=lambda i: f"{i} · {kind_of[i]}" if i in kind_of else str(i),
        )
        st.query_params["finding"] = picked
        _finding_view(picked)
