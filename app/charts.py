"""Plotly figures for the pages: DataFrame in, Figure out (no queries, no streamlit)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

ROLE_COLOURS = {"culprit": "#d62728", "victim": "#1f77b4", "other": "#7f7f7f"}


def waterfall(spans: pd.DataFrame) -> go.Figure:
    """A request's spans as horizontal bars, one row per span, coloured by host (raw host clocks)."""
    frame = spans.copy()
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
    fig.update_layout(title=title, xaxis_title="verify step", yaxis_title="tokens", height=320,
                      margin={"l": 10, "r": 10})
    return fig


def rate_over_time(rates: pd.DataFrame) -> go.Figure:
    """Anomaly rate per 10,000 requests by time bucket, one line per service version."""
    fig = px.line(rates, x="bucket", y="per_10k", color="service_version", markers=True,
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
    shown: set[str] = set()
    for row in events.itertuples(index=False):
        colour = ROLE_COLOURS.get(str(row.who), ROLE_COLOURS["other"])
        width = max(float(row.x1_ms) - float(row.x0_ms), 0.02)
        legend = f"{row.who}: {row.op}"
        fig.add_trace(
            go.Bar(
                x=[width], base=[float(row.x0_ms)], y=[(row.page_lo + row.page_hi) / 2],
                width=[max(row.page_hi - row.page_lo + 0.8, 0.8)], orientation="h",
                marker={"color": colour, "opacity": 0.35 if row.op in ("alloc", "read") else 0.75,
                        "line": {"color": colour, "width": 1}},
                name=legend, legendgroup=legend, showlegend=legend not in shown,
                hovertemplate=(f"{row.label}<br>pages {row.page_lo}..{row.page_hi}<br>"
                               "%{base:.3f} .. %{x:.3f} ms<extra></extra>"),
            )
        )
        shown.add(legend)
    if window is not None:
        fig.add_vrect(x0=window[0], x1=window[1], fillcolor="#ff7f0e", opacity=0.12, line_width=0,
                      annotation_text="unsafe window", annotation_position="top left")
    fig.update_layout(
        barmode="overlay", height=420, xaxis_title=f"ms from the window start ({clock})",
        yaxis_title="page id", margin={"l": 10, "r": 10}, legend={"orientation": "h", "y": -0.2},
    )
    return fig


def page_heatmap(cells: pd.DataFrame) -> go.Figure:
    """Corrupted pages of a replay: pages on x, layers (or runs) on y, the count as colour."""
    pivot = cells.pivot_table(index="row", columns="page", values="value", aggfunc="sum", fill_value=0)
    fig = px.imshow(pivot, aspect="auto", color_continuous_scale="Reds",
                    labels={"x": "page id", "y": str(cells.attrs.get("row_title", "layer")), "color": "corrupted"})
    fig.update_layout(height=360, margin={"l": 10, "r": 10})
    return fig
