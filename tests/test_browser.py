"""The running app in a real browser: Debian's Chromium driven by Playwright loads every page,
opens a finding's timeline, and saves screenshots under bench/out/screenshots/ (git-ignored)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_process import kvtrace_app
from app_sample_store import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "bench" / "out" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# url path -> the title the page shows
PAGES = {
    "": "Overview",
    "findings": "Findings",
    "requests": "Requests",
    "anomalies": "Anomalies",
    "compare": "Compare versions",
    "replay": "Replay",
    "sql": "SQL console",
    "ingest": "Ingest",
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="browser test needs Debian's Chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; .ci/run installs it)"),
]


@pytest.fixture(scope="module")
def app_url(mixed_store: Path) -> Iterator[str]:
    with kvtrace_app(mixed_store) as (port, _):
        yield f"http://127.0.0.1:{port}"


def test_every_page_renders_and_a_finding_timeline_opens(app_url: str) -> None:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        try:
            for path, title in PAGES.items():
                page.goto(f"{app_url}/{path}", wait_until="domcontentloaded")
                page.get_by_role("heading", name=title).first.wait_for(timeout=30_000)
                _wait_until_idle(page)
                assert page.locator("[data-testid='stException']").count() == 0, f"traceback on /{path}"
                if path in ("", "findings", "requests", "anomalies", "compare"):
                    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
                page.screenshot(path=str(SHOTS / f"{path or 'overview'}.png"), full_page=True)

            # A finding's timeline: pick an abort_before_write_complete finding, see culprit and victim bars.
            page.goto(f"{app_url}/findings", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Findings").first.wait_for(timeout=30_000)
            _wait_until_idle(page)
            page.get_by_label("kind").first.click()
            page.get_by_role("option", name="abort_before_write_complete").click()
            page.keyboard.press("Escape")
            _wait_until_idle(page)
            plot = page.locator(".js-plotly-plot").first
            plot.wait_for(timeout=30_000)
            page.get_by_text("abort_before_write_complete on").first.wait_for(timeout=30_000)
            legend = plot.locator(".legendtext").evaluate_all("els => els.map(e => e.textContent)")
            assert any(t.startswith("culprit: transfer") for t in legend), legend
            assert any(t.startswith("victim: alloc") for t in legend), legend
            plot.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "finding_timeline.png"), full_page=True)
            page.get_by_text("raw", exact=True).click()
            _wait_until_idle(page)
            page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
            page.screenshot(path=str(SHOTS / "finding_timeline_raw.png"), full_page=True)

            # The replay of a finding on the CPU executor, with its corrupted-page heatmap.
            page.goto(f"{app_url}/replay", wait_until="domcontentloaded")
            page.get_by_role("button", name="Run the CPU replay").click()
            _wait_until_idle(page)
            page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
            assert page.get_by_text("corrupted", exact=True).count() >= 1
            page.screenshot(path=str(SHOTS / "replay_cpu.png"), full_page=True)
        finally:
            browser.close()


def _wait_until_idle(page: object) -> None:
    """Streamlit shows a running indicator while the script runs; wait until it is gone."""
    time.sleep(0.5)
    status = page.locator("[data-testid='stStatusWidget']")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while status.count() > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)
