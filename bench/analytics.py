"""bench/analytics: the race analyses on a store, ours vs a pandas/Python sweep vs the naive DuckDB join.

    .venv/bin/python bench/analytics.py --spans 1000000 --spans 10000000 --repeat 3 --limit 120
    .venv/bin/python bench/analytics.py --db STORE [--db STORE2 ...]      # any store, no label check

Stores (bench/out/analytics/store_N.duckdb) are built once with the real `kvtrace ingest` from
bench/out/ingest/json-1000000 (bench/ingest.py makes it: simulator fastpath, seed 1, 1,000,163
spans, labels.json) and, for N > 1M, from N / 1M disjoint copies of it (shifted_input below).

Each store is measured side by side in one run, every method in its own process: (1) ours: every
race analysis of the registry (skew bounds -> findings), median of --repeat; (2) a straightforward
pandas/Python sweep of the two race checks abort_before_write_complete and read_before_load (no
skew correction); (3) the naive DuckDB overlap join for bug 1: page lists unnested, page equality
plus range predicates. A baseline still running after --limit s is stopped and printed as
"> N (stopped)". Then the whole `kvtrace report` command (wall time, process start included),
and the findings per kind against the simulator's labels (the 1M labels once per copy).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import duckdb
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvtrace.analytics import runner  # noqa: E402

INGEST_OUT = ROOT / "bench" / "out" / "ingest"
OUT = ROOT / "bench" / "out" / "analytics"
BASE = 1_000_000
# In copy k > 0 of the base input: trace ids get k in their (zero) upper 64 bits, as bench/ingest.py
# does; span times move by k * 1000 s (the 1M run lasts 983 s, so copies never overlap in time); every
# rid (rid, forward.rids: 32 hex digits) and bootstrap_room (16) gets k as two more hex digits, so
# copies share no id (a longer id is never an original one). The 10M store is then ten disjoint
# runs of the same workload, not ten copies of each request on the same pages at the same instant,
# which bench/ingest.py's json-10000000 (trace ids rewritten only) is: right for ingest, but for the
# analyses a storm of identical rids whose free/alloc pairs match across copies. Span ids (spanId,
# parentSpanId, links) are XOR-ed with a per-copy 64-bit constant: the analyses, like OTel, take a
# span id as unique in a store (a chance collision of random 64-bit ids is ~1e-7 at 10M spans).
_ID_VALUE = re.compile(rb'("stringValue":"(?:[0-9a-f]{32}|[0-9a-f]{16}))"')
_SPAN_ID = re.compile(rb'("(?:spanId|parentSpanId)":")([0-9a-f]{16})"')


def _xor_span_ids(data: bytes, k: int) -> bytes:
    key = (k * 0x9E3779B97F4A7C15) & (2**64 - 1)
    return _SPAN_ID.sub(lambda m: m[1] + b'%016x"' % (int(m[2], 16) ^ key), data)

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
WITH pages AS (
    SELECT op, span_id, rid, instance_id, tp_rank, kv_pool, start_ns, end_ns, unnest(page_ids) AS page
    FROM kv_events WHERE op IN ('transfer', 'free', 'alloc')
)
SELECT count(DISTINCT (t.span_id, a.span_id)) FROM pages t
JOIN pages f ON f.op = 'free' AND f.rid = t.rid AND f.instance_id = t.instance_id AND f.tp_rank = t.tp_rank
     AND f.kv_pool = t.kv_pool AND f.page = t.page
JOIN pages a ON a.op = 'alloc' AND a.instance_id = t.instance_id AND a.tp_rank = t.tp_rank
     AND a.kv_pool = t.kv_pool AND a.page = t.page AND a.rid <> t.rid
WHERE t.op = 'transfer' AND f.start_ns < t.end_ns AND a.start_ns >= f.start_ns AND a.start_ns < t.end_ns
"""


def naive_duckdb(con: duckdb.DuckDBPyConnection) -> int:
    """Bug 1 as the overlap join one writes first: pages unnested, page equality plus range predicates."""
    row = con.execute(NAIVE_BUG1).fetchone()
    return int(row[0]) if row else 0


METHODS = {"ours": ours, "pandas": pandas_sweep, "naive": naive_duckdb}


def shifted_input(n_spans: int) -> Path:
    """OTLP JSON lines of n_spans // 1M disjoint copies of bench/out/ingest/json-1000000 (see _ID_VALUE)."""
    src = INGEST_OUT / f"json-{BASE}"
    if n_spans <= BASE:
        return src
    d = OUT / f"json-{n_spans}-shifted"
    marker = d / "spans.txt"
    if not marker.exists():
        d.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.glob("*.otlp.jsonl")):
            data = f.read_bytes()
            for k in range(n_spans // BASE):
                copy = data if k == 0 else _xor_span_ids(_ID_VALUE.sub(rb'\g<1>%02x"' % k, data), k).replace(
                    b'Nano":"1764000', b'Nano":"176400%d' % k).replace(
                    b'"traceId":"' + b"0" * 16, b'"traceId":"%016x' % k)
                stem, _, suffix = f.name.partition(".")
                (d / f"{stem}.c{k:02d}.{suffix}").write_bytes(copy)
                print(f"  {f.name} copy {k}", flush=True)
        marker.write_text(str(int((src / "spans.txt").read_text()) * (n_spans // BASE)))
    return d


def store(n_spans: int) -> Path:
    """The store of n_spans, built once with the real `kvtrace ingest` (progress to a log)."""
    db = OUT / f"store_{n_spans}.duckdb"
    if not db.exists():
        src = shifted_input(n_spans)
        with open(OUT / f"ingest_{n_spans}.log", "w") as log:
            subprocess.run([str(ROOT / ".venv/bin/kvtrace"), "ingest", str(src), "--db", str(db)],
                           check=True, stdout=log, stderr=log)
    return db


def child(method: str, db: Path, repeat: int) -> None:
    """Run one method `repeat` times on a fresh connection; print its times and result as one line."""
    con = runner.connect(db)
    con.execute("SET max_temp_directory_size = '8GB'")  # a blow-up must not fill the shared disk
    if method == "naive":  # spill instead of growing past the RSS guard (DuckDB's default: 80% of RAM)
        con.execute("SET memory_limit = '6GB'")
    times, result = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        result = METHODS[method](con)
        times.append(time.perf_counter() - t)
    print("RESULT", json.dumps({"times": times, "result": result}), flush=True)


def timed_child(method: str, db: Path, repeat: int, limit: float,
                max_rss_gb: float) -> tuple[float | None, int | None, str]:
    """Median seconds and result of `method` in a subprocess; (None, None, why) once it passed `limit` s
    or `max_rss_gb` of resident memory (the machine is shared: a baseline must not take it all)."""
    cmd = [sys.executable, __file__, "--child", method, "--db", str(db), "--repeat", str(repeat)]
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        ps, why = psutil.Process(proc.pid), ""
        while proc.poll() is None:
            if time.perf_counter() - t0 > limit:
                why = f"> {limit:.0f} s (stopped)"
            elif ps.memory_info().rss > max_rss_gb * 2**30:
                why = f"> {max_rss_gb:.0f} GB RSS after {time.perf_counter() - t0:.0f} s (stopped)"
            if why:
                proc.kill()
                proc.wait()
                return None, None, why
            time.sleep(0.2)
        out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        return None, None, f"failed (exit {proc.returncode})"
    got = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
    return statistics.median(got["times"]), int(got["result"]), ""


def timed_report(db: Path, n_spans: int, limit: float) -> float | None:
    """Wall seconds of the whole `kvtrace report` command (process start included), or None past `limit`."""
    t = time.perf_counter()
    try:
        subprocess.run([str(ROOT / ".venv/bin/kvtrace"), "report", "--db", str(db), "--out", str(OUT / f"report_{n_spans}")],
                       check=True, capture_output=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - t


def label_check(db: Path, n_spans: int) -> list[tuple[str, int, int, int, int]]:
    """Per kind: labelled races (the 1M labels, once per copy with the copy's rids), races matched by a
    finding (kind, resource, culprit, shared page), findings, findings matching a race."""
    labels = json.loads((INGEST_OUT / f"json-{BASE}" / "labels.json").read_text())
    copies = max(1, n_spans // BASE)

    def rid(r: str | None, k: int) -> str | None:
        return r if r is None or k == 0 else f"{r}{k:02x}"

    con = runner.connect(db)
    runner.compute(con, ["findings"])
    rows = con.execute("SELECT kind, instance, tp_rank, kv_pool, culprit_rid, pages FROM temp.main.findings").fetchall()
    con.close()
    by_key: dict[tuple[object, ...], list[tuple[int, set[int]]]] = defaultdict(list)
    for i, (kind, inst, rank, pool, culprit, pages) in enumerate(rows):
        by_key[(kind, inst, rank, pool, culprit)].append((i, set(pages or [])))
    races: dict[str, int] = defaultdict(int)
    matched: dict[str, int] = defaultdict(int)
    hit: set[int] = set()
    for k in range(copies):
        for r in labels["races"]:
            races[r["kind"]] += 1
            key = (r["kind"], r["instance"], int(r["tp_rank"]), r["kv_pool"], rid(r["culprit_rid"], k))
            hits = [i for i, pages in by_key.get(key, []) if pages & set(r.get("pages") or [])]
            hit.update(hits)
            matched[r["kind"]] += bool(hits)
    kinds = sorted(set(races) | {row[0] for row in rows})
    return [(kind, races[kind], matched[kind], sum(1 for r in rows if r[0] == kind),
             sum(1 for i, r in enumerate(rows) if r[0] == kind and i in hit)) for kind in kinds]


def ratio(t: float | None, ours_t: float, limit: float, why: str) -> str:
    if t is None:
        return f"> {limit / ours_t:.0f}x" if why.endswith("s (stopped)") and "GB" not in why else "-"
    return f"{t / ours_t:.1f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", action="append", default=[], type=Path, help="an existing store (no label check)")
    ap.add_argument("--spans", action="append", default=[], type=int, help="1000000, 10000000 (built if missing)")
    ap.add_argument("--repeat", type=int, default=3, help="repeats of ours (median)")
    ap.add_argument("--baseline-repeat", type=int, default=1)
    ap.add_argument("--limit", type=float, default=120.0, help="seconds after which a baseline is stopped")
    ap.add_argument("--report-limit", type=float, default=300.0, help="seconds after which `kvtrace report` is stopped")
    ap.add_argument("--max-rss-gb", type=float, default=8.0, help="resident GB at which a method is stopped")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.db[0], args.repeat)
        return
    stores = [(db, 0) for db in args.db] + [(store(n), n) for n in args.spans]
    print(f"machine: {platform.machine()}, nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}, "
          f"python {platform.python_version()}, duckdb {duckdb.__version__}; ours median of {args.repeat}, "
          f"baselines median of {args.baseline_repeat}, each in its own process, stopped after {args.limit:.0f} s")
    rows, checks, first = [], [], None
    for db, n in stores:
        con = runner.connect(db)
        n_spans = int(con.execute("SELECT count(*) FROM spans").fetchone()[0])  # type: ignore[index]
        n_kv = int(con.execute("SELECT count(*) FROM kv_events").fetchone()[0])  # type: ignore[index]
        con.close()
        t_ours, n_ours, why = timed_child("ours", db, args.repeat, 10 * args.limit, args.max_rss_gb)
        assert t_ours is not None and n_ours is not None, why
        t_pd, n_pd, why_pd = timed_child("pandas", db, args.baseline_repeat, args.limit, args.max_rss_gb)
        t_nv, n_nv, why_nv = timed_child("naive", db, args.baseline_repeat, args.limit, args.max_rss_gb)
        t_rep = None if args.no_report else timed_report(db, n or n_spans, args.report_limit)
        first = first or t_ours
        rep = "-" if args.no_report else f"> {args.report_limit:.0f} (stopped)" if t_rep is None else f"{t_rep:.2f}"
        rows.append(f"| {db.name} | {n_spans:,} | {n_kv:,} | **{t_ours:.2f}** | {t_ours / first:.1f}x "
                    f"| {why_pd or f'{t_pd:.2f}'} | {why_nv or f'{t_nv:.2f}'} | {ratio(t_pd, t_ours, args.limit, why_pd)} "
                    f"| {ratio(t_nv, t_ours, args.limit, why_nv)} | {rep} "
                    f"| {n_ours} / {'-' if n_pd is None else n_pd} / {'-' if n_nv is None else n_nv} |")
        print(rows[-1], flush=True)
        if n:
            checks.append((db.name, label_check(db, n)))
    print("\n| store | spans | kv_events | ours: all race analyses s | growth vs first | pandas sweep (2 checks) s "
          "| naive DuckDB join (bug 1) s | pandas/ours | naive/ours | `kvtrace report` s "
          "| counts ours (bug 1 + read_before_load) / pandas / naive |")
    print("| --- " * 11 + "|")
    for r in rows:
        print(r)
    for name, check in checks:
        print(f"\n{name}: findings vs simulator labels\n\n| kind | labelled races | races found | findings "
              "| findings matching a race |\n| --- | --- | --- | --- | --- |")
        for kind, races, matched, found, good in check:
            print(f"| {kind} | {races:,} | {matched:,} | {found:,} | {good:,} |")


if __name__ == "__main__":
    main()
