"""The store writer in its own process, and the receiver's supervisor for it.

Why a process: `ingest_payload` is CPU-bound Python. In the receiving process it competed for the
GIL with every request thread and halved the acknowledged rate. Apart, the receiving process only
receives, checks, spools (fsync) and acknowledges; the writer process drains the spool into DuckDB.
They share the spool files, `cursor.json` and the `Board` (`board.py`), nothing else.

Lifecycle (`WriterProcess`, in the receiving process):
- started after the spool is opened (and its torn tail repaired), so the child sees only whole,
  durable frames;
- restarted, with backoff, whenever it dies; the new one resumes from `cursor.json`, and anything
  it replays is already stored, which the store's (trace_id, span_id) dedup makes a no-op;
- stopped by SIGTERM, on which it drains the spool then exits 0 (3 if it could not finish);
  SIGUSR1 makes it stop after the group in hand; past a grace period it is killed;
- it never outlives the receiver: PR_SET_PDEATHSIG(SIGKILL) on Linux, plus a parent-pid watchdog
  (other systems, and the window before prctl runs). Being killed at any point loses nothing:
  the spool keeps every frame until the cursor passes it.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from kvtrace.ingest.receiver.board import Board, WriterState
from kvtrace.ingest.receiver.spool import SpoolReader
from kvtrace.ingest.receiver.store_writer import StoreWriter, WriterStats

log = logging.getLogger(__name__)

EXIT_DRAINED = 0
EXIT_NOT_DRAINED = 3
_PR_SET_PDEATHSIG = 1
_COUNTERS = ("stored_spans", "new_spans", "rejected_after_ack", "failed_frames", "transactions", "opens",
             "open_conflicts")


# ------------------------------------------------------------------------------ the child


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still applies
    if os.getppid() != parent_pid:
        os._exit(EXIT_NOT_DRAINED)  # the parent died before prctl took effect


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of the writer process (`python -m kvtrace.ingest.receiver.writer_process ...`)."""
    ap = argparse.ArgumentParser(description="kvtrace serve's store writer (started by kvtrace serve)")
    ap.add_argument("--spool", type=Path, required=True)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--hold", type=float, default=5.0)
    ap.add_argument("--release", type=float, default=1.0)
    ap.add_argument("--parent-pid", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.WARNING, format="kvtrace serve (store writer): %(levelname)s %(message)s")

    draining = threading.Event()
    urgent = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        draining.set()

    def on_usr1(_signum: int, _frame: FrameType | None) -> None:
        draining.set()
        urgent.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides

    from kvtrace.ingest import ingest_payload, open_store

    board = Board(args.spool, create=False)
    reader = SpoolReader(args.spool, board)
    publish_lock = threading.Lock()
    writer: StoreWriter

    def publish() -> None:
        stats = writer.snapshot()
        with publish_lock:
            board.publish_writer(WriterState(
                cursor=(reader.cursor.segment, reader.cursor.offset), stored_spans=stats.stored_spans,
                new_spans=stats.new_spans, rejected_after_ack=stats.rejected_after_ack,
                failed_frames=stats.failed_frames, transactions=stats.transactions, opens=stats.opens,
                open_conflicts=stats.open_conflicts, holds_store=writer.holds_store(), pid=os.getpid(),
                last_error=stats.last_error))

    writer = StoreWriter(reader, args.db, open_store=open_store, ingest_payload=ingest_payload,
                         hold_s=args.hold, release_s=args.release, on_change=publish)
    publish()
    writer.start()
    while not draining.wait(0.5):
        if os.getppid() != args.parent_pid:
            os._exit(EXIT_NOT_DRAINED)  # orphaned: the parent is gone (watchdog where prctl is not)
        if not writer.running():
            break
    while not urgent.is_set() and writer.running() and reader.backlog_bytes() > 0:
        urgent.wait(0.05)
    writer.stop(0)
    publish()
    return EXIT_DRAINED if reader.backlog_bytes() == 0 else EXIT_NOT_DRAINED


# ------------------------------------------------------------------------------ the parent side


class WriterProcess:
    """Starts, supervises (restarts) and stops the writer process; reads its state off the board."""

    def __init__(self, spool_dir: Path, db_path: Path, board: Board, *, hold_s: float, release_s: float,
                 restart_backoff_s: float = 1.0) -> None:
        self.spool_dir = spool_dir
        self.db_path = db_path
        self.board = board
        self.hold_s = hold_s
        self.release_s = release_s
        self.restart_backoff_s = restart_backoff_s
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # The supervisor thread starts every child: PR_SET_PDEATHSIG fires when the *thread* that
        # forked the child ends, so it must be one that lives as long as the receiver.
        self._thread = threading.Thread(target=self._supervise, name="kvtrace-writer-supervisor", daemon=True)
        self._started = threading.Event()
        self._retired = WriterStats()

    def _spawn(self) -> bool:
        cmd = [sys.executable, "-c", "import sys; from kvtrace.ingest.receiver.writer_process import child_main; "
               "sys.exit(child_main())", "--spool", str(self.spool_dir), "--db", str(self.db_path),
               "--hold", str(self.hold_s), "--release", str(self.release_s), "--parent-pid", str(os.getpid())]
        with self._lock:
            if self._stopping.is_set():
                return False
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
            return True

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._proc is None:
            raise OSError(f"cannot start the store writer process ({sys.executable})")

    def _supervise(self) -> None:
        try:
            self._spawn()
        finally:
            self._started.set()
        while True:
            proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            self._retire_counters()
            self.restarts += 1
            log.error("store writer process exited with %s; restarting it in %.1f s (spooled batches are kept)",
                      code, self.restart_backoff_s)
            if self._stopping.wait(self.restart_backoff_s) or not self._spawn():
                return

    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def _retire_counters(self) -> None:
        """A child died: keep its counters, so that the totals survive the restart."""
        dead = self.board.writer()
        with self._lock:
            for name in _COUNTERS:
                setattr(self._retired, name, getattr(self._retired, name) + getattr(dead, name))
            # No child is alive now, so this side may write the child's region: zero its counters.
            self.board.publish_writer(WriterState(cursor=dead.cursor, last_error=dead.last_error))

    def snapshot(self) -> WriterStats:
        """Totals over every writer process this receiver started (the live one's and the dead ones')."""
        state = self.board.writer()
        with self._lock:
            stats = WriterStats(**{name: getattr(self._retired, name) + getattr(state, name) for name in _COUNTERS})
        stats.last_error = state.last_error
        return stats

    def holds_store(self) -> bool:
        return self.running() and self.board.writer().holds_store

    def stop(self, drain_timeout_s: float = 30.0, grace_s: float = 30.0) -> bool:
        """Ask the writer to drain (up to the timeout), then to stop; True when it drained everything."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is None:
            return False
        deadline = time.monotonic() + drain_timeout_s
        # A child still importing has no SIGTERM handler yet: wait until it has said hello (its pid).
        while proc.poll() is None and self.board.writer().pid != proc.pid and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)  # stop after the group in hand
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()  # safe: the spool keeps what the cursor has not passed
                    proc.wait()
        self._thread.join(timeout=5)
        return proc.returncode == EXIT_DRAINED


