"""The C derivation of kv_events rows (ingest/kvfast.py over ingest/_kvfast.c) gives, span by span,
the rows ingest/sql/derive_kv_events.sql gives: it takes the plain value shapes producers write
(simulator output in both page formats takes no other path) and hands every other span back to
the SQL, so that the rows a file ingest stores are the SQL's on every input, page_error included.
The same holds for spec_steps rows of request roots against derive_spec_steps.sql."""

from __future__ import annotations

import itertools
import random
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kvtrace.ingest import kvfast
from kvtrace.ingest.decode import SPAN_SCHEMA
from kvtrace.ingest.jsonfast import decode_json_chunk
from kvtrace.ingest.merge import Deriver, Staged, _sql

OPS = ("kv.alloc", "kv.free", "kv.transfer", "hicache.load")


def by_sql(spans: pa.Table) -> pa.Table:
    con = duckdb.connect(config={"threads": 1})
    con.register("new_spans", spans)
    return con.sql(_sql("derive_kv_events")).to_arrow_table()


def keyed(table: pa.Table) -> dict[tuple[str, str], dict[str, Any]]:
    rows = table.to_pylist()
    out = {(r["trace_id"], r["span_id"]): r for r in rows}
    assert len(out) == len(rows)
    return out


def in_key_order(table: pa.Table) -> pa.Table:
    return table.sort_by([("trace_id", "ascending"), ("span_id", "ascending")])


def derived(spans: pa.Table) -> tuple[pa.Table, pa.Table]:
    got = kvfast.kv_events(spans)
    assert got is not None
    rows, declined = got
    assert rows.schema == kvfast.KV_SCHEMA
    return rows, declined


def assert_same_rows(spans: pa.Table) -> tuple[int, int]:
    """The C rows plus the SQL's rows of the spans C declined == the SQL's rows of all spans, row
    for row (every column); returns (rows derived in C, spans declined)."""
    rows, declined = derived(spans)
    ref = by_sql(spans)
    assert ref.schema == kvfast.KV_SCHEMA
    combined = in_key_order(pa.concat_tables([rows, by_sql(declined)]))
    expected = in_key_order(ref)
    if not combined.equals(expected):  # say which row differs, and how
        assert combined.num_rows == expected.num_rows
        for i in range(expected.num_rows):
            got, want = combined.slice(i, 1).to_pylist()[0], expected.slice(i, 1).to_pylist()[0]
            assert got == want, spans.filter(pc.equal(spans.column("span_id"), want["span_id"])).to_pylist()
    return rows.num_rows, declined.num_rows


def spans_of(attrs: list[tuple[str, str | None]]) -> pa.Table:
    """A staged spans table: one span per (name, attribute JSON text) with distinct ids."""
    n = len(attrs)
    cols: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in SPAN_SCHEMA}
    cols["trace_id"] = pa.array([f"{i:032x}" for i in range(n)])
    cols["span_id"] = pa.array([f"{i + 1:016x}" for i in range(n)])
    cols["parent_span_id"] = pa.array([f"{i + 7:016x}" if i % 3 else None for i in range(n)])
    cols["name"] = pa.array([name for name, _ in attrs])
    cols["attributes"] = pa.array([text for _, text in attrs], pa.string())
    cols["instance_id"] = pa.array([f"decode-{i % 4}" for i in range(n)])
    cols["host_name"] = pa.array([f"host-{i % 2}" for i in range(n)])
    cols["service_version"] = pa.array(["v1"] * n)
    cols["rid"] = pa.array([f"r{i}" if i % 5 else None for i in range(n)])
    cols["start_ns"] = pa.array(range(1000, 1000 + n), pa.int64())
    cols["end_ns"] = pa.array(range(2000, 2000 + n), pa.int64())
    cols["status_code"] = pa.array([i % 3 for i in range(n)], pa.int32())
    cols["seq"] = pa.array(range(n), pa.int64())
    return pa.table(cols, schema=SPAN_SCHEMA)


def test_the_extension_is_built() -> None:
    assert kvfast.available()


@pytest.mark.parametrize("page_format", ["ids", "ranges"])
def test_simulator_output_is_derived_in_c_row_for_row(page_format: str) -> None:
    from kvtrace.simulator.fastpath import write_spans

    with tempfile.TemporaryDirectory() as d:
        write_spans(Path(d), 6000, seed=5, page_format=page_format)
        chunk = b"".join(f.read_bytes() for f in sorted(Path(d).glob("*.otlp.jsonl")))
    tables = decode_json_chunk(chunk)
    assert tables is not None
    spans = Staged.from_columnar(tables).spans
    in_c, declined = assert_same_rows(spans)
    assert declined == 0
    assert in_c > 1000


# Values for each key the rows read: plain shapes (taken in C) and every other shape (declined).
PAGE_IDS = ["[]", "[5]", "[3,1,2]", "[7,7,1]", "[-4,2147483647,-2147483648]", "[2147483648]", "[1.0]", "[1,2.5]",
            '["1"]', "[1,null]", "[[1]]", "null", '"1,2"', "{}", "[ 1 , 2 ]", "[1e2]", "true"]
PAGE_RANGES = ["[]", "[0,3]", "[10,12,0,2]", "[0,5,3,8]", "[4,4,4,4]", "[1,3]", "[3,1]", "[1,2,3]", "[-1,2]",
               "[0,2147483648]", "[0,2147483647]", "[0,4194303]", "[0,4194304]", "[1.5,2]", '["0","1"]', "null",
               "[2,3,0,0]", "[0,1,1,2]"]
INTS = ["0", "3", "-1", "2147483647", "2147483648", "-2147483649", "9223372036854775807", "9223372036854775808",
        "1.0", "1e3", '"3"', '"x"', "null", "true", "[1]", "-0"]
STRINGS = ['"kv"', '""', '"index_k"', '"é漢"', '"a\\"b"', '"\\u0041"', "3", "null", "true", "[]", '{"a":1}']
ROOMS = ['"35183e9517ecc97b"', '"0x5f3a"', '"0X5F3A"', '"0xABCDEF0123456789ab"', '"0x"', '"0xé"', '"12"', "12",
         "-5", "null", '"0x5f\\u0033"']
LAYERS = ["[]", "[1,2,3]", "[9223372036854775807]", "[1.5]", '["1"]', "null", "[3,1]", "5"]
KEYS: dict[str, list[str]] = {
    "kv.page_ids": PAGE_IDS, "kv.page_ranges": PAGE_RANGES, "tp_rank": INTS, "kv.transfer.dst_rank": INTS,
    "kv.page_size": INTS, "kv.transfer.bytes": INTS, "hicache.num_tokens": INTS, "kv.pool": STRINGS,
    "kv.free.mode": STRINGS, "kv.free.reason": STRINGS, "kv.transfer.backend": STRINGS,
    "kv.transfer.dst_instance": STRINGS, "bootstrap_room": ROOMS, "hicache.layer_done_offsets_ns": LAYERS,
}


def obj(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{orjson.dumps(k).decode()}:{v}" for k, v in members) + "}"


def test_every_value_shape_of_every_key_on_every_op() -> None:
    attrs: list[tuple[str, str | None]] = []
    for name, (key, values) in itertools.product(OPS, KEYS.items()):
        for v in values:
            attrs.append((name, obj([("rid", '"r"'), (key, v), ("kv.pool", '"kv"')] if key != "kv.pool" else [(key, v)])))
    in_c, declined = assert_same_rows(spans_of(attrs))
    assert in_c > len(attrs) // 2 and declined > 100


def test_whole_objects_of_every_shape() -> None:
    texts: list[str | None] = [
        "{}", None, "[]", '"x"', "null",
        ' { "kv.page_ids" : [ 2 , 1 ] , "tp_rank" : 1 } ',
        '{"kv.page_ids":[1],"kv.page_ids":[2]}',                        # a key of ours twice: SQL takes the first
        '{"tp_rank":1,"tp_rank":2}',
        '{"other":1,"other":2,"kv.page_ids":[4]}',                      # other keys twice: not ours to read
        '{"kv.page\\u005fids":[9],"kv.page_ids":[1]}',                  # an escaped key may spell one of ours
        '{"nested":{"kv.page_ids":[5],"a":[{"b":"}"}]},"kv.page_ids":[1]}',
        '{"s":"with \\"quotes\\" and \\\\ and ]}","kv.page_ids":[3]}',
        '{"kv.page_ids":[1,2],"kv.page_ranges":[2,4]}',                 # both: each page once
        '{"kv.page_ids":[9,9],"kv.page_ranges":[0,1,1,1]}',
        '{"kv.page_ranges":[5,6,0,1]}', '{"kv.page_ranges":[0,2,1,3]}',  # out of order; overlapping (duplicates kept)
        '{"bytes":{"bytesValue":"AAE="},"d":{"doubleValue":"NaN"},"kv.page_ids":[0]}',
    ]
    attrs = [(name, t) for name in OPS for t in texts]
    in_c, declined = assert_same_rows(spans_of(attrs))
    assert (in_c, declined) == (4 * 10, 4 * 7)  # no text, not an object, a key of ours twice or escaped


def test_text_that_is_not_json_is_left_to_the_sql() -> None:
    """Attribute text is our decoders' JSON; were it not, the SQL (which raises on it) decides."""
    texts = ["", "{", '{"kv.page_ids":[1,2]', '{"kv.page_ids":[1,2]}x', '{"kv.page_ids":[01]}', '{"tp_rank":1,}',
             '{"kv.page_ids":[1 2]}', '{"kv.pool":"a\x01"}', '{"a":tru}', '{"a":1x}', '{"a":-}', '{"kv.page_ids":[1]}']
    rows, declined = derived(spans_of([("kv.alloc", t) for t in texts]))
    assert rows.column("page_ids").to_pylist() == [[1]]
    assert declined.column("attributes").to_pylist() == texts[:-1]


def test_random_combinations() -> None:
    rnd = random.Random(7)
    attrs: list[tuple[str, str | None]] = []
    small = {k: [v for v in values if "4194" not in v] for k, values in KEYS.items()}  # no 4M-page spans
    for _ in range(3000):
        keys = rnd.sample(list(small), rnd.randint(0, len(small)))
        members = [(k, rnd.choice(small[k])) for k in keys]
        if rnd.random() < 0.3:
            members.insert(rnd.randint(0, len(members)), ("rid", '"' + "x" * rnd.randint(0, 40) + '"'))
        if rnd.random() < 0.2:
            members.append(("unknown.key", '{"a":[1,{"b":null}],"c":"]"}'))
        attrs.append((rnd.choice(OPS), obj(members)))
    attrs += [("forward", '{"kv.page_ids":[1]}'), ("kv.allocx", "{}")]  # not kv spans: no row either way
    in_c, declined = assert_same_rows(spans_of(attrs))
    assert in_c > 100 and declined > 100


def test_a_batch_with_a_span_twice_takes_the_sql_on_the_first_copy() -> None:
    """Deriver: a span seen twice in a batch derives from its first copy (the SQL's QUALIFY), and
    the C path is not used there; every other batch is derived in C with the SQL's rows."""
    spans = spans_of([("kv.alloc", '{"kv.page_ids":[2,1]}'), ("kv.free", '{"kv.page_ids":[3]}')])
    twice = pa.concat_tables([spans, spans.slice(0, 1).set_column(
        spans.schema.get_field_index("attributes"), "attributes", pa.array(['{"kv.page_ids":[9]}']))])
    deriver = Deriver()
    try:
        split = Staged(twice, *(pa.table({}) for _ in range(3))).split_resources()[0]
        rows = keyed(deriver.derive(split)["kv_events"])
        assert [r["page_ids"] for r in rows.values()] == [[1, 2], [3]]
        once = keyed(deriver.derive(Staged(spans, *(pa.table({}) for _ in range(3))).split_resources()[0])["kv_events"])
        assert once == keyed(by_sql(spans))
    finally:
        deriver.close()


def test_long_page_lists_in_any_order() -> None:
    """Long lists sort by a radix sort in C: every byte of the ids in play (negative ids, ids past
    2^16 and 2^24, duplicates), in order, reversed and shuffled, alone and with page ranges."""
    rnd = random.Random(11)
    attrs: list[tuple[str, str | None]] = []
    for n, (lo, hi) in itertools.product((49, 64, 300, 5000), ((0, 200), (0, 70_000), (-2**31, 2**31 - 1),
                                                               (2**24 - 50, 2**24 + 50))):
        ids = [rnd.randint(lo, hi) for _ in range(n)]
        for order in (sorted(ids), sorted(ids, reverse=True), rnd.sample(ids, len(ids))):
            text = orjson.dumps(order).decode()
            attrs.append(("kv.alloc", f'{{"kv.page_ids":{text}}}'))
            if lo >= 0:
                attrs.append(("kv.free", f'{{"kv.page_ids":{text},"kv.page_ranges":[{lo},{lo + 60}]}}'))
    in_c, declined = assert_same_rows(spans_of(attrs))
    assert (in_c, declined) == (len(attrs), 0)


# ------------------------------------------------------------------ spec_steps (request roots)

ROOTS_SCHEMA = pa.schema([("trace_id", pa.string()), ("span_id", pa.string()), ("rid", pa.string()),
                          ("role", pa.string()), ("instance_id", pa.string()), ("host_name", pa.string()),
                          ("service_version", pa.string()), ("start_ns", pa.int64()), ("end_ns", pa.int64()),
                          ("attributes", pa.string())])


def spec_by_sql(roots: pa.Table) -> pa.Table:
    con = duckdb.connect(config={"threads": 1})
    con.register("batch_roots", roots)
    return con.sql(_sql("derive_spec_steps")).to_arrow_table()


def steps_in_order(table: pa.Table) -> pa.Table:
    return table.sort_by([("trace_id", "ascending"), ("span_id", "ascending"), ("step", "ascending")])


def assert_same_steps(roots: pa.Table) -> tuple[int, int]:
    """As assert_same_rows, for derive_spec_steps.sql: (rows derived in C, roots declined)."""
    got = kvfast.spec_steps(roots)
    assert got is not None
    rows, declined = got
    ref = spec_by_sql(roots)
    assert rows.schema == ref.schema == kvfast.SPEC_SCHEMA
    combined = steps_in_order(pa.concat_tables([rows, spec_by_sql(declined)]))
    expected = steps_in_order(ref)
    assert combined.num_rows == expected.num_rows
    if not combined.equals(expected):
        for i in range(expected.num_rows):
            assert combined.slice(i, 1).to_pylist() == expected.slice(i, 1).to_pylist(), i
    return rows.num_rows, declined.num_rows


def roots_of(attrs: list[str | None], starts: list[int | None] | None = None) -> pa.Table:
    n = len(attrs)
    return pa.table({
        "trace_id": [f"{i:032x}" for i in range(n)], "span_id": [f"{i + 1:016x}" for i in range(n)],
        "rid": [f"r{i}" for i in range(n)], "role": ["decode"] * n, "instance_id": [f"decode-{i % 3}" for i in range(n)],
        "host_name": ["h"] * n, "service_version": [None if i % 4 == 0 else "v2" for i in range(n)],
        "start_ns": starts if starts is not None else [1_000_000 + i for i in range(n)], "end_ns": [None] * n,
        "attributes": attrs,
    }, schema=ROOTS_SCHEMA)


def test_simulator_spec_steps_are_derived_in_c_row_for_row() -> None:
    from kvtrace.simulator.fastpath import write_spans

    with tempfile.TemporaryDirectory() as d:
        write_spans(Path(d), 6000, seed=9)
        chunk = b"".join(f.read_bytes() for f in sorted(Path(d).glob("*.otlp.jsonl")))
    tables = decode_json_chunk(chunk)
    assert tables is not None
    con = duckdb.connect(config={"threads": 1})
    con.register("new_spans", Staged.from_columnar(tables).spans)
    roots = con.sql(_sql("local_roots")).to_arrow_table()
    in_c, declined = assert_same_steps(roots)
    assert declined == 0 and in_c > 1000


ACCEPTED = ["[]", "[1]", "[0,2,3]", "[2147483647,-2147483648]", "[2147483648]", "[1.5]", '["1"]', "[1,null]",
            "null", '"[1,2]"', "3", "{}", "[[1]]"]
OFFSETS = ["[]", "[10]", "[10,20,30]", "[10,20,30,40,50]", "[-5,-9223372036854775000]", "[1.5]", '["10"]', "null",
           '"x"', "7", "[-1,9223372036854775807]"]


def test_every_spec_shape() -> None:
    attrs: list[str | None] = [None, "{}", '{"spec.accepted_per_step":[1],"spec.accepted_per_step":[2]}',
                               '{"spec.accepted_per_st\\u0065p":[1]}', '{"other":{"spec.accepted_per_step":[9]}}']
    starts: list[int | None] = [5] * len(attrs)
    for acc, off in itertools.product(ACCEPTED, OFFSETS):
        for start in (0, None, -1_000) if "9223372036854775807" in off else (0, 1_000, None, 700):
            attrs.append(f'{{"spec.accepted_per_step":{acc},"x":"y","spec.step_end_offsets_ns":{off}}}')
            starts.append(start)
        attrs.append(f'{{"spec.accepted_per_step":{acc}}}')
        starts.append(7)
    in_c, declined = assert_same_steps(roots_of(attrs, starts))
    assert in_c > 150 and declined > 100


def test_a_step_end_past_int64_is_left_to_the_sql() -> None:
    """start_ns + offset past int64: the SQL raises (as it did before this path), so C declines."""
    roots = roots_of(['{"spec.accepted_per_step":[1,2],"spec.step_end_offsets_ns":[1,9223372036854775807]}',
                      '{"spec.accepted_per_step":[1],"spec.step_end_offsets_ns":[1,9223372036854775807]}'], [10, 10])
    got = kvfast.spec_steps(roots)
    assert got is not None
    rows, declined = got
    assert declined.column("span_id").to_pylist() == [roots.column("span_id")[0].as_py()]
    assert rows.column("step_end_ns").to_pylist() == [11]  # the second root: offsets past its steps are not read
    with pytest.raises(duckdb.OutOfRangeException):
        spec_by_sql(declined)
