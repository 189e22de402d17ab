"""Plotly figures for the pages: polars DataFrame in, Figure out (no queries, no streamlit).
plotly express takes polars frames as they are (through narwhals, plotly >= 6); graph_objects
traces get lists (`.to_list()`).

plotly renders a subset of HTML (`<b>`, `<a href>`, `<br>`...) in every text it draws: trace
names, tick labels, hover text and titles. Every text column of a frame goes through
`plain_labels()` before it reaches a figure, so a value from a trace shows as its text.
"""

from __future__ import annotations

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import polars as pl

from kvtrace.app.escape import plot_text

ROLE_COLOURS = {"culprit": "#d62728", "victim": "#1f77b4", "other": "#7f7f7f"}


def plain_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with every string cell escaped for plotly (`plot_text`, once per distinct value);
    other cells as they are (categorical and enum columns become text)."""
    texts = [c for c, t in frame.schema.items() if t in (pl.String, pl.Categorical) or isinstance(t, pl.Enum)]
    return frame.with_columns(
        pl.col(c).cast(pl.String).map_elements(plot_text, return_dtype=pl.String, skip_nulls=True) for c in texts
    )


def waterfall(spans: pl.DataFrame) -> go.Figure:
    """A request's spans as horizontal bars, one row per span, coloured by host (raw host clocks)."""
    frame = plain_labels(spans).with_columns(
        label=pl.col("name") + " · " + pl.col("instance_id").fill_null("?"),
        duration_ms=pl.col("duration_ms").clip(lower_bound=0.05),
    )
    fig = px.bar(
        frame,
        x="duration_ms",
        base="start_ms",
        y="label",
        color="host_name",
        orientation="h",
        hover_data={"span_id": True, "start_ms": ":.3f", "duration_ms": ":.3f", "role": True},
    )
    fig.update_yaxes(autorange="reversed", title=None, categoryorder="array", categoryarray=frame["label"].to_list())
    fig.update_xaxes(title="ms since the request's first span (each host's own clock)")
    fig.update_layout(height=max(320, 22 * len(frame) + 120), legend_title_text="host", margin={"l": 10, "r": 10})
    return fig


def spec_steps(steps: pl.DataFrame, min_accept_length: float | None, title: str = "") -> go.Figure:
    """Accepted drafts per verify step, the running accept length and the detector's threshold."""
    fig = go.Figure()
    fig.add_bar(x=steps["step"].to_list(), y=steps["accepted"].to_list(), name="accepted drafts",
                marker_color="#9ecae1")
    fig.add_scatter(
        x=steps["step"].to_list(), y=steps["running_accept_length"].to_list(), name="running accept length", mode="lines",
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


def rate_over_time(rates: pl.DataFrame) -> go.Figure:
    """Anomaly rate per 10,000 requests by time bucket, one line per service version."""
    fig = px.line(plain_labels(rates), x="bucket", y="per_10k", color="service_version", markers=True,
                  hover_data=["requests", "anomalies"])
    fig.update_layout(yaxis_title="anomalies per 10,000 requests", xaxis_title=None, height=340,
                      legend_title_text="version", margin={"l": 10, "r": 10})
    return fig


def layer_timeline(layers: pl.DataFrame, flagged: list[int], window: tuple[float, float]) -> go.Figure:
    """Per layer: when the load finished copying it and when the compute stream first read it."""
    fig = go.Figure()
    names = {"load": "culprit: layer copied (load stream)", "read": "victim: layer first read (compute stream)"}
    symbols = {"load": "line-ns-open", "read": "circle"}
    for (op,), group in sorted(layers.partition_by("op", as_dict=True).items()):
        fig.add_scatter(
            x=group["t_ms"].to_list(), y=group["layer"].to_list(), mode="markers", name=names.get(str(op), plot_text(op)),
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


def page_heatmap(cells: pl.DataFrame, num_rows: int | None = None, row_title: str = "layer") -> go.Figure:
    """Corrupted pages of a replay: damaged page ids on x (as categories), layers on y, hazards as colour.

    `cells` has row (layer), page, value. Every layer 0..num_rows-1 gets a row, so the clean
    layers show too.
    """
    summed = cells.group_by("row", "page").agg(pl.col("value").sum())
    pages = sorted(int(p) for p in summed["page"].unique())
    rows = list(range(num_rows)) if num_rows else sorted(summed["row"].unique().to_list())
    row_at, page_at = {r: i for i, r in enumerate(rows)}, {p: i for i, p in enumerate(pages)}
    grid = np.zeros((len(rows), len(pages)), dtype=np.int64)
    for row, page, value in summed.iter_rows():
        if row in row_at:
            grid[row_at[row], page_at[int(page)]] = value
    fig = go.Figure(go.Heatmap(
        z=grid, x=[str(p) for p in pages], y=[str(r) for r in rows], colorscale="Reds",
        zmin=0, xgap=1, ygap=1, colorbar={"title": {"text": "hazards"}},
        hovertemplate="page %{x}, layer %{y}: %{z} hazard(s)<extra></extra>",
    ))
    fig.update_xaxes(type="category", title="page id")
    fig.update_yaxes(type="category", title=plot_text(row_title))
    fig.update_layout(height=max(260, 26 * len(rows) + 140), margin={"l": 10, "r": 10})
    return fig
