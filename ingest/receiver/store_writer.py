"""The single store writer: drains the spool into DuckDB, in order, one transaction per group.

DuckDB allows one writing process, and while it holds the file no other process can open it, not
even read-only. So the writer holds the store only while it has work, and for bounded spells:

- it opens the store when the spool has data, ingests for at most `hold_s`, then closes it
  (DuckDB checkpoints on close) and keeps it closed for at least `release_s` before reopening;
- when the spool is empty it closes at once.

In those windows `kvtrace report`, `kvtrace ingest` or the app's snapshot copy (app/store.py) get
the file. A reader that holds the file makes the writer's open fail; the writer retries with
backoff while the spool, which is durable, absorbs the traffic (and pushes back with 429 when
full). Nothing is lost either way.

Consecutive protobuf frames are merged into one payload: concatenated serialisations of an
ExportTraceServiceRequest (a message whose only field is repeated) parse as one request holding
all their ResourceSpans. One `ingest_payload` call per merged group is one transaction, and the
cursor moves only after it commits; a crash in between replays frames whose spans are already
stored, which the store's (trace_id, span_id) dedup turns into no-ops.

A frame that ingest cannot decode at all (it passed the receiver's check, so this means a bug or
a version skew) is written to `<spool>/rejected/` with the error beside it and logged; it is
never skipped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb

from kvtrace.ingest.errors import IngestError, PayloadError
from kvtrace.ingest.pipeline import DUCKDB_MEMORY_LIMIT, BatchResult
from kvtrace.ingest.receiver.spool import KIND_JSON, KIND_PROTOBUF, Frame, Spool, SpoolError, SpoolReader

log = logging.getLogger(__name__)


@dataclass
class WriterStats:
    stored_spans: int = 0  # accepted by ingest_payload (new, or already present from a retry)
    new_spans: int = 0  # of which newly stored
    rejected_after_ack: int = 0  # refused by ingest after the receiver acknowledged them (quarantined)
    failed_frames: int = 0  # frames ingest could not decode at all (kept in <spool>/rejected/)
    transactions: int = 0
    opens: int = 0
    open_conflicts: int = 0  # another process held the store when the writer wanted it
    last_error: str = ""


def _group_frames(frames: list[Frame], max_merge_bytes: int) -> list[list[Frame]]:
    """Runs of protobuf frames (merged) up to `max_merge_bytes`; JSON frames alone."""
    groups: list[list[Frame]] = []
    size = 0
    for frame in frames:
        mergeable = frame.kind == KIND_PROTOBUF and groups and groups[-1][0].kind == KIND_PROTOBUF
        if mergeable and size + len(frame.payload) <= max_merge_bytes:
            groups[-1].append(frame)
            size += len(frame.payload)
        else:
            groups.append([frame])
            size = len(frame.payload)
    return groups


class StoreWriter:
    """Background thread that moves spooled batches into the DuckDB store (see module docstring).

    In `kvtrace serve` it runs in its own process (`writer_process.py`) over a `SpoolReader`; in
    one process (tests, embedding) it can also read a `Spool` directly.
    """

    def __init__(
        self,
        spool: Spool | SpoolReader,
        db_path: Path,
        *,
        open_store: Callable[[Path], duckdb.DuckDBPyConnection],
        ingest_payload: Callable[[duckdb.DuckDBPyConnection, bytes, Literal["json", "protobuf"], str], BatchResult],
        hold_s: float = 5.0,
        release_s: float = 1.0,
        read_bytes: int = 64 << 20,
        # ~48 MB of protobuf is ~150k spans: a transaction that fills DuckDB row groups (122,880
        # rows), which it writes straight into the file rather than through the WAL.
        max_merge_bytes: int = 48 << 20,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """`on_change` is called (on the writer thread) after each open, close and transaction."""
        self.spool = spool
        self.db_path = db_path
        self._open_store = open_store
        self._ingest_payload = ingest_payload
        self.hold_s = hold_s
        self.release_s = release_s
        self.read_bytes = read_bytes
        self.max_merge_bytes = max_merge_bytes
        self._on_change = on_change or (lambda: None)
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened_at = 0.0
        self._closed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="kvtrace-store-writer", daemon=True)
        (spool.directory / "rejected").mkdir(exist_ok=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_timeout_s: float = 30.0) -> bool:
        """Drain what is spooled (up to the timeout), close the store; True when fully drained."""
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and self.spool.backlog_bytes() > 0 and self._thread.is_alive():
            time.sleep(0.05)
        self._stop.set()
        self._thread.join()
        return self.spool.backlog_bytes() == 0

    def snapshot(self) -> WriterStats:
        with self._lock:
            return WriterStats(**vars(self.stats))

    def running(self) -> bool:
        return self._thread.is_alive()

    def holds_store(self) -> bool:
        return self._con is not None

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            if not self.spool.wait_for_data(0.1):
                self._close()
                continue
            if self._con is None:
                wait = self.release_s - (time.monotonic() - self._closed_at)
                if wait > 0 and self._stop.wait(wait):
                    break
                if not self._open():
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
            try:
                self._drain_once()
            except (duckdb.Error, IngestError, SpoolError, OSError) as exc:
                # Store trouble (disk full, lock lost...): keep the frames, close, retry later.
                log.error("store writer: %s; frames stay in the spool and are retried", exc)
                with self._lock:
                    self.stats.last_error = str(exc)
                self._close()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if time.monotonic() - self._opened_at >= self.hold_s:
                self._close()  # give readers their window even under sustained load
        self._close()

    def _open(self) -> bool:
        try:
            self._con = self._open_store(self.db_path)
            # DuckDB's buffer pool defaults to 80% of RAM and would cache more of the store the
            # longer the receiver runs; the writer's work is per transaction, so bound it.
            self._con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        except (duckdb.Error, IngestError) as exc:
            with self._lock:
                self.stats.open_conflicts += 1
                self.stats.last_error = str(exc)
            log.info("store writer: cannot open %s yet (%s); spooling meanwhile", self.db_path, exc)
            return False
        self._opened_at = time.monotonic()
        with self._lock:
            self.stats.opens += 1
        self._on_change()
        return True

    def _close(self) -> None:
        if self._con is not None:
            try:
                self._con.close()
            except duckdb.Error as exc:
                log.warning("store writer: closing the store: %s", exc)
            self._con = None
            self._closed_at = time.monotonic()
            self._on_change()

    def _drain_once(self) -> None:
        assert self._con is not None
        frames = self.spool.read_frames(self.read_bytes)
        for group in _group_frames(frames, self.max_merge_bytes):
            self._ingest_group(self._con, group)
            self.spool.commit(group[-1].end)
            self._on_change()

    def _ingest_group(self, con: duckdb.DuckDBPyConnection, group: list[Frame]) -> None:
        fmt: Literal["json", "protobuf"] = "json" if group[0].kind == KIND_JSON else "protobuf"
        source = f"otlp-receiver:{group[0].start.segment:012d}:{group[0].start.offset}"
        payload = group[0].payload if len(group) == 1 else b"".join(f.payload for f in group)
        try:
            result = self._ingest_payload(con, payload, fmt, source)
        except PayloadError as exc:
            if len(group) > 1:
                for frame in group:  # find the bad frame; the others are stored normally
                    self._ingest_group(con, [frame])
                return
            self._keep_rejected(group[0], exc)
            return
        with self._lock:
            self.stats.stored_spans += result.accepted
            self.stats.new_spans += result.new_spans
            self.stats.rejected_after_ack += result.rejected
            self.stats.transactions += 1
        if result.rejected:
            log.warning("store writer: ingest refused %d acknowledged record(s) from %s (in the quarantine table): %s",
                        result.rejected, source, "; ".join(result.reasons[:3]))

    def _keep_rejected(self, frame: Frame, exc: Exception) -> None:
        name = f"{frame.start.segment:012d}-{frame.start.offset}"
        directory = self.spool.directory / "rejected"
        suffix = "json" if frame.kind == KIND_JSON else "pb"
        (directory / f"{name}.{suffix}").write_bytes(frame.payload)
        (directory / f"{name}.error.txt").write_text(f"{exc}\n")
        log.error("store writer: ingest could not decode spooled batch %s (%s); kept in %s", name, exc, directory)
        with self._lock:
            self.stats.failed_frames += 1
