"""Search and links under AppTest on the mixed sample store (real pipeline): the sidebar's one
search box resolves a rid, rid prefix, trace id, bootstrap room, finding id and incident id to the
right entity; the request view's URL (?rid=, ?trace=) opens the right request or says it cannot;
picking a request updates the URL; attribute filters keep only matching requests; the Anomalies
page links its rids; the SQL console's query has a URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from kvtrace.app import search
from kvtrace.app.store import Store
from kvtrace.app.ui import DB_ENV

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"


def _rows(db: Path, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _app(db: Path, monkeypatch: pytest.MonkeyPatch, page: str = "overview", **params: str) -> AppTest:
    monkeypatch.setenv(DB_ENV, str(db))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()  # the entrypoint (sidebar: the search box) and its default page, Overview
    if page != "overview":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="module")
def store(mixed_store: Path) -> Store:
    with Store(mixed_store) as s:
        yield s  # type: ignore[misc]


@pytest.fixture(scope="module")
def victim(mixed_store: Path) -> tuple[str, str, str, str]:
    """(rid, its trace id, its bootstrap room) of a finding's victim, and a finding id."""
    [(rid, trace, room, finding)] = _rows(mixed_store, """
        SELECT r.rid, r.trace_id, r.bootstrap_room, f.finding_id FROM findings f JOIN requests r ON r.rid = f.victim_rid
        WHERE r.role = 'decode' AND r.bootstrap_room IS NOT NULL ORDER BY f.finding_id LIMIT 1""")
    return str(rid), str(trace), str(room), str(finding)


def test_every_id_resolves_to_its_entity(store: Store, mixed_store: Path, victim: tuple[str, str, str, str]) -> None:
    rid, trace, room, finding = victim
    [(incident,)] = _rows(mixed_store, "SELECT incident_id FROM finding_incidents WHERE finding_id = ?", [finding])
    assert [(h.kind, h.id, h.how) for h in search.resolve(store, rid)] == [("request", rid, "rid")]
    assert [(h.kind, h.id, h.how) for h in search.resolve(store, rid.upper())] == [("request", rid, "rid")]
    assert [(h.id, h.how) for h in search.resolve(store, trace)] == [(rid, "trace id")]
    if trace.startswith("0" * 16):  # an SGLang 64-bit id: found by its 16 digits too
        assert [(h.id, h.how) for h in search.resolve(store, trace[16:])] == [(rid, "trace id")]
    assert (rid, "bootstrap room") in [(h.id, h.how) for h in search.resolve(store, room)] or trace.endswith(room)
    [hit] = search.resolve(store, finding)
    assert (hit.kind, hit.url) == ("finding", f"findings?finding={finding}")
    [hit] = search.resolve(store, str(incident))
    assert (hit.kind, hit.url) == ("incident", f"findings?incident={incident}")
    prefix = rid[:3]
    want = sorted({str(r) for (r,) in _rows(mixed_store, "SELECT rid FROM requests WHERE starts_with(rid, ?)", [prefix])})
    hits = search.resolve(store, prefix, 500)
    assert sorted(h.id for h in hits) == want and {h.how for h in hits} == {"rid prefix"}
    assert search.resolve(store, "no-such-thing") == []


def test_the_sidebar_search_resolves_a_trace_id_to_its_request(
        mixed_store: Path, victim: tuple[str, str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # (typing it and landing on the request: tests/test_browser_search.py; AppTest re-runs only the
    # page after its first run, not the entrypoint's sidebar. A ?q= link lists, it does not jump.)
    rid, trace, _room, _finding = victim
    at = _app(mixed_store, monkeypatch, q=trace)
    assert at.text_input(key="search_q").value == trace
    assert [(pl.proto.page, pl.proto.query_string) for pl in at.sidebar.get("page_link")] == [
        ("requests", f"rid={rid}")]

    # a text nothing matches says so
    at = _app(mixed_store, monkeypatch, q="zz-not-an-id")
    assert any("nothing in this store is" in w.value for w in at.sidebar.warning)


def test_a_search_with_several_matches_lists_them_and_has_a_url(
        mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(prefix, n)] = _rows(mixed_store, """
        SELECT substr(rid, 1, 1) AS p, count(DISTINCT rid) FROM requests GROUP BY p HAVING count(DISTINCT rid) > 1
        ORDER BY p LIMIT 1""")
    at = _app(mixed_store, monkeypatch, q=str(prefix))  # a shared search URL: listed, not jumped
    assert at.text_input(key="search_q").value == prefix
    links = [pl.proto for pl in at.sidebar.get("page_link")]
    assert len(links) == min(int(n), 20)  # type: ignore[call-overload]
    assert all(pl.page == "requests" and parse_qs(pl.query_string)["rid"][0].startswith(str(prefix)) for pl in links)


def test_request_urls_open_that_request_or_say_they_cannot(
        mixed_store: Path, victim: tuple[str, str, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    rid, trace, _room, _finding = victim
    at = _app(mixed_store, monkeypatch, "requests", trace=trace)
    assert at.selectbox(key="requests_pick").value == rid
    assert at.query_params["rid"] in (rid, [rid]) and "trace" not in at.query_params

    at = _app(mixed_store, monkeypatch, "requests", rid=rid[:-1] + ("0" if rid[-1] != "0" else "1"))
    assert len(at.warning) == 1 and "no request" in at.warning[0].value
    picks = [sb for sb in at.selectbox if sb.key == "requests_pick"]
    assert all(sb.value is None for sb in picks)  # never another request in its place
    assert not at.get("plotly_chart")

    at = _app(mixed_store, monkeypatch, "requests", trace="f" * 32)
    assert len(at.warning) == 1 and "no request has its root spans in trace" in at.warning[0].value


def test_picking_a_request_updates_the_url(mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(mixed_store, monkeypatch, "requests")
    options = at.selectbox(key="requests_pick").options
    assert len(options) > 1
    at.selectbox(key="requests_pick").set_value(options[1]).run()
    assert not at.exception
    assert at.query_params["rid"] in (options[1], [options[1]])


def test_attribute_filters_keep_only_matching_requests(
        mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [(instance,)] = _rows(mixed_store, "SELECT min(instance_id) FROM requests WHERE role = 'prefill'")
    at = _app(mixed_store, monkeypatch, "requests")
    at.multiselect(key="requests_f_instance").set_value([instance]).run()
    at.multiselect(key="requests_f_anomaly").set_value(["garbled"]).run()
    assert not at.exception
    [found] = [d.value for d in at.dataframe if {"rid", "roles"} <= set(d.value.columns)]
    want = {str(r) for (r,) in _rows(mixed_store, """
        SELECT DISTINCT q.rid FROM requests q JOIN request_anomalies a USING (rid)
        WHERE q.instance_id = ? AND a.anomaly = 'garbled'""", [instance])}
    assert want and set(found["rid"]) == want

    at.number_input(key="requests_f_min").set_value(float(found["duration_ms"].max()) + 1).run()
    assert not [d for d in at.dataframe if {"rid", "roles"} <= set(d.value.columns)]
    assert any("with these attributes" in i.value for i in at.info)


def test_anomaly_rids_link_to_their_request(mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(mixed_store, monkeypatch, "anomalies")
    [linkage] = [d.value for d in at.dataframe if {"rid", "explained", "delay_ms"} <= set(d.value.columns)]
    assert len(linkage) and list(linkage["request"]) == [f"requests?rid={r}" for r in linkage["rid"]]
    [leads] = [d.value for d in at.dataframe if {"rid", "evidence_strength"} <= set(d.value.columns)]
    assert list(leads["request"]) == [f"requests?rid={r}" for r in leads["rid"]]


def test_a_sql_query_has_a_url(mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sql = "SELECT count(*) AS n FROM requests"
    at = _app(mixed_store, monkeypatch, "sql", sql=sql)
    assert at.text_area(key="sql_query").value == sql
    at.text_area(key="sql_query").input("SELECT 42 AS answer").run()
    at.button(key="sql_run").click().run()
    assert not at.exception
    assert at.query_params["sql"] in ("SELECT 42 AS answer", ["SELECT 42 AS answer"])
