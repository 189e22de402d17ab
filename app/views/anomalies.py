"""Anomalies: linkage to findings, relative risk, attribute attribution (anomalous vs normal, and
any outlier region of a measure against the rest, BubbleUp style) and the unexplained leads.
Every rid links to its request view (requests?rid=...)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import plotly.express as px
import plotly.graph_objects as go
import polars as pl
import streamlit as st

from kvtrace.app.charts import plain_labels
from kvtrace.app.data import anomalies
from kvtrace.app.escape import md
from kvtrace.app.ui import cached, section

st.title("Anomalies")

REQUEST_LINK = st.column_config.LinkColumn(
    "request", help="open the request's span tree", display_text=r"requests\?rid=(.{0,12}).*"
)


def _with_links(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with a first column `request`: the URL of each rid's request view."""
    if "rid" not in frame.columns:
        return frame
    links = pl.Series(
        "request", ["requests?rid=" + quote(str(r), safe="") for r in frame["rid"]], dtype=pl.String
    )
    return frame.select(links, *frame.columns)


st.subheader("Linkage: which anomalous outputs a finding explains")
with section():
    counts = cached(anomalies.linkage_counts)
    if counts.is_empty():
        st.success("no anomalous requests")
    else:
        fig = px.bar(
            plain_labels(counts), x="anomaly", y="requests", color="linkage", barmode="stack", height=300
        )
        st.plotly_chart(fig, key="anomalies_linkage_chart")
        st.dataframe(
            _with_links(cached(anomalies.linkage)),
            hide_index=True,
            key="anomalies_linkage",
            height=260,
            column_config={"request": REQUEST_LINK},
        )

st.subheader("Relative risk for findings' victims")
with section():
    rr = cached(anomalies.relative_risk)
    st.dataframe(rr, hide_index=True, key="anomalies_relative_risk")
    shown = rr.filter(
        pl.col("relative_risk").is_not_null() & pl.col("relative_risk").cast(pl.Float64).is_not_nan()
    )
    if not shown.is_empty():
        fig = px.bar(plain_labels(shown), x="exposure", y="relative_risk", height=280, text_auto=".1f")
        fig.add_hline(y=1.0, line_dash="dot")
        st.plotly_chart(fig, key="anomalies_rr_chart")

st.subheader("Attribution: attribute values that set anomalies apart")
with section():
    attr = cached(anomalies.attribution, 20)
    if attr.is_empty():
        st.info("nothing to attribute")
    else:
        st.caption(
            "Share of each attribute value among anomalous requests against normal ones: resource "
            "attributes of both sides (decode, and prefill as `prefill_instance` / `prefill.resource.*`), "
            "whether a HiCache load served the prefix, transfer duration, pages, context and concurrency."
        )
        frame = plain_labels(
            attr.with_columns(label=pl.col("attribute") + " = " + pl.col("value").cast(pl.String))
        )
        fig = px.bar(
            frame,
            x="difference",
            y="label",
            orientation="h",
            color="attribute",
            hover_data=["share_anomalous", "share_normal", "anomalous", "normal"],
            height=420,
        )
        fig.update_yaxes(autorange="reversed", title=None)
        st.plotly_chart(fig, key="anomalies_attribution_chart")

st.subheader("Select an outlier region: what sets it apart from the rest")
with section():
    names = list(anomalies.MEASURES)
    measure = st.selectbox(
        "measure", names, key="anomalies_measure", format_func=lambda m: anomalies.MEASURES[m][2]
    )
    stats = cached(anomalies.measure_stats, measure)
    lo, hi = stats["lo"], stats["hi"]
    if lo is None or hi is None or stats["n"] == 0:
        st.info("no request has this measure")
    else:
        hist = cached(anomalies.measure_histogram, measure, 60)
        # a box drawn on the histogram sets the range (before the slider is drawn)
        state: Any = st.session_state.get("anomalies_region_hist")
        boxes = list(state["selection"].get("box", [])) if state and "selection" in state else []
        seen = f"_anomalies_region_seen_{measure}"
        if boxes and boxes != st.session_state.get(seen):
            st.session_state[seen] = boxes
            xs = [float(x) for x in boxes[0].get("x", [])]
            if len(xs) == 2:
                st.session_state[f"anomalies_region_{measure}"] = (max(lo, min(xs)), min(hi, max(xs)))
        tail = anomalies.MEASURES[measure][3]
        default = (lo, stats["p5"] or lo) if tail == "low" else (stats["p95"] or hi, hi)
        step = (hi - lo) / 200 if hi > lo else 1.0
        region = st.slider(
            "selected region (or drag a box on the histogram)",
            min_value=lo,
            max_value=max(hi, lo + step),
            value=default,
            step=step,
            key=f"anomalies_region_{measure}",
        )
        fig = go.Figure()
        mid = ((hist["x0"] + hist["x1"]) / 2).to_list()
        width = (hist["x1"] - hist["x0"]).to_list()
        fig.add_bar(
            x=mid, y=hist["other"].to_list(), width=width, name="not anomalous", marker_color="#9ecae1"
        )
        fig.add_bar(
            x=mid,
            y=hist["anomalous"].to_list(),
            width=width,
            name="garbled or repetition",
            marker_color="#d62728",
        )
        fig.add_vrect(
            x0=region[0], x1=region[1], fillcolor="#fde68a", opacity=0.4, line_width=0, layer="below"
        )
        fig.update_layout(
            barmode="stack",
            height=260,
            dragmode="select",
            margin={"l": 10, "r": 10, "t": 10, "b": 10},
            xaxis_title=anomalies.MEASURES[measure][2],
            yaxis_title="requests",
            yaxis_type="log",
        )
        st.plotly_chart(fig, key="anomalies_region_hist", on_select="rerun", selection_mode="box")
        diff = cached(anomalies.bubbleup, measure, float(region[0]), float(region[1]), 25)
        if diff.is_empty() or int(diff["n_selected"][0]) == 0:
            st.info("no request in the selected region")
        else:
            n_sel, n_base = int(diff["n_selected"][0]), int(diff["n_baseline"][0])
            st.caption(
                f"{n_sel:,} request(s) in {md(f'{region[0]:g}')} .. {md(f'{region[1]:g}')} against "
                f"{n_base:,} outside it: the attribute values whose share differs most"
            )
            frame = plain_labels(
                diff.with_columns(label=pl.col("attribute") + " = " + pl.col("value").cast(pl.String))
            )
            long = frame.unpivot(
                index="label",
                on=["share_selected", "share_baseline"],
                variable_name="group",
                value_name="share",
            ).with_columns(
                pl.col("group").replace_strict({"share_selected": "selection", "share_baseline": "baseline"})
            )
            fig = px.bar(
                long,
                x="share",
                y="label",
                color="group",
                barmode="group",
                orientation="h",
                height=560,
                color_discrete_map={"selection": "#d62728", "baseline": "#7f7f7f"},
            )
            fig.update_yaxes(autorange="reversed", title=None)
            fig.update_xaxes(range=[0, 1], title="share of the group's requests")
            st.plotly_chart(fig, key="anomalies_region_chart")
            st.dataframe(diff.drop("n_selected", "n_baseline"), hide_index=True, key="anomalies_region_table")

st.subheader("Unexplained anomalies: the leads")
with section():
    leads = cached(anomalies.leads)
    st.caption(f"{len(leads)} anomalous request(s) no finding explains")
    st.dataframe(
        _with_links(leads), hide_index=True, key="anomalies_leads", column_config={"request": REQUEST_LINK}
    )
