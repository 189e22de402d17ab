"""Replay page: a finding's window replayed by the replay library's CPU executor, and stored GPU runs.

The plan comes from `replay.export.export_finding` (run on a read-only snapshot cursor); the
verdicts from `replay.cpu.run_cpu` in both modes: as recorded (the race as the trace ordered it)
and fixed (with the synchronization the fix adds). Nothing here re-implements the replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from app.data.common import require
from app.store import Store
from replay.cpu import predict, run_cpu
from replay.export import export_finding
from replay.plan import Plan

MODES = ("as-recorded", "fixed")
EXPORT_MARGIN_NS = 600 * 1_000_000_000  # 10 minutes either side of a finding's window
STORE_HINT = "kvtrace replay run PLAN --device cuda --db {db} (on the GPU host)"


@dataclass(frozen=True)
class CpuReplay:
    finding_id: str
    n_ops: int
    num_layers: int
    verdicts: dict[str, dict[str, Any]]  # mode -> verdict summary
    cells: pd.DataFrame  # mode, hazard, kv_pool, page, layer: one row per damaged (page, layer)


def cpu_replay(store: Store, finding_id: str) -> CpuReplay:
    """Export the finding's window as a plan and predict both modes on the CPU executor."""
    require(store, "findings")
    plan: Plan = store.call(_export_near, finding_id, str(store.source))
    clean = predict(plan, "fixed")[0]
    verdicts: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for mode in MODES:
        verdict = run_cpu(plan, mode, clean).verdict
        verdicts[mode] = verdict.summary()
        for f in verdict.foreign_pages:
            rows += [{"mode": mode, "hazard": "foreign data", "kv_pool": f["kv_pool"], "page": f["page"],
                      "layer": layer} for layer in f["layers"]]
        rows += [{"mode": mode, "hazard": "late write", "kv_pool": w["kv_pool"], "page": w["page"],
                  "layer": w["layer"]} for w in verdict.late_writes]
        rows += [{"mode": mode, "hazard": "stale read", "kv_pool": r["kv_pool"], "page": r["page"],
                  "layer": r["layer"]} for r in verdict.stale_reads]
    cells = pd.DataFrame(rows, columns=["mode", "hazard", "kv_pool", "page", "layer"])
    return CpuReplay(finding_id, len(plan.ops), plan.num_layers, verdicts, cells)


def _export_near(cur: duckdb.DuckDBPyConnection, finding_id: str, source: str) -> Plan:
    """`export_finding` on a cursor whose `kv_events` holds only the finding's resource near its window.

    The exporter reads every KV event of the (instance, rank); on a store of days that is millions
    of rows (20 s at 10M spans here). A temporary view of the same name shadows the table for this
    cursor only, keeping events within EXPORT_MARGIN_NS of the window: every request alive in the
    window starts and ends inside it unless it lived longer than the margin.
    """
    row = cur.execute(
        "SELECT instance, tp_rank, window_start_ns, window_end_ns FROM findings WHERE finding_id = ?", [finding_id]
    ).fetchone()
    if row is not None:
        instance, rank, start, end = row
        catalog_row = cur.execute("SELECT current_database()").fetchone()
        catalog = str(catalog_row[0] if catalog_row else "main").replace('"', '""')
        cur.execute(
            f"""CREATE OR REPLACE TEMP VIEW kv_events AS SELECT * FROM "{catalog}".main.kv_events
                WHERE instance_id = {_literal(instance)} AND tp_rank = {int(rank)}
                  AND end_ns >= {int(start) - EXPORT_MARGIN_NS} AND start_ns <= {int(end) + EXPORT_MARGIN_NS}"""
        )
    return export_finding(cur, finding_id, source)


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def heatmap_cells(replay: CpuReplay, mode: str) -> pd.DataFrame:
    """(row = layer, page, value = hazards) for the chart; empty when the mode shows no damage."""
    cells = replay.cells[replay.cells["mode"] == mode]
    frame = cells.groupby(["layer", "page"]).size().reset_index(name="value").rename(columns={"layer": "row"})
    frame.attrs["row_title"] = "layer"
    return frame


def stored_runs(store: Store, finding_id: str | None = None) -> pd.DataFrame:
    """Replay runs stored by `kvtrace replay run --db` (GPU or CPU), newest first; one finding's if given."""
    require(store, "replay_runs", STORE_HINT)
    return store.frame(
        """
        SELECT run_id, recorded_at, finding_id, kind, mode, device, device_name, corrupted, damaged_pages,
               n_late_writes, n_stale_reads, stale_layers, victim_rid, cosine, agrees_with_cpu, gpu_ms,
               sanitizer, corruption_rate
        FROM replay_runs
        WHERE $fid IS NULL OR finding_id = $fid
        ORDER BY recorded_at DESC, mode
        LIMIT 500
        """,
        {"fid": finding_id},
    )


def stored_heatmap_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """(row = run label, page, value = 1) for each damaged page of each stored run."""
    rows = []
    for r in runs.itertuples(index=False):
        label = f"{r.device} · {r.mode} · {str(r.recorded_at)[:19]}"
        rows += [{"row": label, "page": int(p), "value": 1} for p in (r.damaged_pages if r.damaged_pages is not None else [])]
    frame = pd.DataFrame(rows, columns=["row", "page", "value"])
    frame.attrs["row_title"] = "stored run"
    return frame
