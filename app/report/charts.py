"""Plotly figures of the report, one small function per chart; each takes a pyarrow table.

plotly renders a subset of HTML in every text it draws (names, ticks, hover, text): each string
made from a table value goes through `plot_text` (as `_t`) so it shows as its text.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pyarrow as pa

from kvtrace.app.escape import plot_text as _t

_LAYOUT = {"template": "plotly_white", "height": 380, "margin": {"l": 60, "r": 20, "t": 50, "b": 50}}


def _rows(table: pa.Table) -> list[dict[str, object]]:
    return list(table.to_pylist())


def anomaly_rate_by_version(rates: pa.Table) -> go.Figure:
    rows = _rows(rates)
    fig = go.Figure(go.Bar(
        x=[_t(r["service_version"]) for r in rows], y=[r["per_10k"] for r in rows],
        text=[f"{r['anomalies']} / {r['requests']}" for r in rows], textposition="outside",
    ))
    fig.update_layout(title="Anomalous outputs per 10,000 requests, by service.version",
                      yaxis_title="per 10k", **_LAYOUT)
    return fig


def findings_timeline(findings: pa.Table) -> go.Figure:
    """Each finding's unsafe window as a horizontal segment, one row per (instance, rank, pool)."""
    fig = go.Figure()
    rows = _rows(findings)
    t0 = min((int(str(r["window_start_ns"])) for r in rows), default=0)
    for kind in sorted({str(r["kind"]) for r in rows}):
        xs: list[float | None] = []
        ys: list[str | None] = []
        texts: list[str | None] = []
        for r in rows:
            if r["kind"] != kind:
                continue
            lane = _t(f"{r['instance']} r{r['tp_rank']} {r['kv_pool']}")
            label = _t(f"{r['finding_id']} {r['confidence']} victim={r['victim_rid']}")
            xs += [(int(str(r["window_start_ns"])) - t0) / 1e9, (int(str(r["window_end_ns"])) - t0) / 1e9, None]
            ys += [lane, lane, None]
            texts += [label, label, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=_t(kind), text=texts,
                                 hoverinfo="text+x", line={"width": 6}))
    fig.update_layout(title="Unsafe windows (decode-instance clock, s from the first finding)",
                      xaxis_title="seconds", **_LAYOUT)
    return fig


def relative_risk(risk: pa.Table) -> go.Figure:
    """Relative risk per exposure on a log axis, each bar drawn from RR = 1 (no difference) to its value.

    On a log axis plotly starts bars at the bottom of the range, which autorange puts near the
    smallest value: one RR of 4,000 then shows as a sliver. Bars based at 1 and a range that always
    holds 1 make a bar's length the risk's order of magnitude. An unbounded RR (no anomaly among the
    unexposed) has no bar; the report says it in words.
    """
    rows = [r for r in _rows(risk) if r["relative_risk"] is not None and math.isfinite(float(str(r["relative_risk"])))
            and float(str(r["relative_risk"])) > 0]
    values = [float(str(r["relative_risk"])) for r in rows]
    fig = go.Figure(go.Bar(
        x=[_t(r["exposure"]) for r in rows], y=[v - 1.0 for v in values], base=[1.0] * len(rows),
        customdata=[_rr(v) for v in values], hovertemplate="relative risk %{customdata}<extra></extra>",
        text=[f"RR {_rr(v)}: {r['exposed_anomalous']}/{r['exposed']} vs {r['unexposed_anomalous']}/{r['unexposed']}"
              for r, v in zip(rows, values, strict=True)], textposition="outside",
    ))
    lo, hi = min([*values, 1.0]), max([*values, 1.0])
    # (no annotation: on a log axis plotly reads an annotation's y as log10, which misplaces it)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#555")
    fig.update_layout(title="Relative risk of an anomalous output: victims of a finding vs the rest",
                      **_LAYOUT)
    # a decade of room each side (the text sits above the bar), in log10 units as plotly wants
    fig.update_yaxes(type="log", range=[math.log10(lo) - 0.5, math.log10(hi) + 1.0],
                     title="relative risk (log scale; bars from RR = 1, no difference)")
    return fig


def _rr(value: float) -> str:
    """A relative risk as a person reads it: '4,000', '39', '2.5', '0.42'."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def attribution(attr: pa.Table, top: int = 15) -> go.Figure:
    rows = _rows(attr)[:top][::-1]
    fig = go.Figure(go.Bar(
        x=[r["difference"] for r in rows], y=[_t(f"{r['attribute']}={r['value']}") for r in rows], orientation="h",
        text=[f"{float(str(r['share_anomalous'])):.0%} of anomalous vs {float(str(r['share_normal'])):.0%} of normal"
              for r in rows],
    ))
    fig.update_layout(title="What sets anomalous requests apart (share among anomalous - share among normal)",
                      xaxis_title="difference in share", **{**_LAYOUT, "height": 480, "margin": {"l": 220}})
    return fig


def version_comparison(cmp: pa.Table, metric: str, title: str) -> go.Figure:
    rows = _rows(cmp)
    fig = go.Figure()
    for version in dict.fromkeys(str(r["service_version"]) for r in rows):
        sel = [r for r in rows if str(r["service_version"]) == version]
        fig.add_trace(go.Bar(name=_t(version), x=[_t(r["context_bucket"]) for r in sel], y=[r[metric] for r in sel]))
    fig.update_layout(title=title, xaxis_title="context length", barmode="group", **_LAYOUT)
    return fig


def symptom_delay(linkage: pa.Table) -> go.Figure:
    delays = [int(str(r["delay_ns"])) / 1e6 for r in _rows(linkage) if r["delay_ns"] is not None]
    fig = go.Figure(go.Histogram(x=delays, nbinsx=30))
    fig.update_layout(title="Delay from the unsafe window's start to the first abnormal speculative step",
                      xaxis_title="ms", yaxis_title="anomalous victims", **_LAYOUT)
    return fig


def monitor_sweep(sweep: pa.Table) -> go.Figure:
    """Precision against recall of the online abort rule per threshold pair, both on 0..1 (a rate
    cannot exceed 1, and a precision of 1% must look like 1%)."""
    rows = _rows(sweep)
    fig = go.Figure()
    for rate in sorted({float(str(r["high_accept_rate"])) for r in rows}):
        sel = [r for r in rows if float(str(r["high_accept_rate"])) == rate]
        fig.add_trace(go.Scatter(x=[r["recall"] for r in sel], y=[r["precision"] for r in sel],
                                 mode="lines+markers", name=f"rate > {rate}",
                                 text=[f"accept length < {r['low_accept_length']}: {r['true_positives']} caught, "
                                       f"{r['false_positives']} good requests aborted" for r in sel]))
    fig.update_layout(title="Online abort rule against the ground truth: precision vs recall per threshold",
                      **_LAYOUT)
    fig.update_xaxes(title="recall", range=[0, 1.05], tickformat=".0%")
    fig.update_yaxes(title="precision", range=[0, 1.05], tickformat=".0%")
    return fig
