"""iter_json_units cuts a JSON lines stream into LineChunks of whole lines for the fast decoders:
every byte comes out once, in order, each chunk ends at a line end (but the last, when the file
does not end with one), and each chunk knows the line number and byte offset it starts at (what
quarantine rows report)."""

from __future__ import annotations

import io
import random

import pytest

from kvtrace.ingest.sources import LineChunk, iter_json_units


def lines_file(rng: random.Random, n: int, eol: bytes, final_eol: bool) -> bytes:
    lines = [b'{"resourceSpans":[],"pad":"' + b"x" * rng.choice([0, 5, 50, 900, 5000]) + b'"}' for _ in range(n)]
    return eol.join(lines) + (eol if final_eol else b"")


@pytest.mark.parametrize("seed", range(12))
def test_chunks_cover_the_stream_at_line_ends_with_their_positions(seed: int) -> None:
    rng = random.Random(seed)
    data = lines_file(rng, rng.randint(1, 60), rng.choice([b"\n", b"\r\n"]), rng.random() < 0.7)
    chunk_bytes = rng.choice([1, 7, 100, 1024, 4096, 1 << 20])
    chunks = list(iter_json_units(io.BufferedReader(io.BytesIO(data)), chunk_bytes))  # type: ignore[arg-type]
    assert all(isinstance(c, LineChunk) for c in chunks)
    assert b"".join(c.data for c in chunks) == data
    offset, line = 0, 1
    for i, c in enumerate(chunks):
        assert isinstance(c, LineChunk)
        assert (c.byte_offset, c.line) == (offset, line)
        assert c.data.endswith(b"\n") or i == len(chunks) - 1
        offset += len(c.data)
        line += c.data.count(b"\n")
