"""The C parser for OTLP JSON lines (ingest/jsonfast.py over ingest/_otlpfast.c) stores exactly what
the validating decoder (orjson + decode.add_json_traces, line by line) stores: identical staging
tables chunk by chunk, identical store tables file by file; it declines (None) whatever it cannot
reproduce, which the validating decoder then takes, and no byte string crashes it. Without the
extension (no C compiler at install) every chunk takes the validating decoder, with the same
staging tables."""

from __future__ import annotations

import base64
import math
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_otlp_builders import json_lines, pd_request_spans
from ingest_support import TRACE, assert_fast_and_validating_paths_agree, kv, line, span, validating

from kvtrace.ingest import jsonfast, protofast
from kvtrace.ingest.batches import _decoded_files, _FileStart, _Group
from kvtrace.ingest.sources import SourceFile

SAMPLE = Path(__file__).resolve().parents[1] / "sample_traces" / "mixed"


def assert_same_staging(chunk: bytes) -> None:
    fast = jsonfast.decode_json_chunk(chunk)
    assert fast is not None, "the C parser declined a chunk it should take"
    assert_equals_oracle(chunk, fast)


def assert_equals_oracle(chunk: bytes, fast: Any) -> None:
    spans, events, links, quarantine = validating(chunk)
    assert quarantine.num_rows == 0, quarantine.column("reason").to_pylist()
    assert fast[0].to_pylist() == spans.to_pylist()
    assert fast[1].to_pylist() == events.to_pylist()
    assert fast[2].to_pylist() == links.to_pylist()
    assert (fast[0].schema, fast[1].schema, fast[2].schema) == (spans.schema, events.schema, links.schema)


def test_the_extension_is_built() -> None:
    assert jsonfast.available()


def test_sdk_request_lines() -> None:
    assert_same_staging(json_lines(pd_request_spans(), per_line=3))
    assert_same_staging(json_lines(pd_request_spans(trace_bits=64), per_line=1))


def test_simulator_output() -> None:
    from kvtrace.simulator.fastpath import write_spans

    with tempfile.TemporaryDirectory() as d:
        write_spans(Path(d), 2000, seed=3)
        files = sorted(Path(d).glob("*.otlp.jsonl"))
        assert files
        for f in files:
            assert_same_staging(f.read_bytes())


DOUBLES = [0.25, 1.0, -0.0, 0.0, 1e-5, 1.5e-5, 1e-6, 1e-7, 123456.789, 1e15, 1e16, 1e300, 5e-324, 2.5e-3,
           1 / 3, 42.0, -1e22, 123456789012345.6, 1234567890123456.0, 0.1 + 0.2]


def test_every_value_shape() -> None:
    """Upper-case and 64-bit ids, enum names, missing optional fields, escapes, unicode, doubles of
    every magnitude, mixed and empty arrays, empty AnyValues, events, links, int rids, bytes,
    kvlists, nested arrays, non-canonical number text, escapes in names, a key after its value,
    unknown members, whitespace, CRLF, several resources and scopes a line."""
    attributes = [
        kv("rid", {"intValue": "0042"}),
        kv("s", {"stringValue": 'quote " backslash \\ newline \n tab \t bell \x07 nul \x00 del \x7f / é 漢 😀 \u2028'}),
        kv("he said", {"stringValue": ""}),
        kv('key "quoted"\n', {"boolValue": False}),
        kv("t", {"boolValue": True}),
        kv("neg", {"intValue": "-9223372036854775808"}),
        kv("max", {"intValue": "9223372036854775807"}),
        kv("minus.zero", {"intValue": "-0"}),
        kv("zeros", {"intValue": "-000017"}),
        kv("ints", {"arrayValue": {"values": [{"intValue": str(i)} for i in range(40)]}}),
        kv("mixed", {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "two"}, {"boolValue": True},
                                               {"doubleValue": 2.5}, {}, {"bytesValue": "AAE="},
                                               {"arrayValue": {"values": [{"arrayValue": {}}]}},
                                               {"kvlistValue": {"values": [kv("a", {"intValue": "1"})]}}]}}),
        kv("empty.array", {"arrayValue": {"values": []}}),
        kv("no.values", {"arrayValue": {}}),
        kv("empty", {}),
        kv("bytes", {"bytesValue": "AQID/w=="}),
        kv("kv", {"kvlistValue": {"values": [kv("x", {"kvlistValue": {"values": [kv("y", {"doubleValue": 1.5})]}}),
                                             kv("b", {"bytesValue": "YWI="}), {"key": "novalue"}]}}),
        kv("empty.kvlist", {"kvlistValue": {}}),
        *[kv(f"d{i}", {"doubleValue": d}) for i, d in enumerate(DOUBLES)],
        kv("d.int", {"doubleValue": 3}),
        kv("d.negzero.int", {"doubleValue": "@NEGZERO@"}),
        kv("d.text", {"doubleValue": "@DTEXT@"}),
        kv("ds", {"arrayValue": {"values": [{"doubleValue": d} for d in DOUBLES]}}),
        {"value": {"stringValue": "value first"}, "key": "late.key"},
        {"key": "extra", "value": {"intValue": "7"}, "note": [1, {"x": "y"}]},
    ]
    spans = [
        span("AAE19B7EC3C1B175", attributes, parentSpanId="EEE19B7EC3C1B173", name="na\\me \"é\" \u0001",
             events=[{"timeUnixNano": "5", "name": "ev", "attributes": [kv("e", {"intValue": "1"})]},
                     {"name": "no time"}, {}, {"name": "", "timeUnixNano": "0", "droppedAttributesCount": 2}],
             links=[{"traceId": "D269B633813FC60C", "spanId": "eee19b7ec3c1b173", "traceState": "x",
                     "attributes": [kv("l", {"stringValue": "x"})]}, {"traceId": TRACE, "spanId": "00000000000000a1"}],
             status={"code": "STATUS_CODE_ERROR", "message": "boom\t"}, kind="SPAN_KIND_SERVER"),
        {"traceId": "D269B633813FC60C", "spanId": "aae19b7ec3c1b176"},
        span("aae19b7ec3c1b177", [kv("rid", {"stringValue": "r-\"1\"\n"})], parentSpanId="", status={"message": ""},
             flags=256, traceState="a=b", droppedAttributesCount=0, droppedEventsCount=1, droppedLinksCount=2,
             kind=-5, startTimeUnixNano="0009223372036854775807"),
        span("aae19b7ec3c1b17a", [kv("rid", {})], status={"code": 2}, kind=127, unknownMember={"a": [1.5e300, -2]}),
        span("aae19b7ec3c1b17b", [kv("rid", {"stringValue": "cmlk"})], status={}),
    ]
    resource = [kv("service.name", {"stringValue": "svc"}), kv("host.name", {"stringValue": "h"}),
                kv("service.version", {"intValue": "3"}), kv("z", {"arrayValue": {"values": [{"intValue": "1"}]}})]
    chunk = line(*spans, resource=resource)
    chunk = chunk.replace(b'"@NEGZERO@"', b"-0").replace(b'"@DTEXT@"', b"2.50e-3")
    chunk += b"\n  \r\n\x0b\x0c\n" + line(span("aae19b7ec3c1b178", []))  # blank lines; a line without a resource
    chunk += b"{}\n" + b'{"resourceSpans":[]}\r\n' + b' { "resourceSpans" : [ ] , "x" : 1 } \n'
    chunk += line(span("aae19b7ec3c1b179", [kv("u", {"stringValue": "@"})])).replace(b"@", b"\\u00e9\\ud83d\\ude00\\/")
    two = {"resourceSpans": [
        {"resource": {"attributes": resource, "droppedAttributesCount": 1}, "schemaUrl": "u",
         "scopeSpans": [{"scope": {"name": "", "attributes": [kv("k", {"stringValue": "v"})]},
                         "spans": [span("aae19b7ec3c1b17c", [])]},
                        {"spans": [span("aae19b7ec3c1b17d", [])], "schemaUrl": "s"},
                        {"scope": {"name": "a\\\"b", "version": "v\u00e9"}, "spans": []}]},
        {"scopeSpans": [{"spans": [span("aae19b7ec3c1b17e", [])], "scope": {"version": "2"}}], "resource": {}},
        {"resource": {"attributes": []}},
    ]}
    chunk += orjson.dumps(two, option=orjson.OPT_INDENT_2).replace(b"\n", b" ") + b"\n"
    chunk += line(span("aae19b7ec3c1b17f", [])).rstrip(b"\n")  # no final newline
    assert_same_staging(chunk)
    assert_same_staging(b"")
    assert_same_staging(b"\n\n")


def test_bytes_kvlist_and_nested_array_values_alone() -> None:
    """bytes, an empty kvlist and an array of an empty array, each a span's only attribute."""
    for value in ({"bytesValue": "AQID"}, {"kvlistValue": {"values": []}},
                  {"arrayValue": {"values": [{"arrayValue": {}}]}}):
        assert_same_staging(line(span("aae19b7ec3c1b175", [kv("k", value)])))


def _bad(**fields: Any) -> bytes:
    return line(span("aae19b7ec3c1b175", [], **fields))


def _attr(value: Any, key: str = "k") -> bytes:
    return line(span("aae19b7ec3c1b175", [kv(key, value)]))


GOOD = line(span("aae19b7ec3c1b175", [kv("k", {"doubleValue": 1.5})]))


@pytest.mark.parametrize(
    "chunk",
    [
        pytest.param(GOOD.replace(TRACE.encode(), b"W4vv95gDgQPSabYzgT/GDA=="), id="base64-id"),
        pytest.param(_attr({"stringValue": None}), id="json-null"),
        pytest.param(line(span("aae19b7ec3c1b175", [kv("k", {"intValue": "1"}), kv("k", {"intValue": "2"})])),
                     id="duplicate-key"),
        pytest.param(_attr({"kvlistValue": {"values": [kv("a", {}), kv("a", {})]}}), id="duplicate-kvlist-key"),
        pytest.param(GOOD.replace(b'"name":"s"', b'"name":"s","name":"t"'), id="duplicate-member"),
        pytest.param(_attr({"intValue": "1", "stringValue": "1"}), id="two-values"),
        pytest.param(_attr({"intValue": "12x"}), id="bad-int"),
        pytest.param(_attr({"intValue": "+12"}), id="plus-int"),
        pytest.param(_attr({"intValue": "9223372036854775808"}), id="int-overflow"),
        pytest.param(_attr({"intValue": 12}), id="numeric-int"),
        pytest.param(_attr({"doubleValue": "1.5"}), id="string-double"),
        pytest.param(_attr({"string_value": "x"}), id="snake-case-value"),
        pytest.param(_attr({"unknownValue": "x"}), id="unknown-value-type"),
        pytest.param(_attr({"boolValue": 1}), id="bool-not-bool"),
        pytest.param(line(span("aae19b7ec3c1b175", [{"value": {}}])), id="no-key"),
        pytest.param(line(span("aae19b7ec3c1b175", [{"key": 1, "value": {}}])), id="numeric-key"),
        pytest.param(_bad(startTimeUnixNano=1), id="numeric-time"),
        pytest.param(_bad(startTimeUnixNano="99999999999999999999"), id="time-overflow"),
        pytest.param(_bad(startTimeUnixNano="9223372036854775808"), id="time-past-int64"),
        pytest.param(_bad(endTimeUnixNano="-1"), id="negative-time"),
        pytest.param(_bad(endTimeUnixNano=""), id="empty-time"),
        pytest.param(line(span("0000000000000000", [])), id="zero-span-id"),
        pytest.param(GOOD.replace(TRACE.encode(), b"0" * 32), id="zero-trace-id"),
        pytest.param(line(span("aae19b7ec3c1b17", [])), id="short-span-id"),
        pytest.param(line(span("aae19b7ec3c1b17g", [])), id="non-hex-span-id"),
        pytest.param(_bad(parentSpanId="00000000000000000"), id="bad-parent"),
        pytest.param(line({"spanId": "aae19b7ec3c1b175"}), id="no-trace-id"),
        pytest.param(_bad(kind=1.0), id="kind-float"),
        pytest.param(_bad(kind="SPAN_KIND_BOGUS"), id="kind-bad-name"),
        pytest.param(_bad(status={"code": "STATUS_CODE_OK", "message": 3}), id="status-message-number"),
        pytest.param(_bad(status=[]), id="status-list"),
        pytest.param(_bad(name=3), id="name-number"),
        pytest.param(_bad(events=[{"name": 1}]), id="event-name-number"),
        pytest.param(_bad(events={}), id="events-object"),
        pytest.param(GOOD.replace(b"\n", b" {}\n"), id="two-objects-a-line"),
        pytest.param(b"[]\n", id="top-level-array"),
        pytest.param(b'{"other":1}\n', id="no-resource-spans"),
        pytest.param(GOOD.replace(b'"s"', b'"s\xff"'), id="invalid-utf8"),
        pytest.param(GOOD.replace(b"1.5", b"NaN"), id="nan"),
        pytest.param(GOOD.replace(b"1.5", b"-Infinity"), id="infinity"),
        pytest.param(GOOD.replace(b"1.5", b"1e400"), id="double-overflow"),
        pytest.param(GOOD.replace(b"1.5", b"1.5e-400"), id="double-underflow"),
        pytest.param(GOOD.replace(b"1.5", b"01.5"), id="leading-zero"),
        pytest.param(GOOD.replace(b"1.5", b"1."), id="bare-point"),
        pytest.param(_attr({"stringValue": "@"}).replace(b"@", b"\\ud800"), id="lone-surrogate"),
        pytest.param(_attr({"stringValue": "@"}).replace(b"@", b"\\udc00x"), id="lone-low-surrogate"),
        pytest.param(_attr({"stringValue": "@"}).replace(b"@", b"\\x41"), id="bad-escape"),
        pytest.param(_attr({"stringValue": "@"}).replace(b"@", b"\x01"), id="raw-control-byte"),
        pytest.param(GOOD.replace(b"traceId", b"trace_id"), id="snake-case"),
        pytest.param(GOOD.replace(b'"traceId"', b'"trace\\u0049d"'), id="escaped-key"),
        pytest.param(GOOD.replace(b"scopeSpans", b"instrumentationLibrarySpans"), id="instrumentation-library-spans"),
        pytest.param(GOOD.replace(b'"scope"', b'"instrumentationLibrary"'), id="instrumentation-library"),
        pytest.param(b"\xef\xbb\xbf" + GOOD, id="bom"),
        pytest.param(_attr({"doubleValue": 0.0}, key="rid"), id="rid-double"),
        pytest.param(_attr({"boolValue": True}, key="rid"), id="rid-bool"),
        pytest.param(_attr({"arrayValue": {}}, key="rid"), id="rid-array"),
        pytest.param(GOOD.replace(b"}]}]}", b"}]}]"), id="truncated"),
        pytest.param(GOOD.replace(b',"attributes"', b',,"attributes"'), id="double-comma"),
        pytest.param(GOOD.replace(b"]}]}]}", b",]}]}]}"), id="trailing-comma"),
        pytest.param(GOOD.replace(b'{"resourceSpans"', b'\x0c{"resourceSpans"'), id="form-feed-before-object"),
        pytest.param(_attr({"stringValue": "x"}).replace(b'{"stringValue":"x"}', b'{"arrayValue":' * 60 + b"{}"
                                                         + b"}" * 60), id="too-deep"),
        pytest.param(line(span("aae19b7ec3c1b175", [])).replace(b'"attributes":[]', b'"attributes":[],"x":{"y":1,'),
                     id="unclosed-unknown-member"),
    ],
)
def test_declines(chunk: bytes) -> None:
    assert jsonfast.decode_json_chunk(chunk) is None


SCALAR = st.one_of(
    st.text(max_size=12).map(lambda s: {"stringValue": s}),
    st.binary(max_size=8).map(lambda b: {"bytesValue": base64.b64encode(b).decode()}),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: {"intValue": str(i)}),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda d: {"doubleValue": d}),
    st.integers(-(10**18), 10**18).map(lambda i: {"doubleValue": i}),
    st.booleans().map(lambda b: {"boolValue": b}),
    st.just({}),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda vs: {"arrayValue": {"values": vs}}),
        st.dictionaries(st.text(max_size=6), inner, max_size=4).map(
            lambda d: {"kvlistValue": {"values": [kv(k, v) for k, v in d.items()]}}
        ),
    ),
    max_leaves=8,
)
RID = st.one_of(st.text(max_size=8).map(lambda s: {"stringValue": s}),
                st.integers(-(2**63), 2**63 - 1).map(lambda i: {"intValue": str(i)}), st.just({}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "rid"), VALUE, max_size=6),
                          st.none() | RID, st.text(max_size=6)), min_size=1, max_size=4))
def test_random_attribute_values(spans: list[tuple[dict[str, Any], dict[str, Any] | None, str]]) -> None:
    out = []
    for i, (attrs, rid, name) in enumerate(spans):
        kvs = [kv(k, v) for k, v in attrs.items()] + ([kv("rid", rid)] if rid is not None else [])
        out.append(span(f"{i + 1:016x}", kvs, name=name, events=[{"name": name, "attributes": kvs}]))
    assert_same_staging(line(*out))


def _valid_chunk() -> bytes:
    spans = [
        span("aae19b7ec3c1b175", [kv("rid", {"stringValue": "r1"}), kv("n", {"intValue": "12"}),
                                  kv("d", {"doubleValue": 0.5}), kv("a", {"arrayValue": {"values": [{"intValue": "1"}]}}),
                                  kv("e", {"stringValue": "\u00e9\n"}), kv("kv", {"kvlistValue": {"values": []}})],
             parentSpanId="aae19b7ec3c1b174", events=[{"timeUnixNano": "3", "name": "ev"}],
             links=[{"traceId": TRACE, "spanId": "aae19b7ec3c1b173"}], status={"code": 1, "message": "m"}),
    ]
    return line(*spans, resource=[kv("service.name", {"stringValue": "svc"})]) + b"{}\n" + line(
        span("aae19b7ec3c1b176", [kv("x", {"boolValue": True})])
    )


VALID = _valid_chunk()


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3) | st.sampled_from([b'"', b"\\", b"{", b"]", b",", b"0"]))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[at:]
        elif op == "set" and data:
            data[at] = draw(st.sampled_from(b'0aF"\\{}[],:-.eE \n\x00\xff'))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_corrupted_chunks_decline_or_match(chunk: bytes) -> None:
    """Flipped, inserted, deleted or truncated bytes: the C parser declines or gives exactly the
    validating decoder's tables (with nothing quarantined); it never crashes."""
    fast = jsonfast.decode_json_chunk(chunk)
    if fast is not None:
        assert_equals_oracle(chunk, fast)


def test_doubles_written_as_orjson_writes_them() -> None:
    """Number text copied as is where it is already orjson's, formatted otherwise."""
    values = [*DOUBLES, 2.0**-1074, 2.0**1023, 9007199254740993.0, 1e-4, 0.5e-5, 99999.99999, math.pi]
    chunk = line(span("aae19b7ec3c1b175", [kv(f"d{i}", {"doubleValue": d}) for i, d in enumerate(values)]))
    for text in (b"1.50", b"1E2", b"1e+2", b"0.00001", b"0.000001", b"-0.0", b"10.0", b"1234567890123456.7"):
        chunk += line(span("aae19b7ec3c1b176", [kv("d", {"doubleValue": 1.25})])).replace(b"1.25", text)
    assert_same_staging(chunk)


def test_fast_and_validating_ingest_store_identical_tables(tmp_path: Path) -> None:
    """Whole store tables (raw and normalised) after ingesting the same files with and without the
    fast path, including a file whose middle chunk it must decline (a bad line, which is
    quarantined by the validating decoder either way)."""
    good = json_lines(pd_request_spans(), per_line=2).splitlines(keepends=True)
    other = json_lines(pd_request_spans(seed=2, rid="0f0e0d0c0b0a0908"), per_line=1).splitlines(keepends=True)
    (tmp_path / "a.jsonl").write_bytes(b"".join(good))
    (tmp_path / "b.jsonl").write_bytes(b"".join(other[:5]) + b'{"resourceSpans": [\n' + b"".join(other[5:]))
    assert_fast_and_validating_paths_agree([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path, 28, 1)


def staged_sample(batch_spans: int) -> dict[str, list[tuple[Any, ...]]]:
    """sample_traces/mixed through ingest's decode entry (batches._decoded_files: the C decoder,
    then the validating decoder), every staged row in order with the file it came from. The
    batch boundaries differ between the two decoders (the validating one cuts at batch_spans
    spans), so the per-batch numbering (spans' seq, events' and links' span_seq) is left out."""
    files = sorted(SAMPLE.glob("*.otlp.jsonl"))
    todo = [SourceFile(str(f), str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    rows: dict[str, list[tuple[Any, ...]]] = {"spans": [], "events": [], "links": [], "quarantine": []}
    index = -1
    for item in _decoded_files(todo, batch_spans, columnar=True, workers=1):
        if isinstance(item, _FileStart):
            index = item.index
        staged = item.staged if isinstance(item, _Group) else item[0] if isinstance(item, tuple) else None
        if staged is None:
            continue
        n_spans, n_quarantined = staged.spans.num_rows, staged.quarantine.num_rows
        span_files = staged.span_files if staged.span_files is not None else [index] * n_spans
        quarantine_files = staged.quarantine_files if staged.quarantine_files is not None else [index] * n_quarantined
        for name, table, owners in (("spans", staged.spans, span_files), ("events", staged.events, None),
                                    ("links", staged.links, None), ("quarantine", staged.quarantine, quarantine_files)):
            kept = table.drop_columns([c for c in ("seq", "span_seq") if name != "quarantine" and c in table.schema.names])
            values = kept.to_pylist()
            rows[name].extend((int(owners[i]) if owners is not None else None, *v.values()) for i, v in enumerate(values))
    return rows


@pytest.mark.parametrize("batch_spans", [pytest.param(1000, id="streamed-and-alone"), pytest.param(2000, id="grouped")])
def test_without_the_extension_the_validating_decoder_stages_the_same(
    batch_spans: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine without a C compiler installs kvtrace without ingest._otlpfast: the decode entry
    then hands every chunk to the validating decoder, which stages the very rows the C decoder
    stages. batch_spans 1000 streams prefill-0 (1.6 MB) in chunks and reads the others alone;
    2000 reads them whole, two files to a C decoder call."""
    assert all(jsonfast.decode_json_chunk(f.read_bytes()) is not None for f in SAMPLE.glob("*.otlp.jsonl"))
    with_c = staged_sample(batch_spans)
    monkeypatch.setattr(jsonfast, "_otlpfast", None)
    monkeypatch.setattr(protofast, "_otlpfast", None)
    assert not jsonfast.available() and not protofast.available()
    without = staged_sample(batch_spans)
    assert (len(with_c["spans"]), len(with_c["links"]), len(with_c["quarantine"])) == (4839, 576, 0)
    assert len({owner for owner, *_ in with_c["spans"]}) == 4
    for name in with_c:
        assert without[name] == with_c[name], name
