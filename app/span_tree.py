"""A request's spans as a trace UI (Jaeger/Tempo style): a span tree from parent_span_id, indented
names, timing bars on one shared time axis, instant spans as markers, evidence spans outlined.

Pure functions (polars DataFrame in, DataFrame or Figure out): no queries, no streamlit. Every text from
a trace reaches the figure through `plot_text` (app/escape.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import plotly.graph_objects as go
import polars as pl

from kvtrace.app.escape import one_line, plot_text

# Spans shorter than this, or than INSTANT_SHARE of the request's time range, would be a bar
# thinner than a pixel: they are drawn as markers at their start (kv.alloc, kv.free, request.abort).
INSTANT_MS = 0.1
INSTANT_SHARE = 0.003
# Host colours: no red (red outlines mark evidence spans). Host i of the store's sorted host list
# gets colour i, so a host keeps its colour from one request to the next.
PALETTE = [
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#e377c2",
    "#ff7f0e",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#5254a3",
    "#3182bd",
    "#31a354",
    "#756bb1",
    "#636363",
    "#6baed6",
    "#74c476",
    "#9e9ac8",
    "#fd8d3c",
    "#969696",
    "#a55194",
    "#ce6dbd",
]
EVIDENCE_COLOUR = "#d62728"
INDENT = "\u00a0\u00a0\u00a0"
MAX_LABEL = 60  # characters of a tick label (indentation included)


def host_colours(store_hosts: Iterable[str], hosts: Iterable[str]) -> dict[str, str]:
    """Colour per host: its index in the store's sorted host list, else (a host the list lacks) a hash."""
    index = {h: i for i, h in enumerate(sorted(set(store_hosts)))}
    out = {}
    for h in hosts:
        i = index.get(h)
        if i is None:
            i = int(hashlib.sha1(h.encode("utf-8", "replace")).hexdigest()[:8], 16)
        out[h] = PALETTE[i % len(PALETTE)]
    return out


def build(spans: pl.DataFrame) -> pl.DataFrame:
    """`spans` (requests.waterfall's columns) in tree order, with key, parent_key, depth,
    n_children and orphan (its parent is not among the request's spans: a forward step or a span
    of another trace that names the rid). Roots and siblings are ordered by start time."""
    if spans.is_empty():
        return spans.with_columns(
            key=pl.lit(None, pl.String),
            parent_key=pl.lit(None, pl.String),
            depth=pl.lit(None, pl.Int64),
            n_children=pl.lit(None, pl.Int64),
            orphan=pl.lit(None, pl.Boolean),
        )
    trace = pl.col("trace_id").cast(pl.String)
    parent = pl.col("parent_span_id").cast(pl.String)
    frame = spans.with_columns(
        host_name=pl.col("host_name").cast(pl.String).fill_null("?"),
        key=trace + "/" + pl.col("span_id").cast(pl.String),
        parent_key=pl.when(parent.is_not_null() & (parent != "")).then(trace + "/" + parent),
    )
    key_of = frame["key"].to_list()
    parent_of = frame["parent_key"].to_list()
    keys = set(key_of)
    has_parent = [p is not None and p in keys and p != k for k, p in zip(key_of, parent_of, strict=True)]
    frame = frame.with_columns(
        orphan=pl.Series(
            [p is not None and not h for p, h in zip(parent_of, has_parent, strict=True)], dtype=pl.Boolean
        )
    )
    children: dict[str, list[int]] = {}
    roots: list[int] = []
    order = (
        frame.with_row_index("_i")
        .sort("start_ns", "name", "span_id", maintain_order=True, nulls_last=True)["_i"]
        .to_list()
    )
    for i in order:
        if has_parent[i]:
            children.setdefault(str(parent_of[i]), []).append(int(i))
        else:
            roots.append(int(i))
    rows: list[int] = []
    depth: dict[int, int] = {}
    seen: set[int] = set()
    stack = [(i, 0) for i in reversed(roots)]
    while stack:
        i, d = stack.pop()
        if i in seen:  # a parent cycle in hostile data: each span once
            continue
        seen.add(i)
        rows.append(i)
        depth[i] = d
        stack.extend((c, d + 1) for c in reversed(children.get(str(key_of[i]), [])))
    # spans on a parent cycle never reached from a root: shown at the top level
    for i in order:
        if int(i) not in seen:
            rows.append(int(i))
            depth[int(i)] = 0
    out = frame[rows]
    return out.with_columns(
        depth=pl.Series([depth[i] for i in rows], dtype=pl.Int64),
        n_children=pl.Series([len(children.get(str(key_of[i]), [])) for i in rows], dtype=pl.Int64),
    )


def visible(tree: pl.DataFrame, collapsed: Iterable[str]) -> pl.DataFrame:
    """The rows of `tree` not inside a collapsed subtree (a collapsed span itself stays)."""
    shut = set(collapsed)
    if not shut or tree.is_empty():
        return tree
    keep = []
    hide_below: int | None = None
    for depth, key in zip(tree["depth"], tree["key"], strict=True):
        if hide_below is not None and depth > hide_below:
            keep.append(False)
            continue
        hide_below = depth if key in shut else None
        keep.append(True)
    return tree.filter(pl.Series(keep, dtype=pl.Boolean))


def instant(tree: pl.DataFrame) -> pl.Series:
    """Which spans are drawn as markers: too short for a visible bar on this request's axis."""
    if tree.is_empty():
        return pl.Series("instant", [], dtype=pl.Boolean)
    ends, starts = (tree["start_ms"] + tree["duration_ms"]).max(), tree["start_ms"].min()
    span_ms = float(ends) - float(starts)  # type: ignore[arg-type]
    return (tree["duration_ms"] < max(INSTANT_MS, INSTANT_SHARE * span_ms)).alias("instant")


def label(row: Mapping[str, object], collapsed: bool = False) -> str:
    """The tree column's text: indentation, a fold mark for a span with children, the name."""
    n = int(str(row["n_children"]))
    mark = ("▸ " if collapsed else "▾ ") if n else "\u00a0\u00a0"
    return INDENT * int(str(row["depth"])) + mark + one_line(row["name"])


def table(tree: pl.DataFrame, collapsed: Iterable[str], evidence: Mapping[str, str]) -> pl.DataFrame:
    """The span tree as a table (text cells): span, host, instance, start_ms, duration_ms, status,
    evidence (which finding cites it), span_id."""
    shut = set(collapsed)
    return tree.select(
        span=pl.Series([label(r, r["key"] in shut) for r in tree.iter_rows(named=True)], dtype=pl.String),
        host=pl.col("host_name").cast(pl.String),
        instance=pl.col("instance_id").cast(pl.String).fill_null("?"),
        start_ms=pl.col("start_ms").round(3),
        duration_ms=pl.col("duration_ms").round(3),
        status=pl.col("status_code")
        .replace_strict({0: "unset", 1: "ok", 2: "error"}, default="?", return_dtype=pl.String)
        .fill_null("?"),
        evidence=pl.Series([evidence.get(str(s), "") for s in tree["span_id"]], dtype=pl.String),
        span_id=pl.col("span_id").cast(pl.String),
    )


def figure(
    tree: pl.DataFrame,
    colours: Mapping[str, str],
    evidence: Mapping[str, str],
    selected: str | None = None,
    collapsed: Iterable[str] = (),
) -> go.Figure:
    """One row per span of `tree` (y = row number, top to bottom), a bar from start to end on the
    shared axis, or a diamond marker for an instant span; one legend entry per host; evidence spans
    outlined in red; the selected span's row shaded. Each span is in exactly one trace."""
    fig = go.Figure()
    shut = set(collapsed)
    n = len(tree)
    quick = instant(tree)
    records = tree.with_columns(_instant=quick, _row=pl.int_range(n, dtype=pl.Int64)).to_dicts()
    hosts = sorted({str(r["host_name"]) for r in records})
    for host in hosts:
        colour = colours.get(host, PALETTE[0])
        for as_marker in (False, True):
            rows = [r for r in records if str(r["host_name"]) == host and bool(r["_instant"]) == as_marker]
            if not rows:
                continue
            hover = [_hover(r, evidence.get(str(r["span_id"]))) for r in rows]
            cited = [str(r["span_id"]) in evidence for r in rows]
            common = {
                "y": [int(r["_row"]) for r in rows],
                "name": plot_text(host),
                "legendgroup": plot_text(host),
                "customdata": [str(r["span_id"]) for r in rows],
                "hovertext": hover,
                "hoverinfo": "text",
            }
            if not as_marker:
                fig.add_bar(
                    x=[float(r["duration_ms"]) for r in rows],
                    base=[float(r["start_ms"]) for r in rows],
                    orientation="h",
                    marker={
                        "color": colour,
                        "line": {
                            "color": [EVIDENCE_COLOUR if c else colour for c in cited],
                            "width": [3 if c else 0 for c in cited],
                        },
                    },
                    showlegend=True,
                    **common,
                )
            else:
                fig.add_scatter(
                    x=[float(r["start_ms"]) for r in rows],
                    mode="markers",
                    marker={
                        "symbol": "diamond",
                        "color": colour,
                        "size": [15 if c else 11 for c in cited],
                        "line": {
                            "color": [EVIDENCE_COLOUR if c else "#ffffff" for c in cited],
                            "width": [3 if c else 1 for c in cited],
                        },
                    },
                    showlegend=not any(str(r["host_name"]) == host and not r["_instant"] for r in records),
                    **common,
                )
    if selected is not None:
        hit = [r["_row"] for r in records if str(r["span_id"]) == selected]
        if hit:
            fig.add_hrect(
                y0=hit[0] - 0.5,
                y1=hit[0] + 0.5,
                fillcolor="#fde68a",
                opacity=0.5,
                line_width=0,
                layer="below",
            )
    ticks = [
        ("★ " if str(r["span_id"]) in evidence else "\u00a0\u00a0") + label(r, r["key"] in shut)
        for r in records
    ]
    # tick labels are right-aligned: padded to one width in a monospace font they read left-aligned,
    # so the indentation shows the tree
    width = min(max((len(t) for t in ticks), default=0), MAX_LABEL)
    ticks = [plot_text(t[:MAX_LABEL].ljust(width, "\u00a0")) for t in ticks]
    fig.update_yaxes(
        autorange="reversed",
        tickmode="array",
        tickvals=list(range(n)),
        ticktext=ticks,
        title=None,
        showgrid=False,
        range=None,
        tickfont={"family": "DejaVu Sans Mono, Menlo, Consolas, monospace", "size": 11},
    )
    fig.update_xaxes(title="ms since the request's first span (each host's own clock)", zeroline=False)
    fig.update_layout(
        height=max(320, 22 * n + 120),
        legend_title_text="host",
        barmode="overlay",
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        clickmode="event+select",
        yaxis={"automargin": True},
        hoverlabel={"align": "left"},
    )
    return fig


def _hover(r: Mapping[str, object], cited: str | None) -> str:
    lines = [
        f"<b>{plot_text(r['name'])}</b>",
        f"host {plot_text(r['host_name'])} · instance {plot_text(r.get('instance_id') or '?')}",
        f"start {float(str(r['start_ms'])):.3f} ms · duration {float(str(r['duration_ms'])):.3f} ms",
        f"span {plot_text(r['span_id'])}",
    ]
    if cited:
        lines.append(f"evidence: {plot_text(cited)}")
    return "<br>".join(lines)
