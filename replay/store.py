"""Replay results into the DuckDB store: table `replay_runs`, created idempotently here.

One row per replay of one plan in one mode on one device (a sweep is one row with its rate). The
report and the app read it: the latest row per (finding_id, mode, device) is the current verdict.
Needs duckdb; the executors never import this module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

import duckdb

REPLAY_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS replay_runs (
    run_id           VARCHAR NOT NULL,   -- one id per stored batch (one `kvtrace replay run`)
    recorded_at      TIMESTAMP NOT NULL,
    plan             VARCHAR,            -- plan name (file stem)
    finding_id       VARCHAR,            -- the finding the plan was exported for, if any
    kind             VARCHAR,
    confidence       VARCHAR,
    n_ops            INTEGER,
    mode             VARCHAR NOT NULL,   -- as-recorded / fixed
    device           VARCHAR NOT NULL,   -- cpu / cuda
    device_name      VARCHAR,            -- e.g. NVIDIA H100 80GB HBM3
    time_scale       DOUBLE,
    corrupted        BOOLEAN NOT NULL,
    damaged_pages    INTEGER[],          -- pages where a request held or read another's data
    n_late_writes    INTEGER,            -- (op, page) writes that landed after their pages were freed
    n_stale_reads    INTEGER,            -- (op, page, layer) reads that saw other data than the reader's
    stale_layers     INTEGER[],
    victim_rid       VARCHAR,
    cosine           DOUBLE,             -- attention output over the victim's KV vs the race-free replay
    max_abs_err      DOUBLE,
    agrees_with_cpu  BOOLEAN,            -- GPU verdict == CPU executor's prediction (null on cpu)
    gpu_ms           DOUBLE,
    sanitizer        VARCHAR,            -- CSAN verdict, 'not run' when absent
    sweep_n          INTEGER,
    jitter_pct       DOUBLE,
    corruption_rate  DOUBLE,             -- over the sweep's jittered variants
    result           JSON                -- the whole record
);
"""


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(REPLAY_RUNS_DDL)


def write_runs(con: duckdb.DuckDBPyConnection, records: Iterable[dict[str, Any]]) -> str:
    """Append records (replay.run's JSON records) in one transaction; returns the run id."""
    from kvtrace.replay.run import sanitizer_label

    ensure_table(con)
    run_id = uuid.uuid4().hex[:16]
    rows = []
    for r in records:
        v = r["verdict"]
        div = v.get("divergence") or {}
        sw = r.get("sweep") or {}
        rows.append(
            [
                run_id, r.get("plan"), r.get("finding_id"), r.get("kind"), r.get("confidence"), r.get("n_ops"),
                r["mode"], r["device"], r.get("device_name"), r.get("time_scale"), bool(v["corrupted"]),
                v.get("damaged_pages", []), v.get("n_late_writes"), v.get("n_stale_reads"), v.get("stale_layers", []),
                v.get("victim_rid"), div.get("cosine"), div.get("max_abs_err"), r.get("agrees_with_cpu"),
                r.get("gpu_ms"), sanitizer_label(r.get("sanitizer")), sw.get("n"), sw.get("jitter_pct"),
                sw.get("corruption_rate"), json.dumps({k: val for k, val in r.items() if k != "details"}),
            ]
        )
    con.execute("BEGIN TRANSACTION")
    try:
        con.executemany(
            "INSERT INTO replay_runs VALUES (?, now(), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        con.execute("COMMIT")
    except duckdb.Error:
        con.execute("ROLLBACK")
        raise
    return run_id
