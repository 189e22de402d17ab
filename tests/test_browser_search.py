"""Search and deep links in a real browser (Debian's Chromium driven by Playwright) against one
`kvtrace app` process on the mixed sample store: the sidebar search by trace id lands on that
trace's request and puts its rid in the URL; ?rid=, ?incident= and ?finding= open exactly the
entity they name, and a mistyped id says so instead of showing another one. (The request view's
own bad ids and the other search kinds: tests/test_search_links.py, cheaper under AppTest.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from app_process import kvtrace_app
from app_sample_store import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "bench" / "out" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="browser test needs Debian's Chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; .ci/run installs it)"),
]


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def page(mixed_store: Path) -> Iterator[tuple[str, Any]]:
    from playwright.sync_api import sync_playwright

    with kvtrace_app(mixed_store) as (port, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield f"http://127.0.0.1:{port}", browser.new_page(viewport={"width": 1500, "height": 1400})
        finally:
            browser.close()


@pytest.fixture(scope="module")
def victim(mixed_store: Path) -> tuple[str, str, str, str]:
    """(victim rid, its trace id, its finding, that finding's incident)."""
    [(rid, trace, finding, incident)] = _rows(mixed_store, """
        SELECT f.victim_rid, r.trace_id, f.finding_id, i.incident_id
        FROM findings f JOIN finding_incidents i USING (finding_id) JOIN requests r ON r.rid = f.victim_rid
        WHERE f.kind = 'abort_before_write_complete' AND r.role = 'decode'
        ORDER BY f.finding_id LIMIT 1""")
    return str(rid), str(trace), str(finding), str(incident)


def _idle(page: Any) -> None:
    """Wait until Streamlit's running indicator is gone."""
    time.sleep(0.5)
    status = page.locator("[data-testid='stStatusWidget']")
    deadline = time.monotonic() + 30
    while status.count() > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)


def _open(page: Any, url: str, title: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("heading", name=title).first.wait_for(timeout=30_000)
    _idle(page)
    assert page.locator("[data-testid='stException']").count() == 0, f"traceback on {url}"


def _selected(page: Any, label: str) -> str:
    """The text a selectbox shows as its value."""
    return str(page.get_by_role("combobox", name=label, exact=True).first.input_value(timeout=30_000))


def test_search_by_trace_id_and_deep_links_open_exactly_their_entity(
        page: tuple[str, Any], victim: tuple[str, str, str, str]) -> None:
    url, p = page
    rid, trace, finding, incident = victim
    # the sidebar search, by trace id: lands on the trace's request, its rid in the URL
    _open(p, f"{url}/", "Overview")
    box = p.get_by_role("textbox", name="Search", exact=True)
    box.fill(trace)
    box.press("Enter")
    p.get_by_role("heading", name="Requests").first.wait_for(timeout=30_000)
    p.get_by_text(f"Request {rid}").first.wait_for(timeout=30_000)
    _idle(p)
    assert f"rid={rid}" in p.url
    assert _selected(p, "request") == rid
    p.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    p.screenshot(path=str(SHOTS / "request_span_tree.png"), full_page=True)

    # ?rid= in a new page load: that request; its incident link opens that incident
    _open(p, f"{url}/requests?rid={rid}", "Requests")
    p.get_by_text(f"Request {rid}").first.wait_for(timeout=30_000)
    assert _selected(p, "request") == rid
    p.get_by_text(f"victim of incident {incident[:12]}").first.click()
    p.get_by_role("heading", name="Findings").first.wait_for(timeout=30_000)
    _idle(p)
    assert f"incident={incident}" in p.url and _selected(p, "incident").startswith(incident)

    # ?finding=: that finding, inside its incident; a mistyped one is said, not replaced silently
    _open(p, f"{url}/findings?finding={finding}", "Findings")
    assert _selected(p, "finding").startswith(finding)
    assert _selected(p, "incident").startswith(incident)
    _open(p, f"{url}/findings?finding=0123456789abcdef", "Findings")
    p.get_by_text("no finding").first.wait_for(timeout=30_000)
