"""Plain helpers for the ingest tests: read a store back (every table, one query), and ingest the
same files with the fast and the validating decoders to compare what they store. Not a test module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from kvtrace.ingest import ingest_paths, open_store
from kvtrace.ingest.decode import StagedRows
from kvtrace.ingest.pipeline import _decode_record
from kvtrace.ingest.sources import LineChunk

NORMALISED = ("requests", "spec_steps", "kv_events", "aborts", "request_stages", "feedback")
RAW = ("spans", "span_events", "span_links", "resources")


def snapshot(db: Path, tables: tuple[str, ...] = NORMALISED + RAW) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of `tables` (file_id left out: it depends on the order files came in), sorted."""
    con = open_store(db, read_only=True)
    try:
        out = {}
        for table in tables:
            cols = [
                c
                for (c,) in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                    [table],
                ).fetchall()
                if c != "file_id"
            ]
            out[table] = sorted(con.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall(), key=repr)
    finally:
        con.close()
    return out


def assert_fast_and_validating_paths_agree(
    paths: list[Path], tmp_path: Path, new: int, quarantined: int
) -> None:
    """Ingest `paths` with the fast decoders and with the validating decoder only (batches of 3
    spans): both store `new` spans and quarantine `quarantined` records, and every table, the
    quarantine included, comes out identical."""
    stores = {}
    for fast in (True, False):
        db = tmp_path / f"{fast}.duckdb"
        summary = ingest_paths(paths, db, progress=False, batch_spans=3, columnar=fast)
        assert (summary.spans_new, summary.quarantined) == (new, quarantined)
        stores[fast] = (
            snapshot(db),
            query(db, "SELECT line, byte_offset, span_id, reason, raw, raw_bytes FROM quarantine"),
        )
    assert stores[True] == stores[False]


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = open_store(db, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# OTLP JSON lines written by hand, for the decoder tests (one trace id).
TRACE = "5b8efff798038103d269b633813fc60c"


def validating(chunk: bytes) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    batch = StagedRows()
    for rec in LineChunk(chunk, 1, 0).records():
        _decode_record(batch, rec)
    return batch.tables()


def kv(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


def span(span_id: str, attributes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "traceId": TRACE,
        "spanId": span_id,
        "name": "s",
        "kind": 1,
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
        "attributes": attributes,
        **extra,
    }


def line(*spans: dict[str, Any], resource: list[dict[str, Any]] | None = None) -> bytes:
    rs: dict[str, Any] = {"scopeSpans": [{"scope": {"name": "lib", "version": "1"}, "spans": list(spans)}]}
    if resource is not None:
        rs["resource"] = {"attributes": resource}
    return orjson.dumps({"resourceSpans": [rs]}) + b"\n"
