"""`kv.page_ranges` (trace contract v2: inclusive runs `[first0, last0, first1, last1, ...]`) and
`kv.page_ids` (v1: every page id) are the same page set to kvtrace.

Every committed sample scenario, regenerated with the seeds of sample_traces/regenerate.sh both
ways, gives identical `kv_events`, identical `kvtrace findings` and identical replay plans. Hand
built spans (the real opentelemetry-sdk) pin the row a ranges span gives, the union when a span
carries both, and what a malformed ranges array does: the span is stored whole, its kv_events row
has no pages and a `page_error` a user can query, and nothing is expanded to its claimed size.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from click.testing import CliRunner
from ingest_otlp_builders import MS, T0, SeededIds, json_lines
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kvtrace.app.cli import main
from kvtrace.ingest import ingest_paths, ingest_payload, open_store
from kvtrace.ingest.store import schema_sql

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_traces"


def regenerate_commands() -> dict[str, list[str]]:
    """sample_traces/regenerate.sh's `kvtrace simulate` arguments per folder, without --out."""
    out: dict[str, list[str]] = {}
    for line in (SAMPLES / "regenerate.sh").read_text().splitlines():
        if line.startswith("$KV simulate "):
            args = shlex.split(line)[1:]
            at = args.index("--out")
            out[Path(args[at + 1]).name] = args[:at] + args[at + 2:]
    return out


COMMANDS = regenerate_commands()


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def attribute_count(folder: Path, key: str) -> int:
    return sum(p.read_bytes().count(b'"key":"' + key.encode() + b'"') for p in folder.glob("*.otlp.jsonl"))


# ------------------------------------------------------------------- every sample scenario, both ways


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_sample_scenario_gives_the_same_store_findings_and_plan_with_ranges(name: str, tmp_path: Path) -> None:
    assert set(COMMANDS) == {p.name for p in SAMPLES.iterdir() if (p / "labels.json").exists()}
    folders, dbs = {}, {}
    for fmt in ("ids", "ranges"):
        folders[fmt] = tmp_path / fmt
        # the fast path: byte for byte the SDK path (test_simulator_fastpath, and for ranges below)
        cli(*COMMANDS[name], "--fast", "--page-format", fmt, "--out", str(folders[fmt]))
        dbs[fmt] = tmp_path / f"{fmt}.duckdb"
        cli("ingest", str(folders[fmt]), "--db", str(dbs[fmt]))
    # ids is what the committed folder holds (the default stays ids), ranges writes no page id list
    for path in (SAMPLES / name).iterdir():
        assert (folders["ids"] / path.name).read_bytes() == path.read_bytes(), path.name
    assert (folders["ranges"] / "labels.json").read_bytes() == (SAMPLES / name / "labels.json").read_bytes()
    n_kv = attribute_count(folders["ids"], "kv.page_ids")
    assert n_kv > 0 and attribute_count(folders["ids"], "kv.page_ranges") == 0
    assert attribute_count(folders["ranges"], "kv.page_ranges") == n_kv
    assert attribute_count(folders["ranges"], "kv.page_ids") == 0

    everything = "SELECT * FROM kv_events ORDER BY ALL"
    ids_rows, ranges_rows = rows(dbs["ids"], everything), rows(dbs["ranges"], everything)
    assert ranges_rows == ids_rows
    [(n_pages, errors)] = rows(dbs["ranges"], "SELECT sum(n_pages), count(page_error) FROM kv_events")
    assert n_pages > 0 and errors == 0

    findings = {fmt: cli("findings", "--db", str(db), "--format", "jsonl") for fmt, db in dbs.items()}
    assert findings["ranges"] == findings["ids"]
    found = [orjson.loads(line) for line in findings["ids"].splitlines() if line.strip()]
    races = orjson.loads((SAMPLES / name / "labels.json").read_bytes())["races"]
    assert bool(found) == bool(races)
    if not found:
        return
    plans = {}
    for fmt, db in dbs.items():
        cli("replay", "export", "--db", str(db), "--finding", found[0]["finding_id"], "--out", str(tmp_path / f"{fmt}.json"))
        plans[fmt] = orjson.loads((tmp_path / f"{fmt}.json").read_bytes())
        assert plans[fmt]["meta"].pop("db") == str(db)
    assert plans["ranges"] == plans["ids"]


def test_ranges_sdk_path_equals_fast_path_only_realistic_defaults_to_ranges_stock_ignores_it(tmp_path: Path) -> None:
    args = COMMANDS["offload-race"]
    cli(*args, "--page-format", "ranges", "--out", str(tmp_path / "sdk"))
    cli(*args, "--page-format", "ranges", "--fast", "--out", str(tmp_path / "fast"))
    names = sorted(p.name for p in (tmp_path / "sdk").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "fast").iterdir())
    for n in names:
        assert (tmp_path / "sdk" / n).read_bytes() == (tmp_path / "fast" / n).read_bytes(), n
    assert attribute_count(tmp_path / "sdk", "kv.page_ranges") > 0
    # defaults: realistic writes ranges; sample (the CLI's default profile) and pr35049 write ids
    small = ["--requests", "2", "--concurrency", "2", "--fast"]
    cli("simulate", "--scenario", "clean", "--profile", "realistic", *small, "--out", str(tmp_path / "real"))
    cli("simulate", "--scenario", "clean", *small, "--out", str(tmp_path / "sample"))
    cli("simulate", "--scenario", "pr35049", "--profile", "realistic", "--out", str(tmp_path / "pr"))
    assert attribute_count(tmp_path / "real", "kv.page_ranges") > 0 == attribute_count(tmp_path / "real", "kv.page_ids")
    for folder in ("sample", "pr"):
        assert attribute_count(tmp_path / folder, "kv.page_ids") > 0 == attribute_count(tmp_path / folder, "kv.page_ranges")
    # stock-only mode drops every kv.* span, so the page format changes none of its bytes
    for fmt in ("ids", "ranges"):
        cli(*args, "--stock-only", "--fast", "--page-format", fmt, "--out", str(tmp_path / f"stock-{fmt}"))
    names = sorted(p.name for p in (tmp_path / "stock-ids").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "stock-ranges").iterdir())
    for n in names:
        assert (tmp_path / "stock-ids" / n).read_bytes() == (tmp_path / "stock-ranges" / n).read_bytes(), n


# ------------------------------------------------------------------- hand-built spans


def kv_spans(cases: dict[str, dict[str, Any]]) -> list[ReadableSpan]:
    """One kv.alloc span per case (rid = the case's name) on decode-0, through the real SDK."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({
        "service.name": "sglang-decode", "service.instance.id": "decode-0", "service.version": "v2",
        "host.name": "host-d", "sglang.role": "decode"}), id_generator=SeededIds(7))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("sglang")
    for i, (rid, pages) in enumerate(cases.items()):
        span = tracer.start_span("kv.alloc", start_time=T0 + i * MS,
                                 attributes={"rid": rid, "tp_rank": 0, "kv.pool": "kv", **pages, "kv.page_size": 64})
        span.end(end_time=T0 + i * MS + 20_000)
    return list(exporter.get_finished_spans())


def ingest_both_ways(spans: list[ReadableSpan], tmp_path: Path) -> dict[str, Path]:
    """A file (normalised by the decode worker's Deriver) and a live payload (by the same SQL on
    the store's connection), each into its own store."""
    (tmp_path / "kv.jsonl").write_bytes(json_lines(spans, per_line=100))
    summary = ingest_paths([tmp_path / "kv.jsonl"], tmp_path / "file.duckdb", progress=False)
    assert (summary.spans_new, summary.quarantined) == (len(spans), 0)
    con = open_store(tmp_path / "live.duckdb")
    try:
        result = ingest_payload(con, json_lines(spans, per_line=100), "json", "test")
    finally:
        con.close()
    assert (result.new_spans, result.rejected) == (len(spans), 0)
    return {"file": tmp_path / "file.duckdb", "live": tmp_path / "live.duckdb"}


ROW = "SELECT rid, page_ids, page_lo, page_hi, n_pages, page_error FROM kv_events ORDER BY rid"

# (ids, the same pages as ranges): out of order, unjoined adjacent runs, one page, none
EQUIVALENT: dict[str, tuple[list[int], list[int]]] = {
    "runs": ([17, 3, 4, 5, 16], [17, 17, 3, 5, 16, 16]),
    "adjacent": (list(range(1, 7)), [1, 3, 4, 6]),
    "logged": ([*range(14, 45), 90], [14, 44, 90, 90]),
    "one": ([0], [0, 0]),
    "none": ([], []),
}


def test_ranges_give_the_row_the_same_ids_give(tmp_path: Path) -> None:
    cases = {}
    for name, (ids, ranges) in EQUIVALENT.items():
        cases[f"{name}-ids"] = {"kv.page_ids": ids}
        cases[f"{name}-ranges"] = {"kv.page_ranges": ranges}
    for db in ingest_both_ways(kv_spans(cases), tmp_path).values():
        got = {rid: row for rid, *row in rows(db, ROW)}
        for name, (ids, _) in EQUIVALENT.items():
            assert got[f"{name}-ranges"] == got[f"{name}-ids"], name
            assert got[f"{name}-ids"] == [sorted(ids), min(ids, default=None), max(ids, default=None), len(ids), None]


def test_a_span_with_both_gets_their_union(tmp_path: Path) -> None:
    cases = {
        "agree": {"kv.page_ids": [14, 15, 16], "kv.page_ranges": [14, 16]},
        "differ": {"kv.page_ids": [9, 14, 15], "kv.page_ranges": [15, 17]},
        "bad-ranges": {"kv.page_ids": [3, 4], "kv.page_ranges": [8, 2]},
    }
    for db in ingest_both_ways(kv_spans(cases), tmp_path).values():
        assert rows(db, ROW) == [
            ("agree", [14, 15, 16], 14, 16, 3, None),
            ("bad-ranges", [3, 4], 3, 4, 2, "kv.page_ranges pair 1 has last < first (8, 2)"),
            ("differ", [9, 14, 15, 16, 17], 9, 17, 5, None),
        ]


MALFORMED: dict[str, tuple[Any, str]] = {
    "odd": ([14, 44, 90], "kv.page_ranges has odd length 3 (pairs of first, last expected)"),
    "reversed": ([1, 4, 9, 3], "kv.page_ranges pair 2 has last < first (9, 3)"),
    "negative": ([-5, 2], "kv.page_ranges has a negative page id (-5)"),
    "beyond-int": ([0, 2**31], "kv.page_ranges page id 2147483648 is beyond 2^31-1"),
    "int64-extremes": ([-(2**63), 2**63 - 1], "kv.page_ranges has a negative page id (-9223372036854775808)"),
    "2^31-pages": ([0, 2**31 - 1], "kv.page_ranges names 2147483648 pages, more than the 4194304 one span may hold"),
    "over-cap": ([1, 2, 10, 4_194_312], "kv.page_ranges names 4194305 pages, more than the 4194304 one span may hold"),
    "strings": (["a", "b"], "kv.page_ranges is not an array of integers"),
    "scalar": (42, "kv.page_ranges is not an array of integers"),
}


def test_malformed_ranges_keep_the_span_and_say_why_and_spare_the_batch(tmp_path: Path) -> None:
    cases = {name: {"kv.page_ranges": ranges} for name, (ranges, _) in MALFORMED.items()}
    cases["good"] = {"kv.page_ranges": [14, 44, 90, 90]}
    spans = kv_spans(cases)
    for db in ingest_both_ways(spans, tmp_path).values():
        got = {rid: tuple(row) for rid, *row in rows(db, ROW)}
        assert got.pop("good") == ([*range(14, 45), 90], 14, 90, 32, None)
        assert got == {name: ([], None, None, 0, reason) for name, (_, reason) in MALFORMED.items()}
        # the span itself is stored whole: the ranges as they came, with the rest of its attributes
        stored = dict(rows(db, """SELECT attributes->>'$.rid', attributes->'$."kv.page_ranges"'
                                  FROM spans WHERE name = 'kv.alloc'"""))
        assert len(stored) == len(spans)
        assert orjson.loads(stored["reversed"]) == [1, 4, 9, 3] and orjson.loads(stored["scalar"]) == 42


def test_a_range_of_2_31_pages_is_not_expanded(tmp_path: Path) -> None:
    """The decode worker's Deriver takes a batch of absurd ranges within 64 MB and in well under
    a second each (expanded, one would need 8 GiB): it does not have to hand the batch to the store."""
    from kvtrace.ingest.jsonfast import decode_json_chunk
    from kvtrace.ingest.pipeline import Deriver, Staged

    cases = {f"absurd-{i}": {"kv.page_ranges": [0, 2**31 - 1, 5, 4_000_000]} for i in range(20)}
    tables = decode_json_chunk(json_lines(kv_spans(cases), per_line=100))
    assert tables is not None
    deriver = Deriver(memory_limit="64MB")
    try:
        started = time.perf_counter()
        staged = Staged.from_columnar(tables).prepare(deriver)
        elapsed = time.perf_counter() - started
    finally:
        deriver.close()
    assert staged.derived is not None and elapsed < 10
    kv = staged.derived["kv_events"].to_pydict()
    claimed = 2**31 + (4_000_000 - 5 + 1)
    assert kv["n_pages"] == [0] * 20 and set(kv["page_error"]) == {
        f"kv.page_ranges names {claimed} pages, more than the 4194304 one span may hold"}


def test_a_store_from_before_page_error_takes_ranges(tmp_path: Path) -> None:
    """open_store adds kv_events.page_error to an older store, whose rows keep their values."""
    db = tmp_path / "old.duckdb"
    old_schema = schema_sql().replace("    forward_mode      VARCHAR,", "    forward_mode      VARCHAR")
    old_schema = "\n".join(line for line in old_schema.splitlines() if "page_error" not in line)
    con = duckdb.connect(str(db))
    con.execute(old_schema)
    con.execute("INSERT INTO kv_events (trace_id, span_id, op, page_ids, n_pages) VALUES ('t', 's', 'alloc', [7], 1)")
    assert "page_error" not in [c for (c, *_) in con.execute("DESCRIBE kv_events").fetchall()]
    con.close()
    con = open_store(db)
    try:
        result = ingest_payload(con, json_lines(kv_spans({"odd": {"kv.page_ranges": [1, 2, 3]}})), "json", "test")
    finally:
        con.close()
    assert result.new_spans == 1
    assert rows(db, "SELECT span_id, page_ids, n_pages, page_error FROM kv_events ORDER BY n_pages DESC") == [
        ("s", [7], 1, None), (rows(db, "SELECT span_id FROM spans")[0][0], [], 0, MALFORMED["odd"][1])]
