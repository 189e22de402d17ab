"""Attribution (analytics/sql/request_attributes.sql, attribute_attribution.sql, the Anomalies page's
outlier-region comparison): every derived attribute equals what the raw tables say, the BubbleUp
shares equal a count done by hand, and on a realistic-profile HiCache race the prefill side shows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest
from streamlit.testing.v1 import AppTest

from kvtrace.app.data import anomalies
from kvtrace.app.store import Store
from kvtrace.app.ui import DB_ENV

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
KVTRACE = str(Path(sys.executable).with_name("kvtrace"))


def _frame(db: Path, sql: str) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


@pytest.fixture(scope="module")
def store(mixed_store: Path) -> Iterator[Store]:
    with Store(mixed_store) as s:
        yield s


def test_derived_attributes_match_the_raw_tables(mixed_store: Path) -> None:
    got = _frame(mixed_store, "SELECT * FROM request_attributes").set_index("rid")
    truth = _frame(mixed_store, """
        SELECT a.rid,
               (SELECT max(instance_id) FROM requests p WHERE p.rid = a.rid AND p.role = 'prefill') AS prefill,
               EXISTS (SELECT 1 FROM kv_events k WHERE k.rid = a.rid AND k.op = 'load') AS loaded,
               (SELECT max(end_ns - start_ns) / 1e6 FROM kv_events k WHERE k.rid = a.rid AND k.op = 'transfer') AS xfer,
               (SELECT max(n_pages) FROM kv_events k WHERE k.rid = a.rid AND k.op IN ('alloc', 'transfer')) AS pages,
               (SELECT max(s.host_name) FROM requests q JOIN spans s ON s.trace_id = q.trace_id AND s.span_id = q.span_id
                WHERE q.rid = a.rid AND q.role = 'decode') AS decode_host
        FROM request_anomalies a""").set_index("rid")
    assert len(got) == len(truth) > 0
    truth = truth.loc[got.index]
    assert (got["prefill_instance"] == truth["prefill"].fillna("none")).all()
    assert (got["had_hicache_load"] == truth["loaded"]).all() and truth["loaded"].any()
    assert ((got["transfer_ms"] - truth["xfer"]).abs().fillna(0) < 1e-6).all()
    assert (got["transfer_ms"].isna() == truth["xfer"].isna()).all()
    assert (got["n_pages"].fillna(-1) == truth["pages"].fillna(-1)).all()
    hosts = [m.get("resource.host.name") for m in got["attributes"].map(dict)]
    assert hosts == list(truth["decode_host"])
    assert set(got["concurrency_bucket"]) <= {"1-8", "9-16", "17-32", "33-48", "49-64", "65-96", "97-128",
                                              "129-256", ">256", "unknown"}


def test_attribution_covers_every_attribute_and_its_shares_add_up(mixed_store: Path) -> None:
    attr = _frame(mixed_store, "SELECT * FROM attribute_attribution")
    names = set(attr["attribute"])
    assert {"prefill_instance", "hicache_load", "transfer_duration", "pages", "context_bucket",
            "concurrency_bucket", "instance", "version", "resource.host.name",
            "prefill.resource.host.name", "resource.service.name"} <= names
    # each attribute's values partition the requests that have it: shares sum to 1 (or 0)
    for name, group in attr.groupby("attribute"):
        if name.startswith(("resource.", "prefill.resource.", "span.")):
            continue  # a map key some requests lack
        assert abs(group["share_normal"].sum() - 1) < 1e-9, name
        assert abs(group["share_anomalous"].sum() - 1) < 1e-9, name


def test_an_outlier_region_against_the_baseline_is_counted_right(store: Store, mixed_store: Path) -> None:
    stats = anomalies.measure_stats(store, "spec_accept_length")
    assert stats["lo"] is not None and stats["p5"] is not None
    lo, hi = stats["lo"], stats["p5"]
    diff = anomalies.bubbleup(store, "spec_accept_length", lo, hi, 500)
    raw = _frame(mixed_store, """
        SELECT b.rid, b.prefill_instance, b.anomaly, a.spec_accept_length AS x
        FROM request_attributes b JOIN request_anomalies a USING (rid) WHERE a.spec_accept_length IS NOT NULL""")
    sel = raw[(raw["x"] >= lo) & (raw["x"] <= hi)]
    base = raw.drop(sel.index)
    assert int(diff["n_selected"][0]) == len(sel) > 0 and int(diff["n_baseline"][0]) == len(base)
    for name, column in (("prefill_instance", "prefill_instance"), ("anomaly", "anomaly")):
        rows = {r["value"]: r for r in diff.filter(pl.col("attribute") == name).iter_rows(named=True)}
        for value, share in (sel[column].value_counts() / len(sel)).items():
            assert abs(rows[value]["share_selected"] - share) < 1e-9, (name, value)
        for value, share in (base[column].value_counts() / len(base)).items():
            assert abs(rows[value]["share_baseline"] - share) < 1e-9, (name, value)
    # the low tail of accept length is where the garbled outputs are
    garbled = diff.filter((pl.col("attribute") == "anomaly") & (pl.col("value") == "garbled"))
    assert float(garbled["difference"][0]) > 0


def test_the_page_compares_a_chosen_region(mixed_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DB_ENV, str(mixed_store))
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.run()
    at.switch_page("views/anomalies.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="anomalies_measure").set_value("e2e_s").run()
    [(lo, hi)] = _frame(mixed_store, "SELECT min(e2e_s), max(e2e_s) FROM request_anomalies "
                                     "WHERE rid IN (SELECT rid FROM request_attributes)").itertuples(index=False)
    at.slider(key="anomalies_region_e2e_s").set_range(lo, (lo + hi) / 2).run()
    assert not at.exception, [e.value for e in at.exception]
    charts = {el.proto.id.rsplit("-", 1)[-1]: json.loads(el.proto.spec) for el in at.get("plotly_chart")}
    assert {"anomalies_region_hist", "anomalies_region_chart"} <= set(charts)
    [table] = [d.value for d in at.dataframe if {"share_selected", "share_baseline"} <= set(d.value.columns)]
    [(n_sel,)] = _frame(mixed_store, f"""SELECT count(*) FROM request_anomalies a SEMI JOIN request_attributes
                                        USING (rid) WHERE e2e_s BETWEEN {lo} AND {(lo + hi) / 2}""").itertuples(index=False)
    version = table[table["attribute"] == "version"]
    assert int(version["selected"].sum()) == n_sel


@pytest.mark.slow
def test_a_realistic_hicache_race_shows_its_prefill_side(tmp_path: Path) -> None:
    """Realistic profile (4P+4D, ~70K-token contexts), HiCache race only: the victims' prefill instance
    (where the racing load ran) comes first among prefill instances, ahead of any decode instance."""
    traces = tmp_path / "traces"
    db = tmp_path / "kv.duckdb"
    for args in (["simulate", "--scenario", "hicache-race", "--profile", "realistic", "--requests", "600",
                  "--hicache-stall-rate", "0.03", "--seed", "2", "--fast", "--out", str(traces)],
                 ["ingest", str(traces), "--db", str(db)], ["analyze", "--db", str(db)]):
        done = subprocess.run([KVTRACE, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    labels = json.loads((traces / "labels.json").read_text())
    bad = Counter(r["prefill_instance"] for r in labels["requests"] if r["state"] in ("garbled", "repetition"))
    [(hot, n)] = bad.most_common(1)
    assert n > sum(bad.values()) / 2, bad  # the seed's race sits on one prefill instance
    attr = _frame(db, "SELECT * FROM attribute_attribution")
    prefill = attr[attr["attribute"] == "prefill_instance"].sort_values("difference", ascending=False)
    decode = attr[attr["attribute"] == "instance"].sort_values("difference", ascending=False)
    assert prefill["value"].iloc[0] == hot
    assert prefill["difference"].iloc[0] > decode["difference"].iloc[0]
    loads = attr[(attr["attribute"] == "hicache_load") & (attr["value"] == "yes")]
    assert float(loads["share_anomalous"].iloc[0]) == 1.0
