"""The parallel decode of ingest (kvtrace.ingest.parallel): jobs run on several worker threads at
once, their results come back in the jobs' order, a job's or the generator's error reaches the
caller at its place (so the open transaction rolls back), a caller that stops early stops the
workers and closes the generator (its open files), and each worker's state (its Deriver) is
closed at the end. Then the same through ingest: a file ingested by 1 or 3 workers gives the
same store, and `taskset` / KVTRACE_INGEST_WORKERS decide how many workers run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
from ingest_otlp_builders import json_lines, pd_request_spans

from kvtrace.ingest import ingest_paths
from kvtrace.ingest.parallel import WORKERS_ENV, cores, decode_workers, ordered


class State:
    made: list[State]

    def __init__(self) -> None:
        self.closed = False
        self.thread = threading.current_thread().name
        State.made.append(self)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def _fresh_states() -> None:
    State.made = []


def _pool_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ingest-decode")]


def test_results_come_in_job_order_while_jobs_run_at_once() -> None:
    """Job 0 waits until job 1 has started: only two threads at once get past it; its result
    still comes first."""
    started = threading.Event()

    def job(i: int) -> Callable[[State], int]:
        def run(state: State) -> int:
            if i == 0:
                assert started.wait(10), "job 1 never ran beside job 0"
            if i == 1:
                started.set()
            time.sleep(0.001 * (i % 3))
            return i

        return run

    got = list(ordered((job(i) for i in range(40)), 2, 4, State, State.close))
    assert got == list(range(40))
    assert 1 <= len(State.made) <= 2 and all(s.closed for s in State.made)
    assert not _pool_threads()


def test_a_job_error_is_raised_in_the_caller_after_the_results_before_it() -> None:
    def job(i: int) -> Callable[[State], int]:
        def run(state: State) -> int:
            if i == 2:
                raise OSError("disk gone")
            return i

        return run

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for i in ordered((job(i) for i in range(6)), 3, 6, State, State.close):
            got.append(i)
    assert got == [0, 1]
    assert not _pool_threads()


def test_a_generator_error_is_raised_in_order() -> None:
    def jobs() -> Iterator[Callable[[State], int]]:
        yield lambda s: 1
        yield lambda s: 2
        raise OSError("unreadable file")

    got = []
    with pytest.raises(OSError, match="unreadable file"):
        for i in ordered(jobs(), 2, 4, State, State.close):
            got.append(i)
    assert got == [1, 2]


def test_caller_stopping_early_closes_the_generator_and_the_workers() -> None:
    closed = threading.Event()

    def jobs() -> Iterator[Callable[[State], int]]:
        try:
            i = 0
            while True:
                yield lambda s, i=i: i
                i += 1
        finally:
            closed.set()

    with pytest.raises(RuntimeError, match="merge failed"):
        for i in ordered(jobs(), 2, 3, State, State.close):
            if i == 3:
                raise RuntimeError("merge failed")
    assert closed.is_set()
    assert all(s.closed for s in State.made)
    assert not _pool_threads()


def test_workers_follow_the_affinity_mask_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert decode_workers() == cores() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert decode_workers() == 3
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(ValueError, match=WORKERS_ENV):
        decode_workers()
    got = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-c",
            "from kvtrace.ingest.parallel import decode_workers as d; print(d())",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != WORKERS_ENV},
    )
    assert got.stdout.strip() == "1"


def _store(db: Path) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = []
        for table in ("spans", "kv_events", "requests", "request_stages", "ingest_pending"):
            out.append(
                (
                    table,
                    con.execute(
                        f"SELECT count(*), hash(list(t ORDER BY ALL)) FROM (SELECT * EXCLUDE (file_id) FROM {table}) AS t"
                    ).fetchall()
                    if table == "spans"
                    else con.execute(
                        f"SELECT count(*), hash(list(t ORDER BY ALL)) FROM {table} AS t"
                    ).fetchall(),
                )
            )
        return out
    finally:
        con.close()


def test_one_or_three_workers_store_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 10 spans over 2 files: with 3 workers they decode out of order, and a stage
    slice or a read whose parent is in another batch still resolves; the store is the same."""
    traces = tmp_path / "traces"
    traces.mkdir()
    for f in range(2):
        spans = [s for r in range(5) for s in pd_request_spans(seed=100 * f + r, rid=f"rid-{f}-{r}")]
        (traces / f"part-{f}.jsonl").write_bytes(json_lines(spans, per_line=2))
    stores = {}
    for workers in (1, 3):
        monkeypatch.setenv(WORKERS_ENV, str(workers))
        db = tmp_path / f"w{workers}.duckdb"
        summary = ingest_paths([traces], db, progress=False, batch_spans=10)
        assert summary.spans_new == 2 * 5 * 14 and summary.quarantined == 0
        stores[workers] = _store(db)
    assert stores[1] == stores[3]
