"""The finding view's chart: a finding's critical sequence at a zoom that shows it, the whole window
as context (Perfetto's habit: one lane per actor and kind of access, instants as markers, a flow
arrow from the culprit's access to the victim).

- Lanes, top to bottom: the culprit's write or load, its abort, its free, ..., the victim's alloc,
  its writes and reads. One kind per lane, so an instant never hides under another (the victim's
  alloc under the culprit's abort, a load under the reads).
- Instants (alloc, free, abort) are markers of distinct symbols; accesses are bars.
- The x range shown first is the finding's default zoom (app.data.findings.default_zoom: e.g.
  the 30 ms between the culprit's free and the victim's alloc, not the write's 6 s); the range
  slider under the chart holds the whole window, drag it to see the rest.
- Both clocks: the critical moments on the other clock as open ticks; on the instance's clock, the
  clock bounds of the write's landing as a band on the write's lane.

polars DataFrame in, Figure out (no queries, no streamlit); texts escaped through
`charts.plain_labels`; the traces get lists.
"""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl

from kvtrace.app.charts import ROLE_COLOURS, plain_labels
from kvtrace.app.escape import plot_text

# (who, op) -> colour, opacity for bars; symbol, colour for instants
BAR_STYLE = {
    ("culprit", "transfer"): ("#d62728", 0.55),
    ("culprit", "load"): ("#d62728", 0.55),
    ("culprit", "read"): ("#e377c2", 0.8),
    ("victim", "transfer"): ("#17becf", 0.7),
    ("victim", "load"): ("#17becf", 0.7),
    ("victim", "read"): ("#6baed6", 0.9),
}
INSTANT_STYLE = {
    ("culprit", "abort"): ("x", "#000000"),
    ("culprit", "free"): ("triangle-down", "#ff7f0e"),
    ("culprit", "alloc"): ("circle-open", "#d62728"),
    ("victim", "alloc"): ("diamond", "#1f77b4"),
    ("victim", "free"): ("triangle-down-open", "#08306b"),
    ("victim", "abort"): ("x-open", "#08306b"),
}
MIN_BAR_FRACTION = 0.003  # of the default zoom's width: a short read stays visible
FLOW_COLOUR = "#7b3294"


def finding_figure(
    events: pl.DataFrame,
    moments: pl.DataFrame,
    *,
    clock: str,
    window: tuple[float, float],
    focus: tuple[float, float],
    context: tuple[float, float],
    landing_bounds: tuple[float | None, float | None] = (None, None),
    other_clock: str = "",
) -> go.Figure:
    """`events`: one row per event (app.data.findings.Timeline.events) with x0_ms/x1_ms on the
    chosen clock; `moments`: the critical sequence with t_ms on the chosen clock and t_other_ms on
    the other one (drawn as open ticks where they differ); ms from the window start."""
    lanes = list(dict.fromkeys(events.sort("lane_order", "lane", maintain_order=True)["lane"]))
    y = {lane: i for i, lane in enumerate(lanes)}
    drawn = plain_labels(events.with_columns(_y=pl.col("lane").replace_strict(y, return_dtype=pl.Int64)))
    fig = go.Figure()
    fig.add_vrect(x0=window[0], x1=window[1], fillcolor="#ff7f0e", opacity=0.10, line_width=0, layer="below")
    min_width = max((focus[1] - focus[0]) * MIN_BAR_FRACTION, 1e-6)
    for (who, op), group in drawn.group_by("who", "op", maintain_order=True):
        group = group.sort("x0_ms", maintain_order=True)
        lane_y = group["_y"].to_list()
        custom = [list(r) for r in group.select("label", "pages", "span_id", "x0_ms", "x1_ms").iter_rows()]
        hover = (
            "%{customdata[0]}<br>pages %{customdata[1]}<br>span %{customdata[2]}<br>"
            "%{customdata[3]:.3f} .. %{customdata[4]:.3f} ms<extra></extra>"
        )
        name = f"{who}: {op}"  # who and op: escaped above
        if bool(group["instant"].all()):
            symbol, colour = INSTANT_STYLE.get((str(who), str(op)), ("circle", ROLE_COLOURS["other"]))
            fig.add_trace(
                go.Scatter(
                    x=group["x0_ms"].to_list(),
                    y=lane_y,
                    mode="markers",
                    name=name,
                    customdata=custom,
                    marker={
                        "symbol": symbol,
                        "size": 15,
                        "color": colour,
                        "line": {"width": 2, "color": colour},
                    },
                    hovertemplate=hover,
                    cliponaxis=False,
                )
            )
        else:
            colour, opacity = BAR_STYLE.get((str(who), str(op)), (ROLE_COLOURS.get(str(who), "#7f7f7f"), 0.7))
            fig.add_trace(
                go.Bar(
                    x=(group["x1_ms"] - group["x0_ms"]).clip(lower_bound=min_width).to_list(),
                    base=group["x0_ms"].to_list(),
                    y=lane_y,
                    width=0.6,
                    orientation="h",
                    name=name,
                    customdata=custom,
                    hovertemplate=hover,
                    marker={"color": colour, "opacity": opacity, "line": {"color": colour, "width": 1}},
                )
            )
    _landing_band(fig, moments, y, landing_bounds, context)
    _other_clock(fig, moments, y, other_clock)
    _flows(fig, moments, events, y, focus)
    span = context[1] - context[0]
    fig.update_xaxes(
        range=list(focus),
        title=f"ms from the window start ({plot_text(clock)})",
        rangeslider={
            "visible": True,
            "range": [context[0] - 0.02 * span, context[1] + 0.02 * span],
            "thickness": 0.14,
        },
        zeroline=False,
    )
    fig.update_yaxes(
        tickmode="array",
        tickvals=list(range(len(lanes))),
        ticktext=[plot_text(_short(lane)) for lane in lanes],
        autorange="reversed",
        title=None,
        fixedrange=True,
    )
    fig.update_layout(
        barmode="overlay",
        height=190 + 44 * max(len(lanes), 2),
        margin={"l": 10, "r": 10, "t": 30},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
        hovermode="closest",
    )
    return fig


def _landing_band(
    fig: go.Figure,
    moments: pl.DataFrame,
    y: dict[str, int],
    bounds: tuple[float | None, float | None],
    context: tuple[float, float],
) -> None:
    """Where the write may have ended, over every clock offset the evidence allows."""
    lands = moments.filter(pl.col("key") == "lands")
    if lands.is_empty() or (bounds[0] is None and bounds[1] is None) or lands.item(0, "lane") not in y:
        return
    lo = bounds[0] if bounds[0] is not None else context[0]
    hi = bounds[1] if bounds[1] is not None else context[1]
    fig.add_trace(
        go.Bar(
            x=[max(hi - lo, 1e-6)],
            base=[lo],
            y=[y[lands.item(0, "lane")]],
            width=0.95,
            orientation="h",
            name="write landing: clock bounds",
            marker={"color": "#fdae6b", "opacity": 0.35, "pattern": {"shape": "/"}, "line": {"width": 0}},
            hovertemplate=f"the write ends between {lo:.3f} and {hi:.3f} ms for every allowed clock offset"
            "<extra></extra>",
        )
    )


def _other_clock(fig: go.Figure, moments: pl.DataFrame, y: dict[str, int], other_clock: str) -> None:
    shifted = moments.filter(
        ((pl.col("t_other_ms") - pl.col("t_ms")).abs() > 0) & pl.col("lane").is_in(list(y))
    )
    if shifted.is_empty():
        return
    fig.add_trace(
        go.Scatter(
            x=shifted["t_other_ms"].to_list(),
            y=[y[lane] for lane in shifted["lane"]],
            mode="markers",
            name=f"on the {plot_text(other_clock)}",
            marker={"symbol": "line-ns-open", "size": 22, "color": "#636363", "line": {"width": 2}},
            customdata=[[label] for label in plain_labels(shifted)["label"]],
            hovertemplate="%{customdata[0]} at %{x:.3f} ms on the "
            + plot_text(other_clock)
            + "<extra></extra>",
        )
    )


def _flows(
    fig: go.Figure, moments: pl.DataFrame, events: pl.DataFrame, y: dict[str, int], focus: tuple[float, float]
) -> None:
    """Flow arrows: from the culprit's access, in flight, to the victim's alloc of its pages (or the
    victim's access it runs into); and from the access landing to the victim's next read."""
    by_key = {str(row["key"]): row for row in moments.iter_rows(named=True)}
    access = by_key.get("posted")
    if access is None or access["lane"] not in y:
        return
    source_y = y[access["lane"]]
    mid = (focus[0] + focus[1]) / 2
    target = by_key.get("target", by_key.get("alloc"))
    if target is not None and target["lane"] in y:
        text = (
            "in flight into the victim's pages"
            if target["key"] == "alloc"
            else "still in flight as the victim reads"
        )
        _arrow(fig, target["t_ms"], source_y, y[target["lane"]], text, target["t_ms"] < mid)
    if "lands" in by_key:
        lands = float(by_key["lands"]["t_ms"])
        reads = events.filter(
            (pl.col("who") == "victim") & (pl.col("op") == "read") & (pl.col("x0_ms") >= lands)
        )
        if not reads.is_empty() and reads.item(0, "lane") in y:
            read = reads.sort("x0_ms", maintain_order=True).row(0, named=True)
            _arrow(
                fig,
                lands,
                source_y,
                y[read["lane"]],
                "lands in the victim's pages",
                lands < mid,
                float(read["x0_ms"]),
            )


def _arrow(
    fig: go.Figure, x: float, y0: int, y1: int, text: str, label_right: bool, x1: float | None = None
) -> None:
    """An arrow from (x, y0) to (x1 or x, y1), labelled beside its start on the side with room."""
    fig.add_annotation(
        x=x if x1 is None else x1,
        y=y1,
        ax=x,
        ay=y0,
        xref="x",
        yref="y",
        axref="x",
        ayref="y",
        showarrow=True,
        arrowhead=3,
        arrowsize=1.4,
        arrowwidth=2,
        arrowcolor=FLOW_COLOUR,
        standoff=9,
        text="",
        name="flow",
    )
    fig.add_annotation(
        x=x,
        y=y0 + (y1 - y0) * 0.35,
        xref="x",
        yref="y",
        text=plot_text(text),
        showarrow=False,
        xanchor="left" if label_right else "right",
        xshift=6 if label_right else -6,
        bgcolor="rgba(255,255,255,0.8)",
        font={"color": FLOW_COLOUR, "size": 11},
        name="flow label",
    )


def _short(lane: str, limit: int = 36) -> str:
    """A lane's tick label: long span names (stock SGLang's thread spans) cut, the hover has them whole."""
    return lane if len(lane) <= limit else lane[: limit - 1] + "…"
