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

    .venv/bin/python bench/analytics.py --formulation [--spans 1000000 --spans 10000000] [--repeat 3]

--formulation (issue 18, part 0): the analyses as they were before it (analytics/sql and macros.sql
of commit 5100d25, taken with `git show` into a temporary folder and loaded the same way) against
the working tree's, interleaved (old, new, old, new, ... each run in its own process on a fresh
connection), per analysis and in total, medians over --repeat runs, on stores of 1M and 10M
simulator spans built once under --work (default /tmp/kvtrace-bench; never in the repository).
Every race analysis' rows (findings and the five kinds) must be identical, or the bench fails.
The table goes to stdout and to bench/results/analytics_formulation.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import duckdb
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvtrace.analytics import runner  # noqa: E402
from kvtrace.analytics.registry import Registry, create_result, install_macros, load_registry  # noqa: E402

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


def base_input(work: Path | None = None) -> Path:
    """The 1M-span simulator input: bench/out/ingest/json-1000000 (bench/ingest.py makes it), or, with
    `work`, work/json-1000000 written here the same way (simulator fastpath, seed 1) if missing."""
    if work is None:
        return INGEST_OUT / f"json-{BASE}"
    d = work / f"json-{BASE}"
    marker = d / "spans.txt"
    if not marker.exists():
        from kvtrace.simulator.fastpath import write_spans

        print(f"  writing {d} (simulator fastpath, seed 1)", flush=True)
        stats = write_spans(d, BASE, seed=1)
        marker.write_text(str(stats.spans))
    return d


def shifted_input(n_spans: int, work: Path | None = None) -> Path:
    """OTLP JSON lines of n_spans // 1M disjoint copies of the 1M input (see _ID_VALUE)."""
    src = base_input(work)
    if n_spans <= BASE:
        return src
    d = (work or OUT) / f"json-{n_spans}-shifted"
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


def store(n_spans: int, work: Path | None = None) -> Path:
    """The store of n_spans (in bench/out/analytics, or `work`), built once with the real `kvtrace ingest`."""
    out = work or OUT
    out.mkdir(parents=True, exist_ok=True)
    db = out / f"store_{n_spans}.duckdb"
    if not db.exists():
        src = shifted_input(n_spans, work)
        tmp = out / f"store_{n_spans}.partial.duckdb"
        tmp.unlink(missing_ok=True)
        with open(out / f"ingest_{n_spans}.log", "w") as log:
            subprocess.run([str(ROOT / ".venv/bin/kvtrace"), "ingest", str(src), "--db", str(tmp)],
                           check=True, stdout=log, stderr=log)
        tmp.rename(db)
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


# ------------------------------------------------------------------ --formulation (issue 18, part 0)

BEFORE = "5100d25"  # the commit before issue 18's rewrite
FORMULATION_OUT = ROOT / "bench" / "results" / "analytics_formulation.txt"
# the rows that must not change: every race finding, and each kind's own result
CHECKED = ["findings", "abort_before_write_complete", "unsafe_free", "read_before_load", "page_hazard",
           "abort_during_transfer"]


def old_sql(work: Path) -> Path:
    """analytics/sql/*.sql and analytics/macros.sql of BEFORE, as `git show` gives them, in a folder."""
    d = Path(tempfile.mkdtemp(prefix="kvtrace-sql-before-", dir=work))
    (d / "sql").mkdir()
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{BEFORE}:analytics/sql/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:analytics/sql/{name}"],
                              check=True, capture_output=True, text=True).stdout
        (d / "sql" / name).write_text(text)
    macros = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:analytics/macros.sql"],
                            check=True, capture_output=True, text=True).stdout
    (d / "macros.sql").write_text(macros)
    return d


def formulation_child(version: str, db: Path, old_dir: Path | None) -> None:
    """Compute the race analyses (the closure of `findings`) once with `version`'s SQL, each step
    timed; print the times and a digest of every checked analysis' rows as one line."""
    if version == "old" and old_dir is not None:
        reg: Registry = load_registry(old_dir / "sql", macros_sql=old_dir / "macros.sql", check_sql=False)
    else:
        reg = load_registry(check_sql=False)
    con = runner.connect(db)
    con.execute("SET max_temp_directory_size = '8GB'")
    install_macros(con, reg.macros_sql)
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for name in reg.closure("findings"):
        analysis = reg.get(name)
        t, c = time.perf_counter(), _cpu_s()
        create_result(con, analysis)
        times[name], cpu[name] = time.perf_counter() - t, _cpu_s() - c
        kinds[name] = analysis.materialise
    digests: dict[str, tuple[int, str]] = {}
    for name in CHECKED:
        rows = sorted(repr(r) for r in con.execute(f"SELECT * FROM temp.main.{name}").fetchall())
        cols = [r[0] for r in con.execute(f"DESCRIBE temp.main.{name}").fetchall()]
        digests[name] = (len(rows), hashlib.sha256("\n".join([repr(cols), *rows]).encode()).hexdigest())
    con.close()
    print("RESULT", json.dumps({"times": times, "cpu": cpu, "kinds": kinds, "digests": digests}), flush=True)


def _cpu_s() -> float:
    """CPU seconds of this process, every thread (user + system): less moved by a busy machine than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def formulation(spans: list[int], repeat: int, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    stores = [(n, store(n, work)) for n in spans]
    old_dir = old_sql(work)
    lines = [f"machine: {platform.machine()}, nproc {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}, "
             f"python {platform.python_version()}, duckdb {duckdb.__version__}; before = analytics/sql + macros.sql of "
             f"{BEFORE}, after = the working tree; runs interleaved (before, after, ...), each in its own process; "
             f"medians of {repeat}; seconds of each CREATE, wall and CPU (all threads) (a view is planned inside its "
             f"readers: ~0 s itself); load average at start {os.getloadavg()[0]:.1f}"]
    print(lines[0], flush=True)
    tables: list[str] = []
    try:
        for n, db in stores:
            runs: dict[str, list[dict[str, object]]] = {"old": [], "new": []}
            for i in range(repeat):
                for version in ("old", "new"):
                    cmd = [sys.executable, __file__, "--formulation-child", version, "--db", str(db),
                           "--old-sql", str(old_dir)]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    got = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT"))[7:])
                    runs[version].append(got)
                    print(f"  {db.name} run {i + 1} {version}: {sum(got['times'].values()):.2f} s, "
                          f"{sum(got['cpu'].values()):.2f} CPU s", flush=True)
            digests = {v: [r["digests"] for r in runs[v]] for v in runs}
            first = digests["old"][0]
            for v in runs:
                for d in digests[v]:
                    if d != first:
                        diff = [k for k in CHECKED if d[k] != first[k]]  # type: ignore[index]
                        raise SystemExit(f"{db.name}: findings differ ({v}): {diff}")
            names: list[str] = []
            for v in ("old", "new"):
                for name in runs[v][0]["times"]:  # type: ignore[attr-defined]
                    if name not in names:
                        names.append(name)

            def med(v: str, name: str, key: str, runs: dict[str, list[dict[str, object]]] = runs) -> float | None:
                xs = [r[key][name] for r in runs[v] if name in r[key]]  # type: ignore[index,operator]
                return statistics.median(xs) if xs else None

            def cell(v: str, name: str, key: str, runs: dict[str, list[dict[str, object]]] = runs) -> str:
                t = med(v, name, key, runs)
                if t is None:
                    return "-"
                kind = runs[v][0]["kinds"][name]  # type: ignore[index]
                return f"{t:.3f}" + (" (view)" if kind == "view" else "")

            def ratio_cell(name: str, key: str, runs: dict[str, list[dict[str, object]]] = runs) -> str:
                o, a = med("old", name, key, runs), med("new", name, key, runs)
                return f"{a / o:.2f}x" if o and a is not None and o > 0.0005 else "-"

            def total(v: str, key: str, runs: dict[str, list[dict[str, object]]] = runs) -> float:
                return statistics.median(sum(r[key].values()) for r in runs[v])  # type: ignore[attr-defined]

            rows = [f"\n{db.name}: {n:,}-span simulator store; findings identical before/after in all {2 * repeat} runs: "
                    + ", ".join(f"{k} {first[k][0]:,}" for k in CHECKED)  # type: ignore[index]
                    + "\n", "| analysis | before wall s | after wall s | after / before | before CPU s | after CPU s "
                    "| after / before (CPU) |", "| --- | --- | --- | --- | --- | --- | --- |"]
            for name in names:
                rows.append(f"| {name} | {cell('old', name, 'times')} | {cell('new', name, 'times')} "
                            f"| {ratio_cell(name, 'times')} | {cell('old', name, 'cpu')} | {cell('new', name, 'cpu')} "
                            f"| {ratio_cell(name, 'cpu')} |")
            tw, tc = (total("old", "times"), total("new", "times")), (total("old", "cpu"), total("new", "cpu"))
            rows.append(f"| **all race analyses** | **{tw[0]:.2f}** | **{tw[1]:.2f}** | **{tw[1] / tw[0]:.2f}x** "
                        f"| **{tc[0]:.2f}** | **{tc[1]:.2f}** | **{tc[1] / tc[0]:.2f}x** |")
            tables.append("\n".join(rows))
            print(tables[-1], flush=True)
    finally:
        shutil.rmtree(old_dir, ignore_errors=True)
    FORMULATION_OUT.parent.mkdir(parents=True, exist_ok=True)
    FORMULATION_OUT.write_text("\n".join([lines[0], *tables]) + "\n")
    print(f"\nwritten to {FORMULATION_OUT.relative_to(ROOT)}")


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
    ap.add_argument("--formulation", action="store_true",
                    help="the analyses before issue 18 against the working tree's (see above)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kvtrace-bench"),
                    help="where --formulation builds and keeps its stores")
    ap.add_argument("--child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--formulation-child", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--old-sql", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.db[0], args.repeat)
        return
    if args.formulation_child:
        formulation_child(args.formulation_child, args.db[0], args.old_sql)
        return
    if args.formulation:
        formulation(args.spans or [BASE, 10 * BASE], args.repeat, args.work)
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
