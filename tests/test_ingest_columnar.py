"""The columnar fast path for OTLP JSON lines (ingest/columnar.py) stores exactly what the
validating decoder stores: identical staging tables chunk by chunk, identical store tables file by
file; and it hands every chunk it cannot reproduce exactly to the validating decoder."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_otlp_builders import json_lines, pd_request_spans
from ingest_support import TRACE, assert_fast_and_validating_paths_agree, kv, line, span, validating

from kvtrace.ingest.columnar import decode_json_lines


def assert_same_staging(chunk: bytes, pyarrow_too: bool = True, pyarrow_may_decline: bool = False) -> None:
    """Both fast paths (the C parser tried first, and the pyarrow path alone) take the chunk and
    give the validating decoder's tables. `pyarrow_may_decline`: the pyarrow path may hand the
    chunk on (it declines any chunk holding the bytes `null`, say a key "null"), but what it
    takes must be exact."""
    spans, events, links, quarantine = validating(chunk)
    assert quarantine.num_rows == 0
    for native in (True, False) if pyarrow_too else (True,):
        fast = decode_json_lines(chunk, native=native)
        if fast is None and not native and pyarrow_may_decline:
            continue
        assert fast is not None, f"the fast path declined a chunk it should take (native={native})"
        assert fast[0].to_pylist() == spans.to_pylist()
        assert fast[1].to_pylist() == events.to_pylist()
        assert fast[2].to_pylist() == links.to_pylist()
        assert (fast[0].schema, fast[1].schema, fast[2].schema) == (spans.schema, events.schema, links.schema)


def test_sdk_request_lines_take_the_fast_path() -> None:
    assert_same_staging(json_lines(pd_request_spans(), per_line=3))
    assert_same_staging(json_lines(pd_request_spans(trace_bits=64), per_line=1))


def test_every_value_shape_the_fast_path_takes() -> None:
    """Upper-case and 64-bit ids, enum names, missing optional fields, escapes, unicode, doubles of
    every magnitude, mixed and empty arrays, empty AnyValues, events, links, int rids."""
    doubles = [0.25, 1.0, -0.0, 1e-7, 123456.789, 1e15, 1e16, 1e300, 5e-324, 2.5e-3, 1 / 3, 42.0]
    attributes = [
        kv("rid", {"intValue": "0042"}),
        kv("s", {"stringValue": 'quote " backslash \\ newline \n tab \t bell \x07 nul \x00 / é 漢 😀'}),
        kv("he said", {"stringValue": ""}),
        kv('key "quoted"\n', {"boolValue": False}),
        kv("neg", {"intValue": "-9223372036854775808"}),
        kv("max", {"intValue": "9223372036854775807"}),
        kv("ints", {"arrayValue": {"values": [{"intValue": str(i)} for i in range(40)]}}),
        kv("mixed", {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "two"}, {"boolValue": True},
                                               {"doubleValue": 2.5}, {}]}}),
        kv("empty.array", {"arrayValue": {"values": []}}),
        kv("no.values", {"arrayValue": {}}),
        kv("empty", {}),
        *[kv(f"d{i}", {"doubleValue": d}) for i, d in enumerate(doubles)],
        kv("d.int", {"doubleValue": 3}),
        kv("ds", {"arrayValue": {"values": [{"doubleValue": d} for d in doubles]}}),
    ]
    spans = [
        span("AAE19B7EC3C1B175", attributes, parentSpanId="EEE19B7EC3C1B173",
             events=[{"timeUnixNano": "5", "name": "ev", "attributes": [kv("e", {"intValue": "1"})]},
                     {"name": "no time"}, {}],
             links=[{"traceId": "D269B633813FC60C", "spanId": "eee19b7ec3c1b173",
                     "attributes": [kv("l", {"stringValue": "x"})]}, {"traceId": TRACE, "spanId": "00000000000000a1"}],
             status={"code": "STATUS_CODE_ERROR", "message": "boom"}, kind="SPAN_KIND_SERVER"),
        {"traceId": "D269B633813FC60C", "spanId": "aae19b7ec3c1b176"},
        span("aae19b7ec3c1b177", [kv("rid", {"stringValue": "r-1"})], parentSpanId="", status={"message": ""},
             flags=256, traceState="a=b", droppedAttributesCount=0),
    ]
    chunk = line(*spans, resource=[kv("service.name", {"stringValue": "svc"}), kv("host.name", {"stringValue": "h"})])
    chunk += b"\n  \r\n" + line(span("aae19b7ec3c1b178", []))  # blank lines; a line without a resource
    chunk += b"{}\n" + b'{"resourceSpans":[]}\n'
    chunk += line(span("aae19b7ec3c1b179", [kv("u", {"stringValue": "@"})])).replace(b"@", b"\\u00e9\\ud83d\\ude00")
    assert_same_staging(chunk)


@pytest.mark.parametrize(
    "chunk",
    [
        pytest.param(line(span("AAE19B7EC3C1B175", [])).replace(TRACE.encode(), b"W4vv95gDgQPSabYzgT/GDA=="), id="base64-id"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"stringValue": None})])), id="json-null"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"intValue": "1"}), kv("k", {"intValue": "2"})])), id="duplicate-key"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"intValue": "1", "stringValue": "1"})])), id="two-values"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"intValue": "12x"})])), id="bad-int"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"intValue": 12})])), id="numeric-int"),
        pytest.param(line(span("aae19b7ec3c1b175", [], startTimeUnixNano=1)), id="numeric-time"),
        pytest.param(line(span("aae19b7ec3c1b175", [], startTimeUnixNano="99999999999999999999")), id="time-overflow"),
        pytest.param(line(span("0000000000000000", [])), id="zero-span-id"),
        pytest.param(line(span("aae19b7ec3c1b17", [])), id="short-span-id"),
        pytest.param(line(span("aae19b7ec3c1b175", [])).replace(b"\n", b" {}\n"), id="two-objects-a-line"),
        pytest.param(line(span("aae19b7ec3c1b175", [])).replace(b'"s"', b'"s\xff"'), id="invalid-utf8"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"doubleValue": 1.0})])).replace(b"1.0", b"NaN"), id="nan"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"stringValue": "@"})])).replace(b"@", b"\\ud800"), id="lone-surrogate"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"stringValue": "@"})])).replace(b"@", b"\\udc00x"), id="lone-low-surrogate"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"doubleValue": 1.0})])).replace(b"1.0", b"-Infinity"), id="infinity"),
        pytest.param(line(span("aae19b7ec3c1b175", [])).replace(b"traceId", b"trace_id"), id="snake-case"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("rid", {"doubleValue": 0.0})])), id="rid-double"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("rid", {"boolValue": True})])), id="rid-bool"),
        pytest.param(line(span("aae19b7ec3c1b175", [])).replace(b"}]}]}", b"}]}]"), id="truncated"),
    ],
)
def test_fast_path_declines_what_it_cannot_reproduce(chunk: bytes) -> None:
    assert decode_json_lines(chunk) is None
    assert decode_json_lines(chunk, native=False) is None


# Declined by the pyarrow path, taken exactly by the C parser tried before it (ingest/jsonfast.py).
@pytest.mark.parametrize(
    "chunk",
    [
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"bytesValue": "AQID"})])), id="bytes"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"kvlistValue": {"values": []}})])), id="kvlist"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"arrayValue": {"values": [{"arrayValue": {}}]}})])), id="nested-array"),
    ],
)
def test_values_only_the_c_parser_takes_are_exact(chunk: bytes) -> None:
    assert_same_staging(chunk, pyarrow_too=False)
    assert decode_json_lines(chunk, native=False) is None


SCALAR = st.one_of(
    st.text(max_size=12).map(lambda s: {"stringValue": s}),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: {"intValue": str(i)}),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda d: {"doubleValue": d}),
    st.booleans().map(lambda b: {"boolValue": b}),
    st.just({}),
)
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=6).map(lambda vs: {"arrayValue": {"values": vs}}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# `rid` is excluded: a rid that is a double, bool or array is a decline case, tested above.
@given(st.lists(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "rid"), VALUE, max_size=6),
                min_size=1, max_size=5))
def test_random_attribute_values_give_identical_staging(attribute_sets: list[dict[str, dict[str, Any]]]) -> None:
    spans = [span(f"{i + 1:016x}", [kv(k, v) for k, v in attrs.items()]) for i, attrs in enumerate(attribute_sets)]
    assert_same_staging(line(*spans), pyarrow_may_decline=True)


def test_fast_and_validating_ingest_store_identical_tables(tmp_path: Path) -> None:
    """Whole store tables (raw and normalised) after ingesting the same files with and without the
    columnar fast path, including a file whose middle chunk it must decline (a bad line, which is
    quarantined by the validating decoder either way)."""
    good = json_lines(pd_request_spans(), per_line=2).splitlines(keepends=True)
    other = json_lines(pd_request_spans(seed=2, rid="0f0e0d0c0b0a0908"), per_line=1).splitlines(keepends=True)
    (tmp_path / "a.jsonl").write_bytes(b"".join(good))
    (tmp_path / "b.jsonl").write_bytes(b"".join(other[:5]) + b'{"resourceSpans": [\n' + b"".join(other[5:]))
    assert_fast_and_validating_paths_agree([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path, 28, 1)


def test_simulator_output_takes_the_fast_path() -> None:
    from kvtrace.simulator.fastpath import write_spans

    with tempfile.TemporaryDirectory() as d:
        write_spans(Path(d), 3000, seed=3)
        for f in sorted(Path(d).glob("*.otlp.jsonl")):
            data = f.read_bytes()
            assert_same_staging(data)
            assert io.BytesIO(data).readline().startswith(b'{"resourceSpans"')
