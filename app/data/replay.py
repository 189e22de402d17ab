"""Replay page: a finding's window replayed by the replay library's CPU executor, and stored GPU runs.

The plan comes from `replay.export.export_finding` (run on a read-only snapshot cursor); the
verdicts from `replay.cpu.run_cpu` in both modes: as recorded (the race as the trace ordered it)
and fixed (with the synchronization the fix adds). Nothing here re-implements the replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from kvtrace.app.data.common import require
from kvtrace.app.store import Store
from kvtrace.replay.cpu import predict, run_cpu
from kvtrace.replay.export import export_finding
from kvtrace.replay.plan import Plan

MODES = ("as-recorded", "fixed")
STORE_HINT = "kvtrace replay run PLAN --device cuda --db {db} (on the GPU host)"
CELL_SCHEMA = {"mode": pl.String, "hazard": pl.String, "kv_pool": pl.String, "page": pl.Int64, "layer": pl.Int64}
HEATMAP_SCHEMA = {"row": pl.String, "page": pl.Int64, "value": pl.Int64}
LAYER_ROWS = "layer"  # the heatmap's row title: of a CPU replay's cells
STORED_ROWS = "stored run"  # of stored runs' damaged pages


@dataclass(frozen=True)
class CpuReplay:
    finding_id: str
    n_ops: int
    num_layers: int
    verdicts: dict[str, dict[str, Any]]  # mode -> verdict summary
    cells: pl.DataFrame  # mode, hazard, kv_pool, page, layer: one row per damaged (page, layer)


def cpu_replay(store: Store, finding_id: str) -> CpuReplay:
    """Export the finding's window as a plan and predict both modes on the CPU executor."""
    require(store, "findings")
    plan: Plan = store.call(export_finding, finding_id, str(store.source))
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
    cells = pl.from_dicts(rows, schema=CELL_SCHEMA)
    return CpuReplay(finding_id, len(plan.ops), plan.num_layers, verdicts, cells)


def heatmap_cells(replay: CpuReplay, mode: str) -> pl.DataFrame:
    """(row = layer, page, value = hazards) for the chart (rows titled LAYER_ROWS); empty when the
    mode shows no damage."""
    return (replay.cells.filter(pl.col("mode") == mode)
            .group_by("layer", "page").len(name="value")
            .select(pl.col("layer").alias("row"), "page", pl.col("value").cast(pl.Int64))
            .sort("row", "page"))


def stored_runs(store: Store, finding_id: str | None = None) -> pl.DataFrame:
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


def stored_heatmap_cells(runs: pl.DataFrame) -> pl.DataFrame:
    """(row = run label, page, value = 1) for each damaged page of each stored run (rows titled
    STORED_ROWS)."""
    rows = []
    for r in runs.iter_rows(named=True):
        label = f"{r['device']} · {r['mode']} · {str(r['recorded_at'])[:19]}"
        rows += [{"row": label, "page": int(p), "value": 1} for p in (r["damaged_pages"] or [])]
    return pl.from_dicts(rows, schema=HEATMAP_SCHEMA)
