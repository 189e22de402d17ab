"""C fast path for OTLP JSON lines: a chunk of whole lines -> the very staging tables that the
validating decoder (orjson + decode.add_json_traces, line by line) builds for it, with no Python
per span or per attribute value.

The lines are parsed in C (`decode_json` in ingest/_otlpfast.c, the GIL released), which writes
every column straight into Arrow-layout buffers, the attribute JSON exactly as orjson writes the
validating decoder's dict. Only resources and scope names (a handful per line) are finished here,
through the validating decoder's own code, from the raw JSON text the C side points at. The C
side declines (None) whatever it does not reproduce byte for byte (see the comment above
`decode_json` there: invalid JSON, JSON null, snake_case keys, duplicate keys, numeric
nanoseconds, non-hex ids, values the validating decoder would quarantine, ...); the caller
(batches.py) then runs the validating decoder on the chunk, as it does on every chunk where the
extension is not built. `tests/test_ingest_jsonfast.py` checks that both give identical tables, on
SDK and simulator output, every value shape, random values and corrupted chunks, and that a
sample trace stages the very same rows without the extension.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import orjson

from kvtrace.ingest.decode import Resource, Scope, StagedTables, json_resource, json_scope
from kvtrace.ingest.errors import RecordError
from kvtrace.ingest.protofast import _events, _links, _spans

_otlpfast: Any
try:  # the C extension, typed as Any (it has no stub)
    _otlpfast = importlib.import_module("kvtrace.ingest._otlpfast")
except ImportError:  # pragma: no cover - exercised only where the extension could not be built
    _otlpfast = None


def available() -> bool:
    """Whether the C decoder is built (else decode_json_chunk always declines)."""
    return _otlpfast is not None and hasattr(_otlpfast, "decode_json")


def decode_json_chunk(chunk: bytes) -> StagedTables | None:
    """Spans, events and links staging tables of a chunk of whole OTLP JSON lines, identical to
    what the validating decoder gives line by line; None when another path must decide."""
    got = decode_json_chunk_located(chunk)
    return None if got is None else got[0]


def decode_json_chunk_located(chunk: bytes) -> tuple[StagedTables, np.ndarray] | None:
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


def _text(chunk: bytes, off: int, length: int) -> bytes | None:
    return chunk[off : off + length] if off >= 0 else None


def _resources(chunk: bytes, raw: bytes) -> list[Resource]:
    """Each resourceSpans entry's resource and schemaUrl (raw JSON text, or absent: offset -1),
    finished by the validating decoder's own code."""
    cache: dict[tuple[bytes | None, bytes | None], Resource] = {}
    out = []
    for off, length, u_off, u_len in np.frombuffer(raw, dtype=np.int64).reshape(-1, 4).tolist():
        key = (_text(chunk, off, length), _text(chunk, u_off, u_len))
        res = cache.get(key)
        if res is None:
            res = cache[key] = json_resource(_loads(key[0]), _loads(key[1]))
        out.append(res)
    return out


def _scopes(chunk: bytes, raw: bytes) -> list[Scope]:
    """Each scopeSpans entry's scope and schemaUrl, as _resources."""
    cache: dict[tuple[bytes | None, bytes | None], Scope] = {}
    out = []
    for off, length, u_off, u_len in np.frombuffer(raw, dtype=np.int64).reshape(-1, 4).tolist():
        key = (_text(chunk, off, length), _text(chunk, u_off, u_len))
        scope = cache.get(key)
        if scope is None:
            scope = cache[key] = json_scope(_loads(key[0]), _loads(key[1]))
        out.append(scope)
    return out


def _loads(text: bytes | None) -> Any:
    return None if text is None else orjson.loads(text)


__all__ = ["available", "decode_json_chunk", "decode_json_chunk_located"]
