"""DuckDB lets one process open a store file at a time (read-only opens included), and `kvtrace
serve`'s store writer holds the file in spells. The CLI's commands wait for it instead of failing:
`kvtrace query`, `kvtrace report` and `kvtrace ingest` run while the receiver receives."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from app_process import KVTRACE
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_support import make_spans, start_serve

from kvtrace.analytics.runner import connect
from kvtrace.ingest import ingest_paths, open_store
from kvtrace.ingest.errors import IngestError
from kvtrace.ingest.store import StoreError

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold(db: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_opens_wait_for_the_holder_and_fail_clearly_when_it_holds_on(tmp_path: Path) -> None:
    db = tmp_path / "kv.duckdb"
    open_store(db).close()
    holder = _hold(db, 1.5)
    try:
        t0 = time.monotonic()
        con = connect(db, read_only=True, wait_s=30)
        waited = time.monotonic() - t0
        con.close()
        assert 0.5 < waited < 30
    finally:
        holder.wait()
    holder = _hold(db, 30)
    try:
        with pytest.raises(StoreError, match=r"another process held it for the 0\.3 s waited") as held:
            connect(db, read_only=True, wait_s=0.3)
        assert held.value.reason == "held" and held.value.path == db
        with pytest.raises(IngestError, match="another process held it"):  # StoreError is an IngestError
            open_store(db, wait_s=0.3)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_query_report_and_ingest_run_while_kvtrace_serve_receives(tmp_path: Path) -> None:
    """A real `kvtrace serve` under a steady export load holds the store in 1-second spells; a
    `kvtrace query`, a `kvtrace report` and a `kvtrace ingest` started meanwhile all complete."""
    db = tmp_path / "kv.duckdb"
    traces = tmp_path / "traces"
    traces.mkdir()
    sample = Path(__file__).resolve().parents[1] / "sample_traces" / "pr35049"
    for f in sample.glob("*.otlp.jsonl"):
        (traces / f.name).write_bytes(f.read_bytes())
    ingest_paths([traces], db, progress=False)
    proc, grpc_port, _ = start_serve(db, extra=["--store-hold", "1"])
    stop = threading.Event()
    results: list[SpanExportResult] = []

    def load() -> None:
        exporter = GrpcExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True)
        i = 0
        while not stop.is_set():
            results.append(exporter.export(make_spans(200, f"load-{i}")))
            i += 1
            time.sleep(0.05)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        deadline = time.monotonic() + 30
        while not results and time.monotonic() < deadline:  # the load is on before the commands start
            time.sleep(0.02)
        commands = [
            [KVTRACE, "query", "SELECT count(*) FROM spans", "--db", str(db)],
            [KVTRACE, "report", "--db", str(db), "--out", str(tmp_path / "report")],
            [KVTRACE, "ingest", str(sample), "--db", str(db), "--no-progress"],
        ]
        for cmd in commands:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, (cmd[1], done.stderr[-2000:])
        assert (tmp_path / "report").exists()
    finally:
        stop.set()
        loader.join()
        proc.terminate()
        proc.wait(timeout=60)
    assert results and all(r == SpanExportResult.SUCCESS for r in results)
