"""The finding view in a real browser: the critical sequence of the pr35049 finding (the culprit's
free 30 ms before the victim's alloc of its pages, while the 6 s write is in flight) is visible at
the default zoom: the free and the victim-alloc markers are drawn inside the plot area, on screen,
apart from each other. Debian's Chromium through Playwright; saves
bench/out/screenshots/finding_view.png (git-ignored)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from app_process import kvtrace_app
from app_sample_store import PR35049, ROOT, analyse, ingest_sample

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "bench" / "out" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="browser test needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]

# The drawn markers of one trace (by its legend name) in the main plot (not the range slider's
# copy), as client rectangles, with the plot area and the x range shown.
MARKERS_JS = """(gd, names) => {
  const area = gd.querySelector('.draglayer .nsewdrag').getBoundingClientRect();
  const out = {area: [area.left, area.top, area.right, area.bottom], range: gd._fullLayout.xaxis.range, traces: {}};
  for (const name of names) {
    const trace = gd._fullData.find(t => t.name === name);
    if (!trace) { out.traces[name] = null; continue; }
    const points = gd.querySelectorAll('.cartesianlayer g.trace.trace' + trace.uid + ' path.point');
    out.traces[name] = {symbol: trace.marker.symbol, x: Array.from(trace.x), boxes: Array.from(points).map(p => {
      const r = p.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })};
  }
  return out;
}"""


@pytest.fixture(scope="module")
def pr35049_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = ingest_sample(PR35049, tmp_path_factory.mktemp("browser_finding"))
    analyse(db)
    return db


@pytest.fixture(scope="module")
def app_url(pr35049_store: Path) -> Iterator[str]:
    with kvtrace_app(pr35049_store) as (port, _):
        yield f"http://127.0.0.1:{port}"


def test_the_pr35049_free_and_victim_alloc_are_distinct_and_on_screen(
    pr35049_store: Path, app_url: str
) -> None:
    from playwright.sync_api import sync_playwright

    con = duckdb.connect(str(pr35049_store), read_only=True)
    try:
        [(finding,)] = con.execute(
            "SELECT finding_id FROM findings WHERE kind = 'abort_before_write_complete'"
        ).fetchall()
    finally:
        con.close()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{app_url}/findings?finding={finding}", wait_until="domcontentloaded")
            chart = page.locator(".js-plotly-plot").first
            chart.wait_for(timeout=60_000)
            _wait_until_idle(page)
            assert page.locator("[data-testid='stException']").count() == 0
            chart.scroll_into_view_if_needed()
            time.sleep(0.5)
            drawn = chart.evaluate(MARKERS_JS, ["culprit: free", "victim: alloc", "culprit: abort"])
            page.screenshot(path=str(SHOTS / "finding_view.png"), full_page=True)
            chart.screenshot(path=str(SHOTS / "finding_view_chart.png"))
        finally:
            browser.close()

    left, top, right, bottom = drawn["area"]
    assert top >= 0 and bottom <= VIEWPORT["height"] and left >= 0 and right <= VIEWPORT["width"], drawn[
        "area"
    ]
    free, alloc, abort = (drawn["traces"][n] for n in ("culprit: free", "victim: alloc", "culprit: abort"))
    assert free and alloc and abort, drawn["traces"]
    assert len({free["symbol"], alloc["symbol"], abort["symbol"]}) == 3  # three kinds, three symbols
    centres = {}
    for name, trace in (("free", free), ("alloc", alloc)):
        [box] = trace["boxes"]  # one marker each, drawn in the main plot
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        assert left <= cx <= right and top <= cy <= bottom, (
            f"the {name} marker is off the plot: {box} vs {drawn['area']}"
        )
        assert box[2] - box[0] >= 8, f"the {name} marker is too small to see: {box}"
        centres[name] = (cx, cy, box)
    (fx, _, fbox), (ax, _, abox) = centres["free"], centres["alloc"]
    overlap = fbox[0] < abox[2] and abox[0] < fbox[2] and fbox[1] < abox[3] and abox[1] < fbox[3]
    assert not overlap, (fbox, abox)
    # apart in time too: 30 ms between the free and the alloc, drawn at least 10% of the plot apart
    assert ax - fx >= 0.1 * (right - left), (fx, ax, drawn["range"])
    assert drawn["range"][0] <= free["x"][0] < alloc["x"][0] <= drawn["range"][1]


def _wait_until_idle(page: object) -> None:
    """Streamlit shows a running indicator while the script runs; wait until it is gone."""
    time.sleep(0.5)
    status = page.locator("[data-testid='stStatusWidget']")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while status.count() > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)
