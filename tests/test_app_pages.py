"""Every page of the app under Streamlit's AppTest, on stores built by the real pipeline
(sample traces -> ingest -> analyze): no exception, and the key elements show the store's values."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from app_sample_store import MIXED, count_spans
from streamlit.testing.v1 import AppTest

from kvtrace.analytics.runner import compute
from kvtrace.analytics.summary import summarise
from kvtrace.app.escape import md
from kvtrace.app.ui import ALLOW_INGEST_ENV, DB_ENV
from kvtrace.replay.cpu import predict, run_cpu
from kvtrace.replay.export import export_finding

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"


def _page(db: Path, page: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _charts(at: AppTest) -> dict[str, dict[str, object]]:
    """Plotly charts on the page by widget key suffix -> their figure spec."""
    out = {}
    for el in at.get("plotly_chart"):
        key = el.proto.id.rsplit("-", 1)[-1]
        out[key] = json.loads(el.proto.spec)
    return out


def _array(value: object) -> list[object]:
    """A plotly spec array: a plain list, or numpy data plotly encoded as {"dtype", "bdata"}."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    assert isinstance(value, list)
    return value


def _df(at: AppTest, *columns: str) -> pd.DataFrame:
    """The one dataframe on the page that has all of `columns` (AppTest exposes no dataframe keys)."""
    found = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert len(found) == 1, f"{len(found)} dataframes with columns {columns}"
    return found[0]


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


@pytest.fixture()
def mixed(mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(DB_ENV, str(mixed_store))
    yield mixed_store


def test_overview_shows_counts_verdict_and_rates(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(mixed, "overview", monkeypatch)
    metrics = _metrics(at)
    spans = count_spans(sorted(MIXED.glob("*.otlp.jsonl")))
    [(requests,)] = _rows(mixed, "SELECT count(DISTINCT rid) FROM requests")
    [(aborts,)] = _rows(mixed, "SELECT count(*) FROM aborts")
    assert metrics["spans"] == f"{spans:,}"
    assert metrics["requests"] == f"{requests:,}"
    assert metrics["aborts"] == f"{aborts:,}"
    assert metrics["instances"] == "4"
    # The verdict is analytics.summary's sentence, computed here independently from the normalised tables.
    con = duckdb.connect(str(mixed), read_only=True)
    compute(con)
    expected = summarise(con)
    con.close()
    assert f"**{md(expected.verdict)}**" in [m.value for m in at.markdown]  # the sentence, escaped as text
    for kind, count in expected.findings_by_kind.items():
        assert metrics[kind] == str(count)
    rates = _df(at, "service_version", "per_10k")
    assert list(rates["service_version"]) == [r.version for r in expected.rates]
    chart = _charts(at)["overview_rate_chart"]
    assert {t["name"] for t in chart["data"]} == {r.version for r in expected.rates}
    versions = _df(at, "service_version", "instances")
    assert set(versions["service_version"]) == {"before-fix", "after-fix-1", "after-both"}


def test_findings_filter_and_timeline(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(mixed, "findings", monkeypatch)
    [(total,)] = _rows(mixed, "SELECT count(*) FROM findings")
    assert total > 0
    assert len(_df(at, "finding_id", "n_pages")) == total

    at.multiselect(key="findings_kind").select("abort_before_write_complete").run()
    assert not at.exception
    table = _df(at, "finding_id", "n_pages")
    expected = _rows(mixed, "SELECT finding_id FROM findings WHERE kind = 'abort_before_write_complete' "
                            "ORDER BY window_start_ns DESC, finding_id")
    assert list(table["finding_id"]) == [r[0] for r in expected]
    assert set(table["kind"]) == {"abort_before_write_complete"}

    picked = at.selectbox(key="findings_pick").value
    assert picked == expected[0][0]
    [(culprit, victim, n_pages)] = _rows(
        mixed, f"SELECT culprit_rid, victim_rid, len(pages) FROM findings WHERE finding_id = '{picked}'")
    assert _metrics(at)["victim"] == victim
    assert _metrics(at)["pages"] == str(n_pages)
    legend = {t["name"] for t in _charts(at)["findings_timeline"]["data"]}
    # the culprit's write, its abort-time free, and the victim's reuse of the pages
    assert {"culprit: transfer", "culprit: free", "victim: alloc"} <= legend, legend
    events = _df(at, "who", "x0_raw_ms")
    assert set(events.loc[events["who"] == "culprit", "rid"]) == {culprit}
    assert set(events.loc[events["who"] == "victim", "rid"]) == {victim}

    at.radio(key="findings_clock").set_value("raw").run()
    assert not at.exception
    raw = _charts(at)["findings_timeline"]
    transfer = next(t for t in raw["data"] if t["name"] == "culprit: transfer")
    row = events[events["op"] == "transfer"].iloc[0]
    assert _array(transfer["base"])[0] == pytest.approx(row["x0_raw_ms"])


def test_findings_read_before_load_has_layer_view(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(mixed, "findings", monkeypatch)
    at.multiselect(key="findings_kind").select("read_before_load").run()
    charts = _charts(at)
    assert "findings_layers" in charts
    names = {t["name"] for t in charts["findings_layers"]["data"]}
    assert names == {"culprit: layer copied (load stream)", "victim: layer first read (compute stream)"}


def test_requests_search_waterfall_steps_and_text(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(rid, text, n_steps)] = _rows(mixed, """
        SELECT r.rid, r.completion_text, (SELECT count(*) FROM spec_steps s WHERE s.rid = r.rid)
        FROM requests r JOIN findings f ON f.victim_rid = r.rid
        WHERE r.role = 'decode' AND r.completion_text IS NOT NULL ORDER BY r.rid LIMIT 1""")
    at = _page(mixed, "requests", monkeypatch)
    at.text_input(key="requests_rid_search").input(rid[:10]).run()
    assert not at.exception
    found = _df(at, "rid", "roles")
    assert list(found["rid"]) == [rid]
    assert at.selectbox(key="requests_pick").value == rid
    assert set(_df(at, "rid", "role", "bootstrap_room")["role"]) == {"prefill", "decode"}
    charts = _charts(at)
    [(n_spans,)] = _rows(mixed, f"""SELECT count(*) FROM spans WHERE rid = '{rid}'
        OR trace_id IN (SELECT trace_id FROM requests WHERE rid = '{rid}')""")
    waterfall_bars = sum(len(t["y"]) for t in charts["requests_waterfall"]["data"])  # y: labels, a plain list
    assert waterfall_bars == n_spans
    spec = charts["requests_spec_chart"]
    [(accepted,)] = _rows(mixed, f"SELECT list(accepted ORDER BY step) FROM spec_steps WHERE rid = '{rid}'")
    assert _array(spec["data"][0]["y"]) == accepted and len(accepted) == n_steps
    assert "garbled if accept length < 1.4" in json.dumps(spec["layout"])
    assert [c.value for c in at.code] == [text]


def test_anomalies_page_tables_match_the_store(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(mixed, "anomalies", monkeypatch)
    [(linked,)] = _rows(mixed, "SELECT count(*) FROM anomaly_linkage")
    [(leads,)] = _rows(mixed, "SELECT count(*) FROM anomaly_leads")
    assert len(_df(at, "rid", "explained", "delay_ms")) == linked
    assert len(_df(at, "rid", "evidence_strength")) == leads
    rr = _df(at, "exposure", "relative_risk")
    assert sorted(rr["exposure"]) == sorted(r[0] for r in _rows(mixed, "SELECT exposure FROM relative_risk"))
    charts = _charts(at)
    assert {"anomalies_linkage_chart", "anomalies_attribution_chart"} <= set(charts)


def test_compare_two_versions_by_bucket(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(mixed, "compare", monkeypatch)
    versions = [r[0] for r in _rows(mixed, """SELECT service_version FROM requests
        WHERE service_version IN (SELECT service_version FROM version_comparison)
        GROUP BY ALL ORDER BY min(start_ns)""")]
    assert versions == ["before-fix", "after-fix-1", "after-both"]
    assert at.selectbox(key="compare_a").options == versions
    a, b = versions[0], versions[-1]
    assert (at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value) == (a, b)
    table = _df(at, "context_bucket", "throughput_gain")
    buckets = {r[0] for r in _rows(mixed, f"SELECT context_bucket FROM version_comparison "
                                          f"WHERE service_version IN ('{a}', '{b}')")}
    assert set(table["context_bucket"]) == buckets
    chart = _charts(at)["compare_chart"]
    assert {t["name"] for t in chart["data"]} <= {a, b}


def test_sql_console_runs_examples_and_refuses_writes(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(mixed, "sql", monkeypatch)
    at.selectbox(key="sql_example").select("stored result: findings").run()
    assert at.text_area(key="sql_query").value == "SELECT * FROM findings LIMIT 100"
    at.button(key="sql_run").click().run()
    [(total,)] = _rows(mixed, "SELECT count(*) FROM findings")
    assert len(at.dataframe[-1].value) == min(total, 100)

    # An analysis example is one self-contained SELECT that recomputes the stored result.
    at.selectbox(key="sql_example").select("analysis: skew_bounds").run()
    at.button(key="sql_run").click().run()
    assert not at.exception
    result = at.dataframe[-1].value
    assert sorted(map(tuple, result[["prefill_host", "decode_host"]].values.tolist())) == sorted(
        _rows(mixed, "SELECT prefill_host, decode_host FROM skew_bounds"))

    at.text_area(key="sql_query").input(f"COPY findings TO '{mixed.parent}/leak.csv'").run()
    at.button(key="sql_run").click().run()
    assert [e.value for e in at.error] == [
        "refused: COPY statements are not allowed; the store is read-only here and only SELECT or EXPLAIN may run"]
    assert not (mixed.parent / "leak.csv").exists()
    at.text_area(key="sql_query").input("SELECT * FROM read_csv('/etc/passwd')").run()
    at.button(key="sql_run").click().run()
    assert "file system operations are disabled" in at.error[0].value


def test_ingest_page_uploads_and_shows_quarantine(
    ingested_only_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "store.duckdb"
    shutil.copy(ingested_only_store, db)
    monkeypatch.setenv(ALLOW_INGEST_ENV, "1")  # `kvtrace app --allow-ingest`
    at = _page(db, "ingest", monkeypatch)
    assert len(_df(at, "file_id", "path")) == 2
    assert at.success[0].value == "no quarantined records"

    good = (MIXED / "decode-0.otlp.jsonl").read_bytes().splitlines()[0]
    at.file_uploader(key="ingest_upload").set_value(
        ("upload.otlp.jsonl", good + b"\n{not json\n", "application/json")).run()
    at.button(key="ingest_go").click().run()
    assert not at.exception
    assert at.success[0].value.startswith("1 file(s) ingested (0 unchanged, skipped):")
    assert "1 quarantined" in at.success[0].value
    files = _df(at, "file_id", "path")
    assert len(files) == 3 and files["path"].iloc[0].endswith("upload.otlp.jsonl")
    quarantine = _df(at, "source", "line", "preview")
    assert list(quarantine["line"]) == [2]
    assert quarantine["source"].iloc[0].endswith("upload.otlp.jsonl")


@pytest.mark.parametrize("page", ["findings", "anomalies", "compare"])
def test_pages_ask_for_analyze_when_results_are_missing(
    ingested_only_store: Path, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    at = _page(ingested_only_store, page, monkeypatch)
    assert at.info, "expected a 'run kvtrace analyze' message"
    assert all(f"run `kvtrace analyze --db {ingested_only_store}`" in i.value for i in at.info)


def test_overview_without_analysis_still_shows_the_ingest(
    ingested_only_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _page(ingested_only_store, "overview", monkeypatch)
    assert _metrics(at)["requests"] == "3"
    assert any("kvtrace analyze" in i.value for i in at.info)


def test_missing_store_is_a_message_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(tmp_path / "absent.duckdb", "overview", monkeypatch)
    assert any("does not exist: run `kvtrace ingest PATH --db" in e.value for e in at.error)


def test_replay_page_runs_the_cpu_executor(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _page(mixed, "replay", monkeypatch)
    [(fid,)] = _rows(mixed, "SELECT finding_id FROM findings WHERE kind = 'abort_before_write_complete' "
                            "ORDER BY finding_id LIMIT 1")
    at.selectbox(key="replay_finding").select(fid).run()
    at.button(key="replay_run").click().run()
    assert not at.exception
    assert _metrics(at) == {"as-recorded": "corrupted", "fixed": "clean"}
    heat = _charts(at)["replay_heatmap"]["data"][0]
    [(pages,)] = _rows(mixed, f"SELECT pages FROM findings WHERE finding_id = '{fid}'")
    con = duckdb.connect(str(mixed), read_only=True)
    plan = export_finding(con, fid)
    con.close()
    expected = run_cpu(plan, "as-recorded", predict(plan, "fixed")[0]).verdict.corrupted_pages
    assert [int(x) for x in heat["x"]] == expected  # the replay library's own verdict, page for page
    assert set(expected) & set(pages)
    # no replay runs stored in this store: a clear pointer, not a traceback
    assert any("kvtrace replay run PLAN --device cuda --db" in i.value for i in at.info)


def test_replay_page_shows_stored_runs(mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs stored by `kvtrace replay run --db` (the GPU host's path; CPU here) show with their pages."""
    db = tmp_path / "store.duckdb"
    shutil.copy(mixed, db)
    [(fid,)] = _rows(db, "SELECT finding_id FROM findings WHERE kind = 'read_before_load' "
                         "ORDER BY finding_id LIMIT 1")
    kvtrace = str(Path(sys.executable).with_name("kvtrace"))
    plan = tmp_path / "plan.json"
    subprocess.run([kvtrace, "replay", "export", "--db", str(db), "--finding", fid, "--out", str(plan)],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([kvtrace, "replay", "run", str(plan), "--device", "cpu", "--db", str(db)],
                   check=True, capture_output=True, timeout=120)
    at = _page(db, "replay", monkeypatch)
    at.selectbox(key="replay_finding").select(fid).run()
    runs = _df(at, "run_id", "damaged_pages")
    assert sorted(runs["mode"]) == ["as-recorded", "fixed"]
    assert set(runs["finding_id"]) == {fid}
    stored = _rows(db, "SELECT damaged_pages FROM replay_runs WHERE mode = 'as-recorded'")
    heat = _charts(at)["replay_stored_heatmap"]["data"][0]
    assert [int(x) for x in heat["x"]] == sorted(stored[0][0])


def test_links_carry_the_rid_and_the_finding(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finding links to its victim's request and to its replay; the pages open on them."""
    [(fid, victim)] = _rows(mixed, "SELECT finding_id, victim_rid FROM findings "
                                   "WHERE kind = 'abort_before_write_complete' ORDER BY finding_id LIMIT 1")
    monkeypatch.setenv(DB_ENV, str(mixed))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.query_params["rid"] = victim
    at.switch_page("views/requests.py").run()
    assert not at.exception
    assert at.selectbox(key="requests_pick").value == victim
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.query_params["finding"] = fid
    at.switch_page("views/replay.py").run()
    assert at.selectbox(key="replay_finding").value == fid
