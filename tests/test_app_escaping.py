"""Values from a trace are shown as text, never as markup: in every page of the app (AppTest and a
real Chromium), in the report's summary.md and in the plotly figures of the app and the report.

The store (tests/app_hostile_store.py) is built by the real opentelemetry-sdk, `kvtrace ingest`
and `kvtrace analyze`; its decode instance, version, hosts and rids are Markdown images and links,
HTML tags, emoji shortcodes, math and a newline followed by a heading.
"""

from __future__ import annotations

import json
import re
import string
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_hostile_store import (
    CULPRIT_RID,
    HOST,
    INSTANCE,
    KVTRACE,
    VERSION,
    VICTIM_RID,
)
from app_process import kvtrace_app
from streamlit.testing.v1 import AppTest

from kvtrace.app.escape import md, md_code, one_line, plot_text
from kvtrace.app.ui import DB_ENV

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Characters that open an inline Markdown construct (links and images, HTML and autolinks,
# emphasis, math, strikethrough, entities): none may stand unescaped where a value was put.
ACTIVE = set("[]<>*_$~&")
JOINER = "\u2060"


def _inline(source: str) -> tuple[str, str, set[str]]:
    """CommonMark's inline reading of `source`, as far as literal text goes (written here, not
    taken from kvtrace): (text outside code spans, text inside them, unescaped active characters).
    Word joiners (U+2060, invisible) stay in: they are what keeps `:smile:` from turning into an emoji."""
    plain: list[str] = []
    code: list[str] = []
    active: set[str] = set()
    i = 0
    while i < len(source):
        c = source[i]
        if c == "\\" and i + 1 < len(source) and source[i + 1] in string.punctuation:
            plain.append(source[i + 1])
            i += 2
            continue
        if c == "`":
            run = len(re.match(r"`+", source[i:]).group())  # type: ignore[union-attr]
            close = next((m for m in re.finditer(r"`+", source[i + run :]) if len(m.group()) == run), None)
            if close is None:  # an unmatched run is literal backticks
                plain.append("`" * run)
                i += run
                continue
            content = source[i + run : i + run + close.start()]
            if len(content) > 1 and content[0] == content[-1] == " " and content.strip():
                content = content[1:-1]
            code.append(content)
            i += run + close.end()
            continue
        if c in ACTIVE:
            active.add(c)
        plain.append(c)
        i += 1
    return "".join(plain), "".join(code), active


def _assert_text(source: str, value: str, template_active: frozenset[str] = frozenset()) -> None:
    """`source` (an element's Markdown) shows `value` literally, on one line, with no live markup."""
    assert "\n" not in source and "\r" not in source, source
    plain, code, active = _inline(source)
    assert active <= template_active, f"unescaped {sorted(active - template_active)} in {source!r}"
    assert one_line(value) in plain.replace(JOINER, "") or one_line(value) in code.replace(JOINER, ""), source
    for shortcode in re.findall(r":[\w+-]+:", value):  # emoji and icons are rewritten after parsing
        assert shortcode not in plain, f"{shortcode} would turn into an emoji in {source!r}"


def _page(db: Path, page: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _with(elements: Any, needle: str) -> list[str]:
    """The Markdown sources of `elements` whose literal text contains `needle`."""
    out = []
    for el in elements:
        plain, code, _ = _inline(el.value)
        if one_line(needle) in (plain + code).replace(JOINER, "") or needle in el.value:
            out.append(el.value)
    return out


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


RAW_MARKUP = ("<b>v</b>", "<a href", "<i>d</i>", "<img")


def _assert_figure_text(figure: dict[str, Any]) -> set[str]:
    """No string of a plotly figure carries a value's HTML raw; returns every string in it."""
    strings = set(_strings(figure))
    for s in strings:
        assert not any(tag in s for tag in RAW_MARKUP), f"raw HTML from a trace value in a figure: {s!r}"
    return strings


def test_escape_helpers_keep_text_literal() -> None:
    value = "a`b``c :smile: -> $x$ \u202e\x1b[31m\nnext"
    _assert_text(md(value), value)
    _assert_text(md_code(value), value)
    plain, code, _ = _inline(md_code("`tick` :material/home:"))
    assert code.replace(JOINER, "") == "`tick` :material/home:" and plain == ""
    assert plot_text("<b>x</b> & <a href='y'>") == "&lt;b&gt;x&lt;/b&gt; &amp; &lt;a href='y'&gt;"
    assert md("plain-1.0") == "plain\\-1\\.0" and md_code("") == ""


def _one(found: list[str], at: AppTest, what: str) -> str:
    assert len(found) == 1, (
        f"{len(found)} elements with {what}; errors shown: "
        f"{[e.value for e in at.error]}, infos: {[i.value for i in at.info]}"
    )
    return found[0]


def _check_overview(at: AppTest) -> None:
    verdict = _one(_with(at.markdown, "Heading"), at, "the verdict")
    assert verdict.startswith("**") and verdict.endswith("**")
    _assert_text(verdict[2:-2], INSTANCE)
    _assert_text(verdict[2:-2], VERSION)


def _check_findings(at: AppTest) -> None:
    _assert_text(_one(_with(at.subheader, "Heading"), at, "the finding's subheader"), INSTANCE)
    caption = _one(_with(at.caption, "culprit"), at, "the culprit caption")
    _assert_text(caption, CULPRIT_RID)
    _assert_text(caption, INSTANCE)
    _assert_text(
        _one([m.value for m in at.metric if m.label == "victim"], at, "the victim metric"), VICTIM_RID
    )


def _check_requests(at: AppTest) -> None:
    at.text_input(key="requests_rid_search").input("<img").run()
    assert at.selectbox(key="requests_pick").value == CULPRIT_RID
    _assert_text(_one(_with(at.subheader, "Request"), at, "the request's subheader"), CULPRIT_RID)
    searched = "![q](http://evil)`"
    at.text_input(key="requests_rid_search").input(searched).run()
    _assert_text(_one(_with(at.info, "no request rid starts with"), at, "the no-match message"), searched)
    at.text_input(key="requests_rid_search").input("<img").run()  # back to the request, for its charts


def _check_replay(at: AppTest) -> None:
    at.button(key="replay_run").click().run()
    assert not at.exception
    captions = _with(at.caption, "victim")
    assert len(captions) == 2, [c.value for c in at.caption]  # as recorded, fixed
    for caption in captions:
        _assert_text(caption, VICTIM_RID)


CHECKS = {
    "overview": _check_overview,
    "findings": _check_findings,
    "requests": _check_requests,
    "replay": _check_replay,
    "anomalies": None,
    "compare": None,
}
# the values each page's figures carry (escaped as entities, which plotly shows as text)
IN_FIGURES = {
    "overview": [VERSION],
    "findings": [CULPRIT_RID, HOST],
    "requests": [HOST, INSTANCE],
    "replay": [],
    "anomalies": [],
    "compare": [VERSION],
}


@pytest.mark.parametrize("page", list(CHECKS))
def test_page_shows_trace_values_as_text(
    hostile_store: Path, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    at = _page(hostile_store, page, monkeypatch)
    check = CHECKS[page]
    if check is not None:
        check(at)
    figures = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert figures or page == "replay", f"no chart on {page}"
    seen = set().union(*(_assert_figure_text(f) for f in figures))
    for value in IN_FIGURES[page]:
        assert any(plot_text(value) in s for s in seen), value


def test_a_link_to_a_hostile_rid_opens_it_and_a_hostile_span_id_is_said_as_text(
    hostile_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """?rid= with the whole markup rid opens that request (not "no request ..."), and a ?span= the
    request does not have is said, both values shown literally."""
    monkeypatch.setenv(DB_ENV, str(hostile_store))
    bad_span = "<b>x</b>`![s](http://evil)"
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.query_params["rid"] = CULPRIT_RID
    at.query_params["span"] = bad_span
    at.run()
    at.switch_page("views/requests.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not _with(at.warning, "no request"), [w.value for w in at.warning]
    _assert_text(_one(_with(at.subheader, "Request"), at, "the request's subheader"), CULPRIT_RID)
    warning = _one(_with(at.warning, "no span"), at, "the bad span's warning")
    _assert_text(warning, bad_span)
    _assert_text(warning, CULPRIT_RID)


@pytest.mark.slow
def test_report_markdown_and_charts_keep_values_as_text(hostile_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    subprocess.run(
        [KVTRACE, "report", "--db", str(hostile_store), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    summary = (out / "summary.md").read_text(encoding="utf-8")
    lines = summary.splitlines()
    assert not any(line.lstrip().startswith("# Heading") for line in lines), "a value injected a heading"
    shown = [line for line in lines if "Heading" in line]
    assert shown, "the instance id is missing from summary.md"
    for line in shown:
        body = line.strip()
        if body.startswith("**"):  # the verdict
            _assert_text(body.strip("*"), INSTANCE)
        else:  # a table row: its cells are separated by unescaped |
            cells = re.split(r"(?<!\\)\|", body)[1:-1]
            assert any(_inline(c.strip())[0].replace(JOINER, "") == one_line(INSTANCE) for c in cells), line
            for cell in cells:
                assert not _inline(cell)[2], f"unescaped markup in {cell!r}"
    assert md(VERSION) in summary

    html = (out / "report.html").read_text(encoding="utf-8")
    for raw in (CULPRIT_RID, VERSION, "<i>d</i>"):
        assert raw not in html
    figures = []
    decoder = json.JSONDecoder()
    for call in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", html):
        data, end = decoder.raw_decode(html, call.end())
        layout, _ = decoder.raw_decode(html, html.index("{", end))
        figures.append({"data": data, "layout": layout})
    assert len(figures) >= 6
    seen = set().union(*(_assert_figure_text(f) for f in figures))
    for value in (VERSION, INSTANCE, VICTIM_RID):
        assert any(plot_text(value) in s for s in seen), value


# --- a real browser -------------------------------------------------------------------------------


@pytest.fixture()
def hostile_app(hostile_store: Path) -> Iterator[str]:
    with kvtrace_app(hostile_store) as (port, _):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")
def test_browser_renders_trace_values_as_text(hostile_app: str) -> None:
    from playwright.sync_api import sync_playwright

    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.on("request", lambda r: requested.append(r.url))
            # (page, its title, a text that shows once the value is drawn, as text or as markup)
            for path, title, landmark in (
                ("", "Overview", "Heading"),
                ("findings", "Findings", "Heading"),
                ("requests?rid=%3Cimg", "Requests", "Request "),
            ):
                page.goto(f"{hostile_app}/{path}", wait_until="domcontentloaded")
                page.get_by_role("heading", name=title).first.wait_for(timeout=30_000)
                page.get_by_text(landmark).first.wait_for(timeout=30_000)
                page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
                _wait_until_idle(page)
                where = f"/{path}"
                if path == "findings":  # the instance filter lists the instance ids: open it
                    page.get_by_label("instance").first.click()
                    page.get_by_role("option").first.wait_for(timeout=10_000)
                    options = page.get_by_role("option").all_inner_texts()
                    assert any(o.startswith("![x](http://127.0.0.1:9/beacon.png)") for o in options), options
                assert page.locator("[data-testid='stException']").count() == 0, where
                images = page.locator("img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
                assert not [s for s in images if s and ("127.0.0.1:9" in s or s == "x")], (where, images)
                links = page.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
                assert not [h for h in links if h and "//evil" in h], (
                    where,
                    links,
                )  # (anchors "#...-evil-..." are ours)
                headings = page.locator("h1, h2, h3, h4, h5, h6").all_inner_texts()
                assert not [h for h in headings if h.strip() == "Heading"], (where, headings)
                # plotly draws versions and hosts as text: no <b>/<i> tspans, no SVG links
                assert page.locator(".js-plotly-plot a").count() == 0, where
                assert (
                    page.locator(
                        ".js-plotly-plot tspan[style*='bold'], .js-plotly-plot tspan[style*='italic']"
                    ).count()
                    == 0
                ), where
                text = page.locator("body").inner_text()
                if path == "requests?rid=%3Cimg":
                    assert f"Request {CULPRIT_RID}" in text, where
                else:
                    assert one_line(INSTANCE) in text, where  # the newline shown as \\n
                if path == "findings":  # the victim rid: no emoji, no math, backticks kept
                    assert one_line(VICTIM_RID) in text.replace(JOINER, ""), where
                    assert "\U0001f604" not in text and page.locator(".katex").count() == 0, where
                if path == "":
                    assert VERSION in page.locator(".js-plotly-plot").first.inner_text(), (
                        "the legend shows the version"
                    )
        finally:
            browser.close()
    assert not [u for u in requested if "127.0.0.1:9" in u or "evil" in u], requested


def _wait_until_idle(page: Any) -> None:
    """Streamlit shows a running indicator while the script runs; wait until it is gone."""
    time.sleep(0.5)
    status = page.locator("[data-testid='stStatusWidget']")
    deadline = time.monotonic() + 30
    while status.count() > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
