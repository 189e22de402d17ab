"""The app's data functions, headless, on the sample store; and the execution core stays UI-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from kvtrace.app.data import findings, requests, sql_console
from kvtrace.app.data.common import MissingTable
from kvtrace.app.store import Store

HEADLESS = ["kvtrace.app.safe_sql", "kvtrace.app.store", "kvtrace.app.data.overview", "kvtrace.app.data.findings", "kvtrace.app.data.requests",
            "kvtrace.app.data.analysis", "kvtrace.app.data.anomalies", "kvtrace.app.data.compare", "kvtrace.app.data.sql_console",
            "kvtrace.app.data.ingest_files", "kvtrace.app.data.replay"]


def test_execution_core_never_imports_streamlit_or_plotly() -> None:
    code = ("import sys, importlib\n"
            f"for m in {HEADLESS!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'plotly'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


@pytest.fixture(scope="module")
def store(mixed_store: Path) -> Store:
    s = Store(mixed_store)
    yield s
    s.close()


def test_timeline_of_an_abort_finding_tells_the_story(store: Store, mixed_store: Path) -> None:
    con = duckdb.connect(str(mixed_store), read_only=True)
    fid, culprit, victim, pages = con.execute(
        "SELECT finding_id, culprit_rid, victim_rid, pages FROM findings "
        "WHERE kind = 'abort_before_write_complete' ORDER BY finding_id LIMIT 1").fetchone()
    con.close()
    tl = findings.timeline(store, fid)
    ev = tl.events
    culprit_ops = set(ev.filter(pl.col("who") == "culprit")["op"])
    victim_ops = set(ev.filter(pl.col("who") == "victim")["op"])
    assert {"transfer", "free", "abort"} <= culprit_ops
    assert "alloc" in victim_ops
    assert set(ev.filter(pl.col("who") == "culprit")["rid"]) == {culprit}
    assert set(ev.filter(pl.col("who") == "victim")["rid"]) == {victim}
    # Every drawn run stays within the focus band around the finding's pages.
    assert ev["page_lo"].min() >= min(pages) - findings.FOCUS_MARGIN
    assert ev["page_hi"].max() <= max(pages) + findings.FOCUS_MARGIN
    # The culprit's write ends after the victim's reuse on the corrected clock: that is the race.
    write_end = ev.filter((pl.col("who") == "culprit") & (pl.col("op") == "transfer"))["x1_ms"].max()
    reuse = ev.filter((pl.col("who") == "victim") & (pl.col("op") == "alloc"))["x0_ms"].min()
    assert write_end > reuse
    assert tl.window_ms[0] == 0.0 and tl.window_ms[1] > 0


def test_page_runs() -> None:
    assert findings._runs([1, 2, 3, 7, 8, 10]) == [(1, 3), (7, 8), (10, 10)]
    assert findings._clip([(1, 3), (7, 8), (10, 20)], (2, 12)) == [(2, 3), (7, 8), (10, 12)]


def test_every_analysis_example_reproduces_its_stored_result(store: Store) -> None:
    """The SQL page's examples are self-contained: through the read-only guard they give the rows
    `kvtrace analyze` stored."""
    stored = {"findings", "skew_bounds", "request_anomalies", "anomaly_linkage", "relative_risk",
              "version_comparison", "spec_step_detector", "anomaly_rate_by_version"}
    for name in sorted(stored):
        example = sql_console.analysis_example(name)
        got = store.query(example, max_rows=100_000)
        assert not got.truncated
        want = store.frame(f"SELECT * FROM {name}")
        cols = list(want.columns)
        key = [c for c, t in want.schema.items() if not t.is_nested()]
        lhs = [tuple(map(str, r)) for r in got.frame.select(cols).sort(key, nulls_last=True).rows()]
        rhs = [tuple(map(str, r)) for r in want.sort(key, nulls_last=True).rows()]
        assert lhs == rhs, name


def test_request_search_is_a_prefix_match(store: Store) -> None:
    all_rids = store.frame("SELECT DISTINCT rid FROM requests ORDER BY rid")["rid"].to_list()
    prefix = all_rids[0][:3]
    found = requests.search(store, prefix.upper(), 500)
    assert sorted(found["rid"]) == [r for r in all_rids if r.startswith(prefix)]
    assert requests.search(store, "zzzz-no-such", 10).is_empty()


def test_missing_results_raise_missing_table(ingested_only_store: Path) -> None:
    with Store(ingested_only_store) as s, pytest.raises(MissingTable, match=r"run `kvtrace analyze --db "):
        findings.list_findings(s)
