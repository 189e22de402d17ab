"""The finding view tells the story at any scale: the critical sequence (write posted, abort, free,
victim alloc, write landing) at a default zoom that shows it, the whole window in the range slider,
instants as distinct markers on their own lanes, a flow from the culprit's write to the victim,
page sets as ranges with one row per event, both clocks and the clock bounds, the refute margin in
words, evidence span ids linking to their request. And one query for a finding's window of KV
events: the app and `kvtrace replay export` read the same rows.

Streamlit's AppTest on stores built by the real pipeline: sample_traces/pr35049, the same store
scaled to the on-call report's shape (1,531 pages in 52 runs over ids 164-80,695, the free 93 ms
before the reuse, a 26.2 s write: the events edited in the store, then `analyze` run again), and
sample_traces/mixed for the HiCache race.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import duckdb
import numpy as np
import polars as pl
import pytest
from app_sample_store import PR35049, analyse, ingest_sample
from streamlit.testing.v1 import AppTest

from kvtrace.analytics.finding_window import finding_window
from kvtrace.app import readable
from kvtrace.app.data import findings
from kvtrace.app.escape import md
from kvtrace.app.store import Store
from kvtrace.app.ui import DB_ENV
from kvtrace.replay.export import export_finding

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
REUSE_NS = 881_310_000_000  # pr35049: B allocates the pages at 881.31 s (decode's clock)


@pytest.fixture(scope="module")
def pr35049(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample_traces/pr35049 ingested and analysed: one abort_before_write_complete finding."""
    db = ingest_sample(PR35049, tmp_path_factory.mktemp("finding_view"))
    analyse(db)
    return db


def _scaled_pages() -> list[int]:
    """1,531 pages in 52 runs over 164..80,695, as in the on-call report."""
    runs = [(164, 200), (512, 600)] + [(1000 + 1600 * i, 1027 + 1600 * i) for i in range(49)]
    left = 1531 - sum(hi - lo + 1 for lo, hi in runs)
    runs.append((80_695 - left + 1, 80_695))
    return [p for lo, hi in runs for p in range(lo, hi + 1)]


@pytest.fixture(scope="module")
def scaled(pr35049: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pr35049 at the report's scale: A's pages spread, its free and abort 93 ms before B's reuse,
    its write landing 26.2 s after it; B reuses all of A's pages. Re-analysed."""
    db = tmp_path_factory.mktemp("finding_view_scaled") / "scaled.duckdb"
    shutil.copy(pr35049, db)
    pages = _scaled_pages()
    con = duckdb.connect(str(db))
    try:
        a, b = con.execute("SELECT culprit_rid, victim_rid FROM findings").fetchone()  # type: ignore[misc]

        def set_pages(where: str, params: list[object], new: list[int]) -> None:
            con.execute(
                f"UPDATE kv_events SET page_ids = ?::INTEGER[], page_lo = ?, page_hi = ?, n_pages = ? "
                f"WHERE instance_id = 'decode-0' AND {where}",
                [new, min(new), max(new), len(new), *params],
            )

        set_pages("rid = ? AND op IN ('alloc', 'transfer', 'free')", [a], pages)
        reused = sorted(set(pages) | set(range(1, 33)))
        set_pages("rid = ? AND op IN ('alloc', 'transfer') AND page_lo = 1", [b], reused)
        set_pages("rid = ? AND op = 'free'", [b], sorted(set(reused) | set(range(45, 50))))
        con.execute(
            "UPDATE kv_events SET end_ns = ? WHERE rid = ? AND op = 'transfer' AND instance_id = 'decode-0'",
            [REUSE_NS + 26_200_000_000, a],
        )
        con.execute(
            "UPDATE kv_events SET start_ns = ?, end_ns = ? + 20000 WHERE rid = ? AND op = 'free' "
            "AND instance_id = 'decode-0'",
            [REUSE_NS - 93_000_000, REUSE_NS - 93_000_000, a],
        )
        con.execute("UPDATE aborts SET time_ns = ? WHERE rid = ?", [REUSE_NS - 93_000_000, a])
        con.execute(
            "UPDATE kv_events SET start_ns = start_ns + 30000000000, end_ns = end_ns + 30000000000 "
            "WHERE rid = ? AND op = 'free' AND instance_id = 'decode-0'",
            [b],
        )  # B keeps them past A's write
    finally:
        con.close()
    analyse(db)
    return db


def _one(db: Path, sql: str, params: list[object] | None = None) -> tuple[object, ...]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(sql, params or []).fetchall()
    finally:
        con.close()
    assert len(rows) == 1, rows
    return rows[0]


def _open(db: Path, monkeypatch: pytest.MonkeyPatch, finding: str) -> AppTest:
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.query_params["finding"] = finding
    at.switch_page("views/findings.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _chart(at: AppTest, key: str = "findings_timeline") -> dict:  # type: ignore[type-arg]
    [spec] = [json.loads(el.proto.spec) for el in at.get("plotly_chart") if el.proto.id.endswith(key)]
    return spec


def _trace(spec: dict, name: str) -> dict:  # type: ignore[type-arg]
    """A trace by legend name, its arrays as lists (plotly encodes numpy data as {"dtype", "bdata"})."""
    [trace] = [t for t in spec["data"] if t["name"] == name]
    return {k: _array(v) if k in ("x", "y", "base") else v for k, v in trace.items()}


def _array(value: object) -> list:  # type: ignore[type-arg]
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
    assert isinstance(value, list)
    return value


def _events(at: AppTest):  # type: ignore[no-untyped-def]
    [frame] = [d.value for d in at.dataframe if {"who", "x0_raw_ms", "pages"} <= set(d.value.columns)]
    return frame


def _abort_finding(db: Path) -> tuple[str, str, str]:
    fid, culprit, victim = _one(
        db,
        "SELECT finding_id, culprit_rid, victim_rid FROM findings WHERE kind = 'abort_before_write_complete'",
    )
    return str(fid), str(culprit), str(victim)


def _times(db: Path, culprit: str, victim: str) -> dict[str, float]:
    """The sequence's times (ms from the reuse, decode's clock), straight from the store."""
    (ws,) = _one(db, "SELECT window_start_ns FROM findings")
    (free,) = _one(
        db,
        "SELECT start_ns FROM kv_events WHERE rid = ? AND op = 'free' AND instance_id = 'decode-0'",
        [culprit],
    )
    (alloc,) = _one(
        db,
        "SELECT start_ns FROM kv_events WHERE rid = ? AND op = 'alloc' AND instance_id = 'decode-0' "
        "AND list_contains(page_ids, 20)",
        [victim],
    )
    (abort,) = _one(db, "SELECT time_ns FROM aborts WHERE rid = ?", [culprit])
    posted, lands, raw_lands = _one(
        db,
        """
        SELECT e.start_ns - b.offset_est_ns, f.window_end_ns, e.end_ns FROM kv_events e, skew_bounds b, findings f
        WHERE e.rid = ? AND e.op = 'transfer' AND e.instance_id = 'decode-0'""",
        [culprit],
    )
    return {
        k: (int(v) - int(ws)) / 1e6
        for k, v in {  # type: ignore[call-overload]
            "free": free,
            "alloc": alloc,
            "abort": abort,
            "posted": posted,
            "lands": lands,
            "raw_lands": raw_lands,
        }.items()
    }


@pytest.mark.parametrize("store", ["pr35049", "scaled"])
def test_the_critical_sequence_is_on_screen_at_the_default_zoom(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = request.getfixturevalue(store)
    fid, culprit, victim = _abort_finding(db)
    t = _times(db, culprit, victim)
    at = _open(db, monkeypatch, fid)
    spec = _chart(at)
    lo, hi = spec["layout"]["xaxis"]["range"]
    free, alloc, abort = (_trace(spec, n) for n in ("culprit: free", "victim: alloc", "culprit: abort"))
    # instants are markers of distinct symbols, each kind on its own lane
    assert {free["type"], alloc["type"], abort["type"]} == {"scatter"}
    assert len({free["marker"]["symbol"], alloc["marker"]["symbol"], abort["marker"]["symbol"]}) == 3
    assert len({free["y"][0], alloc["y"][0], abort["y"][0]}) == 3
    assert free["x"] == [pytest.approx(t["free"])] and alloc["x"] == [pytest.approx(t["alloc"])]
    # the default zoom holds the free and the reuse, far apart on screen: 30 ms (93 ms scaled) of a
    # 6 s (28.7 s) write
    assert lo <= t["abort"] and lo < t["free"] < t["alloc"] < hi
    assert t["alloc"] - t["free"] >= 0.25 * (hi - lo)
    assert not lo <= t["lands"] <= hi  # the landing is seconds away: in the context strip
    slider = spec["layout"]["xaxis"]["rangeslider"]
    assert slider["visible"] and slider["range"][0] < t["posted"] and slider["range"][1] > t["lands"]
    # the culprit's write spans the zoom: posted before it, landing after it
    write = _trace(spec, "culprit: transfer")
    assert write["base"][0] == pytest.approx(t["posted"]) and write["base"][0] + write["x"][0] > hi
    # a flow arrow from the culprit's write lane down to the victim's alloc, at the reuse
    [flow] = [
        a
        for a in spec["layout"]["annotations"]
        if a.get("name") == "flow" and a["x"] == pytest.approx(t["alloc"])
    ]
    assert (flow["ay"], flow["y"]) == (write["y"][0], alloc["y"][0])
    # the sequence in words, in order, with the times from the store
    [words] = [m.value for m in at.markdown if m.value.startswith("**Critical sequence**")]
    order = [words.index(w) for w in ("write posted", "abort", "free", "victim alloc", "write lands")]
    assert order == sorted(order)
    assert f"free **−{readable.duration((t['alloc'] - t['free']) * 1e6)}**" in words
    assert f"write lands **+{readable.duration(t['lands'] * 1e6)}**" in words


def test_at_scale_one_row_per_event_with_its_page_ranges(
    scaled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fid, culprit, victim = _abort_finding(scaled)
    at = _open(scaled, monkeypatch, fid)
    events = _events(at)
    con = duckdb.connect(str(scaled), read_only=True)
    try:
        stored = {
            r[0]: r[1]
            for r in con.execute(
                "SELECT span_id, page_ids FROM kv_events WHERE instance_id = 'decode-0' AND rid IN (?, ?) "
                "AND kv_pool = 'kv' AND (op = 'read' OR list_has_any(page_ids, (SELECT pages FROM findings)))",
                [culprit, victim],
            ).fetchall()
        }
        (n_aborts,) = con.execute(
            "SELECT count(*) FROM aborts WHERE rid IN (?, ?)", [culprit, victim]
        ).fetchone()
    finally:
        con.close()
    assert len(events) == len(stored) + n_aborts  # one row per event, not per page run
    spans = [parse_qs(urlparse(u).query)["span"][0] for u in events["span_id"]]
    assert len(set(spans)) == len(spans)
    for span, pages_text in zip(spans, events["pages"], strict=True):
        if stored.get(span):
            assert pages_text == readable.page_ranges(stored[span])  # runs from SQL, same text
    write = events[(events["who"] == "culprit") & (events["op"] == "transfer")].iloc[0]
    assert (
        write["pages"] == "164-200, 512-600, 1,000-1,027, 2,600-2,627, 4,200-4,227, ..., 80,663-80,695 "
        "(1,531 pages in 52 runs)"
    )
    assert write["finding_pages"] == 1531
    assert f"pages {md(write['pages'])}" in [c.value for c in at.caption]  # the finding's: all 1,531 reused


def test_both_clocks_the_clock_bounds_and_the_refute_margin(
    pr35049: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fid, culprit, victim = _abort_finding(pr35049)
    t = _times(pr35049, culprit, victim)
    ws, earliest, latest, margin = _one(
        pr35049,
        "SELECT window_start_ns, window_end_earliest_ns, window_end_latest_ns, refute_margin FROM findings",
    )
    at = _open(pr35049, monkeypatch, fid)
    spec = _chart(at)
    band = _trace(spec, "write landing: clock bounds")
    assert band["base"][0] == pytest.approx((earliest - ws) / 1e6)  # type: ignore[operator]
    assert band["base"][0] + band["x"][0] == pytest.approx((latest - ws) / 1e6)  # type: ignore[operator]
    assert band["y"] == _trace(spec, "culprit: transfer")["y"][:1]  # on the write's lane
    other = _trace(spec, "on the raw clock of gpu-p00")
    assert pytest.approx(t["raw_lands"]) in other["x"]  # the landing as prefill's clock has it
    assert t["raw_lands"] != pytest.approx(t["lands"])
    assert [i.value for i in at.info if "Clocks:" in i.value] == [f"Clocks: {md(margin)}."]

    at.radio(key="findings_clock").set_value("raw").run()
    assert not at.exception
    raw = _chart(at)
    assert "write landing: clock bounds" not in [
        tr["name"] for tr in raw["data"]
    ]  # the bounds are decode's clock
    write = _trace(raw, "culprit: transfer")
    assert write["base"][0] + write["x"][0] == pytest.approx(t["raw_lands"])
    assert pytest.approx(t["lands"]) in _trace(raw, "on the clock of decode-0")["x"]


def test_evidence_span_ids_open_their_request(pr35049: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fid, _, _ = _abort_finding(pr35049)
    at = _open(pr35049, monkeypatch, fid)
    (evidence,) = _one(pr35049, "SELECT evidence_span_ids FROM findings")
    con = duckdb.connect(str(pr35049), read_only=True)
    try:
        owner = dict(
            con.execute("SELECT span_id, rid FROM kv_events UNION SELECT span_id, rid FROM aborts").fetchall()
        )
    finally:
        con.close()
    [caption] = [c.value for c in at.caption if c.value.startswith("Evidence spans")]
    for span in evidence:  # type: ignore[attr-defined]
        assert f"[{span}](requests?rid={owner[span]}&span={span})" in caption
    events = _events(at)
    links = events["span_id"]
    assert [parse_qs(urlparse(u).query)["rid"][0] for u in links] == list(events["rid"])
    # the link's target opens that request
    url = next(u for u in links if parse_qs(urlparse(u).query)["span"][0] == evidence[0])  # type: ignore[index]
    rid = parse_qs(urlparse(url).query)["rid"][0]
    monkeypatch.setenv(DB_ENV, str(pr35049))
    req = AppTest.from_file(str(ENTRY), default_timeout=60)
    req.query_params["rid"] = rid
    req.switch_page("views/requests.py").run()
    assert not req.exception, [e.value for e in req.exception]
    shown = [
        str(e.value) for kind in ("subheader", "markdown", "text_input", "selectbox") for e in req.get(kind)
    ]
    assert any(rid in text for text in shown), shown


def test_a_hicache_load_and_the_reads_it_races_are_on_separate_lanes(
    mixed_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (fid,) = _one(
        mixed_store,
        "SELECT finding_id FROM findings WHERE kind = 'read_before_load' "
        "ORDER BY window_start_ns, finding_id LIMIT 1",
    )
    at = _open(mixed_store, monkeypatch, str(fid))
    spec = _chart(at)
    load, reads = _trace(spec, "culprit: load"), _trace(spec, "victim: read")
    assert set(load["y"]).isdisjoint(reads["y"])  # the load never hidden under the reads
    lo, hi = spec["layout"]["xaxis"]["range"]
    (window_ms,) = _one(
        mixed_store,
        "SELECT (window_end_ns - window_start_ns) / 1e6 FROM findings WHERE finding_id = ?",
        [fid],
    )
    assert lo <= 0 and window_ms <= hi  # type: ignore[operator]  # the early read .. its layer's copy done
    flows = [a for a in spec["layout"]["annotations"] if a.get("name") == "flow"]
    assert any(a["ay"] == load["y"][0] and a["y"] == reads["y"][0] for a in flows)
    assert "findings_layers" in {el.proto.id.rsplit("-", 1)[-1] for el in at.get("plotly_chart")}


def test_the_app_and_the_replay_export_read_one_window(mixed_store: Path) -> None:
    con = duckdb.connect(str(mixed_store), read_only=True)
    ids = [
        r[0]
        for r in con.execute(
            "SELECT finding_id FROM findings WHERE len(pages) > 0 "
            "QUALIFY row_number() OVER (PARTITION BY kind ORDER BY finding_id) <= 3 ORDER BY finding_id"
        ).fetchall()
    ]
    assert len(ids) == 6  # three of each page-level kind in the sample: both bugs
    with Store(mixed_store) as store:
        for fid in ids:
            app = findings.evidence_window(store, fid)
            exported = finding_window(con, fid)  # what export_finding reads: the window's other requests too
            parties = {r for r in (app.finding["culprit_rid"], app.finding["victim_rid"]) if r}
            assert app.window.events, fid
            assert {e.rid for e in app.window.events} <= parties
            assert app.window.events == tuple(e for e in exported.window.events if e.rid in parties), fid
            assert (app.window.lo_ns, app.window.hi_ns, app.window.clock_offsets_ns) == (
                exported.window.lo_ns,
                exported.window.hi_ns,
                exported.window.clock_offsets_ns,
            )
            plan = export_finding(con, fid)
            assert plan.meta["window_ns"] == [exported.window.lo_ns, exported.window.hi_ns]
            assert {o.span_id for o in plan.ops} <= {e.span_id for e in exported.window.events}
            drawn = findings.timeline(store, fid).events
            kv = drawn.filter(pl.col("op") != "abort")
            assert set(zip(kv["span_id"], kv["rid"], strict=True)) <= {
                (e.span_id, e.rid) for e in app.window.events
            }
    con.close()


def test_default_zoom_keeps_the_core_wide_and_takes_in_near_moments() -> None:
    # the report's finding: free 93 ms before the reuse, the write posted 2.5 s before, landing 26.2 s after
    points = [("posted", -2507.0), ("abort", -93.0), ("free", -93.0), ("alloc", 0.0), ("lands", 26_203.0)]
    lo, hi = findings.default_zoom(points, ("free", "alloc"))
    assert lo < -93.0 and hi > 0.0 and hi - lo == pytest.approx(93.0 * 1.6)
    # a landing 100 ms after the reuse is near enough to be shown with them
    lo, hi = findings.default_zoom([*points[:4], ("lands", 100.0)], ("free", "alloc"))
    assert lo < -93.0 and hi > 100.0
    # one instant: a window of MIN_ZOOM_MS around it, never an empty range
    lo, hi = findings.default_zoom([("free", 5.0), ("alloc", 5.0)], ("free", "alloc"))
    assert lo < 5.0 < hi


def test_a_deep_link_opens_a_finding_beyond_the_listed_incidents(
    pr35049: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At scale the incident list stops at its LIMIT (newest first): a link to an older finding
    still opens that finding, not the newest one."""
    db = tmp_path / "many.duckdb"
    shutil.copy(pr35049, db)
    fid, _, _ = _abort_finding(pr35049)
    (incident,) = _one(pr35049, "SELECT incident_id FROM finding_incidents")
    con = duckdb.connect(str(db))
    try:  # 1,000 newer copies of the finding and its incident, ids suffixed, times a minute apart each
        shift = "{c} + (k + 1) * 60000000000"
        for table, ids, times in (
            ("findings", ["finding_id"], ["window_start_ns", "window_end_ns"]),
            ("finding_incidents", ["finding_id", "incident_id"], []),
            ("incidents", ["incident_id"], ["window_start_ns", "window_end_ns"]),
        ):
            cols = [
                r[0]
                for r in con.execute(
                    f"SELECT column_name FROM duckdb_columns() WHERE table_name = '{table}' "
                    "ORDER BY column_index"
                ).fetchall()
            ]
            exprs = [
                f"{c} || '-' || k::VARCHAR" if c in ids else shift.format(c=c) if c in times else c
                for c in cols
            ]
            con.execute(f"INSERT INTO {table} SELECT {', '.join(exprs)} FROM {table}, range(1000) r(k)")
    finally:
        con.close()
    assert findings.list_incidents.__defaults__[-1] == 1000  # type: ignore[index]  # the page's LIMIT
    at = _open(db, monkeypatch, fid)
    assert at.selectbox(key="findings_incident_pick").value == incident
    assert at.selectbox(key="findings_pick").value == fid
    assert not at.warning
