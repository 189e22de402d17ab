"""C fast path for OTLP JSON lines: a chunk of whole lines -> the very staging tables that the
validating decoder (orjson + decode.add_json_traces, line by line) builds for it, with no Python
per span or per attribute value.

The lines are parsed in C (`decode_json` in ingest/_otlpfast.c, the GIL released), which writes
every column straight into Arrow-layout buffers, the attribute JSON exactly as orjson writes the
validating decoder's dict. Only resources and scope names (a handful per line) are finished here,
through the validating decoder's own code, from the raw JSON text the C side points at. The C
side declines (None) whatever it does not reproduce byte for byte (see the comment above
`decode_json` there: invalid JSON, JSON null, snake_case keys, duplicate keys, numeric
nanoseconds, non-hex ids, values the validating decoder would quarantine, ...); the caller then
takes the next path (ingest/columnar.py, then the validating decoder). `tests/test_ingest_jsonfast.py`
checks that both give identical tables, on SDK and simulator output, every value shape, random
values and corrupted chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from kvtrace.ingest.decode import Resource, json_attributes
from kvtrace.ingest.errors import RecordError
from kvtrace.ingest.protofast import StagingTables, _events, _links, _spans

try:
    from kvtrace.ingest import _otlpfast  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised only where the extension could not be built
    _otlpfast = None


def available() -> bool:
    """Whether the C decoder is built (else decode_json_chunk always declines)."""
    return _otlpfast is not None and hasattr(_otlpfast, "decode_json")


def decode_json_chunk(chunk: bytes) -> StagingTables | None:
    """Spans, events and links staging tables of a chunk of whole OTLP JSON lines, identical to
    what the validating decoder gives line by line; None when another path must decide."""
    got = decode_json_chunk_located(chunk)
    return None if got is None else got[0]


def decode_json_chunk_located(chunk: bytes) -> tuple[StagingTables, np.ndarray] | None:
    """decode_json_chunk, and for each span the offset in `chunk` of its resourceSpans entry (so
    that a chunk made of several files' lines tells which file each span came from)."""
    if not available():
        return None
    cols: dict[str, Any] | None = _otlpfast.decode_json(chunk)
    if cols is None:
        return None
    try:
        resources = _resources(chunk, cols["resources"])
        scopes = _scopes(chunk, cols["scopes"])
    except (RecordError, orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None
    tables = _spans(cols, resources, scopes), _events(cols), _links(cols)
    rs_off = np.frombuffer(cols["rs_off"], dtype=np.int64)
    return tables, rs_off[np.frombuffer(cols["res_idx"], dtype=np.int32)]


def _resources(chunk: bytes, raw: bytes) -> list[Resource]:
    """Each resourceSpans entry's resource, as decode._json_resource reads it (`"resource"` given
    as raw JSON text, or absent: offset -1)."""
    cache: dict[bytes, Resource] = {}
    out = []
    for off, length in np.frombuffer(raw, dtype=np.int64).reshape(-1, 2).tolist():
        text = chunk[off : off + length] if off >= 0 else b"{}"
        res = cache.get(text)
        if res is None:
            obj = orjson.loads(text) or {}
            res = cache[text] = Resource.from_attributes(json_attributes(obj.get("attributes")))
        out.append(res)
    return out


def _scopes(chunk: bytes, raw: bytes) -> list[tuple[str | None, str | None]]:
    """Each scopeSpans entry's scope name and version (raw JSON string text, or absent: None)."""
    out: list[tuple[str | None, str | None]] = []
    cache: dict[tuple[bytes | None, bytes | None], tuple[str | None, str | None]] = {}
    for n_off, n_len, v_off, v_len in np.frombuffer(raw, dtype=np.int64).reshape(-1, 4).tolist():
        key = (chunk[n_off : n_off + n_len] if n_off >= 0 else None, chunk[v_off : v_off + v_len] if v_off >= 0 else None)
        got = cache.get(key)
        if got is None:
            got = cache[key] = (None if key[0] is None else orjson.loads(key[0]),
                                None if key[1] is None else orjson.loads(key[1]))
        out.append(got)
    return out


__all__ = ["available", "decode_json_chunk", "decode_json_chunk_located"]
