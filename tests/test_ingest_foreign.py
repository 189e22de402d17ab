"""OTLP trace files written by other projects (../shared/data/otlp-foreign: opentelemetry-proto
and -specification examples, Jaeger, opentelemetry-rust, otel-tui, otlp2parquet): every span
kept (the counts its README gives), every field round-trips, the JSON and protobuf paths store
the same rows, and a re-run adds nothing. Skipped where the folder is absent (a user's clone).

The reference is opentelemetry-proto itself: json_format (unknown fields ignored, the ids of
OTLP/JSON's hex given in the proto3 mapping's base64) and ParseFromString.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import math
import shutil
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from kvtrace.ingest.pipeline import IngestSummary, ingest_paths

FOREIGN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "otlp-foreign"
# Meant to yield no spans (README): invalid, logs, a non-OTLP wrapper, empty ids.
NO_SPANS = (
    "o2p_invalid_",
    "o2p_log_not_traces",
    "jaeger_apiv3_GetTrace",
    "spec_file_exporter_example_traces",
)
RAW_TABLES = {"spans": "* EXCLUDE (file_id)", "span_events": "*", "span_links": "*", "resources": "*"}
QUARANTINE = {"quarantine": "count(*)"}

pytestmark = pytest.mark.skipif(not FOREIGN.is_dir(), reason=f"{FOREIGN} is absent")


def foreign_files() -> list[Path]:
    if not FOREIGN.is_dir():
        return []
    return sorted(p for p in FOREIGN.iterdir() if p.suffix in (".json", ".jsonl", ".pb"))


def reference(path: Path) -> trace_pb2.TracesData:
    """The file's spans as opentelemetry-proto reads them (the documents it rejects left out)."""
    data = path.read_bytes()
    if path.suffix == ".pb":
        return trace_pb2.TracesData.FromString(data)
    out = trace_pb2.TracesData()
    for doc in data.splitlines() if path.suffix == ".jsonl" else [data]:
        if not doc.strip():
            continue
        try:
            obj = orjson.loads(doc)
            msg = json_format.ParseDict(_base64_ids(obj), trace_pb2.TracesData(), ignore_unknown_fields=True)
        except (orjson.JSONDecodeError, json_format.ParseError, ValueError, TypeError, AttributeError):
            continue
        out.resource_spans.extend(msg.resource_spans)
    return out


def _base64_ids(obj: Any) -> Any:
    """OTLP/JSON's hex ids in the proto3 JSON mapping's base64, for json_format."""
    obj = copy.deepcopy(obj)
    if not isinstance(obj, dict):
        return obj
    for rs in obj.get("resourceSpans") or []:
        for ss in rs.get("scopeSpans") or []:
            for sp in ss.get("spans") or []:
                for holder in [sp, *(sp.get("links") or [])]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        value = holder.get(key)
                        if isinstance(value, str) and len(value) in (16, 32):
                            with contextlib.suppress(ValueError):
                                holder[key] = base64.b64encode(bytes.fromhex(value)).decode()
    return obj


def expected_spans(path: Path) -> int:
    if path.name.startswith(NO_SPANS):
        return 0
    return sum(len(ss.spans) for rs in reference(path).resource_spans for ss in rs.scope_spans)


def rows(db: Path, tables: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            t: sorted(con.execute(f"SELECT {c} FROM {t}").fetchall(), key=repr) for t, c in tables.items()
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestSummary, Path]:
    """Every foreign file in one store, and json_format's protobuf of each in another (same order)."""
    tmp = tmp_path_factory.mktemp("foreign")
    files = foreign_files()
    summary = ingest_paths(files, tmp / "foreign.duckdb", progress=False)
    (tmp / "pb").mkdir()
    pb_files = []
    for path in files:
        if not path.name.startswith(NO_SPANS):
            pb = tmp / "pb" / f"{path.name}.pb"
            pb.write_bytes(reference(path).SerializeToString())
            pb_files.append(pb)
    ingest_paths(pb_files, tmp / "reference.duckdb", progress=False)
    return tmp / "foreign.duckdb", summary, tmp / "reference.duckdb"


@pytest.mark.parametrize("path", foreign_files(), ids=lambda p: p.name)
def test_every_span_is_kept(ingested: tuple[Path, IngestSummary, Path], path: Path) -> None:
    """Each file gives the spans opentelemetry-proto reads from it (none for those meant to give
    none); what it does not read is quarantined, never dropped silently."""
    _, summary, _ = ingested
    (result,) = [f.result for f in summary.files if Path(f.path).resolve() == path.resolve()]
    assert result.accepted == expected_spans(path)
    if path.name.startswith("o2p_invalid_trace") or path.name.startswith("spec_file_exporter"):
        assert result.rejected > 0 and all(r.startswith("span: ") for r in result.reasons)


def test_json_and_protobuf_store_the_same_rows(ingested: tuple[Path, IngestSummary, Path]) -> None:
    """Each file as written and as json_format's protobuf of it: the same raw rows."""
    db, _, reference_db = ingested
    got, want = rows(db, RAW_TABLES), rows(reference_db, RAW_TABLES)
    for table in RAW_TABLES:
        assert got[table] == want[table], table


def test_every_stored_json_value_is_valid_json(ingested: tuple[Path, IngestSummary, Path]) -> None:
    """The attribute text reaches the store typed as JSON without a second parse (merge.as_json),
    so what our decoders write must be valid JSON, from the JSON path and the protobuf path
    alike: every value of every JSON column of both stores parses (strictly, by orjson) and
    DuckDB's json_valid agrees. (DuckDB stores invalid text typed as JSON without a word.)"""
    db, _, reference_db = ingested
    checked = 0
    for path in (db, reference_db):
        con = duckdb.connect(str(path), read_only=True)
        try:
            columns = con.execute(
                "SELECT table_name, column_name FROM duckdb_columns() WHERE data_type = 'JSON'"
            ).fetchall()
            assert {t for t, _ in columns} >= {"spans", "span_events", "span_links"}
            for table, column in columns:
                for (text, valid) in con.execute(
                    f'SELECT "{column}"::VARCHAR, json_valid("{column}") FROM {table} WHERE "{column}" IS NOT NULL'
                ).fetchall():
                    orjson.loads(text)
                    assert valid, (table, column, text)
                    checked += 1
        finally:
            con.close()
    assert checked > 100


def test_every_field_round_trips(ingested: tuple[Path, IngestSummary, Path]) -> None:
    """Every field opentelemetry-proto reads from the files is in the store with its value:
    ids, names, kinds, times, status, trace state, flags, dropped counts, typed attributes,
    events, links, scope (name, version, attributes, dropped count, schema URL), resource
    (attributes, dropped count, schema URL)."""
    db, _, _ = ingested
    con = duckdb.connect(str(db), read_only=True)
    try:
        stored_spans = {
            (r[0], r[1]): r[2:]
            for r in con.execute(
                "SELECT trace_id, span_id, parent_span_id, name, kind, start_ns, end_ns, status_code, status_message, "
                "trace_state, flags, dropped_attributes_count, dropped_events_count, dropped_links_count, "
                "spans.attributes::VARCHAR, scope_name, scope_version, scope_attributes::VARCHAR, "
                "scope_dropped_attributes_count, scope_schema_url, resource_dropped_attributes_count, "
                "resource_schema_url, r.attributes::VARCHAR FROM spans JOIN resources AS r USING (resource_id)"
            ).fetchall()
        }
        events = _by_span(
            con,
            "SELECT trace_id, span_id, seq, name, time_ns, attributes::VARCHAR, "
            "dropped_attributes_count FROM span_events",
            5,
        )
        links = _by_span(
            con,
            "SELECT trace_id, span_id, seq, linked_trace_id, linked_span_id, attributes::VARCHAR, "
            "trace_state, flags, dropped_attributes_count FROM span_links",
            5,
        )
    finally:
        con.close()
    checked = 0
    seen: set[tuple[str, str]] = set()
    for path in foreign_files():
        if path.name.startswith(NO_SPANS):
            continue
        for rs in reference(path).resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    key = (_trace_hex(sp.trace_id), sp.span_id.hex())
                    if key in seen:
                        continue  # a double: the first one is stored
                    seen.add(key)
                    got = stored_spans[key]
                    want = _expected_row(rs, ss, sp)
                    assert got[:12] == want[:12], (path.name, key)
                    assert orjson.loads(got[12]) == want[12], (path.name, key)
                    assert got[13:15] == want[13:15] and orjson.loads(got[15]) == want[15], (path.name, key)
                    assert got[16:20] == want[16:20], (path.name, key)
                    assert orjson.loads(got[20]) == want[20], (path.name, key)
                    assert events.get(key, []) == [
                        (
                            i,
                            e.name or None,
                            e.time_unix_nano or None,
                            _attrs(e.attributes),
                            e.dropped_attributes_count,
                        )
                        for i, e in enumerate(sp.events)
                    ], (path.name, key)
                    assert links.get(key, []) == [
                        (
                            i,
                            _trace_hex(lk.trace_id) or None,
                            lk.span_id.hex() or None,
                            _attrs(lk.attributes),
                            lk.trace_state or None,
                            lk.flags,
                            lk.dropped_attributes_count,
                        )
                        for i, lk in enumerate(sp.links)
                    ], (path.name, key)
                    checked += 1
    assert checked > 500


def test_a_rerun_adds_nothing(ingested: tuple[Path, IngestSummary, Path], tmp_path: Path) -> None:
    """Ingesting the files again (skipped when unchanged and stored) and copies of them (read
    again: every span already stored) adds no span, event, link or resource (nor, the same files,
    a quarantine row)."""
    db, first, _ = ingested
    work = tmp_path / "s.duckdb"
    shutil.copy(db, work)
    before = rows(work, RAW_TABLES | QUARANTINE)
    again = ingest_paths(foreign_files(), work, progress=False)
    assert again.spans_new == 0
    assert rows(work, RAW_TABLES | QUARANTINE) == before
    (tmp_path / "copies").mkdir()
    copies = [Path(shutil.copy(p, tmp_path / "copies" / p.name)) for p in foreign_files()]
    reread = ingest_paths(copies, work, progress=False)
    assert reread.spans_new == 0 and reread.spans_read == first.spans_read
    assert rows(work, RAW_TABLES) == {t: before[t] for t in RAW_TABLES}


# ------------------------------------------------------------------------------ the reference


def _by_span(
    con: duckdb.DuckDBPyConnection, query: str, attrs_at: int
) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Rows of `query` (trace_id, span_id, seq, ...) by span, without the ids, the attribute
    JSON at column `attrs_at` parsed."""
    out: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for r in sorted(con.execute(query).fetchall(), key=lambda r: (r[0], r[1], r[2])):
        row = list(r[2:])
        row[attrs_at - 2] = orjson.loads(row[attrs_at - 2])
        out.setdefault((r[0], r[1]), []).append(tuple(row))
    return out


def _trace_hex(raw: bytes) -> str:
    return (bytes(8) + raw).hex() if len(raw) == 8 else raw.hex()


def _value(v: common_pb2.AnyValue) -> Any:
    """An AnyValue in the store's typed JSON form (ingest/schema.sql), written independently."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "double_value":
        d = v.double_value
        if math.isnan(d):
            return {"doubleValue": "NaN"}
        if math.isinf(d):
            return {"doubleValue": "Infinity" if d > 0 else "-Infinity"}
        return d
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(v.bytes_value).decode()}
    if kind == "array_value":
        return [_value(e) for e in v.array_value.values]
    if kind == "kvlist_value":
        d = _attrs(v.kvlist_value.values)
        return (
            {"kvlistValue": d}
            if len(d) == 1 and next(iter(d)) in ("bytesValue", "doubleValue", "kvlistValue")
            else d
        )
    return getattr(v, kind)


def _attrs(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


def _expected_row(
    rs: trace_pb2.ResourceSpans, ss: trace_pb2.ScopeSpans, sp: trace_pb2.Span
) -> tuple[Any, ...]:
    parent = sp.parent_span_id.hex() if sp.parent_span_id and any(sp.parent_span_id) else None
    return (
        parent,
        sp.name,
        sp.kind,
        sp.start_time_unix_nano or None,
        sp.end_time_unix_nano or None,
        sp.status.code,
        sp.status.message or None,
        sp.trace_state or None,
        sp.flags,
        sp.dropped_attributes_count,
        sp.dropped_events_count,
        sp.dropped_links_count,
        _attrs(sp.attributes),
        ss.scope.name or None,
        ss.scope.version or None,
        _attrs(ss.scope.attributes),
        ss.scope.dropped_attributes_count,
        ss.schema_url or None,
        rs.resource.dropped_attributes_count,
        rs.schema_url or None,
        _attrs(rs.resource.attributes),
    )
