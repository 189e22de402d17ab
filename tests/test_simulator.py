"""The simulator's invariants, checked on the spans it writes (not on its internals).

Races in labels.json must be visible in the spans on true time (span time minus the host's
offset); fixed builds must show no unsafe overlap; a seed must give identical bytes; files must
parse as opentelemetry-proto TracesData; pr35049 must carry the logged pages and times.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from google.protobuf import json_format
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from simulator_support import SMALL, load_spans

from kvtrace.app.cli import main
from kvtrace.simulator.labels import read_labels
from kvtrace.simulator.runner import simulate


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for scenario, seed, requests in (("mixed", 3, 120), ("pd-abort-race", 2, 60), ("hicache-race", 3, 60),
                                     ("clean", 0, 40)):
        folder = tmp_path_factory.mktemp(scenario)
        simulate(scenario, seed, folder, {"requests": requests}, mode="fast", profile="sample")  # == SDK bytes, see fastpath test
        out[scenario] = folder
    # a lightly loaded pool: some aborted requests' pages are not reused before the late write lands
    out["near-miss"] = tmp_path_factory.mktemp("near-miss")
    simulate("pd-abort-race", 4, out["near-miss"], {"requests": 50, "concurrency": 4, "rdma_stall_rate": 400.0},
             mode="fast", profile="sample")
    out["offload-race"] = tmp_path_factory.mktemp("offload-race")
    simulate("offload-race", 8, out["offload-race"], {"requests": 24, "prefill": 1, "decode": 1, "tp": 1,
                                                     "l2_hit_prob": 0.9, "client_abort_prob": 0.3},
             mode="fast", profile="sample")
    out["pr35049"] = tmp_path_factory.mktemp("pr35049")
    simulate("pr35049", 0, out["pr35049"])
    return out


class TrueClock:
    def __init__(self, labels: dict[str, Any]) -> None:
        self.offset = {i["instance"]: i["clock_offset_ns"] for i in labels["instances"]}

    def true(self, span: dict[str, Any], key: str = "start") -> int:
        return int(span[key]) - self.offset[span["resource"]["service.instance.id"]]


def _by(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def _check_abort_race(race: dict[str, Any], spans: list[dict[str, Any]], clock: TrueClock) -> None:
    inst, rank, pool = race["instance"], race["tp_rank"], race["kv_pool"]
    transfer = [s for s in _by(spans, "kv.transfer") if s["attrs"]["rid"] == race["culprit_rid"]
                and s["attrs"]["kv.pool"] == pool and s["attrs"]["kv.transfer.dst_rank"] == rank
                and s["attrs"]["kv.transfer.dst_instance"] == inst]
    assert len(transfer) == 1, race
    free = [s for s in _by(spans, "kv.free") if s["attrs"]["rid"] == race["culprit_rid"]
            and s["resource"]["service.instance.id"] == inst and s["attrs"]["tp_rank"] == rank
            and s["attrs"]["kv.pool"] == pool]
    assert [(f["attrs"]["kv.free.mode"], f["attrs"]["kv.free.reason"]) for f in free] == [("immediate", "aborted")]
    allocs = [s for s in _by(spans, "kv.alloc") if s["attrs"]["rid"] == race["victim_rid"]
              and s["resource"]["service.instance.id"] == inst and s["attrs"]["tp_rank"] == rank
              and s["attrs"]["kv.pool"] == pool and set(race["pages"]) <= set(s["attrs"]["kv.page_ids"])]
    assert len(allocs) == 1, race
    alloc, tx, fr = allocs[0], transfer[0], free[0]
    assert alloc["start"] == race["window_start_ns"]
    overlap = sorted(set(tx["attrs"]["kv.page_ids"]) & set(alloc["attrs"]["kv.page_ids"]))
    assert overlap == race["pages"]
    # the unsafe overlap on true time: freed, reused, and only then does the write end
    assert clock.true(fr) <= clock.true(alloc) < clock.true(tx, "end")
    assert race["window_end_ns"] - clock.offset[inst] <= clock.true(tx, "end")


def _check_near_miss(race: dict[str, Any], spans: list[dict[str, Any]], clock: TrueClock) -> None:
    """unsafe_free: freed while the write was in flight, and nobody allocated those pages before it ended."""
    inst, rank, pool = race["instance"], race["tp_rank"], race["kv_pool"]
    assert race["victim_rid"] is None
    [tx] = [s for s in _by(spans, "kv.transfer") if s["attrs"]["rid"] == race["culprit_rid"]
            and s["attrs"]["kv.pool"] == pool and s["attrs"]["kv.transfer.dst_rank"] == rank]
    [free] = [s for s in _by(spans, "kv.free") if s["attrs"]["rid"] == race["culprit_rid"]
              and s["resource"]["service.instance.id"] == inst and s["attrs"]["tp_rank"] == rank
              and s["attrs"]["kv.pool"] == pool]
    assert (free["attrs"]["kv.free.mode"], free["attrs"]["kv.free.reason"]) == ("immediate", "aborted")
    assert race["pages"] == sorted(tx["attrs"]["kv.page_ids"]) == sorted(free["attrs"]["kv.page_ids"])
    assert (race["window_start_ns"], race["window_end_ns"] - clock.offset[inst]) == (free["start"], clock.true(tx, "end"))
    assert clock.true(free) < clock.true(tx, "end")
    reused = [s for s in _by(spans, "kv.alloc") if s["resource"]["service.instance.id"] == inst
              and s["attrs"]["tp_rank"] == rank and s["attrs"]["kv.pool"] == pool
              and clock.true(free) <= clock.true(s) < clock.true(tx, "end")
              and set(s["attrs"]["kv.page_ids"]) & set(race["pages"])]
    assert reused == []


def _check_write_while_read(race: dict[str, Any], spans: list[dict[str, Any]]) -> None:
    """page_hazard: the culprit's load writes pages that the victim, after releasing them, still reads."""
    inst, rank, pool = race["instance"], race["tp_rank"], race["kv_pool"]

    def mine(s: dict[str, Any], rid: str) -> bool:
        return (s["attrs"]["rid"] == rid and s["resource"]["service.instance.id"] == inst
                and s["attrs"]["tp_rank"] == rank and s["attrs"]["kv.pool"] == pool)
    [load] = [s for s in _by(spans, "hicache.load") if mine(s, race["culprit_rid"])]
    [free] = [s for s in _by(spans, "kv.free") if mine(s, race["victim_rid"])]
    [alloc] = [s for s in _by(spans, "kv.alloc") if mine(s, race["culprit_rid"])]
    forwards = {s["span_id"]: s for s in _by(spans, "forward") if s["attrs"]["forward.rids"] == [race["victim_rid"]]
                and s["attrs"]["tp_rank"] == rank and s["resource"]["service.instance.id"] == inst}
    [read] = [s for s in _by(spans, "forward.read") if s["parent"] in forwards and s["attrs"]["kv.pool"] == pool]
    assert (free["attrs"]["kv.free.reason"], free["attrs"]["kv.free.mode"]) == ("aborted", "immediate")
    assert race["pages"] == sorted(set(load["attrs"]["kv.page_ids"]) & set(free["attrs"]["kv.page_ids"]))
    # released while its read was in flight; the new owner's load overlaps the rest of that read
    assert read["start"] < free["start"] <= alloc["start"] <= load["start"] < read["end"]
    assert (race["window_start_ns"], race["window_end_ns"]) == (load["start"], min(load["end"], read["end"]))


def _check_load_race(race: dict[str, Any], spans: list[dict[str, Any]], clock: TrueClock) -> None:
    inst, rank = race["instance"], race["tp_rank"]
    loads = [s for s in _by(spans, "hicache.load") if s["attrs"]["rid"] == race["culprit_rid"]
             and s["attrs"]["tp_rank"] == rank and s["attrs"]["kv.pool"] == "index_k"]
    assert len(loads) == 1 and sorted(loads[0]["attrs"]["kv.page_ids"]) == race["pages"]
    load = loads[0]
    forwards = {s["span_id"]: s for s in _by(spans, "forward") if race["victim_rid"] in s["attrs"]["forward.rids"]
                and s["attrs"]["tp_rank"] == rank and s["resource"]["service.instance.id"] == inst}
    reads = [s for s in _by(spans, "forward.read") if s["parent"] in forwards and s["attrs"]["kv.pool"] == "index_k"]
    assert len(reads) == 1
    read_at = [forwards[reads[0]["parent"]]["start"] + o for o in reads[0]["attrs"]["forward.layer_read_offsets_ns"]]
    done_at = [load["start"] + o for o in load["attrs"]["hicache.layer_done_offsets_ns"]]
    early = [layer for layer, (r, d) in enumerate(zip(read_at, done_at, strict=True)) if r < d]
    assert early == race["layers"]
    assert race["window_start_ns"] == min(read_at[layer] for layer in early)
    assert race["window_end_ns"] == max(done_at[layer] for layer in early)


@pytest.mark.parametrize("scenario", ["mixed", "pd-abort-race", "hicache-race", "pr35049", "near-miss", "offload-race"])
def test_every_labelled_race_is_visible_in_the_spans(runs: dict[str, Path], scenario: str) -> None:
    labels = read_labels(runs[scenario] / "labels.json")
    spans = load_spans(runs[scenario])
    clock = TrueClock(labels)
    assert labels["races"], "the scenario must inject races"
    if scenario == "near-miss":
        assert {r["kind"] for r in labels["races"]} == {"abort_before_write_complete", "unsafe_free"}
    for race in labels["races"]:
        if race["kind"] == "abort_before_write_complete":
            _check_abort_race(race, spans, clock)
        elif race["kind"] == "unsafe_free":
            _check_near_miss(race, spans, clock)
        elif race["kind"] == "page_hazard":
            _check_write_while_read(race, spans)
        else:
            assert race["kind"] == "read_before_load"
            _check_load_race(race, spans, clock)
    bad = {r["rid"]: r for r in labels["requests"] if r["state"] != "ok"}
    race_ids = {race["race_id"]: race for race in labels["races"]}
    assert all(r["cause"] in race_ids and race_ids[r["cause"]]["victim_rid"] == rid for rid, r in bad.items())
    if scenario == "offload-race":  # the readers were dropped mid-forward: no output to spoil
        requests = {r["rid"]: r for r in labels["requests"]}
        assert not bad and all(requests[race["victim_rid"]]["aborted"] for race in labels["races"])
    else:
        assert bad


def test_mixed_holds_both_bugs_before_the_fix_and_none_after_both(runs: dict[str, Path]) -> None:
    labels = read_labels(runs["mixed"] / "labels.json")
    kinds = {(r["service_version"], r["kind"]) for r in labels["races"]}
    assert ("before-fix", "abort_before_write_complete") in kinds
    assert ("before-fix", "read_before_load") in kinds
    assert not any(v == "after-both" for v, _ in kinds)
    assert not any(k == "abort_before_write_complete" for v, k in kinds if v == "after-fix-1")


@pytest.mark.parametrize("scenario", ["clean", "mixed", "hicache-race", "pd-abort-race", "offload-race"])
def test_fixed_builds_show_no_unsafe_overlap(runs: dict[str, Path], scenario: str) -> None:
    """Fix 1: aborted pages are freed deferred, after the write ends. Fix 2: index_k reads wait."""
    labels = read_labels(runs[scenario] / "labels.json")
    fixes = {p["version"]: p for p in labels["knobs"]["phases"]}
    spans = load_spans(runs[scenario])
    clock = TrueClock(labels)
    tx_end = {(s["attrs"]["rid"], s["attrs"]["kv.pool"], s["attrs"]["kv.transfer.dst_rank"]): clock.true(s, "end")
              for s in _by(spans, "kv.transfer")}
    checked_free = checked_read = 0
    for s in _by(spans, "kv.free"):
        version = s["resource"]["service.version"]
        key = (s["attrs"]["rid"], s["attrs"]["kv.pool"], s["attrs"]["tp_rank"])
        if key not in tx_end:  # dropped before its transfer (client disconnect): no write in flight
            continue
        if s["attrs"]["kv.free.reason"] == "aborted" and not fixes[version]["bug1_abort_free"]:
            assert s["attrs"]["kv.free.mode"] == "deferred"
            assert clock.true(s) > tx_end[(s["attrs"]["rid"], s["attrs"]["kv.pool"], s["attrs"]["tp_rank"])]
            checked_free += 1
    loads = {(s["attrs"]["rid"], s["attrs"]["tp_rank"]): s for s in _by(spans, "hicache.load")
             if s["attrs"]["kv.pool"] == "index_k"}
    forwards = {s["span_id"]: s for s in _by(spans, "forward") if s["attrs"]["forward.mode"] == "extend"}
    for read in _by(spans, "forward.read"):
        fwd = forwards.get(read["parent"])
        if fwd is None or read["attrs"]["kv.pool"] != "index_k":
            continue
        load = loads.get((fwd["attrs"]["forward.rids"][0], fwd["attrs"]["tp_rank"]))
        if load is None or fixes[fwd["resource"]["service.version"]]["bug2_index_nowait"]:
            continue
        reads = [fwd["start"] + o for o in read["attrs"]["forward.layer_read_offsets_ns"]]
        done = [load["start"] + o for o in load["attrs"]["hicache.layer_done_offsets_ns"]]
        assert all(r >= d for r, d in zip(reads, done, strict=True))
        checked_read += 1
    fixed1 = any(not p["bug1_abort_free"] for p in fixes.values())
    fixed2 = any(not p["bug2_index_nowait"] for p in fixes.values())
    assert (checked_free > 0) == fixed1 or scenario in ("mixed", "offload-race")
    assert (checked_read > 0) == fixed2 or scenario == "offload-race"
    # fix 3: a load never overlaps the forward still reading the pages it was given (compute stream first)
    checked_load = 0
    frees = {(s["attrs"]["rid"], s["resource"]["service.instance.id"], s["attrs"]["tp_rank"], s["attrs"]["kv.pool"]): s
             for s in _by(spans, "kv.free") if s["resource"]["sglang.role"] == "prefill"}
    for load in _by(spans, "hicache.load"):
        if fixes[load["resource"]["service.version"]].get("bug3_load_nowait_compute", False):
            continue
        inst, rank, pool = load["resource"]["service.instance.id"], load["attrs"]["tp_rank"], load["attrs"]["kv.pool"]
        for fwd in _by(spans, "forward"):
            if fwd["resource"]["service.instance.id"] != inst or fwd["attrs"]["tp_rank"] != rank:
                continue
            reader = fwd["attrs"]["forward.rids"][0]
            free = frees.get((reader, inst, rank, pool))
            if reader != load["attrs"]["rid"] and free is not None and free["start"] < fwd["end"] and \
                    set(free["attrs"]["kv.page_ids"]) & set(load["attrs"]["kv.page_ids"]) and \
                    free["start"] <= load["start"]:
                assert load["start"] >= fwd["end"]
                checked_load += 1
    assert (checked_load > 0) == (scenario == "offload-race")
    for race in labels["races"]:
        phase = fixes[race["service_version"]]
        bug = {"read_before_load": "bug2_index_nowait", "page_hazard": "bug3_load_nowait_compute"}.get(
            race["kind"], "bug1_abort_free")
        assert phase[bug], race


def test_pr35049_has_exactly_the_logged_pages_and_times(runs: dict[str, Path]) -> None:
    labels = read_labels(runs["pr35049"] / "labels.json")
    spans = load_spans(runs["pr35049"])
    [race] = labels["races"]
    assert race["kind"] == "abort_before_write_complete"
    assert race["pages"] == list(range(14, 33))
    assert (race["window_start_ns"], race["window_end_ns"]) == (881_310_000_000, 884_800_000_000)
    [tx] = [s for s in _by(spans, "kv.transfer") if s["attrs"]["rid"] == race["culprit_rid"]]
    assert (tx["start"], tx["end"]) == (878_800_000_000, 884_800_000_000)
    assert tx["attrs"]["kv.page_ids"] == list(range(14, 45))
    [free] = [s for s in _by(spans, "kv.free") if s["attrs"]["rid"] == race["culprit_rid"]
              and s["resource"]["sglang.role"] == "decode"]
    assert (free["start"], free["attrs"]["kv.free.mode"]) == (881_280_000_000, "immediate")
    [alloc] = [s for s in _by(spans, "kv.alloc") if s["attrs"]["rid"] == race["victim_rid"]
               and s["resource"]["sglang.role"] == "decode" and 1 in s["attrs"]["kv.page_ids"]]
    assert (alloc["start"], alloc["attrs"]["kv.page_ids"]) == (881_310_000_000, list(range(1, 33)))
    victim = next(r for r in labels["requests"] if r["rid"] == race["victim_rid"])
    assert (victim["state"], victim["cause"]) == ("garbled", race["race_id"])
    assert set(labels["clock_offsets_ns"].values()) == {0}


def _ids_to_base64(doc: Any) -> Any:
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        link[key] = base64.b64encode(bytes.fromhex(link[key])).decode()
    return doc


def test_files_parse_as_tracesdata_and_follow_the_conventions(runs: dict[str, Path]) -> None:
    folder = runs["mixed"]
    n_spans = 0
    for path in sorted(folder.glob("*.otlp.jsonl")):
        for line in path.read_bytes().splitlines():
            message = json_format.Parse(orjson.dumps(_ids_to_base64(orjson.loads(line))), TracesData())
            for rs in message.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                assert attrs["service.instance.id"] + ".otlp.jsonl" == path.name
                assert attrs["service.name"] == "sglang-" + attrs["sglang.role"]
                assert attrs["host.name"] and attrs["service.version"]
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        assert len(span.trace_id) == 16 and span.trace_id[:8] == bytes(8)  # 64-bit ids
                        assert span.end_time_unix_nano >= span.start_time_unix_nano
                        n_spans += 1
    labels = read_labels(folder / "labels.json")
    assert n_spans == sum(row["spans"] for row in labels["summary"])


def test_causal_stage_pairs_hold_on_true_time(runs: dict[str, Path]) -> None:
    labels = read_labels(runs["mixed"] / "labels.json")
    spans = load_spans(runs["mixed"])
    clock = TrueClock(labels)
    boot = {s["attrs"]["bootstrap_room"]: clock.true(s, "end") for s in _by(spans, "decode_bootstrap")}
    moved = {s["attrs"]["bootstrap_room"]: clock.true(s, "end") for s in _by(spans, "decode_transferred")}
    for tx in _by(spans, "kv.transfer"):
        room = tx["attrs"]["bootstrap_room"]
        assert boot[room] < clock.true(tx)
        if room in moved:
            assert clock.true(tx, "end") < moved[room]
    assert moved and len(moved) < len(boot)  # aborted requests have no decode_transferred


def test_same_seed_gives_identical_bytes_and_labels_only_the_same_truth(tmp_path: Path) -> None:
    knobs = {**SMALL, "requests": 30}
    for name in ("a", "b"):
        simulate("mixed", 11, tmp_path / name, knobs, profile="sample")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir()) and "labels.json" in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    simulate("mixed", 11, tmp_path / "c", knobs, mode="labels-only", profile="sample")
    a, c = read_labels(tmp_path / "a" / "labels.json"), read_labels(tmp_path / "c" / "labels.json")
    assert (a["races"], a["requests"]) == (c["races"], c["requests"])


def test_committed_sample_regenerates_byte_for_byte(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parent.parent / "sample_traces" / "pr35049"
    simulate("pr35049", 0, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in sample.iterdir())
    for path in sample.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_protobuf_format_is_a_delimited_tracesdata_stream(tmp_path: Path) -> None:
    from google.protobuf.internal.decoder import _DecodeVarint

    simulate("pr35049", 0, tmp_path / "json")
    simulate("pr35049", 0, tmp_path / "pb", fmt="protobuf")
    from_json = defaultdict(list)
    for span in load_spans(tmp_path / "json"):
        from_json[span["file"].split(".")[0]].append((span["span_id"], span["name"], span["start"], span["end"]))
    for path in sorted((tmp_path / "pb").glob("*.otlp.pb")):
        data, pos, got = path.read_bytes(), 0, []
        while pos < len(data):
            size, pos = _DecodeVarint(data, pos)
            message = TracesData.FromString(data[pos:pos + size])
            pos += size
            got += [(s.span_id.hex(), s.name, s.start_time_unix_nano, s.end_time_unix_nano)
                    for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans]
        assert got == from_json[path.name.split(".")[0]]


def test_simulate_help_documents_every_option() -> None:
    result = CliRunner().invoke(main, ["simulate", "--help"])
    assert result.exit_code == 0
    command = main.commands["simulate"]
    for param in command.params:
        assert param.opts[0] in result.output
        assert getattr(param, "help", None), f"{param.opts[0]} has no help"
    assert "Example:" in result.output


def test_simulate_cli_writes_files_and_prints_rates(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["simulate", "--scenario", "pr35049", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "before-fix" in result.output and "3333.33" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decode-0.otlp.jsonl", "labels.json", "prefill-0.otlp.jsonl"]
    bad = CliRunner().invoke(main, ["simulate", "--scenario", "mixed", "--requests", "5", "--pools", "kv,foo",
                                    "--labels-only"])
    assert bad.exit_code != 0 and "pools must be" in bad.output
