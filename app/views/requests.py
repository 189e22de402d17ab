"""Requests: find a request (rid, rid prefix, trace id, bootstrap room, attribute filters); its span
tree as a trace UI with a detail panel (attributes, events, links, resource), the findings that cite
it, its speculative steps and output. URL: ?rid=<rid> or ?trace=<trace id> (see app/search.py), and
&span=<span id> for the span the detail panel shows (the Findings page links evidence spans so)."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import streamlit as st

from kvtrace.app import charts, span_tree
from kvtrace.app.data import analysis, requests
from kvtrace.app.escape import md, md_code
from kvtrace.app.ui import cached, ns_to_text, section

st.title("Requests")


def _changed(key: str, value: Any) -> bool:
    """Whether a widget's selection `value` is new since the last run (then remember it)."""
    seen = f"_{key}_seen"
    if value != st.session_state.get(seen):
        st.session_state[seen] = value
        return True
    return False


def _selection(key: str) -> dict[str, Any]:
    state: Any = st.session_state.get(key)
    try:
        return dict(state["selection"]) if state and "selection" in state else {}
    except (KeyError, TypeError):
        return {}


# -- which request: the URL (?rid= / ?trace=), else the search box and the filters ---------------
wanted_rid = st.query_params.get("rid")
wanted_trace = st.query_params.get("trace")
wanted_span = st.query_params.get("span")
bad_link = False
with section():
    if wanted_trace and not wanted_rid:
        traced = cached(requests.rids_of_trace, wanted_trace)
        if len(traced) == 1:
            wanted_rid = traced[0]
        elif not traced:
            st.warning(f"no request has its root spans in trace {md_code(wanted_trace)} in this store")
            bad_link = True
        else:
            st.info(f"trace {md_code(wanted_trace)} holds {len(traced)} requests: pick one below")
    if wanted_rid and not cached(requests.exists, wanted_rid):
        # not a rid: the one request whose rid starts with it, said as such; else nothing in its place
        starting = [str(r) for r in cached(requests.search, wanted_rid, 2)["rid"]]
        starting = [r for r in starting if r.lower().startswith(wanted_rid.strip().lower())]
        if len(starting) == 1:
            st.info(f"no request {md_code(wanted_rid)}: opened the only one whose rid starts with it")
            wanted_rid = starting[0]
        else:
            many = "several requests' rids start with it" if starting else "pick one below"
            st.warning(f"no request {md_code(wanted_rid)} in this store: {many}")
            bad_link = True

    # a URL the page did not write itself (a link, a new session) fills the search box
    url = (wanted_rid, wanted_trace)
    if st.session_state.get("_requests_url") != url:
        st.session_state["_requests_url"] = url
        st.session_state["requests_rid_search"] = wanted_rid or (wanted_trace or "")
        st.session_state.pop("requests_pick", None)

rid: str | None = None
with section():
    query = st.text_input("rid, rid prefix, trace id or bootstrap room", key="requests_rid_search")
    options_by = cached(requests.filter_options)
    with st.expander("filter by attribute", expanded=False):
        f1, f2, f3, f4, f5 = st.columns([2, 2, 2, 1, 1])
        versions = f1.multiselect(
            "build (service.version)", options_by.get("version", []), key="requests_f_version"
        )
        instances = f2.multiselect(
            "instance (prefill or decode)", options_by.get("instance", []), key="requests_f_instance"
        )
        labels = f3.multiselect("anomaly", options_by.get("anomaly", []), key="requests_f_anomaly")
        min_ms = f4.number_input("min duration (ms)", min_value=0.0, value=None, key="requests_f_min")
        max_ms = f5.number_input("max duration (ms)", min_value=0.0, value=None, key="requests_f_max")
    found = cached(
        requests.search, query, 50, tuple(versions), tuple(instances), tuple(labels), min_ms, max_ms
    )
    if found.is_empty():
        filtered = versions or instances or labels or min_ms is not None or max_ms is not None
        what = (
            f"rid starts with {md_code(query)} (nor has it as trace id or bootstrap room)"
            if query
            else "is in the store"
        )
        st.info(f"no request {what}" + (" with these attributes" if filtered else ""))
    else:
        options = [str(r) for r in found["rid"]]
        rows = _selection("requests_found").get("rows", [])
        if _changed("requests_found", list(rows)) and rows and rows[0] < len(options):
            st.session_state["requests_pick"] = options[rows[0]]
        st.dataframe(
            found,
            hide_index=True,
            key="requests_found",
            height=240,
            on_select="rerun",
            selection_mode="single-row",
        )
        if bad_link:
            index = None
        elif wanted_rid in options:
            index = options.index(wanted_rid)
        else:
            index = 0
        if st.session_state.get("requests_pick") not in options:
            st.session_state.pop("requests_pick", None)
        rid = st.selectbox("request", options, index=index, key="requests_pick", placeholder="pick a request")
    if rid:
        # picking a request updates the URL (and the page remembers that it wrote it)
        st.query_params["rid"] = rid
        if rid != wanted_rid and "span" in st.query_params:  # another request: the link's span is not in it
            del st.query_params["span"]
            wanted_span = None
        if "trace" in st.query_params:
            del st.query_params["trace"]
        st.session_state["_requests_url"] = (rid, None)

if rid:
    # -- what the request is: its label, the incidents it is part of ----------------------------
    with section():
        ctx = cached(requests.context, rid)
        st.subheader(f"Request {md_code(rid)}")
        if ctx.anomaly:
            why = f" ({md(', '.join(ctx.reasons))})" if ctx.reasons else ""
            line = f"anomaly: **{md(ctx.anomaly)}**{why}"
            if ctx.anomaly in ("garbled", "repetition"):
                st.error(line, icon=":material/warning:")
            else:
                st.caption(line)
        links = [(f"victim of incident {i[:12]} ({kind})", i) for i, kind in ctx.victim_of]
        links += [(f"culprit of incident {i[:12]} ({kind})", i) for i, kind in ctx.culprit_of]
        if links:
            cols = st.columns(min(len(links), 4))
            for n, (text, incident_id) in enumerate(links[:4]):
                cols[n].page_link(
                    "views/findings.py",
                    label=md(text),
                    icon=":material/report:",
                    query_params={"incident": incident_id},
                )
            if len(links) > 4:
                st.caption(f"and {len(links) - 4} more incident(s)")
        elif ctx.anomaly in ("garbled", "repetition"):
            st.caption("no finding explains this anomaly (see Anomalies: the leads)")
        st.dataframe(cached(requests.roots, rid), hide_index=True, key="requests_roots")

    tab_spans, tab_spec, tab_kv, tab_text = st.tabs(["Span tree", "Speculative steps", "KV events", "Output"])
    with tab_spans, section():
        spans = cached(requests.waterfall, rid)
        if spans.is_empty():
            st.info("no spans for this request")
            if wanted_span:
                st.warning(f"no span {md_code(wanted_span)} in request {md_code(rid)}")
        else:
            if len(spans) >= requests.MAX_SPANS:
                st.caption(f"the first {requests.MAX_SPANS:,} spans")
            tree = span_tree.build(spans)
            cites = cached(requests.evidence, rid)
            evidence: dict[str, str] = {}
            for r in cites.iter_rows(named=True):
                evidence.setdefault(
                    str(r["span_id"]), f"{r['kind']} ({r['role']}) · finding {r['finding_id']}"
                )
            colours = span_tree.host_colours(cached(requests.host_order), tree["host_name"])
            with_children = tree.filter(pl.col("n_children") > 0)
            if st.session_state.get("_requests_tree_rid") != rid:
                st.session_state["_requests_tree_rid"] = rid
                st.session_state.pop("requests_span", None)
                st.session_state.pop("requests_collapse", None)
            span_ids = {str(s) for s in tree["span_id"]}
            # ?span= (a link, a new session): that span in the detail panel; one not in the tree says so
            bad_span = st.empty()
            if wanted_span in span_ids and _changed("requests_span_link", (rid, wanted_span)):
                st.session_state["requests_span"] = wanted_span
            fold_labels = {
                str(k): f"{n} · {s[:8]}"
                for k, n, s in zip(
                    with_children["key"], with_children["name"], with_children["span_id"], strict=True
                )
            }
            collapsed = st.multiselect(
                "collapse",
                list(fold_labels),
                key="requests_collapse",
                format_func=lambda k: fold_labels.get(k, k),
                help="hide a span's children (a collapsed span shows ▸)",
            )
            shown = span_tree.visible(tree, collapsed)
            ids = [str(s) for s in shown["span_id"]]
            # the selected span: a click on the chart or on a table row, else the first evidence span
            points = _selection("requests_waterfall").get("points", [])
            point = [p.get("customdata") for p in points if isinstance(p, dict)]
            if _changed("requests_waterfall", point) and point and point[0] in ids:
                st.session_state["requests_span"] = point[0]
            rows = _selection("requests_tree").get("rows", [])
            if _changed("requests_tree", list(rows)) and rows and rows[0] < len(ids):
                st.session_state["requests_span"] = ids[rows[0]]
            picked = st.session_state.get("requests_span")
            if picked not in span_ids:
                picked = next((s for s in ids if s in evidence), ids[0] if ids else None)
            elif picked != wanted_span:  # a span picked here goes into the URL (the link remembers it)
                st.query_params["span"] = picked
                st.session_state["_requests_span_link_seen"] = (rid, picked)
            if wanted_span and wanted_span not in span_ids and st.query_params.get("span") == wanted_span:
                what = "its first evidence span" if picked in evidence else "its first span"
                bad_span.warning(f"no span {md_code(wanted_span)} in request {md_code(rid)}: showing {what}")
            left, right = st.columns([3, 2])
            with left:
                st.plotly_chart(
                    span_tree.figure(shown, colours, evidence, picked, collapsed),
                    key="requests_waterfall",
                    on_select="rerun",
                    selection_mode="points",
                )
                st.caption(
                    "Times are each host's own clock: prefill and decode hosts may differ by milliseconds. "
                    "Diamonds: instant spans (kv.alloc, kv.free, request.abort); red outline and ★: evidence "
                    "a finding cites. Click a bar or a row for its details."
                )
                st.dataframe(
                    span_tree.table(shown, collapsed, evidence),
                    hide_index=True,
                    key="requests_tree",
                    on_select="rerun",
                    selection_mode="single-row",
                    height=300,
                )
            with right:
                if picked is not None:
                    row = tree.filter(pl.col("span_id").cast(pl.String) == picked).row(0, named=True)
                    st.markdown(f"**{md(row['name'])}**")
                    parent = row["parent_span_id"] if isinstance(row["parent_span_id"], str) else "-"
                    st.caption(
                        f"span {md_code(picked)} · trace {md_code(row['trace_id'])} · parent {md_code(parent)}"
                    )
                    status = (
                        {0: "unset", 1: "ok", 2: "error"}.get(int(row["status_code"]), "?")
                        if row["status_code"] is not None
                        else "?"
                    )
                    message = (
                        f" ({md(row['status_message'])})"
                        if isinstance(row["status_message"], str) and row["status_message"]
                        else ""
                    )
                    st.markdown(
                        f"host {md(row['host_name'])} · instance {md(row['instance_id'])} · service "
                        f"{md(row['service_name'])}  \nstart {md(ns_to_text(row['start_ns']))} UTC · duration "
                        f"{float(row['duration_ms']):.3f} ms · status {status}{message}"
                    )
                    for c in cites.filter(pl.col("span_id").cast(pl.String) == picked).iter_rows(named=True):
                        st.page_link(
                            "views/findings.py",
                            icon=":material/report:",
                            label=md(f"evidence of {c['kind']} finding {c['finding_id']} ({c['role']})"),
                            query_params={"finding": str(c["finding_id"])},
                        )
                    st.markdown("**Attributes**")
                    try:
                        attrs = json.loads(row["attributes"]) if isinstance(row["attributes"], str) else {}
                    except ValueError:
                        attrs = {"(not JSON)": str(row["attributes"])}
                    st.json(attrs, expanded=1)
                    events = cached(requests.span_events, str(row["trace_id"]), picked)
                    st.markdown(f"**Events** ({len(events)})")
                    if not events.is_empty():
                        st.dataframe(events, hide_index=True, key="requests_span_events")
                    span_links = cached(requests.span_links, str(row["trace_id"]), picked)
                    st.markdown(f"**Links** ({len(span_links)})")
                    if not span_links.is_empty():
                        here = tree["span_id"].cast(pl.String).to_list()
                        st.dataframe(
                            span_links.with_columns(in_this_request=pl.col("linked_span_id").is_in(here)),
                            hide_index=True,
                            key="requests_span_links",
                        )
                    st.markdown("**Resource**")
                    res = (
                        cached(requests.resource, int(row["resource_id"]))
                        if row["resource_id"] is not None
                        else None
                    )
                    st.json(res or {}, expanded=1)
            elsewhere = cites.filter(~pl.col("span_id").cast(pl.String).is_in(list(span_ids)))
            if not elsewhere.is_empty():
                with st.expander(
                    f"{len(elsewhere)} evidence span(s) in other traces (a forward step, the other "
                    "request of the race)"
                ):
                    st.dataframe(elsewhere, hide_index=True, key="requests_evidence_elsewhere")
    with tab_spec, section():
        steps = cached(requests.spec_steps, rid)
        if steps.is_empty():
            st.info("this request has no speculative-decoding steps")
        else:
            thresholds = cached(analysis.detector_thresholds)
            st.plotly_chart(charts.spec_steps(steps, thresholds.min_accept_length), key="requests_spec_chart")
            st.caption(thresholds.describe())
    with tab_kv, section():
        st.dataframe(cached(requests.kv_events, rid), hide_index=True, key="requests_kv_events")
    with tab_text, section():
        completion = cached(requests.completion_text, rid)
        if completion is None:
            st.info("no output text recorded (gen_ai.completion is often redacted)")
        else:
            st.caption("gen_ai.completion")
            st.code(completion, language=None, wrap_lines=True)
