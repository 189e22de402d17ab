"""Build the report directory: report.html (self-contained), summary.md, findings.parquet/.jsonl."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import plotly.graph_objects as go
import pyarrow as pa

from kvtrace.analytics import evaluation, findings, reuse, runner
from kvtrace.analytics.summary import Summary, summarise
from kvtrace.app import readable
from kvtrace.app.escape import md
from kvtrace.app.report import charts


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by one report."""

    html: Path
    markdown: Path
    findings_parquet: Path
    findings_jsonl: Path
    verdict: str
    analyses_note: str = ""   # whether the stored `kvtrace analyze` results were reused, in words
    reused: bool = False


def _table(con: duckdb.DuckDBPyConnection, name: str) -> pa.Table:
    return runner.computed(con, name)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    if isinstance(value, list):
        shown = ", ".join(str(v) for v in value[:12])
        return f"[{shown}{', ...' if len(value) > 12 else ''}]"
    return str(value)


def _html_table(table: pa.Table, columns: list[str], limit: int = 50, nowrap: tuple[str, ...] = ()) -> str:
    if table.num_rows == 0:
        return "<p class='none'>None.</p>"
    rows = table.select(columns).slice(0, limit).to_pylist()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f"<td{' class=nowrap' if c in nowrap else ''}>{html.escape(_fmt(r[c]))}</td>" for c in columns) + "</tr>"
        for r in rows)
    more = f"<p class='more'>{table.num_rows - limit} more rows in the store.</p>" if table.num_rows > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _md_cell(value: Any) -> str:
    """A table cell of summary.md: numbers as they are, any text (a trace value) escaped to stay text."""
    if isinstance(value, str | list | dict | bytes):
        return md(_fmt(value))
    return _fmt(value)


def _md_table(table: pa.Table, columns: list[str], limit: int = 20) -> str:
    if table.num_rows == 0:
        return "None."
    rows = table.select(columns).slice(0, limit).to_pylist()
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]  # our column names
    lines += ["| " + " | ".join(_md_cell(r[c]) for c in columns) + " |" for r in rows]
    if table.num_rows > limit:
        lines.append(f"\n({table.num_rows - limit} more rows in the store)")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
.verdict{font-size:1.25em;background:#fff4e5;border-left:6px solid #e67e22;padding:.8em 1em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 6px}
th{background:#f4f4f4}.more{color:#777;font-size:.85em}td{vertical-align:top}td.nowrap{white-space:nowrap}
.none{color:#555;font-style:italic}.note{color:#555}details{margin:.3em 0}summary{cursor:pointer}"""

# The report's tables as a person reads them: page sets as ranges, times as UTC clock time, windows
# as durations (with the clock bound's upper end), one incident a row and its findings below it.
INCIDENT_COLUMNS = ["incident", "kind", "instance", "culprit", "culprit action", "victims", "ranks and pools",
                    "pages", "starts (UTC)", "window", "confidence", "findings"]
FINDING_COLUMNS = ["finding", "incident", "kind", "instance", "rank", "pool", "pages", "culprit", "victim",
                   "starts (UTC)", "window", "confidence", "refute margin"]
_NOWRAP = ("incident", "finding", "starts (UTC)", "rank", "pool")


def _incident_rows(incidents: pa.Table) -> pa.Table:
    rows = []
    for i in incidents.to_pylist():
        victims = [str(v) for v in i["victim_rids"] or []]
        shown = ", ".join(victims[:3]) + (f" and {len(victims) - 3} more" if len(victims) > 3 else "")
        kind = str(i["kind"]) + (f" ({i['shape']})" if i.get("shape") else "")
        rows.append({
            "incident": i["incident_id"], "kind": kind, "instance": i["instance"], "culprit": i["culprit_rid"],
            "culprit action": i["culprit_action"] + (f" (room {i['bootstrap_room']})" if i.get("bootstrap_room") else ""),
            "victims": f"{len(victims)}: {shown}" if victims else "none (near miss)",
            "ranks and pools": readable.ranks_and_pools(i["tp_ranks"], i["kv_pools"]),
            "pages": f"{int(i['n_pages']):,}" if i["n_pages"] else "-",
            "starts (UTC)": readable.clock_time(i["window_start_ns"]),
            "window": readable.window(i["window_start_ns"], i["window_end_ns"]),
            "confidence": i["confidence"],
            "findings": f"{i['n_findings']} ({i['n_certain']} certain)",
        })
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in INCIDENT_COLUMNS]))


def _finding_rows(found: pa.Table, incident_of: dict[str, str], incident_order: list[str] | None = None) -> pa.Table:
    """One readable row per finding, in the incidents' order (then rank, pool, window start)."""
    rank = {inc: i for i, inc in enumerate(incident_order or [])}
    ordered = sorted(found.to_pylist(), key=lambda f: (
        rank.get(incident_of.get(str(f["finding_id"]), ""), len(rank)), f["tp_rank"] if f["tp_rank"] is not None else -1,
        str(f["kv_pool"] or ""), int(f["window_start_ns"] or 0), str(f["finding_id"])))
    rows = []
    for f in ordered:
        rows.append({
            "finding": f["finding_id"], "incident": incident_of.get(str(f["finding_id"]), "-"), "kind": f["kind"],
            "instance": f["instance"], "rank": "-" if f["tp_rank"] is None else str(f["tp_rank"]),
            "pool": f["kv_pool"] or "-", "pages": readable.page_ranges(f["pages"]),
            "culprit": f["culprit_rid"], "victim": f["victim_rid"] or "-",
            "starts (UTC)": readable.clock_time(f["window_start_ns"]),
            "window": readable.window(f["window_start_ns"], f["window_end_ns"], f.get("window_end_earliest_ns")),
            "confidence": f["confidence"], "refute margin": f.get("refute_margin") or "",
        })
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in FINDING_COLUMNS]))


SKEW_COLUMNS = ["prefill host", "decode host", "offset (prefill - decode)", "estimate", "ordering pairs",
                "consistent"]


def _skew_rows(skew: pa.Table) -> pa.Table:
    """Clock offset bounds as durations ('-1.6 ms .. 18.36 s'): an unbounded side reads 'unbounded'."""
    rows = []
    for r in skew.to_pylist():
        lo = "unbounded" if r["offset_lo_ns"] is None else readable.duration(r["offset_lo_ns"])
        hi = "unbounded" if r["offset_hi_ns"] is None else readable.duration(r["offset_hi_ns"])
        rows.append({"prefill host": r["prefill_host"], "decode host": r["decode_host"],
                     "offset (prefill - decode)": f"{lo} .. {hi}", "estimate": readable.duration(r["offset_est_ns"]),
                     "ordering pairs": f"{r['n_lower_pairs']:,} / {r['n_upper_pairs']:,}",
                     "consistent": "yes" if r["consistent"] else "no"})
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in SKEW_COLUMNS]))


def _incident_kinds_table(summary: Summary) -> pa.Table:
    return pa.Table.from_pylist([{
        "kind": k.kind, "incidents": k.incidents, "victims": k.victims, "findings": k.findings,
        "certain incidents": k.certain,
    } for k in sorted(summary.incidents_by_kind.values(), key=lambda k: k.kind)],
        schema=pa.schema([("kind", pa.string()), ("incidents", pa.int64()), ("victims", pa.int64()),
                          ("findings", pa.int64()), ("certain incidents", pa.int64())]))


def sweep_words(sweep: pa.Table) -> str:
    """The threshold sweep of the online abort rule in one sentence: its best precision, and how
    many good requests it would abort to catch the bad ones (a precision of 1% is otherwise only a
    row of dots at the bottom of a chart)."""
    rows = [r for r in sweep.to_pylist() if r["precision"] is not None]
    if not rows:
        return "The online abort rule never fired on this store, at any threshold pair."
    best = max(rows, key=lambda r: (r["precision"], r["recall"] or 0))
    fps = sorted(int(r["false_positives"]) for r in rows)
    tps = sorted(int(r["true_positives"]) for r in rows)
    bad = int(best["true_positives"]) + int(best["false_negatives"])
    pairs = f"over the {len(rows)} threshold pairs" if len(rows) > 1 else "at the one threshold pair"
    sentence = (f"Precision of the online abort rule is at most {_percent(best['precision'])} {pairs} (best at "
                f"accept length < {best['low_accept_length']:g} and accept rate > {best['high_accept_rate']:g}): "
                f"it would abort {_span(fps)} good requests to catch {_span(tps)} of the {bad:,} bad ones")
    if best["precision"] < 0.5:
        sentence += ", more good requests than bad ones at every threshold"
    return sentence + "."


def _span(values: list[int]) -> str:
    return f"{values[0]:,}" if values[0] == values[-1] else f"{values[0]:,}-{values[-1]:,}"


def _percent(value: float) -> str:
    """0.01724 -> '1.7%', 0.4 -> '40%'."""
    pct = float(value) * 100
    return f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def _coverage_table(summary: Summary) -> pa.Table:
    """What the store holds, per kind of evidence, and what each race analysis could do with it."""
    evidence = summary.coverage.evidence.values()
    return pa.Table.from_pylist([{
        "evidence": e.label, "records": e.n, "present": e.present and not e.n_missing,
        "how to get it": "" if e.present and not e.n_missing else e.how_to_get,
    } for e in evidence])


def _analyses_table(summary: Summary) -> pa.Table:
    words = {"ran": "ran", "request_level": "request level only", "not_run": "could not run"}
    return pa.Table.from_pylist([{
        "analysis": a.name, "status": words[a.status],
        "missing": ", ".join(summary.coverage.evidence[k].label for k in a.missing),
    } for a in summary.coverage.analyses])


def build_report(con: duckdb.DuckDBPyConnection, out_dir: Path, labels_path: Path | None = None,
                 *, reuse_stored: bool = True, results: reuse.Results | None = None) -> ReportFiles:
    """Write the report files into `out_dir`, from the results `kvtrace analyze` stored when the store
    has not changed since (and `reuse_stored`), else from analyses computed now on `con`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # `results`: the analyses' tables are on `con` already (computed elsewhere: --engine spark)
    source = results if results is not None else reuse.results(con, reuse=reuse_stored)
    summary = summarise(con)
    found = _table(con, "findings")
    incidents = _table(con, "incidents")
    incident_of = {str(r["finding_id"]): str(r["incident_id"])
                   for r in _table(con, "finding_incidents").select(["finding_id", "incident_id"]).to_pylist()}
    tables = {name: _table(con, name) for name in (
        "anomaly_rate_by_version", "anomaly_linkage", "relative_risk", "attribute_attribution",
        "version_comparison", "anomaly_leads", "skew_bounds")}
    labels = evaluation.load_labels(labels_path) if labels_path else None
    sweep = evaluation.monitor_sweep(con, labels) if labels else None
    scores = evaluation.score_findings(found, labels) if labels else None

    parquet, jsonl = out_dir / "findings.parquet", out_dir / "findings.jsonl"
    findings.write(found, parquet, "parquet")
    findings.write(found, jsonl, "jsonl")

    figures: dict[str, go.Figure] = {
        "timeline": charts.findings_timeline(found),
        "rates": charts.anomaly_rate_by_version(tables["anomaly_rate_by_version"]),
        "risk": charts.relative_risk(tables["relative_risk"]),
        "attribution": charts.attribution(tables["attribute_attribution"]),
        "delay": charts.symptom_delay(tables["anomaly_linkage"]),
        "throughput": charts.version_comparison(tables["version_comparison"], "output_tokens_per_s",
                                                "Decode throughput (output tokens/s) by context length"),
        "ttft": charts.version_comparison(tables["version_comparison"], "ttft_p50_s",
                                          "Median time to first token (s) by context length"),
        "hit": charts.version_comparison(tables["version_comparison"], "cache_hit_rate",
                                         "Prefix cache hit rate by context length"),
    }
    if sweep is not None:
        figures["monitor"] = charts.monitor_sweep(sweep)
    content = _Content(summary, source, found, incidents, incident_of, tables, figures, sweep, scores)
    html_path = out_dir / "report.html"
    html_path.write_text(_render_html(content), encoding="utf-8")
    md_path = out_dir / "summary.md"
    md_path.write_text(_render_markdown(content), encoding="utf-8")
    return ReportFiles(html_path, md_path, parquet, jsonl, summary.verdict, source.note, source.reused)


@dataclass(frozen=True)
class _Content:
    summary: Summary
    source: reuse.Results
    found: pa.Table
    incidents: pa.Table
    incident_of: dict[str, str]   # finding_id -> incident_id
    tables: dict[str, pa.Table]
    figures: dict[str, go.Figure]
    sweep: pa.Table | None
    scores: list[evaluation.RaceScore] | None

    @property
    def incident_order(self) -> list[str]:
        return [str(i) for i in self.incidents.column("incident_id").to_pylist()]


def _score_table(scores: list[evaluation.RaceScore]) -> pa.Table:
    return pa.Table.from_pylist([{
        "kind": s.kind, "true_races": s.true_races, "findings": s.findings, "recall": s.recall,
        "precision": s.precision, "victims_right": s.victims_right, "certain_contradicted": s.certain_contradicted,
    } for s in scores])


def risk_words(risk: pa.Table) -> list[str]:
    """What the relative-risk chart cannot draw, in words: an exposure whose unexposed requests had no
    anomaly at all (the risk ratio is unbounded)."""
    out = []
    for r in risk.to_pylist():
        value = r["relative_risk"]
        if value is None or not math.isfinite(float(value)):
            out.append(f"{r['exposure']}: {r['exposed_anomalous']} of {r['exposed']} exposed requests were anomalous "
                       f"and none of the {r['unexposed']} others, so the relative risk is unbounded (not drawn)")
    return out


def _findings_by_incident_html(c: _Content, limit: int = 100) -> str:
    """The findings one level down: a collapsed block per incident with its per-rank/pool findings."""
    rows = _finding_rows(c.found, c.incident_of, c.incident_order)
    by_incident: dict[str, list[int]] = {}
    for i, incident in enumerate(rows.column("incident").to_pylist()):
        by_incident.setdefault(str(incident), []).append(i)
    parts = []
    for inc in c.incidents.slice(0, limit).to_pylist():
        members = by_incident.pop(str(inc["incident_id"]), [])
        summary = (f"{inc['incident_id']} · {inc['kind']} on {inc['instance']} · culprit {inc['culprit_rid']} · "
                   f"{len(members)} finding{'' if len(members) == 1 else 's'}")
        parts.append(f"<details><summary>{html.escape(summary)}</summary>"
                     f"{_html_table(rows.take(members), FINDING_COLUMNS, limit=200, nowrap=_NOWRAP)}</details>")
    rest = [i for ids in by_incident.values() for i in ids]
    if rest:
        parts.append(f"<p class='more'>{len(rest)} findings of {c.incidents.num_rows - limit} more incidents "
                     "are in the store (findings.jsonl has them all).</p>")
    return "".join(parts) or "<p class='none'>None.</p>"


def _render_html(c: _Content) -> str:
    summary, tables, figures = c.summary, c.tables, c.figures
    plotted = iter(range(len(figures)))

    def fig(name: str) -> str:  # plotly.js inline once, with the first figure
        return str(figures[name].to_html(full_html=False, include_plotlyjs=(next(plotted) == 0)))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>kvtrace report</title>"
             f"<style>{_CSS}</style></head><body><h1>kvtrace report</h1>",
             f"<p class='verdict'>{html.escape(summary.verdict)}</p>",
             f"<p class='note'>{html.escape(c.source.note)}</p>",
             "<h2>Coverage: what the store could show</h2>" + _html_table(_analyses_table(summary),
                                                                        ["analysis", "status", "missing"])
             + _html_table(_coverage_table(summary), ["evidence", "records", "present", "how to get it"]),
             "<h2>Incidents</h2><p class='note'>One incident is one culprit action (a transfer into pages released "
             "early, a HiCache load, an aborted request) and all its victims, over every TP rank and KV pool.</p>"
             + _html_table(_incident_rows(c.incidents), INCIDENT_COLUMNS, limit=100, nowrap=_NOWRAP),
             "<h3>Findings by incident (per rank, pool and victim)</h3>" + _findings_by_incident_html(c),
             fig("timeline"),
             fig("rates"),
             "<h2>Anomaly rate by version</h2>" + _html_table(
                 tables["anomaly_rate_by_version"], tables["anomaly_rate_by_version"].column_names[:13]),
             fig("risk")]
    parts += [f"<p class='note'>{html.escape(w)}.</p>" for w in risk_words(tables["relative_risk"])]
    parts += [fig(name) for name in ("attribution", "delay", "throughput", "ttft", "hit")]
    parts.append("<h2>Unexplained anomalies (leads)</h2>" + _html_table(
        tables["anomaly_leads"], ["rid", "anomaly", "reasons", "instance_id", "service_version", "prompt_tokens"]))
    parts.append("<h2>Clock skew bounds</h2><p class='note'>The offset of each prefill host's clock from each "
                 "decode host's that the ordering evidence allows (lower / upper ordering pairs).</p>"
                 + _html_table(_skew_rows(tables["skew_bounds"]), SKEW_COLUMNS, nowrap=tuple(SKEW_COLUMNS)))
    if c.scores is not None:
        parts.append("<h2>Findings against the ground truth</h2>" + _html_table(_score_table(c.scores),
                                                                               _score_table(c.scores).column_names))
    if c.sweep is not None:
        parts.append("<h2>Online abort rule: threshold sweep</h2>"
                     f"<p class='verdict'>{html.escape(sweep_words(c.sweep))}</p>" + fig("monitor")
                     + _html_table(c.sweep, c.sweep.column_names))
    parts.append("</body></html>")
    return "\n".join(parts)


def _render_markdown(c: _Content) -> str:
    summary, tables = c.summary, c.tables
    rates = tables["anomaly_rate_by_version"]
    finding_rows = _finding_rows(c.found, c.incident_of, c.incident_order)
    sections = [
        # the verdict quotes instance ids and versions from the traces: escaped, like every value here
        "# kvtrace report", "", f"**{md(summary.verdict)}**", "", md(c.source.note), "",
        f"{summary.requests} requests, {summary.anomalies} anomalous outputs, {summary.explained} explained by a finding.",
        "", "## Coverage: what the store could show", "",
        _md_table(_analyses_table(summary), ["analysis", "status", "missing"]), "",
        _md_table(_coverage_table(summary), ["evidence", "records", "present", "how to get it"]),
        "", "## Incidents", "", _md_table(_incident_rows(c.incidents), INCIDENT_COLUMNS, limit=50),
        "", "## Incidents by kind", "", _md_table(_incident_kinds_table(summary), _incident_kinds_table(summary).column_names),
        "", "## Findings by kind", "",
        "| kind | findings | certain |", "| --- | --- | --- |",
        *[f"| {md(k)} | {n} | {summary.certain_by_kind.get(k, 0)} |" for k, n in sorted(summary.findings_by_kind.items())],
        "", "## Findings (per rank, pool and victim; each names its incident)", "",
        _md_table(finding_rows, FINDING_COLUMNS, limit=50),
        "", "## Anomaly rate by version", "", _md_table(rates, rates.column_names[:13]),
        "", "## Relative risk", "", _md_table(tables["relative_risk"], tables["relative_risk"].column_names),
        *[f"\n{md(w)}." for w in risk_words(tables["relative_risk"])],
        "", "## What sets anomalous requests apart", "",
        _md_table(tables["attribute_attribution"], tables["attribute_attribution"].column_names, limit=10),
        "", "## Unexplained anomalies (leads)", "",
        _md_table(tables["anomaly_leads"], ["rid", "anomaly", "reasons", "instance_id", "service_version"]),
        "", "## Versions by context length", "",
        _md_table(tables["version_comparison"], tables["version_comparison"].column_names),
    ]
    if c.scores is not None:
        sections += ["", "## Findings against the ground truth", "", _md_table(_score_table(c.scores),
                                                                              _score_table(c.scores).column_names)]
    if c.sweep is not None:
        sections += ["", "## Online abort rule: threshold sweep", "", f"**{md(sweep_words(c.sweep))}**", "",
                     _md_table(c.sweep, c.sweep.column_names, limit=40)]
    return "\n".join(sections) + "\n"
