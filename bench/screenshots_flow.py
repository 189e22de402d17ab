"""The investigation flow in a real browser (Debian's Chromium through Playwright), one screenshot a step.

    .venv/bin/python bench/screenshots_flow.py --db /tmp/kvtrace-bench/realistic_1m/store.duckdb \
        [--out bench/out/screenshots] [--max-clicks 3]

Starts `kvtrace app --db DB` on a free loopback port and, as an on-call engineer would, goes from the
first screen to a victim request's span tree and back to its incident, by clicks only (no typed URL
after the first):

    01_overview.png           the first screen (Overview: counts, verdict)
    click 1: the sidebar's "Findings"
    02_incident.png           the Findings page on its first incident (races before near misses),
                              its victims as links, its finding's view
    click 2: the incident's first "victim ..." link
    03_victim_span_tree.png   Requests on that victim: "victim of incident ...", the span tree
    click 3: "victim of incident ..."
    04_back_to_incident.png   Findings on the same incident

Exits non-zero (after saving <step>_failed.png) when a step's expected element is missing, when
the request or incident opened is not the one clicked, or when the flow took more than
--max-clicks clicks. Prints one line per step: clicks so far, seconds from the click to the
expected element, the URL.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshots import CHROMIUM, CHROMIUM_ARGS, KVTRACE, _free_port, _wait_healthy, wait_idle

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 120_000


class FlowFailed(SystemExit):
    pass


class Flow:
    """The browser page, the click counter and the step screenshots."""

    def __init__(self, page: Any, out: Path) -> None:
        self.page = page
        self.out = out
        self.clicks = 0
        self.shots: list[str] = []
        self._t0 = time.perf_counter()

    def click(self, locator: Any, what: str) -> None:
        self.expect(locator, what, "before click")
        self.clicks += 1
        self._t0 = time.perf_counter()
        locator.first.click()

    def expect(self, locator: Any, what: str, step: str) -> Any:
        """Wait for `locator` (the step's expected element); fail the flow when it does not come."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            locator.first.wait_for(timeout=TIMEOUT_MS)
        except PlaywrightTimeout:
            self.fail(step, f"{what} is missing")
        return locator.first

    def fail(self, step: str, why: str) -> NoReturn:
        shot = self.out / f"{step.replace(' ', '_')}_failed.png"
        self.page.screenshot(path=str(shot), full_page=True)
        raise FlowFailed(
            f"step {step}: {why} (after {self.clicks} click(s); see {shot}; url {self.page.url})"
        )

    def shot(self, name: str) -> None:
        took = time.perf_counter() - self._t0
        wait_idle(self.page)
        if self.page.locator("[data-testid='stException']").count():
            self.fail(name, "the page shows a traceback")
        path = self.out / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path.name)
        print(f"{path.name}: {self.clicks} click(s), {took:.2f} s to the expected element, {self.page.url}")


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}


def run_flow(url: str, out: Path, max_clicks: int) -> Flow:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2300})
            flow = Flow(page, out)
            # the first screen
            page.goto(f"{url}/", wait_until="domcontentloaded")
            flow.expect(page.get_by_role("heading", name="Overview"), "the Overview title", "01_overview")
            flow.expect(page.get_by_role("heading", name="Verdict"), "the verdict", "01_overview")
            flow.expect(
                page.locator("[data-testid='stSidebar']").get_by_role("textbox", name="Search"),
                "the sidebar search box",
                "01_overview",
            )
            flow.shot("01_overview")

            # click 1: Findings, on its first incident (a race with victims)
            flow.click(
                page.locator("[data-testid='stSidebarNav'] a").filter(has_text="Findings"),
                "the Findings link",
            )
            md = page.locator("[data-testid='stMarkdownContainer']")
            flow.expect(md.filter(has_text="Culprit action:"), "the incident", "02_incident")
            victim_link = page.locator("a[data-testid='stPageLink-NavLink']").filter(has_text="victim ")
            flow.expect(victim_link, "a victim link on the incident", "02_incident")
            flow.expect(page.locator(".js-plotly-plot"), "the finding's chart", "02_incident")
            incident = _query(page.url).get("incident")
            if not incident:
                flow.fail("02_incident", "the incident is not in the URL")
            flow.shot("02_incident")

            # click 2: the victim's request, its span tree
            # the link reads "victim <first 12 characters of the rid>" (after its icon's ligature text)
            named = re.search(r"victim (\S+)", victim_link.first.inner_text())
            victim_prefix = (
                named.group(1) if named else flow.fail("02_incident", "the victim link names no rid")
            )
            flow.click(victim_link, "the victim link")
            flow.expect(
                page.get_by_role("heading", name="Requests"), "the Requests title", "03_victim_span_tree"
            )
            flow.expect(
                page.get_by_text(f"Request {victim_prefix}"), "the victim request", "03_victim_span_tree"
            )
            flow.expect(page.locator(".js-plotly-plot"), "the span tree", "03_victim_span_tree")
            flow.expect(
                page.get_by_role("combobox", name="collapse"),
                "the span tree's fold control",
                "03_victim_span_tree",
            )
            # "victim of incident X" (a HiCache self-race's victim is its own culprit: "culprit of incident X")
            back = page.locator("a[data-testid='stPageLink-NavLink']").filter(
                has_text=re.compile(rf"(victim|culprit) of incident {re.escape(incident[:12])}")
            )
            flow.expect(back, f"the link to incident {incident[:12]}", "03_victim_span_tree")
            rid = _query(page.url).get("rid", "")
            if not rid.startswith(victim_prefix):
                flow.fail("03_victim_span_tree", f"opened request {rid!r}, not the victim {victim_prefix}...")
            flow.shot("03_victim_span_tree")

            # click 3: back to its incident
            flow.click(back, "the incident link")
            flow.expect(
                page.get_by_role("heading", name="Findings"), "the Findings title", "04_back_to_incident"
            )
            flow.expect(
                md.filter(has_text=f"Incident {incident}:"), "the same incident", "04_back_to_incident"
            )
            if _query(page.url).get("incident") != incident:
                flow.fail("04_back_to_incident", f"the URL names another incident than {incident}")
            flow.shot("04_back_to_incident")
        finally:
            browser.close()
    if flow.clicks > max_clicks:
        raise FlowFailed(f"the flow took {flow.clicks} clicks (at most {max_clicks})")
    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, type=Path, help="an analysed kvtrace store")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "screenshots")
    parser.add_argument("--max-clicks", type=int, default=3)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit("needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)")
    if not args.db.exists():
        sys.exit(f"{args.db}: no such store")
    port = _free_port()
    proc = subprocess.Popen(
        [KVTRACE, "app", "--db", str(args.db), "--port", str(port), "--address", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
        start_new_session=True,
    )
    try:
        _wait_healthy(port, proc)
        flow = run_flow(f"http://127.0.0.1:{port}", args.out, args.max_clicks)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(
        f"{flow.clicks} click(s) from the first screen to the victim's span tree and back to its incident "
        f"(at most {args.max_clicks}); screenshots in {args.out}: {', '.join(flow.shots)}"
    )


if __name__ == "__main__":
    main()
