"""`kvtrace analyses / query / findings / analyze / report` through CliRunner on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from kvtrace.app.cli import main
from kvtrace.app.escape import md

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def store(mixed_ingested: Path) -> Path:
    """sample_traces/mixed ingested (conftest's session store; these commands only read it)."""
    return mixed_ingested


def test_analyses_lists_every_sql_file() -> None:
    result = CliRunner().invoke(main, ["analyses"])
    assert result.exit_code == 0
    for path in (ROOT / "analytics" / "sql").glob("*.sql"):
        assert path.stem in result.output


def test_query_prints_csv_and_refuses_writes(store: Path) -> None:
    ok = CliRunner().invoke(main, ["query", "--db", str(store), "SELECT op, count(*) AS n FROM kv_events "
                                   "WHERE op = 'transfer' GROUP BY op"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[0] == '"op","n"'
    bad = CliRunner().invoke(main, ["query", "--db", str(store), "DELETE FROM kv_events"])
    assert bad.exit_code == 1
    assert "only SELECT/EXPLAIN" in bad.output


def test_missing_store_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["findings", "--db", str(tmp_path / "nope.duckdb")])
    assert result.exit_code == 1
    assert "does not exist: run `kvtrace ingest PATH --db" in result.output and "Traceback" not in result.output


def test_findings_in_every_format(store: Path, tmp_path: Path) -> None:
    jsonl = CliRunner().invoke(main, ["findings", "--db", str(store)])
    rows = [json.loads(line) for line in jsonl.output.splitlines()]
    assert len(rows) == 20
    assert list(rows[0])[:13] == ["finding_id", "kind", "instance", "tp_rank", "kv_pool", "pages", "layers",
                                  "culprit_rid", "victim_rid", "window_start_ns", "window_end_ns", "confidence",
                                  "evidence_span_ids"]
    out = tmp_path / "f.parquet"
    assert CliRunner().invoke(main, ["findings", "--db", str(store), "--format", "parquet", "--out", str(out)]).exit_code == 0
    assert pq.read_table(out).to_pylist() == rows
    csv = CliRunner().invoke(main, ["findings", "--db", str(store), "--format", "csv"])
    assert len(csv.output.splitlines()) == 21


def test_report_writes_html_markdown_and_findings_with_a_verdict(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    labels = ROOT / "sample_traces" / "mixed" / "labels.json"
    result = CliRunner().invoke(main, ["report", "--db", str(store), "--out", str(out), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    verdict = result.output.splitlines()[0]
    # incidents are the unit (one culprit action over every rank and pool), findings follow
    assert verdict.startswith("6 incidents: 2 abort_before_write_complete (3 victims) on ")
    assert "; 4 read_before_load (4 victims) on " in verdict
    assert "; 20 findings across ranks, pools and victims (12 abort_before_write_complete, 8 read_before_load)" in verdict
    assert "anomaly rate" in verdict and "per 10k in before-fix" in verdict
    page = (out / "report.html").read_text()
    assert verdict in page
    assert "<script src=" not in page and "Plotly.newPlot" in page  # plotly inline: opens offline
    assert "Online abort rule: threshold sweep" in page
    summary_md = (out / "summary.md").read_text()
    assert f"**{md(verdict)}**" in summary_md  # escaped: the verdict quotes values from the traces
    assert pq.read_table(out / "findings.parquet").num_rows == 20
    assert len((out / "findings.jsonl").read_text().splitlines()) == 20
