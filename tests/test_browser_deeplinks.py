"""Deep links in a real browser (Debian's Chromium driven by Playwright) against `kvtrace app` on the
mixed sample store:

- a freshly started app whose first visitor opens a deep link gets the whole app around it (the
  sidebar search box and the store status), not the page script alone;
- `requests?rid=...&span=...` (how the Findings page links an evidence span) opens that span in the
  detail panel; a span id the request does not have says so;
- the URL of every entity (incident, finding, request and its span, SQL query) as the page writes it
  after a pick survives a new browser context: the new session opens the same entity.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import duckdb
import pytest
from app_process import kvtrace_app

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1500, "height": 1400}
DETAIL = re.compile(r"span (\S+) · trace (\S+) · parent")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser test needs Debian's Chromium at /usr/bin/chromium "
        "(apt-get install -y chromium; .ci/run installs it)",
    ),
]


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def culprit(mixed_store: Path) -> tuple[str, str, str, str]:
    """(finding, its incident, its culprit rid, the culprit's kv.free span that the finding cites)."""
    [(finding, incident, rid, free)] = _rows(
        mixed_store,
        """
        SELECT f.finding_id, i.incident_id, f.culprit_rid, k.span_id
        FROM findings f JOIN finding_incidents i USING (finding_id)
        JOIN kv_events k ON k.rid = f.culprit_rid AND k.op = 'free' AND list_contains(f.evidence_span_ids, k.span_id)
        WHERE f.kind = 'abort_before_write_complete'
        ORDER BY f.finding_id LIMIT 1""",
    )
    return str(finding), str(incident), str(rid), str(free)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


SERVED: set[str] = set()  # the app URLs a page of this module has been opened on


@pytest.fixture(scope="module")
def app_url(mixed_store: Path) -> Iterator[str]:
    """One app process for the module; the cold test (first in the file) is its first visitor."""
    with kvtrace_app(mixed_store) as (port, _):
        yield f"http://127.0.0.1:{port}"


def _idle(page: Any) -> None:
    """Wait until Streamlit's running indicator is gone."""
    time.sleep(0.5)
    status = page.locator("[data-testid='stStatusWidget']")
    deadline = time.monotonic() + 30
    while status.count() > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)


def _open(page: Any, url: str, title: str) -> None:
    SERVED.add(url.split("/", 3)[2])
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("heading", name=title).first.wait_for(timeout=30_000)
    _idle(page)
    assert page.locator("[data-testid='stException']").count() == 0, f"traceback on {url}"


def _selected(page: Any, label: str) -> str:
    """The text a selectbox shows as its value."""
    return str(page.get_by_role("combobox", name=label, exact=True).first.input_value(timeout=30_000))


def _pick(page: Any, label: str, index: int) -> str:
    """Choose option `index` of selectbox `label` as a user does; returns the option's text. The page
    renders progressively: on a loaded box (a second test worker, a JVM) the box can come well after
    the heading."""
    page.get_by_role("combobox", name=label, exact=True).first.click(timeout=90_000)
    option = page.get_by_role("option").nth(index)
    text = str(option.inner_text())
    option.click()
    _idle(page)
    return text


def _detail_span(page: Any) -> str:
    """The span id the Requests page's detail panel shows."""
    caption = page.locator("[data-testid='stCaptionContainer']").filter(has_text=DETAIL).first
    caption.wait_for(timeout=30_000)
    m = DETAIL.search(caption.inner_text())
    assert m, caption.inner_text()
    return m.group(1)


def test_a_fresh_apps_first_visitor_on_a_deep_link_gets_the_sidebar(
    mixed_store: Path, app_url: str, browser: Any, culprit: tuple[str, str, str, str]
) -> None:
    finding, incident, _, _ = culprit
    with contextlib.ExitStack() as stack:
        if app_url.split("/", 3)[2] in SERVED:  # not the app's first page any more: a fresh app for this test
            port, _ = stack.enter_context(kvtrace_app(mixed_store))
            app_url = f"http://127.0.0.1:{port}"
        page = browser.new_page(viewport=VIEWPORT)
        try:
            _open(page, f"{app_url}/findings?finding={finding}", "Findings")
            sidebar = page.locator("[data-testid='stSidebar']")
            sidebar.get_by_role("textbox", name="Search", exact=True).wait_for(timeout=30_000)
            sidebar.get_by_text("snapshot age").first.wait_for(timeout=30_000)
            assert sidebar.get_by_text(str(mixed_store)).count() >= 1  # which store
            assert _selected(page, "finding").startswith(finding)
            assert _selected(page, "incident").startswith(incident)
        finally:
            page.close()


def test_a_span_link_opens_that_span_and_a_bad_one_says_so(
    app_url: str, browser: Any, culprit: tuple[str, str, str, str]
) -> None:
    finding, _, rid, free = culprit
    page = browser.new_page(viewport=VIEWPORT)
    try:
        # the link as the Findings page writes it for the culprit's free
        _open(page, f"{app_url}/findings?finding={finding}", "Findings")
        link = page.locator(f"a[href*='span={free}']").first
        link.wait_for(timeout=30_000)
        href = str(link.get_attribute("href"))
        assert parse_qs(urlparse(href).query) == {"rid": [rid], "span": [free]}, href
        # without span= the panel shows another span (the first evidence span): the link decides
        _open(page, f"{app_url}/requests?rid={rid}", "Requests")
        default = _detail_span(page)
        assert default != free
        _open(page, urljoin_app(app_url, href), "Requests")
        page.get_by_text(f"Request {rid}").first.wait_for(timeout=30_000)
        assert _detail_span(page) == free
        assert page.get_by_text("no span").count() == 0
        # a span id this request does not have: said, and the request still shown
        _open(page, f"{app_url}/requests?rid={rid}&span=00000000deadbeef", "Requests")
        page.get_by_text("no span 00000000deadbeef in request").first.wait_for(timeout=30_000)
        page.get_by_text(f"Request {rid}").first.wait_for(timeout=30_000)
        assert _detail_span(page) == default
    finally:
        page.close()


def urljoin_app(app_url: str, href: str) -> str:
    """A link's href (relative, as the page writes it, or absolute) on this app."""
    return href if href.startswith("http") else f"{app_url}/{href.lstrip('/')}"


def test_every_entity_url_survives_a_new_browser_context(app_url: str, browser: Any) -> None:
    sql = "SELECT kind, count(*) AS n FROM findings GROUP BY kind ORDER BY kind"
    first = browser.new_context(viewport=VIEWPORT)
    try:
        page = first.new_page()
        # an incident and a finding picked by hand (not the defaults): both in the URL
        _open(page, f"{app_url}/findings", "Findings")
        incident = _pick(page, "incident", 1).split(" · ")[0]
        finding = _pick(page, "finding", -1).split(" · ")[0]
        assert parse_qs(urlparse(page.url).query) == {"incident": [incident], "finding": [finding]}, page.url
        findings_url = page.url
        # a request picked from the list, then a span of its tree clicked: rid and span in the URL
        _open(page, f"{app_url}/requests", "Requests")
        rid = _pick(page, "request", 2)
        page.get_by_text(f"Request {rid}").first.wait_for(timeout=30_000)
        bars = page.locator(".js-plotly-plot").first.locator(".barlayer path")
        bars.last.wait_for(timeout=30_000)
        bars.last.click(force=True)
        _idle(page)
        span = _detail_span(page)
        assert parse_qs(urlparse(page.url).query) == {"rid": [rid], "span": [span]}, page.url
        request_url = page.url
        # a query typed and run
        _open(page, f"{app_url}/sql", "SQL console")
        box = page.get_by_role("textbox", name="query", exact=True)
        box.fill(sql)
        page.get_by_role("button", name="Run").click()
        _idle(page)
        page.get_by_text("row(s)").first.wait_for(timeout=30_000)
        assert parse_qs(urlparse(page.url).query) == {"sql": [sql]}, page.url
        sql_url = page.url
    finally:
        first.close()

    fresh = browser.new_context(viewport=VIEWPORT)  # no cookies, no session: only the URL
    try:
        page = fresh.new_page()
        _open(page, findings_url, "Findings")
        assert _selected(page, "incident").startswith(incident)
        assert _selected(page, "finding").startswith(finding)
        _open(page, request_url, "Requests")
        page.get_by_text(f"Request {rid}").first.wait_for(timeout=30_000)
        assert _selected(page, "request") == rid
        assert _detail_span(page) == span
        _open(page, sql_url, "SQL console")
        assert page.get_by_role("textbox", name="query", exact=True).input_value() == sql
    finally:
        fresh.close()
