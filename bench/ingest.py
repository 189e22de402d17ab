"""bench/ingest: OTLP JSON lines -> DuckDB, ours vs the named baselines, side by side in one run.

Methods (each in a fresh subprocess, so peak RSS is its own):
  bytes         read the files' bytes (the floor)
  ours          ingest.ingest_paths into a DuckDB file (raw + normalised tables, dedup, quarantine)
  naive_duckdb  DuckDB read_json + unnest into one flat table with an attribute map, into a file
  polars        polars read_ndjson + explode/unnest, in memory

Input: simulator.fastpath JSON lines (generated under bench/out/ingest/ when missing).

    .venv/bin/python bench/ingest.py --spans 100000 --reps 1
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "ingest"
METHODS = ("bytes", "ours", "naive_duckdb", "polars")


def input_files(n_spans: int) -> tuple[list[Path], int]:
    d = OUT / f"json-{n_spans}"
    marker = d / "spans.txt"
    if not marker.exists():
        sys.path.insert(0, str(ROOT))
        from simulator.fastpath import write_spans

        shutil.rmtree(d, ignore_errors=True)
        stats = write_spans(d, n_spans, seed=1)
        marker.write_text(str(stats.spans))
    return sorted(d.glob("*.otlp.jsonl")), int(marker.read_text())


def run_bytes(files: list[Path], work: Path) -> int:
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(16 << 20):
                total += len(chunk)
    return total


def run_ours(files: list[Path], work: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from ingest import ingest_paths

    summary = ingest_paths(files, work / "ours.duckdb", progress=False)
    return summary.spans_new


NAIVE_SQL = """
CREATE TABLE flat AS
WITH r AS (SELECT unnest(resourceSpans) AS rs
           FROM read_json({files}, format = 'newline_delimited', maximum_object_size = 1000000000)),
s AS (SELECT rs.resource AS resource, unnest(rs.scopeSpans) AS ss FROM r),
sp AS (SELECT resource, ss.scope AS scope, unnest(ss.spans) AS span FROM s)
SELECT span.traceId AS trace_id, span.spanId AS span_id, span.parentSpanId AS parent_span_id, span.name AS name,
       span.startTimeUnixNano AS start_ns, span.endTimeUnixNano AS end_ns,
       map_from_entries(list_transform(span.attributes, lambda a: struct_pack(k := a.key, v := to_json(a.value))))
           AS attributes,
       map_from_entries(list_transform(resource.attributes, lambda a: struct_pack(k := a.key, v := to_json(a.value))))
           AS resource_attributes
FROM sp
"""


def run_naive_duckdb(files: list[Path], work: Path) -> int:
    import duckdb

    con = duckdb.connect(str(work / "naive.duckdb"))
    con.execute(NAIVE_SQL.format(files=[str(f) for f in files]))
    n = int(con.execute("SELECT count(*) FROM flat").fetchall()[0][0])
    con.close()
    return n


def run_polars(files: list[Path], work: Path) -> int:
    import polars as pl

    n = 0
    for f in files:
        df = (
            pl.read_ndjson(f, infer_schema_length=None)
            .explode("resourceSpans").unnest("resourceSpans")
            .explode("scopeSpans").unnest("scopeSpans")
            .explode("spans").unnest("spans")
        )
        n += df.height
    return n


def one(method: str, n_spans: int) -> None:
    files, _ = input_files(n_spans)
    work = OUT / f"work-{method}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    count = globals()[f"run_{method}"](files, work)
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"method": method, "seconds": seconds, "count": count, "rss_mb": rss_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(args.one, args.spans)
        return
    files, n = input_files(args.spans)
    size = sum(f.stat().st_size for f in files)
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.reps):
        for method in args.methods.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--one", method, "--spans", str(args.spans)],
                capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                print(f"{method} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            results.setdefault(method, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"input: {n:,} spans of simulator OTLP JSON lines, {size / 1e6:,.0f} MB, {len(files)} files; "
          f"{args.reps} rep(s), medians; machine: {platform.machine()}, nproc "
          f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}, Python {platform.python_version()}")
    ours = statistics.median(r["seconds"] for r in results.get("ours", [{"seconds": float("nan")}]))
    print("| method | seconds | spans/s | peak RSS MB | rows out | time vs ours |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for method, runs in results.items():
        sec = statistics.median(r["seconds"] for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        count = runs[-1]["count"]
        print(f"| {method} | {sec:.2f} | {n / sec:,.0f} | {rss:,.0f} | {count:,.0f} | {sec / ours:.2f}x |")


if __name__ == "__main__":
    main()
