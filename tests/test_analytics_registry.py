"""The SQL registry: every file validated at load (file and line on error), every analysis runs on
the sample store, and the stored result tables have exactly the columns their analysis returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvtrace.analytics import runner
from kvtrace.analytics.errors import AnalysisDefinitionError, ReadOnlyQueryError
from kvtrace.analytics.materialise import analyze, result_tables
from kvtrace.analytics.registry import SQL_DIR, default_registry, load_registry

ROOT = Path(__file__).resolve().parents[1]


def _copy_sql(tmp_path: Path) -> Path:
    d = tmp_path / "sql"
    d.mkdir()
    for p in SQL_DIR.glob("*.sql"):
        (d / p.name).write_text(p.read_text())
    return d


def test_a_bad_column_fails_at_load_with_file_and_line(tmp_path: Path) -> None:
    d = _copy_sql(tmp_path)
    path = d / "skew_bounds.sql"
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "FROM kv_events" in line)
    lines[at] = lines[at].replace("FROM kv_events", "FROM kv_events_typo")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnalysisDefinitionError, match=rf"skew_bounds.sql:{at + 1}: Catalog Error"):
        load_registry(d)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("-- analysis: findings", "-- analysis: all_findings"), "must equal the file name"),
    (lambda t: t.replace("-- requires: abort_before_write_complete", "-- requires: nothing_like_it"),
     "requires unknown analysis 'nothing_like_it'"),
    (lambda t: t.replace("FROM all_findings", "FROM all_findings WHERE $undeclared"),
     r"parameters used but not declared: \['undeclared'\]"),
])
def test_header_mistakes_are_refused(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    d = _copy_sql(tmp_path)
    path = d / "findings.sql"
    path.write_text(edit(path.read_text()))
    with pytest.raises(AnalysisDefinitionError, match=message):
        load_registry(d, check_sql=False)


def test_every_registered_analysis_runs_on_the_sample_store(mixed_ingested: Path) -> None:
    con = runner.connect(mixed_ingested)
    registry = default_registry()
    for analysis in registry:
        table = runner.run(con, analysis.name)
        assert table.num_columns > 0, analysis.name
    assert runner.computed(con, "findings").num_rows == 20
    assert runner.computed(con, "request_anomalies").num_rows > 0


def test_analyze_stores_tables_whose_columns_equal_the_analyses(mixed_copy: Path) -> None:
    con = runner.connect(mixed_copy, read_only=False)
    summary = analyze(con)
    analyze(con)  # idempotent: rows replaced, not doubled
    for table in result_tables():
        stored = [r[0] for r in con.execute(f"DESCRIBE mixed.main.{table}").fetchall()]
        computed = [r[0] for r in con.execute(f"DESCRIBE temp.main.{table}").fetchall()]
        assert stored == computed, table
        count = con.execute(f"SELECT count(*) FROM mixed.main.{table}").fetchone()
        assert count is not None and count[0] == summary.rows[table]
    assert summary.rows["findings"] == 20
    assert con.execute("SELECT count(*) FROM analysis_runs").fetchone() == (2,)


@pytest.mark.parametrize("sql", [
    "COPY kv_events TO '/tmp/x.csv'", "ATTACH '/tmp/other.duckdb'", "CREATE TABLE t AS SELECT 1",
    "SELECT * FROM read_csv('/etc/passwd')", "INSTALL httpfs", "SELECT 1; SELECT 2",
])
def test_ad_hoc_queries_are_read_only(mixed_ingested: Path, sql: str) -> None:
    con = runner.connect(mixed_ingested)
    with pytest.raises(ReadOnlyQueryError):
        runner.read_only_query(con, sql)
