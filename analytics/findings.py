"""Race findings as a table (the conventions' "Findings" fields plus extras), and writers for them."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

import duckdb
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kvtrace.analytics.registry import ParamValue
from kvtrace.analytics.runner import run

FINDING_FIELDS: Final = (
    "finding_id", "kind", "instance", "tp_rank", "kv_pool", "pages", "layers", "culprit_rid", "victim_rid",
    "window_start_ns", "window_end_ns", "confidence", "evidence_span_ids",
)
KINDS: Final = ("abort_before_write_complete", "unsafe_free", "read_before_load", "page_hazard", "abort_during_transfer")
Format = Literal["jsonl", "parquet", "csv"]


def compute(con: duckdb.DuckDBPyConnection, params: dict[str, ParamValue] | None = None) -> pa.Table:
    """Every race finding on the store behind `con` (computed now, not read from stored results)."""
    return run(con, "findings", params)


def write(table: pa.Table, path: Path, fmt: Format) -> None:
    """Write findings as JSON lines (lists kept), Parquet, or CSV (lists joined with ';')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "jsonl":
        path.write_bytes(to_jsonl(table))
    else:
        path.write_bytes(to_csv(table))


def to_csv(table: pa.Table) -> bytes:
    """CSV with list columns joined by ';'."""
    flat = table
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            joined = [";".join(str(v) for v in (cell or [])) for cell in table.column(i).to_pylist()]
            flat = flat.set_column(i, field.name, pa.array(joined, pa.string()))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(flat, sink)
    return bytes(sink.getvalue().to_pybytes())


def to_jsonl(table: pa.Table) -> bytes:
    """One JSON object per finding, in column order."""
    return b"".join(orjson.dumps(row) + b"\n" for row in table.to_pylist())
