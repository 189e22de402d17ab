"""bench/app: first render of every app page on a large store, ours vs uncached and naive baselines.

    .venv/bin/python bench/app.py --spans 1000000 --spans 10000000 [--repeat 3]

How the big stores are made: ingest runs at a few thousand spans/s on this 2-core machine
(bench/RESULTS.md, ## ingest), so a 10M-span store cannot come through the real pipeline in a
session. Instead the real pipeline builds a seed (sample_traces/mixed -> ingest_paths -> analyze),
and DuckDB replicates every row-per-span/request/finding table of that seed K times: ids get a
`-k` suffix (span, trace, rid, finding and incident ids and the id lists), times move by k x the seed's time
span, so copy k is the seed run again later. Per-instance tables (resources, skew_bounds, the
per-version summaries) stay as they are. The result has the schema and the value distributions of
a real store; it is larger in time, not denser.

Measured, per store, in one process (the app's own code; AppTest runs each page's script):
- open: the app's snapshot copy (app.store.Store) vs a plain read-only open of the source;
- per page: first render with empty caches (the number the issue bounds at 2 s), and a cached
  re-render; medians of --repeat;
- naive baselines for two pages: Overview's counts and the Requests waterfall computed in pandas
  from whole tables (what an app without SQL aggregation would do).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

# Tables with one row per span / request / finding: replicated. The rest are copied once.
REPLICATED = (
    "spans",
    "span_events",
    "span_links",
    "requests",
    "spec_steps",
    "kv_events",
    "aborts",
    "request_stages",
    "feedback",
    "findings",
    "request_anomalies",
    "request_attributes",
    "anomaly_linkage",
    "anomaly_leads",
    "spec_step_detector",
    "incidents",
    "finding_incidents",
)
ID_COLUMNS = {
    "trace_id",
    "span_id",
    "parent_span_id",
    "linked_trace_id",
    "linked_span_id",
    "rid",
    "culprit_rid",
    "victim_rid",
    "finding_id",
    "bootstrap_room",
    "incident_id",
    "culprit_span_id",
    "action_key",
}
ID_LIST_COLUMNS = {"evidence_span_ids", "finding_ids", "culprit_span_ids", "victim_rids"}
TIME_COLUMNS = {
    "start_ns",
    "end_ns",
    "time_ns",
    "step_end_ns",
    "window_start_ns",
    "window_end_ns",
    "window_end_raw_ns",
    "window_end_earliest_ns",
    "window_end_latest_ns",
    "first_abnormal_ns",
    "fire_ns",
    "action_start_ns",
    "action_end_ns",
}
PAGES = ["overview", "findings", "requests", "anomalies", "compare", "replay", "sql", "ingest"]


def build_seed(path: Path) -> None:
    from kvtrace.analytics.materialise import analyze
    from kvtrace.ingest import ingest_paths, open_store

    files = sorted((ROOT / "sample_traces" / "mixed").glob("*.otlp.jsonl"))
    ingest_paths(files, path, progress=False)
    con = open_store(path)
    analyze(con)
    con.close()


def replicate(seed: Path, target: Path, copies: int) -> float:
    """Write `target`: every table of `seed`, the REPLICATED ones `copies` times (ids/times shifted)."""
    started = time.perf_counter()
    target.unlink(missing_ok=True)
    con = duckdb.connect(str(target))
    con.execute(f"ATTACH '{seed}' AS seed (READ_ONLY)")
    con.execute("SET preserve_insertion_order = false")
    lo, hi = con.execute("SELECT min(start_ns), max(end_ns) FROM seed.spans").fetchone()
    period = int(hi - lo) + 1_000_000_000
    tables = [
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'seed' ORDER BY table_name"
        ).fetchall()
    ]
    for table in tables:
        cols = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'seed' "
            "AND table_name = ? ORDER BY column_index",
            [table],
        ).fetchall()
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM seed.{table} LIMIT 0")
        if table not in REPLICATED:
            con.execute(f"INSERT INTO {table} SELECT * FROM seed.{table}")
            continue
        exprs = []
        for name, dtype in cols:
            if name in ID_COLUMNS and dtype == "VARCHAR":
                exprs.append(f"{name} || '-' || k::VARCHAR")
            elif name in ID_LIST_COLUMNS:
                exprs.append(f"list_transform({name}, lambda a: a || '-' || k::VARCHAR)")
            elif name in TIME_COLUMNS:
                exprs.append(f"{name} + k * {period}")
            else:
                exprs.append(name)
        con.execute(f"INSERT INTO {table} SELECT {', '.join(exprs)} FROM seed.{table}, range({copies}) r(k)")
    con.execute("DETACH seed")
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - started


def _median(values: list[float]) -> float:
    return statistics.median(values)


def measure_open(db: Path, repeat: int) -> tuple[float, float]:
    from kvtrace.app.safe_sql import open_read_only
    from kvtrace.app.store import Store

    snap, plain = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        s = Store(db)
        s.scalar("SELECT count(*) FROM requests")
        snap.append(time.perf_counter() - t)
        s.close()
        t = time.perf_counter()
        c = open_read_only(db)
        c.execute("SELECT count(*) FROM requests").fetchall()
        plain.append(time.perf_counter() - t)
        c.close()
    return _median(snap), _median(plain)


def measure_pages(db: Path, repeat: int) -> dict[str, tuple[float, float, bool]]:
    """page -> (first render s, cached render s, no exception) via AppTest on one warm process."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["KVTRACE_DB"] = str(db)
    entry = str(ROOT / "app" / "streamlit_app.py")

    def render(page: str, click: str | None = None) -> tuple[float, bool]:
        at = AppTest.from_file(entry, default_timeout=600)
        at.switch_page(f"views/{page}.py")
        t = time.perf_counter()
        at.run()
        if click:
            at.button(key=click).click().run()
        return time.perf_counter() - t, not at.exception

    render("overview")  # warm: the store snapshot, imports, the analysis registry
    out: dict[str, tuple[float, float, bool]] = {}
    cases = [(p, None) for p in PAGES] + [("replay", "replay_run"), ("sql", "sql_run")]
    for page, click in cases:
        first, cached, ok = [], [], True
        for _ in range(repeat):
            st.cache_data.clear()
            dt, good = render(page, click)
            first.append(dt)
            dt2, good2 = render(page, click)
            cached.append(dt2)
            ok = ok and good and good2
        label = page if click is None else f"{page} + {click.split('_', 1)[1]}"
        out[label] = (_median(first), _median(cached), ok)
    return out


def naive_overview(db: Path) -> float:
    """Overview's counts from whole tables in pandas (no SQL aggregation)."""
    t = time.perf_counter()
    con = duckdb.connect(str(db), read_only=True)
    spans = con.execute("SELECT span_id, start_ns, end_ns, resource_id FROM spans").df()
    req = con.execute("SELECT rid FROM requests").df()
    kv = con.execute("SELECT span_id FROM kv_events").df()
    _ = (len(spans), req["rid"].nunique(), len(kv), spans["start_ns"].min(), spans["end_ns"].max())
    con.close()
    return time.perf_counter() - t


def naive_waterfall(db: Path, rid: str) -> float:
    """The Requests waterfall by filtering the whole spans table in pandas."""
    t = time.perf_counter()
    con = duckdb.connect(str(db), read_only=True)
    spans = con.execute("SELECT trace_id, span_id, name, rid, start_ns, end_ns FROM spans").df()
    traces = set(con.execute("SELECT trace_id FROM requests WHERE rid = ?", [rid]).df()["trace_id"])
    _ = spans[(spans["rid"] == rid) | spans["trace_id"].isin(traces)].sort_values("start_ns")
    con.close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, action="append", help="target span count (repeatable)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-max-spans", type=int, default=20_000_000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    seed = OUT / "app_seed.duckdb"
    if not seed.exists():
        print("building the seed store (sample_traces/mixed -> ingest -> analyze)", file=sys.stderr)
        build_seed(seed)
    seed_spans = duckdb.connect(str(seed), read_only=True).execute("SELECT count(*) FROM spans").fetchone()[0]
    print(
        f"machine: {platform.machine()}, nproc {os.cpu_count()}, {platform.python_version()}, "
        f"duckdb {duckdb.__version__}"
    )
    for target in args.spans or [1_000_000]:
        copies = max(1, round(target / seed_spans))
        db = OUT / f"app_store_{target}.duckdb"
        if not db.exists():
            print(f"replicating the seed {copies}x -> {db.name}", file=sys.stderr)
            took = replicate(seed, db, copies)
            print(f"built {db.name} in {took:.1f} s", file=sys.stderr)
        con = duckdb.connect(str(db), read_only=True)
        spans, requests, findings = con.execute(
            "SELECT (SELECT count(*) FROM spans), (SELECT count(*) FROM requests), (SELECT count(*) FROM findings)"
        ).fetchone()
        rid = con.execute(
            "SELECT rid FROM findings f JOIN requests r ON r.rid = f.victim_rid LIMIT 1"
        ).fetchone()[0]
        con.close()
        size_gb = db.stat().st_size / 1e9
        # Each store in a fresh process so the caches and the snapshot start cold for it.
        if os.environ.get("KVTRACE_BENCH_CHILD") != str(db):
            env = {**os.environ, "KVTRACE_BENCH_CHILD": str(db)}
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--spans",
                    str(target),
                    "--repeat",
                    str(args.repeat),
                    "--naive-max-spans",
                    str(args.naive_max_spans),
                ],
                check=True,
                env=env,
            )
            continue
        snap, plain = measure_open(db, args.repeat)
        pages = measure_pages(db, args.repeat)
        print(
            f"\n### {spans:,} spans, {requests:,} request roots, {findings:,} findings ({size_gb:.2f} GB file)\n"
        )
        print(
            f"open + first query: snapshot copy (ours) {snap:.2f} s vs plain read-only open {plain:.2f} s "
            f"({snap / plain:.0f}x; the price of never blocking an ingest)\n"
        )
        print("| page | first render s (ours, cold cache) | cached re-render s | <= 2 s | ok |")
        print("| --- | --- | --- | --- | --- |")
        for page, (first, cached, ok) in pages.items():
            print(
                f"| {page} | {first:.2f} | {cached:.2f} | {'yes' if first <= 2 else 'NO'} | {'yes' if ok else 'EXCEPTION'} |"
            )
        if spans <= args.naive_max_spans:
            n_over = _median([naive_overview(db) for _ in range(args.repeat)])
            n_req = _median([naive_waterfall(db, rid) for _ in range(args.repeat)])
            print("\n| baseline (pandas over whole tables) | s | baseline / our first render |")
            print("| --- | --- | --- |")
            print(f"| overview counts | {n_over:.2f} | {n_over / pages['overview'][0]:.1f}x |")
            print(f"| one request's waterfall | {n_req:.2f} | {n_req / pages['requests'][0]:.1f}x |")


if __name__ == "__main__":
    main()
