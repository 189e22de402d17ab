"""Build the report directory: report.html (self-contained), summary.md, findings.parquet/.jsonl."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import plotly.graph_objects as go
import pyarrow as pa

from kvtrace.analytics import evaluation, findings, runner
from kvtrace.analytics.summary import Summary, summarise
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


def _table(con: duckdb.DuckDBPyConnection, name: str) -> pa.Table:
    return runner.computed(con, name)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        shown = ", ".join(str(v) for v in value[:12])
        return f"[{shown}{', ...' if len(value) > 12 else ''}]"
    return str(value)


def _html_table(table: pa.Table, columns: list[str], limit: int = 50) -> str:
    rows = table.select(columns).slice(0, limit).to_pylist()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    more = f"<p class='more'>{table.num_rows - limit} more rows in the store.</p>" if table.num_rows > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _md_cell(value: Any) -> str:
    """A table cell of summary.md: numbers as they are, any text (a trace value) escaped to stay text."""
    if isinstance(value, str | list | dict | bytes):
        return md(_fmt(value))
    return _fmt(value)


def _md_table(table: pa.Table, columns: list[str], limit: int = 20) -> str:
    rows = table.select(columns).slice(0, limit).to_pylist()
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]  # our column names
    lines += ["| " + " | ".join(_md_cell(r[c]) for c in columns) + " |" for r in rows]
    if table.num_rows > limit:
        lines.append(f"\n({table.num_rows - limit} more rows in the store)")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
.verdict{font-size:1.25em;background:#fff4e5;border-left:6px solid #e67e22;padding:.8em 1em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 6px}
th{background:#f4f4f4}.more{color:#777;font-size:.85em}"""

FINDING_COLUMNS = ["finding_id", "kind", "instance", "tp_rank", "kv_pool", "pages", "layers", "culprit_rid",
                   "victim_rid", "window_start_ns", "window_end_ns", "confidence", "refute_margin"]


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


def build_report(con: duckdb.DuckDBPyConnection, out_dir: Path, labels_path: Path | None = None) -> ReportFiles:
    """Compute everything on `con` and write the report files into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runner.compute(con)
    summary = summarise(con)
    found = _table(con, "findings")
    tables = {name: _table(con, name) for name in (
        "anomaly_rate_by_version", "anomaly_linkage", "relative_risk", "attribute_attribution",
        "version_comparison", "anomaly_leads", "skew_bounds")}
    labels = evaluation.load_labels(labels_path) if labels_path else None
    sweep = evaluation.monitor_sweep(con, labels) if labels else None
    scores = evaluation.score_findings(found, labels) if labels else None

    parquet, jsonl = out_dir / "findings.parquet", out_dir / "findings.jsonl"
    findings.write(found, parquet, "parquet")
    findings.write(found, jsonl, "jsonl")

    figures: list[tuple[str, go.Figure]] = [
        ("rates", charts.anomaly_rate_by_version(tables["anomaly_rate_by_version"])),
        ("timeline", charts.findings_timeline(found)),
        ("risk", charts.relative_risk(tables["relative_risk"])),
        ("attribution", charts.attribution(tables["attribute_attribution"])),
        ("delay", charts.symptom_delay(tables["anomaly_linkage"])),
        ("throughput", charts.version_comparison(tables["version_comparison"], "output_tokens_per_s",
                                                 "Decode throughput (output tokens/s) by context length")),
        ("ttft", charts.version_comparison(tables["version_comparison"], "ttft_p50_s",
                                           "Median time to first token (s) by context length")),
        ("hit", charts.version_comparison(tables["version_comparison"], "cache_hit_rate",
                                          "Prefix cache hit rate by context length")),
    ]
    if sweep is not None:
        figures.append(("monitor", charts.monitor_sweep(sweep)))
    html_path = out_dir / "report.html"
    html_path.write_text(_render_html(summary, found, tables, figures, sweep, scores), encoding="utf-8")
    md_path = out_dir / "summary.md"
    md_path.write_text(_render_markdown(summary, found, tables, sweep, scores), encoding="utf-8")
    return ReportFiles(html_path, md_path, parquet, jsonl, summary.verdict)


def _score_table(scores: list[evaluation.RaceScore]) -> pa.Table:
    return pa.Table.from_pylist([{
        "kind": s.kind, "true_races": s.true_races, "findings": s.findings, "recall": s.recall,
        "precision": s.precision, "victims_right": s.victims_right, "certain_contradicted": s.certain_contradicted,
    } for s in scores])


def _render_html(summary: Summary, found: pa.Table, tables: dict[str, pa.Table],
                 figures: list[tuple[str, go.Figure]], sweep: pa.Table | None,
                 scores: list[evaluation.RaceScore] | None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>kvtrace report</title>"
             f"<style>{_CSS}</style></head><body><h1>kvtrace report</h1>",
             f"<p class='verdict'>{html.escape(summary.verdict)}</p>",
             "<h2>Coverage: what the store could show</h2>" + _html_table(_analyses_table(summary),
                                                                        ["analysis", "status", "missing"])
             + _html_table(_coverage_table(summary), ["evidence", "records", "present", "how to get it"])]
    for i, (_name, fig) in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
        if _name == "timeline":
            parts.append("<h2>Findings</h2>" + _html_table(found, FINDING_COLUMNS))
        if _name == "rates":
            parts.append("<h2>Anomaly rate by version</h2>" + _html_table(
                tables["anomaly_rate_by_version"], tables["anomaly_rate_by_version"].column_names[:13]))
    parts.append("<h2>Unexplained anomalies (leads)</h2>" + _html_table(
        tables["anomaly_leads"], ["rid", "anomaly", "reasons", "instance_id", "service_version", "prompt_tokens"]))
    parts.append("<h2>Clock skew bounds</h2>" + _html_table(tables["skew_bounds"], tables["skew_bounds"].column_names))
    if scores is not None:
        parts.append("<h2>Findings against the ground truth</h2>" + _html_table(_score_table(scores),
                                                                               _score_table(scores).column_names))
    if sweep is not None:
        parts.append("<h2>Online abort rule: threshold sweep</h2>" + _html_table(sweep, sweep.column_names))
    parts.append("</body></html>")
    return "\n".join(parts)


def _render_markdown(summary: Summary, found: pa.Table, tables: dict[str, pa.Table], sweep: pa.Table | None,
                     scores: list[evaluation.RaceScore] | None) -> str:
    rates = tables["anomaly_rate_by_version"]
    sections = [
        # the verdict quotes instance ids and versions from the traces: escaped, like every value here
        "# kvtrace report", "", f"**{md(summary.verdict)}**", "",
        f"{summary.requests} requests, {summary.anomalies} anomalous outputs, {summary.explained} explained by a finding.",
        "", "## Coverage: what the store could show", "",
        _md_table(_analyses_table(summary), ["analysis", "status", "missing"]), "",
        _md_table(_coverage_table(summary), ["evidence", "records", "present", "how to get it"]),
        "", "## Findings by kind", "",
        "| kind | findings | certain |", "| --- | --- | --- |",
        *[f"| {md(k)} | {n} | {summary.certain_by_kind.get(k, 0)} |" for k, n in sorted(summary.findings_by_kind.items())],
        "", "## Anomaly rate by version", "", _md_table(rates, rates.column_names[:13]),
        "", "## Relative risk", "", _md_table(tables["relative_risk"], tables["relative_risk"].column_names),
        "", "## What sets anomalous requests apart", "",
        _md_table(tables["attribute_attribution"], tables["attribute_attribution"].column_names, limit=10),
        "", "## Findings", "", _md_table(found, FINDING_COLUMNS),
        "", "## Unexplained anomalies (leads)", "",
        _md_table(tables["anomaly_leads"], ["rid", "anomaly", "reasons", "instance_id", "service_version"]),
        "", "## Versions by context length", "",
        _md_table(tables["version_comparison"], tables["version_comparison"].column_names),
    ]
    if scores is not None:
        sections += ["", "## Findings against the ground truth", "", _md_table(_score_table(scores),
                                                                              _score_table(scores).column_names)]
    if sweep is not None:
        sections += ["", "## Online abort rule: threshold sweep", "", _md_table(sweep, sweep.column_names, limit=40)]
    return "\n".join(sections) + "\n"
