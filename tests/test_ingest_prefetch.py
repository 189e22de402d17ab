"""The decode worker of ingest.pipeline runs ahead of the DuckDB merge: items come in order,
a decoder error reaches the caller (so the open transaction rolls back), and a caller that stops
early stops the worker and closes the decoder's generator (its open files)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kvtrace.ingest.pipeline import _prefetched


def test_items_arrive_in_order_with_the_worker_ahead() -> None:
    produced: list[int] = []

    def gen() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            yield i

    got = []
    for i in _prefetched(gen(), depth=4):
        got.append(i)
    assert got == list(range(50))
    assert produced == list(range(50))


def test_decoder_error_is_raised_in_the_caller_after_the_good_items() -> None:
    def gen() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for i in _prefetched(gen()):
            got.append(i)
    assert got == [1, 2]


def test_caller_stopping_early_closes_the_decoder_and_its_thread() -> None:
    closed = threading.Event()

    def gen() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with pytest.raises(RuntimeError, match="merge failed"):
        for i in _prefetched(gen(), depth=2):
            if i == 3:
                raise RuntimeError("merge failed")
    assert closed.is_set()
    assert not [t for t in threading.enumerate() if t.name == "ingest-decode"]
