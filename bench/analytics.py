"""bench/analytics: the race analyses on a store, ours vs a pandas/Python sweep vs the naive DuckDB join.

    .venv/bin/python bench/analytics.py --db STORE [--db STORE2 ...] [--repeat 3]
    .venv/bin/python bench/analytics.py --spans 1000000 --spans 10000000   # generate (fastpath) + ingest

Each store is measured side by side in one run: (1) ours: every race analysis of the registry
(skew bounds -> findings); (2) a straightforward pandas/Python sweep of the same two race checks
(abort_before_write_complete, read_before_load); (3) the naive DuckDB overlap join for bug 1
(transfers x allocs on page-list overlap + range predicates, no release pre-filter). Medians of
--repeat runs and ratios are printed as a Markdown table; the finding counts are printed too so the
three are seen to agree.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics import runner  # noqa: E402

RACE_ANALYSES = ["abort_before_write_complete", "unsafe_free", "read_before_load", "page_hazard", "findings"]


def ours(con: duckdb.DuckDBPyConnection) -> int:
    runner.compute(con, RACE_ANALYSES)
    row = con.execute("SELECT count(*) FROM temp.main.findings WHERE kind IN "
                      "('abort_before_write_complete', 'read_before_load')").fetchone()
    return int(row[0]) if row else 0


def pandas_sweep(con: duckdb.DuckDBPyConnection) -> int:
    """Python loops over pandas frames: the code one writes first (no skew correction)."""
    ev = con.execute("SELECT op, span_id, rid, instance_id, tp_rank, kv_pool, page_ids, start_ns, end_ns, "
                     "layer_offsets_ns FROM kv_events WHERE op IN ('transfer','free','alloc','load','read')").df()
    found = 0
    by_op = {op: g for op, g in ev.groupby("op")}
    frees: dict[tuple[object, ...], list[tuple[int, set[int]]]] = defaultdict(list)
    for r in by_op.get("free", ev.iloc[:0]).itertuples():
        frees[(r.rid, r.instance_id, r.tp_rank, r.kv_pool)].append((r.start_ns, set(r.page_ids)))
    allocs: dict[tuple[object, ...], list[tuple[int, str, set[int]]]] = defaultdict(list)
    for r in by_op.get("alloc", ev.iloc[:0]).itertuples():
        allocs[(r.instance_id, r.tp_rank, r.kv_pool)].append((r.start_ns, r.rid, set(r.page_ids)))
    for r in by_op.get("transfer", ev.iloc[:0]).itertuples():
        pages = set(r.page_ids)
        for free_ns, free_pages in frees.get((r.rid, r.instance_id, r.tp_rank, r.kv_pool), []):
            if free_ns < r.end_ns and pages & free_pages:
                for alloc_ns, rid, alloc_pages in allocs.get((r.instance_id, r.tp_rank, r.kv_pool), []):
                    if rid != r.rid and free_ns <= alloc_ns < r.end_ns and pages & free_pages & alloc_pages:
                        found += 1
    reads: dict[tuple[object, ...], list[tuple[str, int, int, object]]] = defaultdict(list)
    for r in by_op.get("read", ev.iloc[:0]).itertuples():
        reads[(r.rid, r.instance_id, r.tp_rank, r.kv_pool)].append((r.span_id, r.start_ns, r.end_ns, r.layer_offsets_ns))
    for r in by_op.get("load", ev.iloc[:0]).itertuples():
        for _sid, rs, re_, roff in reads.get((r.rid, r.instance_id, r.tp_rank, r.kv_pool), []):
            overlaps = rs < r.end_ns and r.start_ns < re_ and roff is not None and r.layer_offsets_ns is not None
            if overlaps and any(rs + a < r.start_ns + b for a, b in zip(roff, r.layer_offsets_ns, strict=False)):
                found += 1
    return found


NAIVE_BUG1 = """
SELECT count(*) FROM kv_events t
JOIN kv_events f ON f.op = 'free' AND f.rid = t.rid AND f.instance_id = t.instance_id
     AND f.tp_rank = t.tp_rank AND f.kv_pool = t.kv_pool
JOIN kv_events a ON a.op = 'alloc' AND a.instance_id = t.instance_id AND a.tp_rank = t.tp_rank
     AND a.kv_pool = t.kv_pool AND a.rid <> t.rid
WHERE t.op = 'transfer' AND f.start_ns < t.end_ns AND a.start_ns >= f.start_ns AND a.start_ns < t.end_ns
  AND len(list_intersect(list_intersect(t.page_ids, f.page_ids), a.page_ids)) > 0
"""


def naive_duckdb(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute(NAIVE_BUG1).fetchone()
    return int(row[0]) if row else 0


def median_time(fn, con, repeat: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    times, result = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn(con)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def generate(spans: int, out: Path) -> Path:
    traces, db = out / f"traces_{spans}", out / f"store_{spans}.duckdb"
    if not db.exists():
        from simulator.fastpath import write_spans

        write_spans(traces, spans, seed=1, scenario="mixed")
        subprocess.run([str(ROOT / ".venv/bin/kvtrace"), "ingest", str(traces), "--db", str(db)], check=True)
    return db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", action="append", default=[], type=Path)
    ap.add_argument("--spans", action="append", default=[], type=int)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-pandas-over", type=int, default=3_000_000, help="spans above which pandas is skipped")
    args = ap.parse_args()
    stores = list(args.db) + [generate(n, ROOT / "bench" / "out") for n in args.spans]
    print(f"machine: {platform.machine()}, nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}, "
          f"python {platform.python_version()}, duckdb {duckdb.__version__}")
    print("| store | spans | kv_events | ours (all race analyses) s | pandas sweep s | naive DuckDB join (bug 1 only) s "
          "| pandas/ours | naive/ours | findings ours / pandas / naive |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for db in stores:
        con = runner.connect(db)
        spans = con.execute("SELECT count(*) FROM spans").fetchone()
        kv = con.execute("SELECT count(*) FROM kv_events").fetchone()
        n_spans = int(spans[0]) if spans else 0
        t_ours, n_ours = median_time(ours, con, args.repeat)
        t_pd, n_pd = (median_time(pandas_sweep, con, 1) if n_spans <= args.skip_pandas_over else (float("nan"), -1))
        t_naive, n_naive = median_time(naive_duckdb, con, 1)
        print(f"| {db.name} | {n_spans:,} | {int(kv[0]) if kv else 0:,} | {t_ours:.2f} | {t_pd:.2f} | {t_naive:.2f} "
              f"| {t_pd / t_ours:.1f}x | {t_naive / t_ours:.1f}x | {n_ours} / {n_pd} / {n_naive} |", flush=True)
        con.close()


if __name__ == "__main__":
    main()
