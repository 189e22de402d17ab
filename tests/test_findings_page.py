"""The Findings page leads with incidents (a finding one click down), opens deep links to the right
entity or says the id is unknown, and shows the clock correction only on the corrected clock; the
Compare legend follows A then B; `kvtrace app` takes real trace files as uploads and its --help says
when the app writes. Streamlit's AppTest (and a real Chromium for the uploader) on stores built by
the real pipeline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import duckdb
import pytest
from app_process import kvtrace_app
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from kvtrace.app.cli import main
from kvtrace.app.commands.app import MAX_UPLOAD_MB
from kvtrace.app.escape import md_code
from kvtrace.app.ui import ALLOW_INGEST_ENV, DB_ENV

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
KVTRACE = str(Path(sys.executable).with_name("kvtrace"))
CHROMIUM = Path("/usr/bin/chromium")


def _open(db: Path, page: str, monkeypatch: pytest.MonkeyPatch, **params: str) -> AppTest:
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _df(at: AppTest, *columns: str):  # type: ignore[no-untyped-def]
    found = [d.value for d in at.dataframe if set(columns) <= set(d.value.columns)]
    assert len(found) == 1, f"{len(found)} dataframes with columns {columns}"
    return found[0]


def test_incidents_are_listed_and_a_finding_is_one_click_down(
        mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(mixed_store, "findings", monkeypatch)
    listed = _df(at, "incident_id", "n_findings")
    stored = dict(_rows(mixed_store, "SELECT incident_id, n_findings FROM incidents"))
    assert dict(zip(listed["incident_id"], listed["n_findings"], strict=True)) == stored
    assert len(stored) < sum(stored.values())  # fewer incidents than findings

    [(incident, n, victims)] = _rows(mixed_store, """
        SELECT incident_id, n_findings, victim_rids FROM incidents
        WHERE kind = 'abort_before_write_complete' ORDER BY n_findings DESC, incident_id LIMIT 1""")
    at.selectbox(key="findings_incident_pick").select(incident).run()
    assert not at.exception
    assert at.query_params["incident"] == incident
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["victims"] == str(len(victims)) and metrics["findings"] == str(n)
    members = _df(at, "finding", "pages")
    expected = _rows(mixed_store, f"""
        SELECT f.finding_id FROM findings f JOIN finding_incidents i USING (finding_id)
        WHERE i.incident_id = '{incident}' ORDER BY f.window_start_ns DESC, f.finding_id""")
    assert list(members["finding"]) == [r[0] for r in expected]
    assert all(p.endswith("pages)") for p in members["pages"])  # page sets as ranges
    # the finding: one pick down, its detail below
    second = expected[1][0]
    at.selectbox(key="findings_pick").select(second).run()
    assert not at.exception
    [(victim,)] = _rows(mixed_store, f"SELECT victim_rid FROM findings WHERE finding_id = '{second}'")
    assert {m.label: m.value for m in at.metric}["victim"] == victim
    assert at.query_params["finding"] == second
    assert "findings_timeline" in {el.proto.id.rsplit("-", 1)[-1] for el in at.get("plotly_chart")}


def test_a_deep_link_opens_its_finding_and_incident_and_a_bad_id_says_so(
        mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(finding, incident)] = _rows(mixed_store, """
        SELECT f.finding_id, i.incident_id FROM findings f JOIN finding_incidents i USING (finding_id)
        WHERE f.kind = 'read_before_load' ORDER BY f.window_start_ns, f.finding_id LIMIT 1""")
    at = _open(mixed_store, "findings", monkeypatch, finding=finding)
    assert at.selectbox(key="findings_incident_pick").value == incident
    assert at.selectbox(key="findings_pick").value == finding
    assert not at.warning

    [(other,)] = _rows(mixed_store, f"SELECT incident_id FROM incidents WHERE incident_id <> '{incident}' "
                                    "ORDER BY incident_id LIMIT 1")
    at = _open(mixed_store, "findings", monkeypatch, incident=other)
    assert at.selectbox(key="findings_incident_pick").value == other

    at = _open(mixed_store, "findings", monkeypatch, finding="0123456789abcdef")
    assert [w.value for w in at.warning] == [
        f"no finding {md_code('0123456789abcdef')} in this store: showing the latest incident instead"]
    at = _open(mixed_store, "findings", monkeypatch, incident="nope")
    assert len(at.warning) == 1 and "no incident" in at.warning[0].value


def test_the_clock_correction_caption_shows_on_the_corrected_clock_only(
        mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(finding,)] = _rows(mixed_store, "SELECT finding_id FROM findings WHERE kind = 'abort_before_write_complete' "
                                      "AND culprit_clock_host IS NOT NULL ORDER BY finding_id LIMIT 1")
    at = _open(mixed_store, "findings", monkeypatch, finding=finding)

    def shifted() -> list[str]:
        return [c.value for c in at.caption if "shifted by" in c.value]

    assert len(shifted()) == 1 and shifted()[0].startswith("corrected: ")
    at.radio(key="findings_clock").set_value("raw").run()
    assert not at.exception
    assert shifted() == []  # raw: every host on its own clock, nothing was shifted
    at.radio(key="findings_clock").set_value("skew-corrected").run()
    assert len(shifted()) == 1


def test_compare_legend_is_in_the_order_a_then_b(mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(mixed_store, "compare", monkeypatch)
    a, b = at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value
    assert a != b

    def legend() -> list[str]:
        [chart] = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
        return [t["name"] for t in chart["data"]]

    assert legend() == [a, b]
    at.selectbox(key="compare_a").select(b).run()
    at.selectbox(key="compare_b").select(a).run()
    assert legend() == [b, a]


def test_app_help_says_when_the_app_writes() -> None:
    result = CliRunner().invoke(main, ["app", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "By default the app only reads" in text
    assert "With --allow-ingest the Ingest page also writes" in text
    assert "read-only" not in text  # never the whole app's mode: it depends on --allow-ingest
    assert f"--max-upload-mb INTEGER RANGE Largest file the Ingest page accepts, in MB (with --allow-ingest). " \
           f"[default: {MAX_UPLOAD_MB}; x>=1]" in text


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium")
def test_the_ingest_page_takes_a_real_per_instance_file(
        mixed_store: Path, tmp_path: Path) -> None:
    """Streamlit refuses uploads over 200 MB unless told otherwise; a per-instance trace file is
    1-2 GB. The uploader of `kvtrace app --allow-ingest`, in a browser, states the limit it enforces."""
    from playwright.sync_api import sync_playwright

    db = tmp_path / "s.duckdb"
    db.write_bytes(mixed_store.read_bytes())
    with kvtrace_app(db, "--allow-ingest", env={**os.environ, ALLOW_INGEST_ENV: ""}) as (port, _), \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/ingest", wait_until="domcontentloaded")
            limit = page.get_by_text("per file").first
            limit.wait_for(timeout=30_000)
            text = limit.inner_text()
        finally:
            browser.close()
    assert text.endswith(("4GB per file", f"{MAX_UPLOAD_MB}MB per file")), text  # Streamlit: 200MB per file
