"""The receiver's write-ahead spool: what is acknowledged survives, torn tails go, corruption is kept."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kvtrace.ingest.receiver.spool import KIND_JSON, KIND_PROTOBUF, Position, Spool, SpoolError, SpoolFull


def _payloads(spool: Spool) -> list[tuple[int, bytes]]:
    return [(f.kind, f.payload) for f in spool.read_frames(1 << 30)]


def test_frames_read_back_in_order_and_commit_moves_the_cursor(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.append(KIND_PROTOBUF, b"one")
    spool.append(KIND_JSON, b'{"two": 2}')
    frames = spool.read_frames(1 << 20)
    assert [(f.kind, f.payload) for f in frames] == [(KIND_PROTOBUF, b"one"), (KIND_JSON, b'{"two": 2}')]
    spool.commit(frames[0].end)
    assert _payloads(spool) == [(KIND_JSON, b'{"two": 2}')]
    spool.close()
    # The cursor is persisted: a reopened spool resumes after the committed frame.
    reopened = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert _payloads(reopened) == [(KIND_JSON, b'{"two": 2}')]
    reopened.append(KIND_PROTOBUF, b"three")
    assert _payloads(reopened) == [(KIND_JSON, b'{"two": 2}'), (KIND_PROTOBUF, b"three")]
    reopened.close()


def test_a_torn_tail_is_truncated_and_earlier_frames_survive(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.append(KIND_PROTOBUF, b"acknowledged")
    spool.close()
    segment = next((tmp_path / "s").glob("seg-*.wal"))
    with segment.open("ab") as fh:  # a crash in the middle of the next write
        fh.write(b"KVS1\x40\x00\x00\x00partial")
    reopened = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert _payloads(reopened) == [(KIND_PROTOBUF, b"acknowledged")]
    assert segment.stat().st_size == 13 + len(b"acknowledged")
    reopened.close()


def test_corruption_inside_a_sealed_segment_is_moved_aside_not_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=64)
    for i in range(4):
        spool.append(KIND_PROTOBUF, bytes([65 + i]) * 40)  # one frame per segment
    spool.close()
    first = sorted((tmp_path / "s").glob("seg-*.wal"))[0]
    data = bytearray(first.read_bytes())
    data[20] ^= 0xFF  # flip a payload byte: the checksum no longer matches
    first.write_bytes(bytes(data))
    reopened = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert [p for _k, p in _payloads(reopened)] == [b"B" * 40, b"C" * 40, b"D" * 40]
    assert (tmp_path / "s" / "corrupt" / first.name).read_bytes() == bytes(data)
    reopened.close()


def test_the_spool_refuses_past_its_byte_limit_and_frees_space_on_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=100)
    spool.append(KIND_PROTOBUF, b"x" * 60)
    with pytest.raises(SpoolFull):
        spool.append(KIND_PROTOBUF, b"y" * 60)
    spool.commit(spool.read_frames(1 << 20)[-1].end)
    assert spool.backlog_bytes() == 0
    spool.append(KIND_PROTOBUF, b"y" * 60)
    spool.close()


def test_concurrent_appends_across_segment_rotations_all_come_back_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 26, segment_bytes=4096)
    expected = {f"{t}-{i}".encode() * 20 for t in range(4) for i in range(100)}

    def writer(t: int) -> None:
        for i in range(100):
            spool.append(KIND_PROTOBUF, f"{t}-{i}".encode() * 20)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    got = [p for _k, p in _payloads(spool)]
    assert sorted(got) == sorted(expected)
    assert len(list((tmp_path / "s").glob("seg-*.wal"))) > 5
    spool.commit(spool.read_frames(1 << 30)[-1].end)
    # Consumed segments are deleted; only the active one remains.
    assert len(list((tmp_path / "s").glob("seg-*.wal"))) == 1
    spool.close()


def test_append_returns_only_after_the_bytes_are_on_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    end = spool.append(KIND_PROTOBUF, b"payload")
    segment = tmp_path / "s" / f"seg-{end.segment:012d}.wal"
    # Read through a separate descriptor: the frame is in the file, whole.
    fd = os.open(segment, os.O_RDONLY)
    try:
        assert os.read(fd, 13 + 7)[13:] == b"payload"
    finally:
        os.close(fd)
    assert end == Position(end.segment, 13 + 7)
    spool.close()


def test_a_second_appender_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    with pytest.raises(SpoolError, match="in use by another kvtrace serve"):
        Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.close()
    Spool(tmp_path / "s", max_bytes=1 << 20).close()  # free again once the first one closed


def test_after_a_crash_the_preallocated_zero_tail_is_cut_and_every_frame_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=1 << 16)
    spool.append(KIND_PROTOBUF, b"first")
    spool.append(KIND_JSON, b'{"second": 2}')
    segment = next((tmp_path / "s").glob("seg-*.wal"))
    assert segment.stat().st_size == 1 << 16  # preallocated: syncs flush data, not the file size
    os.close(spool._fd)  # the process dies: no seal, no truncation, the lock goes with it
    os.close(spool._lock_fd)
    reopened = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert _payloads(reopened) == [(KIND_PROTOBUF, b"first"), (KIND_JSON, b'{"second": 2}')]
    assert segment.stat().st_size == 2 * 13 + len(b"first") + len(b'{"second": 2}')
    reopened.close()
