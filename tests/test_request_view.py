"""The request view as a trace UI (app/views/requests.py, app/span_tree.py) under AppTest on the
mixed sample store built by the real pipeline: the span tree follows parent_span_id, instant spans
are markers, the spans a finding cites are outlined, host colours stay put from one request to the
next, the detail panel shows the span's attributes and resource, and the victim's incident is on top."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from kvtrace.app.ui import DB_ENV

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"


def _rows(db: Path, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _open(db: Path, monkeypatch: pytest.MonkeyPatch, **params: str) -> AppTest:
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page("views/requests.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _tree_chart(at: AppTest) -> dict[str, object]:
    [spec] = [json.loads(el.proto.spec) for el in at.get("plotly_chart")
              if el.proto.id.endswith("requests_waterfall")]
    return spec


def _spans(db: Path, rid: str) -> dict[str, tuple[object, ...]]:
    """span_id -> (trace_id, parent_span_id, name, host_name, duration ns), read without the app."""
    rows = _rows(db, """
        SELECT span_id, trace_id, parent_span_id, name, host_name, end_ns - start_ns FROM spans
        WHERE rid = ? OR trace_id IN (SELECT trace_id FROM requests WHERE rid = ?)""", [rid, rid])
    return {str(r[0]): r[1:] for r in rows}


@pytest.fixture(scope="module")
def victim(mixed_store: Path) -> tuple[str, str, str, list[str]]:
    """(victim rid, its finding, that finding's incident, the finding's evidence span ids)."""
    [(rid, finding, incident, evidence)] = _rows(mixed_store, """
        SELECT f.victim_rid, f.finding_id, i.incident_id, f.evidence_span_ids
        FROM findings f JOIN finding_incidents i USING (finding_id)
        WHERE f.kind = 'abort_before_write_complete' ORDER BY f.finding_id LIMIT 1""")
    return str(rid), str(finding), str(incident), [str(s) for s in evidence]  # type: ignore[union-attr]


def test_the_tree_follows_parent_ids_and_each_span_is_drawn_once(
        mixed_store: Path, victim: tuple[str, str, str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    rid = victim[0]
    truth = _spans(mixed_store, rid)
    spec = _tree_chart(_open(mixed_store, monkeypatch, rid=rid))
    data: list[dict[str, object]] = spec["data"]  # type: ignore[assignment]
    row_of: dict[str, int] = {}
    for trace in data:
        for span_id, y in zip(trace["customdata"], trace["y"], strict=True):  # type: ignore[call-overload]
            assert span_id not in row_of, f"span {span_id} drawn twice"
            row_of[str(span_id)] = int(y)
    assert set(row_of) == set(truth)
    ticks: list[str] = spec["layout"]["yaxis"]["ticktext"]  # type: ignore[index]
    # a tick: a 2-character evidence mark (★ or blank), 3 spaces per level, the fold mark, the name
    depth = {s: (len(ticks[r][2:]) - len(ticks[r][2:].lstrip("\u00a0"))) // 3 for s, r in row_of.items()}
    for span_id, (_trace, parent, _name, _host, _dur) in truth.items():
        if parent in truth:
            # a child comes after its parent, one level deeper, with only deeper rows between them
            assert row_of[span_id] > row_of[str(parent)]
            assert depth[span_id] > depth[str(parent)]
            between = [s for s, r in row_of.items() if row_of[str(parent)] < r < row_of[span_id]]
            assert all(depth[s] > depth[str(parent)] for s in between)
        else:
            assert depth[span_id] == 0


def test_instant_spans_are_markers_and_evidence_is_outlined(
        mixed_store: Path, victim: tuple[str, str, str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    rid, _finding, _incident, evidence = victim
    truth = _spans(mixed_store, rid)
    spec = _tree_chart(_open(mixed_store, monkeypatch, rid=rid))
    marker_spans, outlined = set(), set()
    for trace in spec["data"]:  # type: ignore[attr-defined]
        widths = trace["marker"]["line"]["width"]
        if trace["type"] == "scatter":
            assert trace["mode"] == "markers"
            marker_spans |= set(trace["customdata"])
        outlined |= {s for s, w in zip(trace["customdata"], widths, strict=True) if w >= 3}
    instants = {s for s, (_t, _p, name, _h, _d) in truth.items() if name in ("kv.alloc", "kv.free")}
    assert instants and instants <= marker_spans, "kv.alloc / kv.free must be visible as markers"
    cited = {str(s) for (s,) in _rows(mixed_store, """SELECT DISTINCT unnest(evidence_span_ids) FROM findings
                                                     WHERE victim_rid = ? OR culprit_rid = ?""", [rid, rid])}
    assert set(evidence) <= cited
    cited_here = cited & set(truth)
    assert cited_here and outlined == cited_here


def test_host_colours_do_not_depend_on_the_request(
        mixed_store: Path, victim: tuple[str, str, str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    # a request whose first host differs from the victim's: colours are per host, not per position
    rid = victim[0]
    hosts = {str(h) for (_t, _p, _n, h, _d) in _spans(mixed_store, rid).values()}
    [(other,)] = _rows(mixed_store, """
        SELECT rid FROM requests WHERE role = 'decode' AND host_name NOT IN (SELECT unnest(?))
        ORDER BY rid LIMIT 1""", [sorted(hosts)])

    def colours(r: str) -> dict[str, str]:
        spec = _tree_chart(_open(mixed_store, monkeypatch, rid=r))
        return {t["name"]: t["marker"]["color"] for t in spec["data"]}  # type: ignore[attr-defined]

    a, b = colours(rid), colours(str(other))
    shared = set(a) & set(b)
    assert set(a) != set(b)
    assert all(a[h] == b[h] for h in shared)
    assert len(set(a.values())) == len(a), "two hosts of one request share a colour"


def test_detail_panel_and_incident_on_top(
        mixed_store: Path, victim: tuple[str, str, str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    rid, finding, incident, evidence = victim
    at = _open(mixed_store, monkeypatch, rid=rid)
    links = {(pl.proto.page, pl.proto.query_string) for pl in at.get("page_link")}
    assert ("findings", f"incident={incident}") in links, links
    # the panel opens on the first evidence span, linked to the finding(s) that cite it
    citing = {f"finding={f}" for (f,) in _rows(mixed_store, "SELECT finding_id FROM findings WHERE victim_rid = ?", [rid])}
    finding_links = {q for page, q in links if q.startswith("finding=")}
    assert finding_links and finding_links <= citing and f"finding={finding}" in citing
    [(anomaly,)] = _rows(mixed_store, "SELECT anomaly FROM request_anomalies WHERE rid = ?", [rid])
    assert any(f"anomaly: **{anomaly}**" in e.value for e in at.error)

    # picking another span shows that one
    [(span_id, attributes, resource)] = _rows(mixed_store, """
        SELECT s.span_id, CAST(s.attributes AS VARCHAR), CAST(r.attributes AS VARCHAR)
        FROM spans s JOIN resources r USING (resource_id)
        WHERE s.rid = ? AND s.name LIKE 'decode Req%'""", [rid])
    at.session_state["requests_span"] = span_id
    at.run()
    assert not at.exception
    bodies = [json.loads(j.proto.body) for j in at.get("json")]
    assert bodies[0] == json.loads(str(attributes))
    assert bodies[-1] == json.loads(str(resource))
    assert any(str(span_id) in c.value for c in at.caption)
    del evidence


def test_collapsing_a_span_hides_its_subtree(
        mixed_store: Path, victim: tuple[str, str, str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    rid = victim[0]
    truth = _spans(mixed_store, rid)
    [(root_span, trace)] = _rows(mixed_store, """
        SELECT span_id, trace_id FROM spans WHERE rid = ? AND name LIKE 'decode Req%'""", [rid])
    children = {s for s, (_t, p, *_rest) in truth.items() if p == root_span}
    at = _open(mixed_store, monkeypatch, rid=rid)
    at.multiselect(key="requests_collapse").set_value([f"{trace}/{root_span}"]).run()
    assert not at.exception
    drawn = {s for t in _tree_chart(at)["data"] for s in t["customdata"]}  # type: ignore[attr-defined]
    assert children and not (children & drawn)
    assert root_span in drawn and len(drawn) == len(truth) - len(children)
