"""`kvtrace report` at scale: it reuses what `kvtrace analyze` stored while the store is unchanged
(and says which it did), leads with incidents, writes page sets as ranges and times as clock times,
draws relative risk and the monitor sweep on axes whose lengths read right, says the monitor's
precision in words, and says "None." for an empty table. Stores are built by the real pipeline."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner, Result

from kvtrace.analytics import evaluation, runner
from kvtrace.app.cli import main
from kvtrace.app.readable import page_ranges, window
from kvtrace.app.report import charts
from kvtrace.app.report.build import sweep_words

ROOT = Path(__file__).resolve().parents[1]
MIXED = ROOT / "sample_traces" / "mixed"


def _kv(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def mixed(mixed_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """sample_traces/mixed ingested and analysed (conftest's session store, only read here), and
    its report with the labels: (store, report dir)."""
    out = tmp_path_factory.mktemp("report") / "r"
    _kv("report", "--db", str(mixed_store), "--out", str(out), "--labels", str(MIXED / "labels.json"))
    return mixed_store, out


@pytest.mark.slow
def test_report_reuses_the_stored_results_until_the_store_changes(tmp_path: Path, mixed_ingested: Path) -> None:
    traces = tmp_path / "t"
    traces.mkdir()
    files = sorted(MIXED.glob("*.otlp.jsonl"))
    for f in files:
        shutil.copy(f, traces / f.name)
    db = tmp_path / "s.duckdb"
    _kv("ingest", *[str(traces / f.name) for f in files[:-1]], "--db", str(db))
    _kv("analyze", "--db", str(db))
    # Stored results only `analyze` writes: the report shows them only if it reads them
    con = duckdb.connect(str(db))
    con.execute("UPDATE anomaly_rate_by_version SET per_10k = 1234.5")
    con.close()
    reused = _kv("report", "--db", str(db), "--out", str(tmp_path / "r1"))
    assert "anomaly rate 1234.5 per 10k" in reused.stdout
    assert "Analysis results reused from `kvtrace analyze` at " in reused.stderr
    page = (tmp_path / "r1" / "report.html").read_text()
    assert "Analysis results reused from `kvtrace analyze` at " in page and "the store has not changed since" in page

    forced = _kv("report", "--db", str(db), "--out", str(tmp_path / "r2"), "--recompute")
    assert "1234.5" not in forced.stdout and "Analysis results computed now." in forced.stderr

    _kv("ingest", str(traces / files[-1].name), "--db", str(db))  # the store changes
    fresh = _kv("report", "--db", str(db), "--out", str(tmp_path / "r3"))
    assert "1234.5" not in fresh.stdout
    note = "Analysis results computed now: the last `kvtrace analyze` at "
    assert note in fresh.stderr and "is out of date (the store (or kvtrace's analyses) changed since)" in fresh.stderr
    assert note in (tmp_path / "r3" / "summary.md").read_text().replace("\\", "")
    # the recomputed report is the report of the whole store
    whole = mixed_ingested  # every file ingested at once, never analysed
    assert _kv("report", "--db", str(whole), "--out", str(tmp_path / "r4")).stdout == fresh.stdout


def test_incidents_come_first_and_findings_read_as_ranges_and_clock_times(mixed: tuple[Path, Path]) -> None:
    db, out = mixed
    con = duckdb.connect(str(db), read_only=True)
    findings = con.execute("SELECT finding_id, pages, window_start_ns, window_end_ns FROM findings").fetchall()
    incidents = [r[0] for r in con.execute("SELECT incident_id FROM incidents").fetchall()]
    con.close()
    summary = (out / "summary.md").read_text()
    page = (out / "report.html").read_text()
    assert summary.index("## Incidents") < summary.index("## Findings (per rank, pool and victim")
    assert page.index("<h2>Incidents</h2>") < page.index("Findings by incident")
    for incident in incidents:  # each incident a row, and a block holding its findings
        assert page.count(f"<details><summary>{incident} · ") == 1
    for finding_id, pages, start_ns, end_ns in findings:
        ranges = page_ranges(pages)
        assert re.search(rf"<td class=nowrap>{finding_id}</td>.*?<td>{re.escape(ranges)}</td>", page), finding_id
        assert str(start_ns) not in page and str(start_ns) not in summary  # no raw nanoseconds
        assert str(end_ns) not in page
    # a page set as ranges, its size counted: the pages of 264c4f41's load are 16, 21-25 and 34-45
    assert "<td>16, 21-25, 34-45 (18 pages)</td>" in page
    assert "2025-11-24 16:00:02.414" in page  # its window start, UTC clock time to the millisecond


def test_page_sets_read_as_ranges() -> None:
    assert page_ranges([*range(164, 171), *range(80_690, 80_696)]) == "164-170, 80,690-80,695 (13 pages)"
    assert page_ranges([17]) == "17 (1 page)" and page_ranges([]) == "-"
    many = [p for p in range(0, 400, 4)]  # 100 runs of one page
    assert page_ranges(many) == "0, 4, 8, 12, 16, ..., 396 (100 pages in 100 runs)"


def test_a_window_says_how_short_the_clock_bounds_allow_it_to_be() -> None:
    ms = 1_000_000
    assert window(0, 825_800_000, 12 * ms) == "825.8 ms (at least 12.0 ms for every allowed clock offset)"
    assert window(0, 381_100_000, 1_580 * ms) == "381.1 ms"  # cut short by the victim's release: that long always
    assert window(100 * ms, 127 * ms, 90 * ms) == "27.0 ms (empty for some allowed clock offsets)"
    assert window(0, 5 * ms, None) == window(0, 5 * ms, 5 * ms) == "5.0 ms"  # one clock, or no bound known


def test_an_empty_leads_table_says_none(mixed: tuple[Path, Path]) -> None:
    db, out = mixed
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM anomaly_leads").fetchone() == (0,)  # every anomaly is explained
    con.close()
    assert "## Unexplained anomalies (leads)\n\nNone." in (out / "summary.md").read_text()
    assert "<h2>Unexplained anomalies (leads)</h2><p class='none'>None.</p>" in (out / "report.html").read_text()


def test_relative_risk_bars_start_at_one_on_a_log_axis(mixed: tuple[Path, Path]) -> None:
    db, out = mixed
    con = runner.connect(db)
    risk = con.sql("SELECT * FROM relative_risk").to_arrow_table()
    con.close()
    finite = {r["exposure"]: r["relative_risk"] for r in risk.to_pylist()
              if r["relative_risk"] is not None and math.isfinite(r["relative_risk"])}
    assert finite and max(finite.values()) > 10
    fig = charts.relative_risk(risk).to_plotly_json()
    [bar] = fig["data"]
    assert list(bar["base"]) == [1.0] * len(finite)  # every bar drawn from RR = 1 ...
    ends = {x: b + y for x, b, y in zip(bar["x"], bar["base"], bar["y"], strict=True)}
    assert ends == pytest.approx(finite)  # ... to its relative risk
    axis = fig["layout"]["yaxis"]
    assert axis["type"] == "log"
    low, high = axis["range"]  # log10 units: the range holds 1 and the largest RR
    assert low <= 0 and high >= math.log10(max(finite.values()))
    # the unbounded one ('any': no anomaly among the unexposed) is said in words
    unbounded = [r["exposure"] for r in risk.to_pylist() if r["exposure"] not in finite]
    assert unbounded
    for exposure in unbounded:
        assert f"{exposure}: " in (out / "report.html").read_text()
        assert "so the relative risk is unbounded (not drawn)" in (out / "report.html").read_text()


def test_monitor_sweep_axes_are_zero_to_one_and_precision_is_said_in_words(mixed: tuple[Path, Path]) -> None:
    db, out = mixed
    con = runner.connect(db)
    sweep = evaluation.monitor_sweep(con, evaluation.load_labels(MIXED / "labels.json"))
    con.close()
    layout = charts.monitor_sweep(sweep).to_plotly_json()["layout"]
    for axis in ("xaxis", "yaxis"):
        low, high = layout[axis]["range"]
        assert low == 0 and 1 <= high <= 1.05, axis
    best = max(p for p in sweep.column("precision").to_pylist() if p is not None)
    fps = sweep.column("false_positives").to_pylist()
    words = f"Precision of the online abort rule is at most {best:.0%}"
    assert words in (out / "report.html").read_text()
    assert words.replace("%", "\\%") in (out / "summary.md").read_text()
    assert f"it would abort {min(fps):,}-{max(fps):,} good requests" in (out / "report.html").read_text()


def test_a_precision_under_two_percent_everywhere_is_said_so() -> None:
    """The realistic profile's sweep (measured: 57-422 good requests aborted to catch the 1 bad one)."""
    fps = [211, 155, 70, 57, 422]
    sweep = pa.Table.from_pylist([
        {"low_accept_length": 1.2 + i / 10, "high_accept_rate": 0.98, "true_positives": 1, "false_positives": fp,
         "false_negatives": 0, "precision": 1 / (1 + fp), "recall": 1.0, "median_delay_tokens": 129.0}
        for i, fp in enumerate(fps)])
    words = sweep_words(sweep)
    assert words.startswith("Precision of the online abort rule is at most 1.7% over the 5 threshold pairs")
    assert "it would abort 57-422 good requests to catch 1 of the 1 bad ones" in words
    assert words.endswith("more good requests than bad ones at every threshold.")


def test_query_prints_list_columns_of_stored_results(mixed: tuple[Path, Path]) -> None:
    """`kvtrace query "SELECT * FROM findings LIMIT 1"` (issue 17: ArrowInvalid on list<int32>)."""
    db, _ = mixed
    result = _kv("query", "--db", str(db), "SELECT * FROM findings ORDER BY finding_id LIMIT 1")
    header, row = result.stdout.splitlines()[:2]
    assert header.startswith('"finding_id","kind","instance","tp_rank","kv_pool","pages"')
    con = duckdb.connect(str(db), read_only=True)
    [(pages,)] = con.execute("SELECT pages FROM findings ORDER BY finding_id LIMIT 1").fetchall()
    con.close()
    assert f'"[{", ".join(map(str, pages))}]"' in row
