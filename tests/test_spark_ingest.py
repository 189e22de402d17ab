"""`kvtrace ingest --engine spark`: OTLP files into the trace lake, one Spark task a file (local mode).

The lake it writes holds the rows `kvtrace ingest` + `kvtrace export --lake` give for the same files
(so every analysis sees the same input on either path), and re-running is safe: unchanged files are
skipped, a changed one replaces its own rows and nothing else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

pytest.importorskip("pyspark")
pytest.importorskip("sqlglot")
if shutil.which("java") is None:
    pytest.skip(
        "the spark tests need java (.ci/run installs openjdk-17-jre-headless)", allow_module_level=True
    )

from kvtrace.app.cli import main
from kvtrace.ingest.export import LAKE_TABLES

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[1]
# where the two paths differ by design: file ids are per store, paths are absolute in the lake
LEDGER = {"spans": ["file_id"], "ingested_files": ["file_id", "path", "ingested_at"]}


def _rows(lake: Path, table: str) -> list[tuple[object, ...]]:
    files = list((lake / table).rglob("*.parquet"))
    if not files:
        return []
    drop = LEDGER.get(table, [])
    cols = f"* EXCLUDE ({', '.join(drop)})" if drop else "*"
    listing = ", ".join(f"'{f}'" for f in files)
    return sorted(
        duckdb.sql(
            f"SELECT {cols} FROM read_parquet([{listing}], hive_partitioning = false, union_by_name = true)"
        ).fetchall(),
        key=repr,
    )


def test_spark_ingest_writes_the_lake_the_duckdb_path_writes_and_reruns_safely(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # two small files (a prefill and a decode host, KV events and a finding between them); the
    # session is conftest.py's, which the CLI's own getOrCreate finds
    traces = tmp_path / "traces"
    shutil.copytree(ROOT / "sample_traces" / "pr35049", traces)
    runner = CliRunner()
    db, export, lake = tmp_path / "s.duckdb", tmp_path / "export", tmp_path / "lake"
    assert runner.invoke(main, ["ingest", str(traces), "--db", str(db), "--no-progress"]).exit_code == 0
    assert runner.invoke(main, ["export", "--db", str(db), "--lake", str(export)]).exit_code == 0

    out = runner.invoke(
        main, ["ingest", "--engine", "spark", str(traces), "--lake", str(lake), "--master", "local[2]"]
    )
    assert out.exit_code == 0, out.output
    assert "files        2 ingested, 0 skipped" in out.output
    for table in LAKE_TABLES:
        if table != "ingested_files":
            assert _rows(lake, table) == _rows(export, table), table
    assert len(_rows(lake, "ingested_files")) == 2
    assert (lake / "kv_events").is_dir() and any(
        p.name.startswith("instance=") for p in (lake / "kv_events").iterdir()
    )

    again = runner.invoke(main, ["ingest", "--engine", "spark", str(traces), "--lake", str(lake)])
    assert again.exit_code == 0 and "files        0 ingested, 2 skipped" in again.output

    # one file changes (same spans, new mtime): only it is read again, and no row is doubled
    changed = next(traces.glob("decode-0*.jsonl"))
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = runner.invoke(main, ["ingest", "--engine", "spark", str(traces), "--lake", str(lake)])
    assert third.exit_code == 0 and "files        1 ingested, 1 skipped" in third.output
    for table in ("spans", "kv_events", "requests", "request_stages"):
        assert _rows(lake, table) == _rows(export, table), table
    assert len(_rows(lake, "ingested_files")) == 2

    bad = runner.invoke(main, ["ingest", "--engine", "spark", str(traces)])
    assert bad.exit_code != 0 and "--lake" in bad.output
