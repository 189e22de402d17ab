"""The app's read-only view of the store, kept working while another process ingests into it.

The constraint: DuckDB lets one process open a database file for writing, and while it does no
other process can open the file at all, not even read-only (the writer holds an exclusive fcntl
lock on it). Conversely, a reader that keeps the file open read-only holds a shared lock, and an
``kvtrace ingest`` started meanwhile fails to open it. So the app must neither hold the store
open nor depend on opening it at the moment a page renders.

The choice: the app reads from a private *snapshot copy* of the store file.

- Before a query (at most once per ``check_interval_s``) the app stats the source. When its
  (mtime, size) changed, and no other process holds DuckDB's write lock on it (asked with
  ``fcntl(F_GETLK)``, which reports a conflicting lock *without taking one*, so the app never
  blocks an ingest), it copies the file (and a ``.wal`` beside it, if any), stats the source
  again and re-checks the lock: if anything changed during the copy, the copy is thrown away and
  the old snapshot is kept. A new copy must then open read-only with the app's guards before it
  replaces the old one. Connections on the old snapshot finish their queries (the unlinked file
  stays readable until they close).
- While an ingest holds the lock, pages keep rendering the previous snapshot and show its age
  and that an ingest is in progress; the next check after the ingest ends picks the new data up.
- Cost: one file copy per change of the store (sequential I/O, about a second per GB here),
  done by the first query that notices; other threads keep using the old snapshot meanwhile.
  Disk: one extra copy of the store while the app runs, removed when it closes.

Alternatives rejected: re-opening the source read-only per query (blocks or breaks a concurrent
ingest, and fails while one runs); DuckDB's ATTACH of a remote/secondary file (needs external
access, which the app turns off for security: see ``app.safe_sql``).

Execution core: imports neither streamlit nor plotly.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl

from kvtrace.analytics.registry import MACROS_SQL
from kvtrace.app.safe_sql import (
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    QueryResult,
    QueryTimeout,
    StoreUnavailable,
    open_read_only,
    run_query,
)
from kvtrace.ingest.store import default_wait_s, missing_store

T = TypeVar("T")

# Internal data queries aggregate in SQL; this cap only guards against a runaway page.
INTERNAL_MAX_ROWS = 200_000


@dataclass(frozen=True)
class SourceState:
    """What identifies one version of the source file (and its WAL)."""

    mtime_ns: int
    size: int
    wal_mtime_ns: int
    wal_size: int

    @property
    def version(self) -> str:
        return f"{self.mtime_ns}-{self.size}-{self.wal_mtime_ns}-{self.wal_size}"


def source_state(path: Path) -> SourceState:
    st = path.stat()
    wal = _wal_path(path)
    try:
        wst = wal.stat()
        wal_state = (wst.st_mtime_ns, wst.st_size)
    except FileNotFoundError:
        wal_state = (0, 0)
    return SourceState(st.st_mtime_ns, st.st_size, *wal_state)


def writer_pid(path: Path) -> int | None:
    """PID of another process holding a write lock on `path`, without taking any lock ourselves."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        probe = struct.pack("hhqqi", fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
        lock_type, _whence, _start, _len, pid = struct.unpack("hhqqi", answer)
    finally:
        os.close(fd)
    return pid if lock_type == fcntl.F_WRLCK else None


@dataclass(frozen=True)
class StoreStatus:
    """What the UI shows about the data it is looking at."""

    source: Path
    version: str
    snapshot_taken_at: float
    writer_pid: int | None
    stale: bool  # the source changed since the snapshot (an ingest is running or just ended)

    @property
    def age_s(self) -> float:
        return time.time() - self.snapshot_taken_at


class Store:
    """Guarded read-only queries over a snapshot of `source` (see the module docstring)."""

    def __init__(
        self,
        source: str | Path,
        *,
        check_interval_s: float = 1.0,
        first_open_wait_s: float | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.source = Path(source).resolve()
        self.check_interval_s = check_interval_s
        self.timeout_s = timeout_s
        self._dir = Path(tempfile.mkdtemp(prefix="kvtrace-app-"))
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._retired: list[duckdb.DuckDBPyConnection] = []
        self._state: SourceState | None = None
        self._taken_at = 0.0
        self._checked_at = 0.0
        self._seq = 0
        self._tables: frozenset[str] = frozenset()
        self._prelude = MACROS_SQL.read_text(encoding="utf-8")
        self._first_open(default_wait_s() if first_open_wait_s is None else first_open_wait_s)

    # -- public -------------------------------------------------------------------------------

    def query(
        self, sql: str, params: dict[str, Any] | list[Any] | None = None, *, max_rows: int = DEFAULT_MAX_ROWS
    ) -> QueryResult:
        """One guarded read-only query (the SQL console's path)."""
        self.refresh()
        return run_query(
            self._connection(), sql, params, timeout_s=self.timeout_s, max_rows=max_rows, prelude=self._prelude
        )

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run trusted library code (an analytics function) on a fresh cursor of the snapshot.

        The cursor has every connection-level guard of `app.safe_sql` (read-only, no external
        access, locked configuration) and the same timeout; only the statement guard is skipped,
        since the SQL is ours (it may create temporary views, e.g. to read materialised results).
        """
        self.refresh()
        cur = self._connection().cursor()
        timer = threading.Timer(self.timeout_s, cur.interrupt)
        timer.daemon = True
        timer.start()
        try:
            cur.execute(self._prelude)
            return fn(cur, *args)
        except duckdb.InterruptException as exc:
            raise QueryTimeout(f"interrupted after the {self.timeout_s:g} s limit") from exc
        finally:
            timer.cancel()
            cur.close()

    def frame(self, sql: str, params: dict[str, Any] | list[Any] | None = None) -> pl.DataFrame:
        """Rows of an internal (already aggregated) query, through the same guard."""
        return self.query(sql, params, max_rows=INTERNAL_MAX_ROWS).frame

    def scalar(self, sql: str, params: dict[str, Any] | list[Any] | None = None) -> Any:
        frame = self.query(sql, params, max_rows=1).frame
        return None if frame.is_empty() else frame.item(0, 0)

    @property
    def version(self) -> str:
        """Identity of the data now visible: cache keys include it, so caches follow refreshes."""
        self.refresh()
        assert self._state is not None
        return self._state.version

    def tables(self) -> frozenset[str]:
        self.refresh()
        return self._tables

    def has_table(self, name: str) -> bool:
        return name in self.tables()

    def status(self) -> StoreStatus:
        self.refresh()
        assert self._state is not None
        try:
            stale = source_state(self.source) != self._state
        except FileNotFoundError:
            stale = True
        return StoreStatus(self.source, self._state.version, self._taken_at, writer_pid(self.source), stale)

    def refresh(self, *, force: bool = False) -> bool:
        """Take a new snapshot when the source changed and no writer holds it; True if one was taken."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.check_interval_s:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another thread is copying; keep serving the current snapshot
        try:
            self._checked_at = now
            try:
                state = source_state(self.source)
            except FileNotFoundError:
                return False
            if state == self._state:
                return False
            return self._take_snapshot()
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            for con in [*self._retired, *([self._con] if self._con else [])]:
                with contextlib.suppress(duckdb.Error):
                    con.close()
            self._retired.clear()
            self._con = None
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        con = self._con
        if con is None:
            raise StoreUnavailable(f"store {self.source} is closed")
        return con

    def _first_open(self, wait_s: float) -> None:
        if not self.source.is_file():  # the door's own message (StoreError, reason "missing")
            shutil.rmtree(self._dir, ignore_errors=True)
            raise StoreUnavailable(str(missing_store(self.source)))
        deadline = time.monotonic() + wait_s
        delay = 0.05
        while True:
            with self._lock:
                if self._take_snapshot():
                    self._checked_at = time.monotonic()
                    return
            if time.monotonic() >= deadline:
                pid = writer_pid(self.source)
                shutil.rmtree(self._dir, ignore_errors=True)
                who = f" by process {pid} (an ingest?)" if pid else ""
                raise StoreUnavailable(
                    f"store {self.source} is being written{who} and no snapshot exists yet: "
                    "start the app again when the ingest has finished"
                )
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _take_snapshot(self) -> bool:
        """Copy the source consistently (see module docstring); caller holds self._lock."""
        if writer_pid(self.source) is not None:
            return False
        before = source_state(self.source)
        self._seq += 1
        target = self._dir / f"snapshot-{self._seq}.duckdb"
        shutil.copyfile(self.source, target)
        wal = _wal_path(self.source)
        if before.wal_size:
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(wal, _wal_path(target))
        try:
            after = source_state(self.source)
        except FileNotFoundError:
            after = None
        if after != before or writer_pid(self.source) is not None:
            _remove_snapshot(target)
            return False
        try:
            con = open_read_only(target)
            tables = frozenset(
                row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            ) | frozenset(row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall())
        except (duckdb.Error, StoreUnavailable):
            _remove_snapshot(target)
            return False
        old = self._con
        self._con, self._state, self._tables, self._taken_at = con, before, tables, time.time()
        if old is not None:
            self._retired.append(old)
            # Keep the previous connection alive a little (queries may still run on it); close older ones.
            while len(self._retired) > 1:
                with contextlib.suppress(duckdb.Error):
                    self._retired.pop(0).close()
        for stale in self._dir.glob("snapshot-*.duckdb"):
            if stale != target:
                _remove_snapshot(stale)  # open connections keep the unlinked inode readable
        return True


def _wal_path(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _remove_snapshot(path: Path) -> None:
    for p in (path, _wal_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
