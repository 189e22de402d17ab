"""kv_events rows of a batch's kv.alloc / kv.free / kv.transfer / hicache.load spans, and
spec_steps rows of its request roots, in C.

ingest/sql/derive_kv_events.sql defines these rows, and was most of a decode worker's time (its
JSON paths, list functions and sorts over every span's page ids: about 4 of the Deriver's 8
CPU-s per 1M simulator spans). `kv_events` computes the same rows with ingest/_kvfast.c for the
spans whose attribute values have the plain shapes producers write, and hands back the others
(any value in another shape, a bad page range, ...; the C file's header lists them) for that SQL
to derive, so that every row, page_error included, is still the SQL's. tests/test_ingest_kvfast.py
checks both give the same rows, span by span, on simulator output and on every value shape.
`spec_steps` does the same for ingest/sql/derive_spec_steps.sql (1.16M rows per 1M simulator
spans: about 0.8 CPU-s there).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvtrace.ingest.protofast import _ints, _mask, _strings

_kvfast: Any
try:  # the C extension, typed as Any (it has no stub)
    _kvfast = importlib.import_module("kvtrace.ingest._kvfast")
except ImportError:  # pragma: no cover - exercised only where the extension could not be built
    _kvfast = None

# span name -> the op code of ingest/_kvfast.c (1-based: 0 is "not a kv span") and kv_events.op
OPS = ("kv.alloc", "kv.free", "kv.transfer", "hicache.load")
OP_NAMES = ("alloc", "free", "transfer", "load")

# derive_kv_events.sql's result, as DuckDB hands it to Arrow
KV_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("parent_span_id", pa.string()),
        ("op", pa.string()),
        ("rid", pa.string()),
        ("instance_id", pa.string()),
        ("tp_rank", pa.int32()),
        ("kv_pool", pa.string()),
        ("page_ids", pa.list_(pa.field("l", pa.int32()))),
        ("page_lo", pa.int32()),
        ("page_hi", pa.int32()),
        ("n_pages", pa.int32()),
        ("start_ns", pa.int64()),
        ("end_ns", pa.int64()),
        ("clock_host", pa.string()),
        ("emit_instance_id", pa.string()),
        ("service_version", pa.string()),
        ("status_code", pa.int32()),
        ("page_size", pa.int32()),
        ("free_mode", pa.string()),
        ("free_reason", pa.string()),
        ("bootstrap_room", pa.string()),
        ("transfer_bytes", pa.int64()),
        ("transfer_backend", pa.string()),
        ("layer_offsets_ns", pa.list_(pa.field("l", pa.int64()))),
        ("hicache_num_tokens", pa.int64()),
        ("page_error", pa.string()),
    ]
)


def available() -> bool:
    """Whether the C extension is built (else every kv span goes through the SQL)."""
    return _kvfast is not None


def kv_events(spans: pa.Table) -> tuple[pa.Table, pa.Table] | None:
    """(rows, declined) for the kv spans of `spans` (staged spans, each (trace_id, span_id) once):
    `rows` the kv_events rows (KV_SCHEMA) of the spans derived here, `declined` the spans (rows
    of `spans`) whose rows derive_kv_events.sql must give. None when the extension is not built."""
    if _kvfast is None:
        return None
    names = spans.column("name")
    op_idx = pc.index_in(names, value_set=pa.array(OPS)).to_numpy(zero_copy_only=False)
    op_idx = np.nan_to_num(op_idx, nan=-1).astype(np.int8) + 1   # 0: not a kv span
    rows = np.flatnonzero(op_idx).astype(np.int64)
    attrs = spans.column("attributes").combine_chunks()
    if attrs.null_count:   # no attribute text: the SQL's to decide
        rows = rows[attrs.is_valid().to_numpy(zero_copy_only=False)[rows]]
    ops = op_idx[rows]
    bufs = attrs.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(attrs) + 1, offset=attrs.offset * 4)
    data = bufs[2] if bufs[2] is not None else pa.py_buffer(b"")
    cols = _kvfast.kv_rows(offsets, data, rows, ops)
    if cols is None:   # the buffers are not what they should be: everything to the SQL
        return KV_SCHEMA.empty_table(), spans.take(np.flatnonzero(op_idx))
    declined_mask = np.frombuffer(cols["declined"], dtype=np.uint8).astype(bool)
    take_sql = np.flatnonzero(op_idx)
    take_sql = take_sql[~np.isin(take_sql, rows[~declined_mask], assume_unique=True)]
    table = _rows(spans, cols, rows, ops)
    if declined_mask.any():
        table = table.filter(pa.array(~declined_mask))
    return table, spans.take(take_sql)


def _rows(spans: pa.Table, cols: dict[str, Any], rows: np.ndarray, ops: np.ndarray) -> pa.Table:
    """The kv_events columns of `rows` (every one, declined or not) from kv_rows' buffers and the
    spans' own columns."""
    n = len(rows)
    take = pa.array(rows)
    own = {c: spans.column(c).take(take) for c in (
        "trace_id", "span_id", "parent_span_id", "rid", "instance_id", "start_ns", "end_ns",
        "host_name", "service_version", "status_code")}
    n_pages = np.frombuffer(cols["n_pages"], dtype=np.int32)
    has_pages = (n_pages > 0).astype(np.uint8).tobytes()
    transfer = ops == OPS.index("kv.transfer") + 1
    instance = pc.if_else(pa.array(transfer), _strings(cols["instance_id"], n, True), own["instance_id"])
    op = pa.DictionaryArray.from_arrays(pa.array(ops.astype(np.int32) - 1), pa.array(OP_NAMES)).cast(pa.string())

    def lists(offsets: bytes, values: bytes, dtype: pa.DataType, valid: bytes | None) -> pa.Array:
        bitmap, nulls = _mask(valid, n) if valid is not None else (None, 0)
        child = pa.Array.from_buffers(dtype, len(values) // dtype.byte_width, [None, pa.py_buffer(values)])
        return pa.ListArray.from_buffers(pa.list_(pa.field("l", dtype)), n, [bitmap, pa.py_buffer(offsets)],
                                         null_count=nulls, children=[child])

    columns = {
        "trace_id": own["trace_id"], "span_id": own["span_id"], "parent_span_id": own["parent_span_id"],
        "op": op, "rid": own["rid"], "instance_id": instance,
        "tp_rank": _ints(cols["tp_rank"][0], pa.int32(), n, cols["tp_rank"][1]),
        "kv_pool": _strings(cols["kv_pool"], n, True),
        "page_ids": lists(cols["pages_off"], cols["pages"], pa.int32(), None),
        "page_lo": _ints(cols["lo"], pa.int32(), n, has_pages),
        "page_hi": _ints(cols["hi"], pa.int32(), n, has_pages),
        "n_pages": pa.array(n_pages),
        "start_ns": own["start_ns"], "end_ns": own["end_ns"],
        "clock_host": own["host_name"], "emit_instance_id": own["instance_id"],
        "service_version": own["service_version"], "status_code": own["status_code"],
        "page_size": _ints(cols["page_size"][0], pa.int32(), n, cols["page_size"][1]),
        "free_mode": _strings(cols["free_mode"], n, True),
        "free_reason": _strings(cols["free_reason"], n, True),
        "bootstrap_room": _strings(cols["bootstrap_room"], n, True),
        "transfer_bytes": _ints(cols["transfer_bytes"][0], pa.int64(), n, cols["transfer_bytes"][1]),
        "transfer_backend": _strings(cols["transfer_backend"], n, True),
        "layer_offsets_ns": lists(cols["layers_off"], cols["layers"], pa.int64(), cols["layers_valid"]),
        "hicache_num_tokens": _ints(cols["hicache_num_tokens"][0], pa.int64(), n, cols["hicache_num_tokens"][1]),
        "page_error": pa.nulls(n, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=KV_SCHEMA)


# derive_spec_steps.sql's result
SPEC_SCHEMA = pa.schema(
    [
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("rid", pa.string()),
        ("instance_id", pa.string()),
        ("service_version", pa.string()),
        ("step", pa.int32()),
        ("accepted", pa.int32()),
        ("step_end_ns", pa.int64()),
    ]
)


def spec_steps(roots: pa.Table) -> tuple[pa.Table, pa.Table] | None:
    """(rows, declined) for the request roots `roots` (local_roots.sql's batch_roots): `rows` the
    spec_steps rows (SPEC_SCHEMA) of the roots derived here, `declined` the roots whose rows
    derive_spec_steps.sql must give. None when the extension is not built."""
    if _kvfast is None:
        return None
    n = roots.num_rows
    attrs = roots.column("attributes").combine_chunks()
    if attrs.null_count:   # no attribute text: no spec.accepted_per_step, no rows
        attrs = pc.fill_null(attrs, "{}")
    start = roots.column("start_ns").combine_chunks()
    start_valid = start.is_valid().to_numpy(zero_copy_only=False).astype(np.uint8)
    starts = pc.fill_null(start, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    bufs = attrs.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=attrs.offset * 4)
    data = bufs[2] if bufs[2] is not None else pa.py_buffer(b"")
    cols = _kvfast.spec_rows(offsets, data, starts, start_valid)
    if cols is None:
        return SPEC_SCHEMA.empty_table(), roots
    declined = np.frombuffer(cols["declined"], dtype=np.uint8).astype(bool)
    root = pa.array(np.frombuffer(cols["root"], dtype=np.int64))
    m = len(root)
    columns = {c: roots.column(c).take(root) for c in ("trace_id", "span_id", "rid", "instance_id", "service_version")}
    columns["step"] = _ints(cols["step"], pa.int32(), m)
    columns["accepted"] = _ints(cols["accepted"], pa.int32(), m)
    columns["step_end_ns"] = _ints(cols["end"], pa.int64(), m, cols["end_valid"])
    return pa.Table.from_pydict(columns, schema=SPEC_SCHEMA), roots.filter(pa.array(declined))


__all__ = ["KV_SCHEMA", "SPEC_SCHEMA", "available", "kv_events", "spec_steps"]
