"""The app's snapshot store keeps answering while another process writes the same DuckDB file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from kvtrace.app.safe_sql import StoreUnavailable
from kvtrace.app.store import Store, writer_pid

WRITER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    con.execute("INSERT INTO requests SELECT 'new' || i, i FROM range(100) t(i)")
    print("locked", flush=True)
    sys.stdin.readline()          # hold the write lock until the test says go
    con.close()
    """
)


def _make_store(path: Path, rows: int) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE requests AS SELECT 'r' || i AS rid, i AS n FROM range($n) t(i)", {"n": rows})
    con.close()


def test_reads_during_a_writer_and_sees_its_rows_after(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    _make_store(db, 10)
    with Store(db, check_interval_s=0) as store:
        assert store.scalar("SELECT count(*) FROM requests") == 10
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
            assert writer_pid(db) == writer.pid
            # The writer holds DuckDB's lock: a plain read-only open fails ...
            with pytest.raises(duckdb.IOException, match="lock"):
                duckdb.connect(str(db), read_only=True)
            # ... but the app keeps answering from its snapshot and says an ingest is running.
            assert store.scalar("SELECT count(*) FROM requests") == 10
            status = store.status()
            assert status.writer_pid == writer.pid
            assert writer.poll() is None
        finally:
            assert writer.stdin is not None
            writer.stdin.write("go\n")
            writer.stdin.flush()
            writer.wait(timeout=30)
        assert writer.returncode == 0
        assert store.scalar("SELECT count(*) FROM requests") == 110
        status = store.status()
        assert status.writer_pid is None and not status.stale


def test_app_never_blocks_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    _make_store(db, 5)
    with Store(db, check_interval_s=0) as store:
        assert store.scalar("SELECT count(*) FROM requests") == 5
        # The app holds no lock on the source: a writer process opens it while the app is up
        # (in another process: DuckDB's fcntl locks never conflict within one process).
        insert = "import duckdb, sys; duckdb.connect(sys.argv[1]).execute(\"INSERT INTO requests VALUES ('x', 99)\")"
        done = subprocess.run([sys.executable, "-c", insert, str(db)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert store.scalar("SELECT max(n) FROM requests") == 99


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match=r"does not exist: run `kvtrace ingest PATH --db"):
        Store(tmp_path / "none.duckdb")


def test_first_open_while_written_times_out_clearly(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    _make_store(db, 1)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=rf"being written by process {writer.pid}"):
            Store(db, first_open_wait_s=0.3)
        assert time.monotonic() - started < 5
    finally:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
        writer.wait(timeout=30)


@pytest.mark.slow
def test_app_queries_while_kvtrace_ingest_runs(tmp_path: Path) -> None:
    """A real `kvtrace ingest` process writes the store while the app keeps answering from its snapshot."""
    root = Path(__file__).resolve().parents[1] / "sample_traces"
    db = tmp_path / "store.duckdb"
    kvtrace = str(Path(sys.executable).with_name("kvtrace"))
    subprocess.run([kvtrace, "ingest", str(root / "pr35049"), "--db", str(db)], check=True,
                   capture_output=True, timeout=120)
    with Store(db, check_interval_s=0) as store:
        before = store.scalar("SELECT count(*) FROM spans")
        ingest = subprocess.Popen([kvtrace, "ingest", str(root / "mixed"), "--db", str(db)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        answers, saw_writer = 0, False
        while ingest.poll() is None:
            assert store.scalar("SELECT count(*) FROM spans") >= before
            answers += 1
            saw_writer |= store.status().writer_pid == ingest.pid
            time.sleep(0.05)
        _, err = ingest.communicate()
        assert ingest.returncode == 0, err
        assert saw_writer and answers > 5
        con = duckdb.connect(str(db), read_only=True)
        [(after,)] = con.execute("SELECT count(*) FROM spans").fetchall()
        con.close()
        assert after > before
        assert store.scalar("SELECT count(*) FROM spans") == after
        assert not store.status().stale
