"""Ingest under careless and hostile input (issue 15): a directory of thousands of one-span files,
a JSON line or protobuf frame larger than memory should hold, files of zeros or random bytes,
symbolic links out of the input tree, terminal escapes in values and file names, attribute values
nested deeper than upb parses. Each test asserts what a user relies on: every span stored once,
memory and time bounded, and every file that gives nothing reported as such."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from ingest_otlp_builders import delimited_protobuf, json_lines, pd_request_spans, to_request
from ingest_support import query, snapshot

from kvtrace.app.commands.ingest import ingest_command, quarantine_command
from kvtrace.ingest import ingest_paths, ingest_payload, open_store
from kvtrace.ingest.decode import MAX_ATTRIBUTE_DEPTH, cut_marker
from kvtrace.ingest.receiver.batch import check_protobuf
from kvtrace.ingest.sources import LineChunk, Record, iter_json_units

KVTRACE = str(Path(sys.executable).with_name("kvtrace"))


@pytest.fixture(scope="module")
def one_span_lines() -> list[bytes]:
    """700 spans (50 PD requests), one OTLP JSON line each: one line, one file."""
    spans = [s for r in range(50) for s in pd_request_spans(seed=r + 1, rid=f"{r + 1:016x}")]
    return json_lines(spans, per_line=1).splitlines(keepends=True)


def _write_files(d: Path, lines: list[bytes]) -> None:
    d.mkdir()
    for i, line in enumerate(lines):
        (d / f"part-{i:05d}.otlp.jsonl").write_bytes(line)


def _transactions(db: Path) -> list[tuple[int, int]]:
    """(files, bytes) of each transaction that committed ledger rows, in order (DuckDB's now() is
    the transaction's start)."""
    return [(int(n), int(b)) for n, b in query(
        db, "SELECT count(*), sum(size_bytes) FROM ingested_files GROUP BY ingested_at ORDER BY ingested_at")]


# ------------------------------------------------------------------------------- small files


def test_a_directory_of_one_span_files_ingests_like_one_file(tmp_path: Path, one_span_lines: list[bytes]) -> None:
    """700 one-span files store exactly what one file of the same lines stores, in about its
    time: batched across files (at ~13 files/s before, this took about a minute)."""
    _write_files(tmp_path / "files", one_span_lines)
    (tmp_path / "all.otlp.jsonl").write_bytes(b"".join(one_span_lines))
    t0 = time.perf_counter()
    one = ingest_paths([tmp_path / "all.otlp.jsonl"], tmp_path / "one.duckdb", progress=False)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = ingest_paths([tmp_path / "files"], tmp_path / "many.duckdb", progress=False)
    t_many = time.perf_counter() - t0
    assert (many.files_ingested, many.spans_new, many.quarantined) == (700, 700, 0)
    assert one.spans_new == 700
    assert snapshot(tmp_path / "many.duckdb") == snapshot(tmp_path / "one.duckdb")
    assert query(tmp_path / "many.duckdb", "SELECT count(*), sum(spans_read), sum(spans_new) FROM ingested_files") \
        == [(700, 700, 700)]
    assert t_many < 3 * t_one + 10, (t_many, t_one)
    # idempotent: a re-run reads nothing and adds nothing
    again = ingest_paths([tmp_path / "files"], tmp_path / "many.duckdb", progress=False)
    assert (again.files_skipped, again.files_ingested, again.spans_new) == (700, 0, 0)


@pytest.mark.slow
def test_small_files_of_every_format_store_what_they_store_one_by_one(tmp_path: Path) -> None:
    """Small files batched together (one C decoder call for a run of files, halved around a file
    it declines) store exactly what each file read alone as a stream stores: JSON lines, a
    pretty-printed document, protobuf messages with and without a length prefix, gzip, a file
    with a corrupt line, an empty file; quarantine rows (file, line, offset) included."""
    import gzip

    d = tmp_path / "files"
    d.mkdir()
    for r in range(4):
        spans = pd_request_spans(seed=100 + r, rid=f"{r + 7:016x}")
        lines = json_lines(spans, per_line=3)
        (d / f"{r}-a.otlp.jsonl").write_bytes(lines)
        (d / f"{r}-b.json").write_bytes(orjson.dumps(orjson.loads(lines.splitlines()[0]), option=orjson.OPT_INDENT_2))
        (d / f"{r}-c.otlp.pb").write_bytes(to_request(spans[3:6]).SerializeToString())
        (d / f"{r}-d.otlp.pb").write_bytes(delimited_protobuf(spans[6:10], per_message=2))
        (d / f"{r}-e.jsonl.gz").write_bytes(gzip.compress(json_lines(spans[10:], per_line=1)))
        if r == 2:
            bad = lines.splitlines(keepends=True)
            bad.insert(2, b'{"resourceSpans": [ truncated\n')
            (d / f"{r}-f.otlp.jsonl").write_bytes(b"".join(bad))
            (d / f"{r}-g.otlp.jsonl").touch()
    stores = {}
    for name, kwargs in (("batched", {}), ("validating", {"columnar": False}), ("one by one", {"commit_files": 1}),
                         ("streamed", {"batch_spans": 1, "commit_files": 1})):
        db = tmp_path / f"{name}.duckdb"
        summary = ingest_paths([d], db, progress=False, **kwargs)  # type: ignore[arg-type]
        assert (summary.files_ingested, summary.quarantined) == (22, 1), name
        stores[name] = (snapshot(db), query(db, "SELECT source, line, byte_offset, reason, raw_bytes FROM quarantine"),
                        query(db, "SELECT path, format, spans_read, spans_new, quarantined FROM ingested_files ORDER BY 1"),
                        sorted((Path(f.path).name, f.note) for f in summary.files))
    assert stores["batched"] == stores["validating"] == stores["one by one"] == stores["streamed"]


def test_commits_are_bounded_by_files_and_by_bytes(tmp_path: Path, one_span_lines: list[bytes]) -> None:
    """A transaction of whole files commits once it holds --commit-files files or --commit-mb
    bytes (as it does at --commit-spans spans), small files batched together included: a crash
    redoes at most about that much. (Before, 20,000 small files were one transaction that ran
    DuckDB out of memory and rolled back all of them.)"""
    lines = one_span_lines[:250]
    _write_files(tmp_path / "files", lines)
    by_files = tmp_path / "by_files.duckdb"
    summary = ingest_paths([tmp_path / "files"], by_files, progress=False, commit_files=100)
    assert summary.spans_new == 250
    assert [n for n, _ in _transactions(by_files)] == [100, 100, 50]
    by_bytes = tmp_path / "by_bytes.duckdb"
    limit = sum(len(x) for x in lines[:40])
    summary = ingest_paths([tmp_path / "files"], by_bytes, progress=False, commit_bytes=limit)
    assert summary.spans_new == 250
    sizes = [b for _, b in _transactions(by_bytes)]
    assert len(sizes) >= 3 and all(limit <= b <= 2 * limit for b in sizes[:-1]) and sizes[-1] <= 2 * limit, sizes
    assert snapshot(by_bytes) == snapshot(by_files)


# --------------------------------------------------------------------------- records too big


def test_a_nul_tail_is_quarantined_by_offset_in_bounded_memory(tmp_path: Path) -> None:
    """A crash artifact: JSON lines, then 1 GiB of NUL bytes and no newline (sparse). The good
    lines are stored, the tail is one quarantine row at its line and offset, and the process
    never holds it (it used to peak at about three times the tail). The bound leaves room for
    what the reader, the decode pool's queue and the runtime hold on a loaded box (800 MB was
    seen in a full-suite run next to other work, ~300 MB alone), and stays under one copy of the tail."""
    good = json_lines(pd_request_spans(), per_line=2)
    f = tmp_path / "crashed.otlp.jsonl"
    f.write_bytes(good)
    tail = 1 << 30
    os.truncate(f, len(good) + tail)
    db = tmp_path / "s.duckdb"
    with open(tmp_path / "out.txt", "wb") as out:
        proc = subprocess.Popen([KVTRACE, "ingest", str(f), "--db", str(db), "--max-record-mb", "1",
                                 "--batch-spans", "1000", "--no-progress"], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / "out.txt").read_text()
    peak_mb = usage.ru_maxrss / 1024
    assert peak_mb < tail / (1 << 20), peak_mb  # under one copy of the tail, runtime and decode queue included
    assert query(db, "SELECT count(*) FROM spans") == [(14,)]
    ((line, offset, raw_bytes, raw, reason),) = query(
        db, "SELECT line, byte_offset, raw_bytes, raw, reason FROM quarantine")
    assert (line, offset, raw_bytes) == (good.count(b"\n") + 1, len(good), tail)
    assert raw == bytes(len(raw)) and 0 < len(raw) <= 4096
    assert "over the 1,048,576-byte record limit" in reason
    assert query(db, "SELECT spans_read, quarantined FROM ingested_files") == [(14, 1)]


def test_a_protobuf_frame_over_the_limit_is_quarantined_and_the_rest_stored(tmp_path: Path) -> None:
    """A ResourceSpans frame larger than the record limit is skipped in place (its offset, first
    bytes and length quarantined); the messages before and after it are stored."""
    spans = pd_request_spans()
    before = delimited_protobuf(spans[:4], per_message=4)
    request = to_request(spans[4:9])
    request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="blob").value.string_value = "x" * (3 << 20)
    message = request.SerializeToString()
    big = _varint(len(message)) + message
    after = delimited_protobuf(spans[9:], per_message=5)
    f = tmp_path / "stream.otlp.pb"
    f.write_bytes(before + big + after)
    db = tmp_path / "s.duckdb"
    summary = ingest_paths([f], db, progress=False, max_record_bytes=1 << 20)
    stored = {sid for (sid,) in query(db, "SELECT span_id FROM spans")}
    assert stored == {format(s.context.span_id, "016x") for s in spans[:4] + spans[9:]}
    assert summary.quarantined == len(request.resource_spans)
    ((offset, raw_bytes, reason),) = query(db, "SELECT byte_offset, raw_bytes, reason FROM quarantine ORDER BY 1")[:1]
    frame = request.resource_spans[0].ByteSize()
    assert offset == len(before) + len(_varint(len(message))) and raw_bytes == frame
    assert "over the 1,048,576-byte record limit" in reason


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@pytest.mark.parametrize("seed", range(8))
def test_line_limit_accounts_for_every_byte(seed: int) -> None:
    """With a line limit, iter_json_units gives every byte once, in order: whole lines in chunks,
    each line over the limit as a bad record at its line and offset with its length."""
    rng = random.Random(seed)
    lines = [b'{"resourceSpans":[],"pad":"' + b"x" * rng.choice([0, 10, 90, 400, 3000]) + b'"}'
             for _ in range(rng.randint(1, 40))]
    eol = rng.choice([b"\n", b"\r\n"])
    data = eol.join(lines) + (eol if rng.random() < 0.5 else b"")
    limit = rng.choice([100, 500, 2000])
    units = list(iter_json_units(io.BufferedReader(io.BytesIO(data), 64), rng.choice([1, 50, 4096]), limit))
    offset, line = 0, 1
    for u in units:
        if isinstance(u, LineChunk):
            assert (u.byte_offset, u.line) == (offset, line)
            assert all(len(x.rstrip(b"\r")) <= limit for x in u.data.split(b"\n"))
            offset += len(u.data)
            line += u.data.count(b"\n")
        else:
            assert isinstance(u, Record) and u.kind == "bad" and u.size is not None
            assert (u.pos.byte_offset, u.pos.line) == (offset, line)
            assert u.size > limit and data[offset : offset + len(u.data)] == u.data
            end = offset + u.size
            offset = end + (len(eol) if data[end : end + len(eol)] == eol else 0)
            line += 1
    assert offset == len(data)
    long_lines = sum(len(x) > limit for x in lines)
    assert sum(isinstance(u, Record) for u in units) == long_lines


# ----------------------------------------------------------------------------- junk, reported


def test_zeros_and_random_bytes_are_reported_as_not_otlp_in_seconds(tmp_path: Path) -> None:
    """A 50 MB file of zeros (read as protobuf a byte at a time before: 32 s, then recorded as
    ingested with nothing said) and a file of random bytes: each is one quarantine row, the
    ledger says not-otlp, and the summary names the file."""
    zeros = tmp_path / "zeros.otlp.pb"
    zeros.touch()
    os.truncate(zeros, 50 << 20)
    noise = tmp_path / "noise.bin"
    data = random.Random(3).randbytes(4 << 20)
    assert data[0] not in (0x00, 0x0A, ord("{"), ord("["))
    noise.write_bytes(data)
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    db = tmp_path / "s.duckdb"
    t0 = time.perf_counter()
    summary = ingest_paths([tmp_path], db, progress=False)
    assert time.perf_counter() - t0 < 20
    notes = {Path(f.path).name: f.note for f in summary.without_spans}
    assert notes["zeros.otlp.pb"].startswith("not OTLP: 52,428,800 zero bytes")
    assert notes["noise.bin"].startswith("not OTLP: neither JSON nor OTLP protobuf")
    assert notes["empty.jsonl"] == "empty file"
    assert sorted(query(db, "SELECT regexp_extract(path, '[^/]+$'), format, spans_read, quarantined "
                            "FROM ingested_files")) == [
        ("empty.jsonl", "empty", 0, 0), ("noise.bin", "not-otlp", 0, 1), ("zeros.otlp.pb", "not-otlp", 0, 1)]
    rows = query(db, "SELECT regexp_extract(source, '[^/]+$'), byte_offset, raw_bytes, reason FROM quarantine ORDER BY 1")
    assert [(name, offset, size) for name, offset, size, _ in rows] == [
        ("noise.bin", 0, 4 << 20), ("zeros.otlp.pb", 0, 50 << 20)]
    assert all(reason.startswith("not OTLP") for *_, reason in rows)
    # and the CLI says so, one line a file
    result = CliRunner().invoke(ingest_command, [str(zeros), "--db", str(tmp_path / "cli.duckdb"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"{zeros.resolve()}: no spans, not OTLP: 52,428,800 zero bytes" in result.output


# ---------------------------------------------------------------------------- symbolic links


def test_symlinks_out_of_the_tree_are_not_followed_unless_asked(tmp_path: Path) -> None:
    """A link to /etc/passwd (here: a file outside the tree) once put its contents in
    quarantine.raw. Links that leave the given directory are skipped and listed; links inside
    it are read once; --follow-symlinks follows them."""
    outside = tmp_path / "outside"
    (outside / "more").mkdir(parents=True)
    secret = outside / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "more" / "x.otlp.jsonl").write_bytes(json_lines(pd_request_spans(seed=5, rid="e" * 16)))
    tree = tmp_path / "traces"
    tree.mkdir()
    (tree / "real.otlp.jsonl").write_bytes(json_lines(pd_request_spans()))
    (tree / "passwd.jsonl").symlink_to(secret)
    (tree / "elsewhere").symlink_to(outside / "more", target_is_directory=True)
    (tree / "alias.jsonl").symlink_to(tree / "real.otlp.jsonl")
    db = tmp_path / "s.duckdb"
    summary = ingest_paths([tree], db, progress=False)
    assert (summary.files_ingested, summary.spans_new, summary.quarantined) == (1, 14, 0)
    assert query(db, "SELECT count(*) FROM quarantine") == [(0,)]
    skipped = {link.path.name: link.target for link in summary.skipped_links}
    assert skipped == {"passwd.jsonl": str(secret), "elsewhere": str(outside / "more")}
    result = CliRunner().invoke(ingest_command, [str(tree), "--db", str(tmp_path / "cli.duckdb"), "--no-progress"])
    assert "not followed 2 symbolic link(s)" in result.output and f"passwd.jsonl -> {secret}" in result.output

    followed = ingest_paths([tree], tmp_path / "followed.duckdb", progress=False, follow_symlinks=True)
    assert (followed.files_ingested, followed.spans_new, followed.quarantined) == (3, 28, 1)
    assert not followed.skipped_links


# -------------------------------------------------------------------------- terminal escapes


def test_values_and_file_names_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """A host.name that erases the line above and writes its own 'quarantined 0', a file name with
    an escape, a bad span id with one: the summary and `kvtrace quarantine` show them as escapes."""
    hostile = "evil\x1b[2K\x1b[1A\rquarantined  0\nhosts        x\u202e"
    data = json_lines(pd_request_spans()).replace(b'"host-p"', orjson.dumps(hostile))
    data += b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + b"1" * 32 + b'","spanId":"\\u001b[2J"}]}]}]}\n'
    f = tmp_path / "t.otlp.jsonl"
    f.write_bytes(data)
    (tmp_path / "name\x1b[31m.jsonl").touch()
    db = tmp_path / "s.duckdb"
    result = CliRunner().invoke(ingest_command, [str(tmp_path), "--db", str(db), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert not set(out) & {"\x1b", "\r", "\u202e"}
    assert "evil\\x1b[2K\\x1b[1A\\rquarantined  0\\nhosts        x\\u202e" in out
    assert "name\\x1b[31m.jsonl: no spans, empty file" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("quarantined")] == ["1"]
    listed = CliRunner().invoke(quarantine_command, ["--db", str(db)])
    assert listed.exit_code == 0 and "\x1b" not in listed.output and "span \\x1b[2J" in listed.output


# ------------------------------------------------------------------------------ deep nesting


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _deep_span(levels: int) -> bytes:
    """A Span (wire bytes: the protobuf runtime will not even build it) whose attribute `deep` is
    `levels` nested kvlists around the string "leaf"; its span id says how deep."""
    from opentelemetry.proto.trace.v1 import trace_pb2

    value = _ld(1, b"leaf")
    for _ in range(levels):
        value = _ld(6, _ld(1, _ld(1, b"k") + _ld(2, value)))
    span = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=levels.to_bytes(8, "big"), name="deep",
                          start_time_unix_nano=1, end_time_unix_nano=2).SerializeToString()
    return span + _ld(9, _ld(1, b"deep") + _ld(2, value))


def _deep_request(depths: list[int]) -> bytes:
    """An ExportTraceServiceRequest of one span per depth."""
    resource = _ld(1, _ld(1, b"service.name") + _ld(2, _ld(1, b"svc")))
    return _ld(1, _ld(1, resource) + _ld(2, b"".join(_ld(2, _deep_span(n)) for n in depths)))


def _deep_json(depths: list[int]) -> bytes:
    """The same spans as OTLP JSON, one line (200 levels are more than orjson writes: built as text)."""
    spans = []
    for n in depths:
        value = b'{"kvlistValue":{"values":[{"key":"k","value":' * n + b'{"stringValue":"leaf"}' + b"}]}}" * n
        spans.append(b'{"traceId":"' + b"01" * 16 + b'","spanId":"' + n.to_bytes(8, "big").hex().encode()
                     + b'","name":"deep","startTimeUnixNano":"1","endTimeUnixNano":"2",'
                     b'"attributes":[{"key":"deep","value":' + value + b"}]}")
    return (b'{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},'
            b'"scopeSpans":[{"spans":[' + b",".join(spans) + b"]}]}]}\n")


def test_deep_attribute_values_are_stored_alike_from_json_and_protobuf(tmp_path: Path) -> None:
    """~30 kvlist levels made upb refuse a whole protobuf batch (receiver 400, a file's frame
    quarantined) while JSON stored 200. Now every path stores every span, the nesting kept to
    MAX_ATTRIBUTE_DEPTH levels and what is deeper replaced by a marker that says so."""
    depths = [MAX_ATTRIBUTE_DEPTH, MAX_ATTRIBUTE_DEPTH + 1, 40, 200]
    expected = {}
    for n in depths:
        value: object = "leaf" if n <= MAX_ATTRIBUTE_DEPTH else cut_marker("kvlist")
        for _ in range(min(n, MAX_ATTRIBUTE_DEPTH)):
            value = {"k": value}
        expected[n.to_bytes(8, "big").hex()] = {"deep": value}
    (tmp_path / "deep.otlp.pb").write_bytes(_deep_request(depths))
    (tmp_path / "deep.otlp.jsonl").write_bytes(_deep_json(depths))
    stored = []
    for name, columnar in (("deep.otlp.pb", True), ("deep.otlp.pb", False), ("deep.otlp.jsonl", True),
                           ("deep.otlp.jsonl", False)):
        db = tmp_path / f"{name}-{columnar}.duckdb"
        summary = ingest_paths([tmp_path / name], db, progress=False, columnar=columnar)
        assert (summary.spans_new, summary.quarantined) == (4, 0), name
        stored.append(dict(query(db, "SELECT span_id, attributes FROM spans")))
    for fmt, payload in (("protobuf", _deep_request(depths)), ("json", _deep_json(depths))):
        con = open_store(tmp_path / f"live-{fmt}.duckdb")
        try:
            assert ingest_payload(con, payload, fmt, "live").accepted == 4  # type: ignore[arg-type]
            stored.append(dict(con.execute("SELECT span_id, attributes FROM spans").fetchall()))
        finally:
            con.close()
    checked = check_protobuf(_deep_request(depths))  # the receiver acknowledges them
    assert (checked.accepted_spans, checked.rejected_spans) == (4, 0)
    assert [{sid: orjson.loads(a) for sid, a in s.items()} for s in stored] == [expected] * 6
