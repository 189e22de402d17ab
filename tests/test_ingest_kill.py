"""A real `kvtrace ingest` process killed with SIGKILL mid-ingest leaves a consistent store, and a
re-run completes the job with exactly the spans of an uninterrupted ingest."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from app_process import KVTRACE
from ingest_otlp_builders import json_lines, pd_request_spans
from ingest_support import query, snapshot

from kvtrace.ingest import ingest_paths


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six files of 20 PD requests (280 spans each) and their uninterrupted ingest (the reference)."""
    root = tmp_path_factory.mktemp("kill")
    traces = root / "traces"
    traces.mkdir()
    for f in range(6):
        spans = [s for r in range(20) for s in pd_request_spans(seed=1000 * f + r, rid=f"rid-{f:02d}-{r:04d}")]
        (traces / f"part-{f}.jsonl").write_bytes(json_lines(spans, per_line=3))
    reference = root / "ref.duckdb"
    ref = ingest_paths([traces], reference, progress=False)
    assert ref.spans_new == 6 * 20 * 14
    return traces, reference


@pytest.mark.slow
# commit-spans 1: a transaction per file; 600: whole files per transaction (280 spans a file, so
# files 1-3 commit together, then 4-6): a kill leaves 0 or 3 files, never a part of a group.
# --batch-spans 28: ten batches a file, so the kill lands inside a file's transaction.
@pytest.mark.parametrize("commit_spans", [1, 600])
def test_sigkill_mid_ingest_then_rerun_gives_exact_counts(
    traces: tuple[Path, Path], tmp_path: Path, commit_spans: int
) -> None:
    traces_dir, reference = traces
    db = tmp_path / "killed.duckdb"
    proc = subprocess.Popen(
        [KVTRACE, "ingest", str(traces_dir), "--db", str(db), "--batch-spans", "28", "--commit-spans", str(commit_spans),
         "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    wal = Path(str(db) + ".wal")
    while not (wal.exists() and wal.stat().st_size > 200_000) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    assert proc.poll() is None, "ingest finished before it could be killed; give it more work"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    # consistent: only whole files are stored, and they are exactly what their rows say
    files, stored = query(db, "SELECT count(*), coalesce(sum(spans_new), 0) FROM ingested_files")[0]
    assert files < 6
    if commit_spans == 600:
        assert files in (0, 3)
    assert query(db, "SELECT count(*) FROM spans") == [(stored,)]
    assert query(db, "SELECT count(*) FROM spans WHERE file_id NOT IN (SELECT file_id FROM ingested_files)") == [(0,)]

    rerun = ingest_paths([traces_dir], db, progress=False)
    assert (rerun.files_skipped, rerun.files_ingested) == (files, 6 - files)
    assert query(db, "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans") == [(1680, 1680)]
    assert snapshot(db) == snapshot(reference)
