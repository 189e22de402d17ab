"""Plotly figures for the pages: DataFrame in, Figure out (no queries, no streamlit).

plotly renders a subset of HTML (`<b>`, `<a href>`, `<br>`...) in every text it draws: trace
names, tick labels, hover text and titles. Every text column of a frame goes through
`plain_labels()` before it reaches a figure, so a value from a trace shows as its text.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from kvtrace.app.escape import plot_text

ROLE_COLOURS = {"culprit": "#d62728", "victim": "#1f77b4", "other": "#7f7f7f"}
# (who, op) -> colour, opacity: the culprit's write/load in red behind everything, instants dark.
EVENT_STYLE = {
    ("culprit", "transfer"): ("#d62728", 0.45), ("culprit", "load"): ("#d62728", 0.45),
    ("culprit", "alloc"): ("#ff9896", 0.9), ("culprit", "free"): ("#ff7f0e", 1.0),
    ("culprit", "abort"): ("#000000", 1.0), ("culprit", "read"): ("#e377c2", 0.8),
    ("victim", "alloc"): ("#1f77b4", 1.0), ("victim", "transfer"): ("#17becf", 0.6),
    ("victim", "load"): ("#17becf", 0.6), ("victim", "read"): ("#6baed6", 0.9),
    ("victim", "free"): ("#08306b", 1.0), ("victim", "abort"): ("#08306b", 1.0),
}
DRAW_ORDER = {"transfer": 0, "load": 0, "alloc": 1, "read": 2, "free": 3, "abort": 4}


def plain_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with every string cell escaped for plotly (`plot_text`); other cells as they are."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(lambda v: plot_text(v) if isinstance(v, str) else v)
        elif isinstance(out[column].dtype, pd.CategoricalDtype):
            out[column] = out[column].astype(object).map(lambda v: plot_text(v) if isinstance(v, str) else v)
    return out


def waterfall(spans: pd.DataFrame) -> go.Figure:
    """A request's spans as horizontal bars, one row per span, coloured by host (raw host clocks)."""
    frame = plain_labels(spans)
    frame["label"] = frame["name"] + " · " + frame["instance_id"].fillna("?")
    frame["duration_ms"] = frame["duration_ms"].clip(lower=0.05)
    fig = px.bar(
        frame,
        x="duration_ms",
        base="start_ms",
        y="label",
        color="host_name",
        orientation="h",
        hover_data={"span_id": True, "start_ms": ":.3f", "duration_ms": ":.3f", "role": True},
    )
    fig.update_yaxes(autorange="reversed", title=None, categoryorder="array", categoryarray=list(frame["label"]))
    fig.update_xaxes(title="ms since the request's first span (each host's own clock)")
    fig.update_layout(height=max(320, 22 * len(frame) + 120), legend_title_text="host", margin={"l": 10, "r": 10})
    return fig


def spec_steps(steps: pd.DataFrame, min_accept_length: float | None, title: str = "") -> go.Figure:
    """Accepted drafts per verify step, the running accept length and the detector's threshold."""
    fig = go.Figure()
    fig.add_bar(x=steps["step"], y=steps["accepted"], name="accepted drafts", marker_color="#9ecae1")
    fig.add_scatter(
        x=steps["step"], y=steps["running_accept_length"], name="running accept length", mode="lines",
        line={"color": "#08519c"},
    )
    if min_accept_length is not None:
        fig.add_hline(
            y=min_accept_length, line_dash="dash", line_color="#d62728",
            annotation_text=f"garbled if accept length < {min_accept_length:g}",
        )
    fig.update_layout(title=plot_text(title), xaxis_title="verify step", yaxis_title="tokens", height=320,
                      margin={"l": 10, "r": 10})
    return fig


def rate_over_time(rates: pd.DataFrame) -> go.Figure:
    """Anomaly rate per 10,000 requests by time bucket, one line per service version."""
    fig = px.line(plain_labels(rates), x="bucket", y="per_10k", color="service_version", markers=True,
                  hover_data=["requests", "anomalies"])
    fig.update_layout(yaxis_title="anomalies per 10,000 requests", xaxis_title=None, height=340,
                      legend_title_text="version", margin={"l": 10, "r": 10})
    return fig


def finding_timeline(events: pd.DataFrame, clock: str, window: tuple[float, float] | None) -> go.Figure:
    """Access intervals of the culprit and the victim on the finding's pages: pages on y, time on x.

    `events` has one row per (event, contiguous page run): label, who, op, page_lo, page_hi,
    x0_ms, x1_ms (already on the chosen clock, ms relative to the window start).
    """
    fig = go.Figure()
    events = plain_labels(events)
    span = float(events["x1_ms"].max() - events["x0_ms"].min()) if not events.empty else 1.0
    min_width = max(span * 0.004, 0.001)  # instants (alloc, abort) stay visible
    ordered = events.assign(
        _order=events["op"].map(DRAW_ORDER).fillna(5),
        _width=(events["x1_ms"] - events["x0_ms"]).clip(lower=min_width),
        _height=(events["page_hi"] - events["page_lo"] + 0.8).clip(lower=0.8),
        _mid=(events["page_lo"] + events["page_hi"]) / 2,
    ).sort_values(["_order", "x0_ms"])
    # One trace per (who, op): a few traces however many events, which keeps rendering fast.
    for (who, op), group in ordered.groupby(["who", "op"], sort=False):
        colour, opacity = EVENT_STYLE.get((str(who), str(op)), (ROLE_COLOURS["other"], 0.8))
        fig.add_trace(
            go.Bar(
                x=group["_width"], base=group["x0_ms"], y=group["_mid"], width=group["_height"], orientation="h",
                marker={"color": colour, "opacity": opacity, "line": {"color": colour, "width": 1}},
                name=f"{who}: {op}", customdata=group[["label", "page_lo", "page_hi"]].to_numpy(),
                hovertemplate="%{customdata[0]}<br>pages %{customdata[1]}..%{customdata[2]}<br>"
                              "%{base:.3f} ms + %{x:.3f} ms<extra></extra>",
            )
        )
    if window is not None:
        fig.add_vrect(x0=window[0], x1=window[1], fillcolor="#ff7f0e", opacity=0.12, line_width=0,
                      annotation_text="unsafe window", annotation_position="top left")
    fig.update_layout(
        barmode="overlay", height=420, xaxis_title=f"ms from the window start ({plot_text(clock)})",
        yaxis_title="page id", margin={"l": 10, "r": 10}, legend={"orientation": "h", "y": -0.2},
    )
    return fig


def layer_timeline(layers: pd.DataFrame, flagged: list[int], window: tuple[float, float]) -> go.Figure:
    """Per layer: when the load finished copying it and when the compute stream first read it."""
    fig = go.Figure()
    names = {"load": "culprit: layer copied (load stream)", "read": "victim: layer first read (compute stream)"}
    symbols = {"load": "line-ns-open", "read": "circle"}
    for op, group in layers.groupby("op"):
        fig.add_scatter(
            x=group["t_ms"], y=group["layer"], mode="markers", name=names.get(str(op), plot_text(op)),
            marker={"symbol": symbols.get(str(op), "circle"), "size": 11, "line": {"width": 2},
                    "color": ROLE_COLOURS["culprit" if op == "load" else "victim"]},
            hovertemplate="layer %{y}<br>%{x:.3f} ms<extra></extra>",
        )
    for layer in flagged:
        fig.add_hrect(y0=layer - 0.4, y1=layer + 0.4, fillcolor="#ff7f0e", opacity=0.15, line_width=0)
    fig.add_vrect(x0=window[0], x1=window[1], fillcolor="#ff7f0e", opacity=0.08, line_width=0)
    fig.update_layout(height=340, xaxis_title="ms from the window start", yaxis_title="layer",
                      margin={"l": 10, "r": 10}, legend={"orientation": "h", "y": -0.25})
    return fig


def page_heatmap(cells: pd.DataFrame, num_rows: int | None = None) -> go.Figure:
    """Corrupted pages of a replay: damaged page ids on x (as categories), layers on y, hazards as colour.

    `cells` has row (layer), page, value. Every layer 0..num_rows-1 gets a row, so the clean
    layers show too.
    """
    pages = sorted(int(p) for p in cells["page"].unique())
    rows = list(range(num_rows)) if num_rows else sorted(cells["row"].unique())
    grid = cells.pivot_table(index="row", columns="page", values="value", aggfunc="sum", fill_value=0)
    grid = grid.reindex(index=rows, columns=pages, fill_value=0)
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[str(p) for p in pages], y=[str(r) for r in rows], colorscale="Reds",
        zmin=0, xgap=1, ygap=1, colorbar={"title": {"text": "hazards"}},
        hovertemplate="page %{x}, layer %{y}: %{z} hazard(s)<extra></extra>",
    ))
    fig.update_xaxes(type="category", title="page id")
    fig.update_yaxes(type="category", title=plot_text(cells.attrs.get("row_title", "layer")))
    fig.update_layout(height=max(260, 26 * len(rows) + 140), margin={"l": 10, "r": 10})
    return fig
