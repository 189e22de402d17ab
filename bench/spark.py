"""bench/spark: the race analyses (skew bounds -> findings) on Spark local[2] against DuckDB, same machine.

    .venv/bin/python bench/spark.py --spans 1000000 --spans 10000000 [--windows 1 --windows 4 --windows 16]
                                    [--repeat 1] [--work /tmp/kvtrace-bench]
    .venv/bin/python bench/spark.py --store STORE [--store STORE2 ...]   # any store (a quick check)

Stores are the ones bench/analytics.py builds (--work/store_N.duckdb: the simulator's 1M-span
fastpath input, and for 10M ten disjoint copies of it), each exported once to a lake
(--work/spark-lake-N, `kvtrace export --lake`). In one run, per store, interleaved (duckdb, spark
W=1, spark W=..., duckdb, ...; each in its own process on a fresh connection / session):

- duckdb: `runner.compute(con, ["findings"])` on the store;
- spark W: a local[2] session over the lake, `SparkAnalytics.compute(["findings"], windows=W)`;
  the time without the session start, and the session start apart; the peak resident memory of the
  JVM (in local mode the driver is the executor; its RSS follows the heap cap, --spark-memory), and
  from Spark's event log the largest execution memory one task held (hash tables, sorts,
  aggregation buffers) and the peak heap in use.

The findings of every Spark run must equal DuckDB's (same ids, pages, windows, confidence) or the
bench fails. Printed: medians, Spark/DuckDB ratio, growth 1M -> 10M per method, and the peak JVM
memory per window count, from which the window count that keeps executor memory flat at 10M is read
(the smallest W whose 10M task execution-memory peak is within 25% of the 1M W=1 peak). The machine may be busy: numbers
measured on a shared box are indicative.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import psutil

PROGRESS_S = 30.0

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bench_analytics() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_analytics", ROOT / "bench" / "analytics.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exported(db: Path, lake: Path) -> tuple[Path, Path]:
    """`db` exported to `lake` once (a lake with its manifest is kept)."""
    from kvtrace.ingest.export import export_lake

    if not (lake / "_kvtrace_lake.json").exists():
        print(f"  exporting {db} -> {lake}", flush=True)
        export_lake(db, lake)
    return db, lake


def lake_for(n_spans: int, work: Path) -> tuple[Path, Path]:
    """bench/analytics.py's store of `n_spans` (built when missing) and its lake."""
    return _exported(_bench_analytics().store(n_spans, work), work / f"spark-lake-{n_spans}")


def lake_of_store(db: Path, work: Path) -> tuple[Path, Path]:
    """Any store (--store) and its lake, work/spark-lake-<its name>."""
    return _exported(db, work / f"spark-lake-{db.stem}")


def span_count(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT count(*) FROM spans").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def child_duckdb(db: Path, out: Path) -> None:
    from kvtrace.analytics import runner

    con = runner.connect(db)
    t = time.perf_counter()
    runner.compute(con, ["findings"])
    seconds = time.perf_counter() - t
    rows = runner.computed(con, "findings").to_pylist()
    out.write_text(json.dumps({"seconds": seconds, "findings": rows}, default=str))


def child_spark(lake: Path, windows: int, memory: str, out: Path) -> None:
    from kvtrace.analytics.spark.runner import SparkAnalytics, spark_session

    events = out.with_suffix(".events")
    shutil.rmtree(events, ignore_errors=True)
    events.mkdir(parents=True)
    t0 = time.perf_counter()
    spark = spark_session(
        "local[2]",
        conf={
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.memory": memory,
            "spark.sql.shuffle.partitions": "8",
            # Spark's own memory figures, read back from its event log after the run
            "spark.eventLog.enabled": "true",
            "spark.eventLog.dir": events.as_uri(),
            "spark.eventLog.compress": "false",
            "spark.eventLog.logStageExecutorMetrics": "true",
        },
    )
    spark.sparkContext.setLogLevel("ERROR")
    started = time.perf_counter() - t0
    engine = SparkAnalytics(spark, lake)
    t = time.perf_counter()
    engine.compute(["findings"], windows=windows)
    seconds = time.perf_counter() - t
    rows = engine.table("findings").to_pylist()
    steps: dict[str, float] = {}  # seconds per analysis, over its windows
    for run in engine.executed:
        steps[run.name] = steps.get(run.name, 0.0) + run.seconds
    spark.stop()
    memory_figures = spark_memory(events)
    shutil.rmtree(events, ignore_errors=True)
    out.write_text(
        json.dumps(
            {"seconds": seconds, "session_s": started, "steps": steps, "findings": rows, **memory_figures},
            default=str,
        )
    )


def spark_memory(events: Path) -> dict[str, int]:
    """From a Spark event log: the largest execution memory one task held (joins' hash tables,
    sorts, aggregation buffers: what grows with the data a task gets; an executor of c cores holds
    about c times it) and the executor's peak JVM heap in use."""
    task_peak = heap_peak = 0
    for log in (f for f in events.rglob("*") if f.is_file() and not f.name.startswith("appstatus")):
        with open(log, encoding="utf-8") as lines:
            for line in lines:
                if '"SparkListenerTaskEnd"' in line:
                    metrics = json.loads(line).get("Task Metrics") or {}
                    task_peak = max(task_peak, int(metrics.get("Peak Execution Memory", 0)))
                elif '"Executor Metrics"' in line:
                    event = json.loads(line)
                    heap_peak = max(heap_peak, int((event.get("Executor Metrics") or {}).get("JVMHeapMemory", 0)))
    return {"task_exec_peak": task_peak, "jvm_heap_peak": heap_peak}


def measured(cmd: list[str], out: Path, limit: float, log: Path, label: str) -> dict[str, object] | None:
    """Run a child (its stderr to `log`); its result, with the peak RSS of its process tree and of the
    JVM in it. A line every --progress seconds says it is still running, and how big the JVM is."""
    out.unlink(missing_ok=True)
    peak = jvm_peak = 0
    t0 = last = time.perf_counter()
    with open(log, "ab") as err, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err) as proc:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [ps, *ps.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree)
                jvm = sum(p.memory_info().rss for p in tree if "java" in p.name())
            except psutil.Error:
                rss = jvm = 0
            peak, jvm_peak = max(peak, rss), max(jvm_peak, jvm)
            now = time.perf_counter()
            if now - t0 > limit:
                proc.kill()
                print(f"    {label}: stopped after {limit:.0f} s", flush=True)
                return {"stopped_s": limit, "peak_rss": peak, "jvm_rss": jvm_peak}
            if now - last >= PROGRESS_S:
                last = now
                print(
                    f"    {label}: running {now - t0:.0f} s, JVM {jvm / 2**20:,.0f} MB (peak {jvm_peak / 2**20:,.0f}), "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            time.sleep(0.25)
    if proc.returncode != 0 or not out.exists():
        print(f"    {label}: exit {proc.returncode}, see {log}", flush=True)
        return None
    got: dict[str, object] = json.loads(out.read_text())
    got["peak_rss"], got["jvm_rss"], got["wall_s"] = peak, jvm_peak, time.perf_counter() - t0
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--spans", action="append", type=int, default=[], help="1000000, 10000000 (built if missing)"
    )
    ap.add_argument(
        "--store", action="append", type=Path, default=[], help="any store instead of --spans (a quick check)"
    )
    ap.add_argument(
        "--windows", action="append", type=int, default=[], help="window counts for Spark (default 1, 4, 16)"
    )
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--spark-memory", default="4g", help="local[2] JVM heap (driver = executor in local mode)"
    )
    ap.add_argument("--limit", type=float, default=1800.0, help="seconds after which a run is stopped")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kvtrace-bench"))
    ap.add_argument("--child", choices=["duckdb", "spark"], help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--w", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "duckdb":
        child_duckdb(args.db, args.out)
        return
    if args.child == "spark":
        child_spark(args.lake, args.w, args.spark_memory, args.out)
        return

    windows = args.windows or [1, 4, 16]
    args.work.mkdir(parents=True, exist_ok=True)
    stores = [lake_of_store(db, args.work) for db in args.store]
    sizes = [span_count(db) for db, _ in stores] if stores else args.spans or [1_000_000, 10_000_000]
    out = args.work / f"spark-bench-{os.getpid()}.json"
    log = args.work / "spark-bench.log"  # the children's stderr (Spark's errors), appended
    print(f"children's stderr: {log}", flush=True)
    results: dict[tuple[int, str], list[dict[str, object]]] = {}
    stopped: dict[tuple[int, str], list[dict[str, object]]] = {}  # runs stopped at --limit
    for i, n in enumerate(sizes):
        db, lake = stores[i] if stores else lake_for(n, args.work)
        methods = [
            ("duckdb", [sys.executable, __file__, "--child", "duckdb", "--db", str(db), "--out", str(out)])
        ]
        methods += [
            (
                f"spark W={w}",
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "spark",
                    "--lake",
                    str(lake),
                    "--w",
                    str(w),
                    "--spark-memory",
                    args.spark_memory,
                    "--out",
                    str(out),
                ],
            )
            for w in windows
        ]
        reference: list[object] | None = None
        for r in range(args.repeat):
            for name, cmd in methods:  # interleaved: every method once per round
                got = measured(cmd, out, args.limit, log, f"{n:,} spans {name}")
                print(
                    f"  {n:>11,} spans  round {r + 1}  {name:<12} "
                    + (
                        "failed"
                        if got is None
                        else f"> {float(got['stopped_s']):.0f} s (stopped)"  # type: ignore[arg-type]
                        if "stopped_s" in got
                        else f"{float(got['seconds']):.2f} s"  # type: ignore[arg-type]
                    ),
                    flush=True,
                )
                if got is not None and "steps" in got:
                    steps = got["steps"]
                    print(
                        f"    session {float(got['session_s']):.1f} s, JVM peak {int(got['jvm_rss']) / 2**20:,.0f} MB, "  # type: ignore[arg-type,call-overload]
                        f"task execution memory peak {int(got['task_exec_peak']) / 2**20:,.0f} MB, "  # type: ignore[call-overload]
                        f"heap peak {int(got['jvm_heap_peak']) / 2**20:,.0f} MB, "  # type: ignore[call-overload]
                        f"load {os.getloadavg()[0]:.1f}; per step: "
                        + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()),  # type: ignore[attr-defined]
                        flush=True,
                    )
                if got is None:
                    continue
                if (
                    "stopped_s" in got
                ):  # no findings to check; its time is a lower bound, its memory a peak so far
                    stopped.setdefault((n, name), []).append(got)
                    continue
                rows = got.pop("findings")
                if reference is None:
                    reference = rows  # type: ignore[assignment]
                elif rows != reference:
                    raise SystemExit(f"{name} on {n:,} spans: findings differ from duckdb's")
                got["n_findings"] = len(rows)  # type: ignore[arg-type]
                results.setdefault((n, name), []).append(got)
    out.unlink(missing_ok=True)

    def med(n: int, name: str, key: str) -> float | None:
        runs = results.get((n, name))
        values = [float(r[key]) for r in runs or [] if key in r]  # type: ignore[arg-type]
        return statistics.median(values) if values else None

    print("\nrace analyses (skew bounds -> findings), medians; Spark local[2] without its session start")
    print(
        f"{'spans':>12} {'method':<12} {'seconds':>9} {'vs duckdb':>10} {'session s':>10} {'peak JVM MB':>12} "
        f"{'task MB':>8} {'heap MB':>8} {'findings':>9}"
    )
    for n in sizes:
        base = med(n, "duckdb", "seconds")
        for name in ["duckdb", *[f"spark W={w}" for w in windows]]:
            s = med(n, name, "seconds")
            if s is None:
                cut = stopped.get((n, name))
                jvm_cut = max(int(r["jvm_rss"]) for r in cut) if cut else 0  # type: ignore[call-overload]
                print(
                    f"{n:>12,} {name:<12} "
                    + (
                        f"{'> ' + format(args.limit, '.0f'):>9} {'(stopped)':>10} {'':>10} {jvm_cut / 2**20:>12,.0f}"
                        if cut
                        else f"{'-':>9}"
                    )
                )
                continue
            ratio = f"{s / base:.1f}x" if base else "-"
            sess = med(n, name, "session_s")
            jvm = med(n, name, "jvm_rss")
            task, heap = med(n, name, "task_exec_peak"), med(n, name, "jvm_heap_peak")
            count = results[(n, name)][0]["n_findings"]
            print(
                f"{n:>12,} {name:<12} {s:>9.2f} {ratio:>10} {'' if sess is None else f'{sess:.1f}':>10} "
                f"{'' if not jvm else f'{jvm / 2**20:,.0f}':>12} {'' if task is None else f'{task / 2**20:,.0f}':>8} "
                f"{'' if heap is None else f'{heap / 2**20:,.0f}':>8} {count:>9}"
            )
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        print(f"\ngrowth {lo:,} -> {hi:,} spans ({hi / lo:.0f}x the data)")
        for name in ["duckdb", *[f"spark W={w}" for w in windows]]:
            a, b = med(lo, name, "seconds"), med(hi, name, "seconds")
            if a and b:
                print(f"  {name:<12} {b / a:.1f}x the time")
            elif a and (hi, name) in stopped:
                print(
                    f"  {name:<12} > {args.limit / a:.1f}x the time (stopped at --limit {args.limit:.0f} s)"
                )
        # executor memory: the largest execution memory one task held (Spark's event log); the JVM's
        # resident size follows its heap cap, not the data
        flat = med(lo, "spark W=1", "task_exec_peak")
        if flat:
            for w in windows:
                peak = med(hi, f"spark W={w}", "task_exec_peak")
                if peak and peak <= flat * 1.25:
                    print(
                        f"  executor memory flat at {hi:,} spans from {w} windows: a task's execution memory "
                        f"peaks at {peak / 2**20:,.0f} MB vs {flat / 2**20:,.0f} MB at {lo:,} spans, W=1"
                    )
                    break
            else:
                print("  no window count that finished kept a task's peak execution memory within 25% of the small run's")


if __name__ == "__main__":
    main()
