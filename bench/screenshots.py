"""Screenshots of the finding view in a real browser (Debian's Chromium through Playwright).

    .venv/bin/python bench/screenshots.py --db demo/kvtrace.duckdb [--finding ID] [--out bench/out/screenshots]

Starts `kvtrace app --db DB` on a free loopback port, opens `/findings?finding=ID` (default: the
abort_before_write_complete finding with the most pages, else the first finding), waits for the
chart and writes `finding_view.png` (the whole page) and `finding_view_chart.png` (the chart at its
default zoom) under --out; prints the seconds from navigation to the drawn chart, cold (the app's
first page) and warm (a second load). Works on any
store `kvtrace analyze` has run on (the lead runs it on a >= 1M-span store).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KVTRACE = str(Path(sys.executable).with_name("kvtrace"))


def pick_finding(db: Path) -> str:
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT finding_id FROM findings ORDER BY kind <> 'abort_before_write_complete', len(pages) DESC, "
            "finding_id LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    if row is None:
        sys.exit(f"{db}: no findings (run `kvtrace analyze --db {db}` first)")
    return str(row[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"kvtrace app exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit("kvtrace app did not become healthy")


def wait_idle(page: object, timeout_s: float = 60) -> None:
    """Until Streamlit's running indicator is gone."""
    time.sleep(0.5)
    status = page.locator("[data-testid='stStatusWidget']")  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while status.count() > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)


def shoot(url: str, finding: str, out: Path) -> tuple[float, float]:
    """Screenshots of the finding view; (cold, warm) seconds from navigation to the drawn chart."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            t0 = time.perf_counter()
            page.goto(f"{url}/findings?finding={finding}", wait_until="domcontentloaded")
            chart = page.locator(".js-plotly-plot").first
            try:
                chart.wait_for(timeout=120_000)
            except PlaywrightTimeout:
                page.screenshot(path=str(out / "finding_view_failed.png"), full_page=True)
                sys.exit(f"no chart after 120 s: see {out / 'finding_view_failed.png'}")
            cold = time.perf_counter() - t0
            wait_idle(page)
            # warm: the app has its snapshot and imports; the page's caches still empty for a new session
            t0 = time.perf_counter()
            page.goto(f"{url}/findings?finding={finding}", wait_until="domcontentloaded")
            chart = page.locator(".js-plotly-plot").first
            chart.wait_for(timeout=120_000)
            warm = time.perf_counter() - t0
            wait_idle(page)
            chart.scroll_into_view_if_needed()
            chart.screenshot(path=str(out / "finding_view_chart.png"))
            page.screenshot(path=str(out / "finding_view.png"), full_page=True)
        finally:
            browser.close()
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, type=Path, help="an analysed kvtrace store")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "screenshots")
    parser.add_argument("--finding", default=None, help="finding id (default: see above)")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit("needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)")
    finding = args.finding or pick_finding(args.db)
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
        cold, warm = shoot(f"http://127.0.0.1:{port}", finding, args.out)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(
        f"finding {finding}: chart drawn {cold:.2f} s after the first navigation (cold app), "
        f"{warm:.2f} s after the second (warm app, new browser page load)"
    )
    print(f"wrote {args.out / 'finding_view.png'} and {args.out / 'finding_view_chart.png'}")


if __name__ == "__main__":
    main()
