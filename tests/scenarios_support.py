"""Plain helpers for the scenario tests and tests/scenarios/regenerate.py: the scenario folders,
the finding columns compared, ingest of a folder, findings as comparable rows. Not a test module."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from kvtrace.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted(p for p in (ROOT / "tests" / "scenarios").iterdir() if (p / "scenario.json").exists())
KEEP = [
    "kind",
    "instance",
    "tp_rank",
    "kv_pool",
    "pages",
    "layers",
    "culprit_rid",
    "victim_rid",
    "window_start_ns",
    "window_end_ns",
    "confidence",
]


def ingest(traces: Path, db: Path) -> None:
    result = CliRunner().invoke(main, ["ingest", str(traces), "--db", str(db)])
    assert result.exit_code == 0, result.output


def findings_table(rows: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.Table.from_pylist(rows) if rows else pa.table({k: [] for k in ["kind", "confidence"]})
