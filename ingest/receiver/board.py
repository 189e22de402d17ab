"""The notice board between the receiving process and the store-writer process: one small mmap'd file.

`kvtrace serve` runs two processes over one spool directory. They share no memory and no locks
beyond this file, `<spool>/writer.board`, which holds two regions, each written by one side only:

- the receiver's region: the spool's durable position (everything before it is fsync'd). The
  writer process reads frames only up to it, so it never stores a batch that was not yet durable;
- the writer's region: its cursor (what is in the store), its counters, whether it holds the
  store's lock, and its pid.

Each region is a seqlock: the writer of a region bumps a sequence number to odd, writes, bumps it
to even; a reader retries while the number is odd or changed under it. Nothing on the board needs
to survive a crash: the durable position is re-derived when the spool opens, and the cursor's
durable copy is `cursor.json`.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

BOARD_NAME = "writer.board"
_SIZE = 4096
_SEQ = struct.Struct("<Q")
_DURABLE_AT = 0
_DURABLE = struct.Struct("<QQ")  # segment, offset
_WRITER_AT = 64
# cursor segment, cursor offset, stored, new, rejected_after_ack, failed_frames, transactions, opens,
# open_conflicts, holds_store, pid, then the last error as a length-prefixed UTF-8 string
_WRITER = struct.Struct("<11QH")
_ERROR_MAX = 1024


@dataclass(frozen=True)
class WriterState:
    """What the store-writer process last published."""

    cursor: tuple[int, int] = (0, 0)
    stored_spans: int = 0
    new_spans: int = 0
    rejected_after_ack: int = 0
    failed_frames: int = 0
    transactions: int = 0
    opens: int = 0
    open_conflicts: int = 0
    holds_store: bool = False
    pid: int = 0
    last_error: str = ""


class Board:
    """Shared-memory notice board (see module docstring). `create=True` (the receiver) resets it."""

    def __init__(self, directory: Path, *, create: bool) -> None:
        path = directory / BOARD_NAME
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o644)
        try:
            if create:
                os.ftruncate(fd, _SIZE)
            self._mm = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._mm.close()

    # -- seqlock -----------------------------------------------------------------------------

    def _write(self, at: int, layout: struct.Struct, values: tuple[object, ...], tail: bytes = b"") -> None:
        seq = _SEQ.unpack_from(self._mm, at)[0]
        _SEQ.pack_into(self._mm, at, seq + 1)
        layout.pack_into(self._mm, at + 8, *values)
        if tail:
            self._mm[at + 8 + layout.size: at + 8 + layout.size + len(tail)] = tail
        _SEQ.pack_into(self._mm, at, seq + 2)

    def _read(self, at: int, layout: struct.Struct, tail_max: int = 0) -> tuple[tuple[object, ...], bytes]:
        while True:
            before = _SEQ.unpack_from(self._mm, at)[0]
            if before & 1:
                time.sleep(0)
                continue
            values = layout.unpack_from(self._mm, at + 8)
            tail = self._mm[at + 8 + layout.size: at + 8 + layout.size + tail_max] if tail_max else b""
            if _SEQ.unpack_from(self._mm, at)[0] == before:
                return values, tail

    # -- the receiver's region ---------------------------------------------------------------

    def publish_durable(self, segment: int, offset: int) -> None:
        self._write(_DURABLE_AT, _DURABLE, (segment, offset))

    def durable(self) -> tuple[int, int]:
        values, _ = self._read(_DURABLE_AT, _DURABLE)
        return int(values[0]), int(values[1])  # type: ignore[call-overload]

    # -- the writer's region -----------------------------------------------------------------

    def publish_writer(self, state: WriterState) -> None:
        error = state.last_error.encode()[:_ERROR_MAX]
        values = (*state.cursor, state.stored_spans, state.new_spans, state.rejected_after_ack, state.failed_frames,
                  state.transactions, state.opens, state.open_conflicts, int(state.holds_store), state.pid, len(error))
        self._write(_WRITER_AT, _WRITER, values, error)

    def writer(self) -> WriterState:
        values, tail = self._read(_WRITER_AT, _WRITER, _ERROR_MAX)
        v = [int(x) for x in values]  # type: ignore[call-overload]
        return WriterState(cursor=(v[0], v[1]), stored_spans=v[2], new_spans=v[3], rejected_after_ack=v[4],
                           failed_frames=v[5], transactions=v[6], opens=v[7], open_conflicts=v[8],
                           holds_store=bool(v[9]), pid=v[10], last_error=tail[: v[11]].decode(errors="replace"))
