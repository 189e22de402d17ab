"""Write-ahead spool: the receiver's durability boundary.

A batch is acknowledged to the exporter only once its bytes are in the spool and fsync'd. The
spool is a directory of append-only segment files, `seg-<id>.wal`, each a sequence of frames:

    magic b"KVS1" | u32 payload length | u32 crc32(kind byte + payload) | u8 kind | payload

`kind` is the payload format (protobuf or JSON). Concurrent appenders share one fsync (group
commit): each waits until the file is synced past its own frame, so N requests arriving together
cost one fsync, not N.

A single reader (the store writer) consumes frames in order from a cursor (segment, offset) that
is persisted in `cursor.json` after each store commit. The cursor is written without fsync on
purpose: if it is lost in a crash the reader replays frames that are already stored, and the
store's span-level dedup on (trace_id, span_id) makes that replay harmless. Segments wholly
before the cursor are deleted.

Only the newest segment can end in a torn frame (the process died mid-write, before the fsync,
so that batch was never acknowledged); opening the spool truncates it. A bad frame anywhere
else is corruption: that segment is moved to `corrupt/` and reported, never skipped silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvtrace.ingest.receiver.board import Board

log = logging.getLogger(__name__)

MAGIC = b"KVS1"
_HEADER = struct.Struct("<4sIIB")
HEADER_SIZE = _HEADER.size
KIND_PROTOBUF = 0
KIND_JSON = 1
KIND_NAMES = {KIND_PROTOBUF: "protobuf", KIND_JSON: "json"}


class SpoolError(Exception):
    """The spool cannot be used (bad directory, corrupt cursor)."""


class SpoolFull(Exception):
    """Accepting this batch would take the spool past its byte limit: the client must retry later."""


@dataclass(frozen=True, order=True)
class Position:
    """A place in the spool: segment id and byte offset inside that segment."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Frame:
    """One spooled batch, as read back."""

    kind: int
    payload: bytes
    start: Position
    end: Position


def _segment_name(segment: int) -> str:
    return f"seg-{segment:012d}.wal"


def _frame_bytes(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((kind,))))
    return _HEADER.pack(MAGIC, len(payload), crc, kind) + payload


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_directory(directory: Path) -> int:
    """One appender per spool: a second `kvtrace serve` on the same spool would interleave segments."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolError(f"{directory} is in use by another kvtrace serve (one receiver per spool)") from None
    return fd


def load_cursor(directory: Path) -> Position:
    """The reader's persisted cursor; (0, 0) when there is none yet."""
    path = directory / "cursor.json"
    if not path.exists():
        return Position(0, 0)
    try:
        raw = json.loads(path.read_text())
        return Position(int(raw["segment"]), int(raw["offset"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SpoolError(f"{path}: unreadable spool cursor ({exc}); fix or delete it") from exc


def save_cursor(directory: Path, position: Position) -> None:
    """Replace `cursor.json` atomically (no fsync: losing it only replays stored, deduplicated frames)."""
    tmp = directory / "cursor.json.tmp"
    tmp.write_text(json.dumps({"segment": position.segment, "offset": position.offset}))
    os.replace(tmp, directory / "cursor.json")


def segment_ids(directory: Path) -> list[int]:
    """Ids of the segment files in `directory`, ascending."""
    ids = []
    for path in directory.glob("seg-*.wal"):
        try:
            ids.append(int(path.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(ids)


def scan_frames(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """Yield (start, end, kind, payload) for each valid frame of `data`; stop at the first bad one."""
    pos = 0
    size = len(data)
    while pos + HEADER_SIZE <= size:
        magic, length, crc, kind = _HEADER.unpack_from(data, pos)
        end = pos + HEADER_SIZE + length
        if magic != MAGIC or end > size or kind not in KIND_NAMES:
            return
        payload = data[pos + HEADER_SIZE : end]
        if zlib.crc32(payload, zlib.crc32(bytes((kind,)))) != crc:
            return
        yield pos, end, kind, payload
        pos = end


class Spool:
    """Append-only, fsync'd, segmented write-ahead log of OTLP batches (see module docstring)."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = 64 << 20,
                 external_reader: bool = False, preallocate: bool = True) -> None:
        """`external_reader`: the reader is another process (`SpoolReader`); publish the durable
        position on a fresh `Board` (`self.board`) and take the reader's cursor from it."""
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.preallocate = preallocate
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(directory)
        self.board = Board(directory, create=True) if external_reader else None
        (directory / "corrupt").mkdir(exist_ok=True)
        self._append_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._state = threading.Condition()
        self._cursor = self._load_cursor()
        self._repair_tail()
        existing = self._segments()
        self._active = (existing[-1] + 1) if existing else max(1, self._cursor.segment)
        self._sizes: dict[int, int] = {seg: (directory / _segment_name(seg)).stat().st_size for seg in existing}
        self._sizes[self._active] = 0
        self._fd = self._open_segment(self._active)
        self._written = 0  # bytes written to the active segment
        self._synced = 0  # bytes of the active segment known to be on disk
        self._durable = Position(self._active, 0)  # readers see frames before this point
        if self.board is not None:
            self.board.publish_durable(self._active, 0)

    # -- files ---------------------------------------------------------------------------------

    def _segments(self) -> list[int]:
        return segment_ids(self.directory)

    def _open_segment(self, segment: int) -> int:
        """Create a segment with its blocks allocated up front (zeros), sized `segment_bytes`.

        Why: appending grows the file, and a grown file makes every fsync commit the filesystem
        journal (about 4 ms here); writing inside already allocated space lets `fdatasync` flush
        just the data (about 0.25 ms median). Frames are written with pwrite at `_written`; the
        zero tail is cut off when the segment is sealed, or by `_repair_tail` after a crash.
        """
        path = self.directory / _segment_name(segment)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if self.preallocate:
            with contextlib.suppress(OSError):  # no space or no support: writes still work, syncs cost more
                os.posix_fallocate(fd, 0, self.segment_bytes)
            os.fsync(fd)
        _fsync_dir(self.directory)
        return fd

    def _load_cursor(self) -> Position:
        return load_cursor(self.directory)

    def _repair_tail(self) -> None:
        """Truncate a torn frame at the end of the newest segment (an unacknowledged write)."""
        segments = self._segments()
        if not segments:
            return
        path = self.directory / _segment_name(segments[-1])
        data = path.read_bytes()
        good = 0
        for _start, end, _kind, _payload in scan_frames(data):
            good = end
        if good < len(data):
            if data.count(0, good) != len(data) - good:  # a zero tail is preallocated space, not a torn write
                log.warning("spool: truncating %d torn bytes at the end of %s (never acknowledged)",
                            len(data) - good, path)
            with path.open("r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())

    # -- appending (request threads) -------------------------------------------------------------

    def backlog_bytes(self) -> int:
        """Bytes spooled but not yet consumed by the reader."""
        with self._state:
            if self.board is not None:
                reader = Position(*self.board.writer().cursor)
                if reader > self._cursor:
                    self._cursor = reader
                    for seg in [s for s in self._sizes if s < reader.segment]:
                        del self._sizes[seg]
            total = 0
            for seg, size in self._sizes.items():
                if seg > self._cursor.segment:
                    total += size
                elif seg == self._cursor.segment:
                    total += max(0, size - self._cursor.offset)
            return total

    def append(self, kind: int, payload: bytes) -> Position:
        """Write one batch and return once it is fsync'd. Raises SpoolFull past `max_bytes`."""
        frame = _frame_bytes(kind, payload)
        with self._append_lock:
            if self.backlog_bytes() + len(frame) > self.max_bytes:
                raise SpoolFull(f"spool holds {self.backlog_bytes()} bytes, limit {self.max_bytes}")
            if self._written and self._written + len(frame) > self.segment_bytes:
                self._rotate()
            os.pwrite(self._fd, frame, self._written)
            self._written += len(frame)
            segment, end = self._active, self._written
            with self._state:
                self._sizes[segment] = end
        self._sync_to(segment, end)
        return Position(segment, end)

    def _sync_to(self, segment: int, end: int) -> None:
        """Group commit: one fsync covers every frame written before it started."""
        with self._sync_lock:
            with self._state:
                if self._durable >= Position(segment, end):
                    return
            with self._append_lock:
                if self._active != segment:
                    return  # a rotation sealed (fsync'd) our segment meanwhile
                target = Position(self._active, self._written)
                # dup: a concurrent rotation may close the segment's descriptor while we fsync.
                dup = os.dup(self._fd)
            try:
                os.fdatasync(dup)
            finally:
                os.close(dup)
            with self._state:
                if target > self._durable:
                    self._durable = target
                    if self.board is not None:
                        self.board.publish_durable(target.segment, target.offset)
                self._state.notify_all()

    def _rotate(self) -> None:
        """Seal the active segment (cut the preallocated tail, fsync, close) and start the next.

        The caller holds the append lock."""
        os.ftruncate(self._fd, self._written)
        os.fsync(self._fd)
        os.close(self._fd)
        self._active += 1
        self._fd = self._open_segment(self._active)
        self._written = 0
        with self._state:
            # Everything in the sealed segment is on disk now.
            self._sizes[self._active] = 0
            self._durable = Position(self._active, 0)
            if self.board is not None:
                self.board.publish_durable(self._active, 0)
            self._state.notify_all()

    # -- reading (the single store writer) -------------------------------------------------------

    @property
    def cursor(self) -> Position:
        with self._state:
            return self._cursor

    def wait_for_data(self, timeout: float) -> bool:
        """Block until there is something past the cursor (or `timeout`); return whether there is."""
        with self._state:
            return self._state.wait_for(lambda: self._durable > self._cursor_normalised(), timeout)

    def _cursor_normalised(self) -> Position:
        # A cursor at the end of a sealed segment equals the start of the next one.
        cur = self._cursor
        if cur.segment < self._active and cur.offset >= self._sizes.get(cur.segment, 0):
            nxt = min((s for s in self._sizes if s > cur.segment), default=self._active)
            return Position(nxt, 0)
        return cur

    def read_frames(self, max_bytes: int) -> list[Frame]:
        """Frames after the cursor, up to about `max_bytes` of payload (at least one if any)."""
        frames: list[Frame] = []
        total = 0
        with self._state:
            pos = self._cursor_normalised()
            durable = self._durable
        while pos < durable:
            path = self.directory / _segment_name(pos.segment)
            with path.open("rb") as fh:
                fh.seek(pos.offset)
                data = fh.read(durable.offset - pos.offset) if pos.segment == durable.segment else fh.read()
            consumed = 0
            for start, end, kind, payload in scan_frames(data):
                frames.append(Frame(kind, payload, Position(pos.segment, pos.offset + start),
                                    Position(pos.segment, pos.offset + end)))
                total += len(payload)
                consumed = end
                if total >= max_bytes:
                    return frames
            if consumed < len(data):
                if pos.segment == durable.segment:
                    # Appends still go to this file; stop here, loudly, rather than skip anything.
                    raise SpoolError(f"corrupt frame in the active spool segment {path} at byte {pos.offset + consumed}")
                self._quarantine_segment(pos.segment, pos.offset + consumed)
            elif pos.segment == durable.segment:
                break
            with self._state:
                pos = Position(min((s for s in self._sizes if s > pos.segment), default=self._active), 0)
        return frames

    def _quarantine_segment(self, segment: int, bad_offset: int) -> None:
        src = self.directory / _segment_name(segment)
        dst = self.directory / "corrupt" / _segment_name(segment)
        log.error("spool: corrupt frame in %s at byte %d; segment moved to %s, later segments continue",
                  src, bad_offset, dst)
        os.replace(src, dst)
        with self._state:
            self._sizes.pop(segment, None)

    def commit(self, position: Position) -> None:
        """Record that everything before `position` is in the store; delete consumed segments."""
        with self._state:
            self._cursor = position
            done = [s for s in self._sizes if s < position.segment]
            for seg in done:
                del self._sizes[seg]
        save_cursor(self.directory, position)
        for seg in done:
            (self.directory / _segment_name(seg)).unlink(missing_ok=True)

    def close(self) -> None:
        with self._append_lock:
            if self._fd >= 0:
                os.ftruncate(self._fd, self._written)
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1


class SpoolReader:
    """The store-writer process's view of a spool that another process appends to.

    Same reading interface as `Spool` (`wait_for_data`, `read_frames`, `commit`, `backlog_bytes`),
    but the durable position comes from the receiver through the `Board`, and the cursor goes back
    to it after each commit (the receiver counts its backlog from it). Frames past the durable
    position are never read: they may be torn, and they are not acknowledged yet.
    """

    def __init__(self, directory: Path, board: Board, *, poll_s: float = 0.005) -> None:
        self.directory = directory
        self.board = board
        self.poll_s = poll_s
        self._cursor = load_cursor(directory)

    @property
    def cursor(self) -> Position:
        return self._cursor

    def _durable(self) -> Position:
        return Position(*self.board.durable())

    def _spans(self) -> list[tuple[int, int, int]]:
        """(segment, first byte, end byte) still to read, from the cursor up to the durable position."""
        cur, durable = self._cursor, self._durable()
        out = []
        for seg in segment_ids(self.directory):
            if seg < cur.segment or seg > durable.segment:
                continue
            start = cur.offset if seg == cur.segment else 0
            if seg == durable.segment:
                end = durable.offset
            else:
                try:
                    end = (self.directory / _segment_name(seg)).stat().st_size
                except FileNotFoundError:
                    continue
            if end > start:
                out.append((seg, start, end))
        return out

    def backlog_bytes(self) -> int:
        return sum(end - start for _seg, start, end in self._spans())

    def wait_for_data(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._spans():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_s)

    def read_frames(self, max_bytes: int) -> list[Frame]:
        """Durable frames after the cursor, up to about `max_bytes` of payload (at least one if any)."""
        frames: list[Frame] = []
        total = 0
        durable_segment = self._durable().segment
        for seg, start, end in self._spans():
            path = self.directory / _segment_name(seg)
            with path.open("rb") as fh:
                fh.seek(start)
                data = fh.read(end - start)
            consumed = 0
            for fstart, fend, kind, payload in scan_frames(data):
                frames.append(Frame(kind, payload, Position(seg, start + fstart), Position(seg, start + fend)))
                total += len(payload)
                consumed = fend
                if total >= max_bytes:
                    return frames
            if consumed < len(data):
                if seg >= durable_segment:
                    raise SpoolError(f"corrupt frame in the active spool segment {path} at byte {start + consumed}")
                dst = self.directory / "corrupt" / _segment_name(seg)
                log.error("spool: corrupt frame in %s at byte %d; segment moved to %s, later segments continue",
                          path, start + consumed, dst)
                os.replace(path, dst)
        return frames

    def commit(self, position: Position) -> None:
        """Record that everything before `position` is in the store; delete consumed segments."""
        self._cursor = position
        save_cursor(self.directory, position)
        for seg in segment_ids(self.directory):
            if seg < position.segment:
                (self.directory / _segment_name(seg)).unlink(missing_ok=True)
