"""Stock-only mode: the same model run written as stock SGLang 0.5.23 writes it (simulator.stock).

Checked on the files: no kvtrace-only span or attribute anywhere; roots, thread spans and stage
slices named and keyed as SGLang's tracing names them; the mooncake Sender traces whose session
or worker slice ends when the RDMA write really ended, after the decode side gave up for the
labelled culprits; labels.json identical to the conventions run; resources as the SDK builds them
from SGLang's environment.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.resources import Resource

from kvtrace.app.cli import main
from kvtrace.simulator.runner import simulate

PD = {"requests": 60}  # pd-abort-race, seed 2, sample profile: 2P+2D, TP 2, two labelled culprits
TP = 2
DECODE_THREAD = re.compile(r"^Decode Scheduler \[TP (\d)\]  \[PP 0\] \(host:([0-9a-f]{8}) \| pid:(\d+)\)$")
PREFILL_THREAD = re.compile(r"^Prefill Scheduler \[TP (\d)\]  \[PP 0\] \(host:([0-9a-f]{8}) \| pid:(\d+)\)$")
WORKER_THREAD = re.compile(r"^mooncake transfer worker [0-3] \[TP (\d)\]  \[DP 0\] \(host:([0-9a-f]{8}) \| pid:(\d+)\)$")
TOKENIZER_THREAD = re.compile(r"^(Prefill|Decode)Tokenizer\(host:([0-9a-f]{8}) \| pid:(\d+)\)$")
KVTRACE_NAMES = {"kv.alloc", "kv.free", "kv.transfer", "request.abort", "hicache.load", "forward", "forward.read",
                 "feedback"}


def _value(v: dict[str, Any]) -> Any:
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return next(iter(v.values()))


def load(folder: Path) -> list[dict[str, Any]]:
    """Every span with what a consumer sees: ids, flags, links, status, attrs, the ordered resource."""
    spans = []
    for path in sorted(folder.glob("*.otlp.jsonl")):
        for line in path.read_bytes().splitlines():
            for rs in orjson.loads(line)["resourceSpans"]:
                resource = [(a["key"], _value(a["value"])) for a in rs["resource"]["attributes"]]
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        spans.append({
                            "name": s["name"], "trace": s["traceId"], "id": s["spanId"], "parent": s.get("parentSpanId"),
                            "start": int(s["startTimeUnixNano"]), "end": int(s["endTimeUnixNano"]),
                            "status": s["status"], "flags": s["flags"],
                            "links": [(link["spanId"], link["flags"]) for link in s.get("links", [])],
                            "attrs": {a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                            "resource": resource, "instance": path.name.split(".")[0], "scope": ss["scope"]["name"],
                        })
    return spans


class Run:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.labels = orjson.loads((folder / "labels.json").read_bytes())
        self.spans = load(folder)
        self.by_id = {s["id"]: s for s in self.spans}
        self.children: dict[str, list[dict[str, Any]]] = {}
        for s in self.spans:
            if s["parent"]:
                self.children.setdefault(s["parent"], []).append(s)
        self.offset = {i["instance"]: i["clock_offset_ns"] for i in self.labels["instances"]}
        self.requests = {r["rid"]: r for r in self.labels["requests"]}
        self.roots: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (name, rid attribute) -> roots
        self.traces: dict[str, list[dict[str, Any]]] = {}
        for s in self.spans:
            self.traces.setdefault(s["trace"], []).append(s)
            if s["parent"] is None:
                self.roots.setdefault((s["name"].split(" Req ")[0], s["attrs"]["rid"]), []).append(s)

    def true(self, span: dict[str, Any], key: str = "end") -> int:
        return int(span[key]) - self.offset[span["instance"]]

    def root(self, role: str, rid: str) -> dict[str, Any]:
        [root] = self.roots[(role, rid)]
        assert root["name"] == f"{role} Req {rid[:8]}"
        return root

    def kids(self, span: dict[str, Any], pattern: str = "") -> list[dict[str, Any]]:
        return sorted((c for c in self.children.get(span["id"], []) if re.match(pattern, c["name"])),
                      key=lambda c: (c["start"], c["name"]))

    def senders(self, rid: str) -> list[dict[str, Any]]:
        return self.roots.get(("Sender", hex(int(self.requests[rid]["bootstrap_room"], 16))), [])

    def in_trace(self, root: dict[str, Any], name: str) -> list[dict[str, Any]]:
        return [s for s in self.traces[root["trace"]] if s["name"] == name]

    def culprits(self) -> list[str]:
        return sorted({r["culprit_rid"] for r in self.labels["races"] if r["kind"] == "abort_before_write_complete"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    out: dict[str, Run] = {}
    for name, scenario, seed, knobs in (("pd", "pd-abort-race", 2, PD),
                                        ("pd-kv", "pd-abort-race", 2, {**PD, "pools": ("kv",)}),
                                        ("offload", "offload-race", 8, {"requests": 24, "prefill": 1, "decode": 1,
                                                                        "tp": 1, "l2_hit_prob": 0.9,
                                                                        "client_abort_prob": 0.3}),
                                        ("mixed", "mixed", 3, {"requests": 45})):
        folder = tmp_path_factory.mktemp(name)
        simulate(scenario, seed, folder, knobs, mode="fast", profile="sample", stock_only=True)  # == SDK bytes
        out[name] = Run(folder)
    return out


@pytest.mark.parametrize("name", ["pd", "pd-kv", "offload", "mixed"])
def test_no_kvtrace_only_span_or_attribute_anywhere(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    assert run.spans
    for s in run.spans:
        assert s["name"] not in KVTRACE_NAMES and not s["name"].startswith(("kv.", "forward", "hicache")), s["name"]
        keys = set(s["attrs"]) | {k for k, _ in s["resource"]}
        assert not {k for k in keys if k.startswith(("spec.", "kv.", "hicache.", "abort.", "forward."))}, s
        assert "gen_ai.completion" not in keys and "feedback.label" not in keys
        assert s["scope"] == "sglang server"
        assert s["end"] >= s["start"], s
    # every request still shows up, through its two roots (the model ran the same requests)
    for rid in run.requests:
        run.root("prefill", rid), run.root("decode", rid)


def test_roots_are_named_and_keyed_as_sglang_does(runs: dict[str, Run]) -> None:
    run = runs["pd"]
    short = 0
    for rid, req in run.requests.items():
        room = hex(int(req["bootstrap_room"], 16))  # str(hex(room)): no zero padding
        short += len(room) < 18
        pre, dec = run.root("prefill", rid), run.root("decode", rid)
        for root in (pre, dec):
            assert list(root["attrs"])[:3] == ["rid", "module", "bootstrap_room"]
            assert (root["attrs"]["module"], root["attrs"]["bootstrap_room"]) == ("sglang::request", room)
        senders = run.senders(rid)
        assert len(senders) == TP  # one CommonKVSender per prefill TP rank, each its own trace
        for sender in senders:
            assert sender["name"] == f"Sender Req {room[:8]}"
            assert sender["attrs"] == {"rid": room, "module": "sglang::mooncake", "bootstrap_room": room}
        traces = [pre["trace"], dec["trace"], *(s["trace"] for s in senders)]
        assert len(set(traces)) == len(traces)  # prefill, decode and each Sender sit in different traces
    assert short > 0


def test_finish_reasons_are_json_encoded_strings(runs: dict[str, Run]) -> None:
    run = runs["pd"]
    culprits = set(run.culprits())
    for rid, req in run.requests.items():
        pre, dec = run.root("prefill", rid), run.root("decode", rid)
        for root in (pre, dec):
            reasons = root["attrs"]["gen_ai.response.finish_reasons"]
            assert isinstance(reasons, str) and isinstance(json.loads(reasons), list)
            assert root["attrs"]["gen_ai.request.id"] == rid and root["attrs"]["gen_ai.usage.prompt_tokens"] > 0
            assert root["status"] == {}  # SGLang never sets a status on roots
        assert dec["attrs"]["gen_ai.response.finish_reasons"] == ('["abort"]' if req["aborted"] else '["stop"]')
        assert (dec["attrs"]["gen_ai.usage.completion_tokens"] == 0) == req["aborted"]
        # prefill's one output is the first token; a room that failed under the write ends aborted
        assert pre["attrs"]["gen_ai.usage.completion_tokens"] == 1
        assert pre["attrs"]["gen_ai.response.finish_reasons"] in ('["abort"]', '["length"]')
        if rid in culprits:
            assert pre["attrs"]["gen_ai.response.finish_reasons"] == '["abort"]'
        if not req["aborted"]:
            assert pre["attrs"]["gen_ai.response.finish_reasons"] == '["length"]'


def test_thread_spans_and_slices_follow_sglangs_trace_context(runs: dict[str, Run]) -> None:
    run = runs["pd"]
    for rid, req in run.requests.items():
        dec = run.root("decode", rid)
        [tok] = run.kids(dec, "DecodeTokenizer")
        assert TOKENIZER_THREAD.match(tok["name"]) and tok["flags"] == 256
        tokenize, dispatch = run.kids(tok)
        assert (tokenize["name"], dispatch["name"]) == ("tokenize", "api_server_dispatch")
        assert dispatch["links"] == [(tokenize["id"], 256)] and tok["end"] == dispatch["end"]
        threads = run.kids(dec, "Decode Scheduler")
        assert sorted(t["attrs"]["tp_rank"] for t in threads) == list(range(TP))
        for t in threads:
            m = DECODE_THREAD.match(t["name"])
            assert m is not None and int(m.group(1)) == t["attrs"]["tp_rank"]
            assert t["attrs"]["host_id"].startswith(m.group(2)) and t["attrs"]["pid"] == int(m.group(3))
            assert t["flags"] == 768  # parent = the root's context unpickled in the scheduler process
            stages = run.kids(t)
            want = ["decode_prepare", "decode_bootstrap"]
            if not req["aborted"]:
                want += ["decode_transferred", "decode_waiting", "decode_forward"]
            assert [s["name"] for s in stages] == want
            # each first-level slice links to the previous one; the first to the tokenizer's dispatch, remotely
            assert [s["links"] for s in stages] == [[(dispatch["id"], 768)]] + [[(p["id"], 256)] for p in stages[:-1]]
            if req["aborted"]:  # never closed by the scheduler: __del__ closes it
                assert t["status"] == {"code": 2}
                assert t["attrs"]["reason"] == "have unclosed span, auto closed"
            else:
                assert t["status"] == {} and "reason" not in t["attrs"]
                loops = run.kids(stages[-1], "decode_loop")
                assert [s["attrs"]["decode_ct"] for s in loops] == list(range(len(loops))) and loops


def test_decode_loops_count_the_verify_steps_of_the_same_requests(runs: dict[str, Run], tmp_path: Path) -> None:
    conv = tmp_path / "conv"
    simulate("pd-abort-race", 2, conv, PD, mode="fast", profile="sample")
    steps = {}
    for line in b"".join(p.read_bytes() for p in conv.glob("decode-*.otlp.jsonl")).splitlines():
        for rs in orjson.loads(line)["resourceSpans"]:
            for s in rs["scopeSpans"][0]["spans"]:
                attrs = {a["key"]: _value(a["value"]) for a in s.get("attributes", [])}
                if "spec.verify_ct" in attrs:
                    steps[attrs["rid"]] = attrs["spec.verify_ct"]
    run = runs["pd"]
    for rid, n in steps.items():
        for t in run.kids(run.root("decode", rid), "Decode Scheduler"):
            [forward] = run.kids(t, "decode_forward")
            assert len(run.kids(forward, "decode_loop")) == n
            assert [s["name"] for s in run.kids(forward)][:1] == ["fake_output"]


def _check_transfers(run: Run, *, dsa: bool) -> None:
    culprits = run.culprits()
    assert culprits
    for rid, req in run.requests.items():
        pre, dec = run.root("prefill", rid), run.root("decode", rid)
        dec_threads = run.kids(dec, "Decode Scheduler")
        pre_threads = run.kids(pre, "Prefill Scheduler")
        assert all(PREFILL_THREAD.match(t["name"]) for t in pre_threads) and len(pre_threads) == TP
        failed = any(t["status"] for t in pre_threads)
        for sender in run.senders(rid):
            [sched] = run.kids(sender, "Prefill Scheduler")
            [send] = run.kids(sched, "mooncake_send")
            [worker] = run.kids(sender, "mooncake transfer worker")
            assert WORKER_THREAD.match(worker["name"]) and worker["attrs"]["dp_rank"] == 0
            [wsend] = run.kids(worker)
            assert wsend["name"] == "mooncake_worker_send" and wsend["links"] == [(send["id"], 768)]
            sessions = run.kids(wsend, "mooncake_worker_send_session")
            assert len(sessions) == (0 if dsa and failed else 1)
            write_end = sessions[0]["end"] if sessions else wsend["end"]
            if rid in culprits:  # the race: the write really ended after the decode side gave up
                assert run.true(sessions[0] if sessions else wsend) > max(run.true(t) for t in dec_threads)
                assert run.true(sessions[0] if sessions else wsend) > run.true(dec)
                assert write_end > sender["end"]  # ... and after the Sender trace concluded Failed
            if not req["aborted"]:
                [moved] = [s for t in dec_threads[:1] for s in run.kids(t, "decode_transferred")]
                assert run.true(sessions[0]) < run.true(moved)  # causal: write end before decode sees it
                [boot] = [s for t in dec_threads[:1] for s in run.kids(t, "decode_bootstrap")]
                assert run.true(boot) < run.true(sessions[0], "start")  # indices sent before the write
        if rid in culprits:
            room = int(req["bootstrap_room"], 16)
            for t in pre_threads:
                assert t["status"] == {"code": 2}
                assert f"KVTransferError(bootstrap_room={room}): " in t["attrs"]["reason"]
                assert f"req.rid='{rid}' req.bootstrap_room={room}" in t["attrs"]["reason"]
                assert "prefill_transfer_kv_cache" not in [s["name"] for s in run.kids(t)]
        elif not req["aborted"]:
            for t in pre_threads:
                assert t["status"] == {} and [s["name"] for s in run.kids(t)] == [
                    "prefill_prepare", "prefill_bootstrap", "prefill_waiting", "prefill_forward",
                    "prefill_transfer_kv_cache"]


def test_every_transfer_has_its_sender_traces_and_the_culprit_session_ends_after_the_abort(
        runs: dict[str, Run]) -> None:
    _check_transfers(runs["pd-kv"], dsa=False)


def test_with_dsa_state_the_failed_room_has_no_session_but_its_worker_send_ends_late(runs: dict[str, Run]) -> None:
    _check_transfers(runs["pd"], dsa=True)


def test_client_aborts_fail_the_sender_and_transfer_nothing(runs: dict[str, Run]) -> None:
    run = runs["offload"]
    dropped = [rid for rid, req in run.requests.items() if req["aborted"]
               and not any(run.in_trace(s, "mooncake_send") for s in run.senders(rid))]
    assert dropped  # client_abort_prob 0.3: disconnected during the prefill forward, never transferred
    for rid in dropped:
        assert run.root("prefill", rid)["attrs"]["gen_ai.response.finish_reasons"] == '["abort"]'
        for sender in run.senders(rid):
            [sched] = run.kids(sender, "Prefill Scheduler")
            assert (sched["status"], sched["attrs"]["reason"]) == ({"code": 2}, "Aborted")
            assert run.kids(sender, "mooncake transfer worker") == []


def test_labels_equal_the_conventions_run(runs: dict[str, Run], tmp_path: Path) -> None:
    simulate("pd-abort-race", 2, tmp_path, PD, mode="fast", profile="sample")
    assert (tmp_path / "labels.json").read_bytes() == (runs["pd"].folder / "labels.json").read_bytes()


def test_stock_fast_path_equals_the_sdk_path_byte_for_byte(tmp_path: Path) -> None:
    for mode in ("sdk", "fast"):
        simulate("mixed", 5, tmp_path / mode, {"requests": 30}, mode=mode, profile="sample", stock_only=True,
                 stock_resources="unconfigured")
    names = sorted(p.name for p in (tmp_path / "sdk").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "fast").iterdir())
    for name in names:
        assert (tmp_path / "sdk" / name).read_bytes() == (tmp_path / "fast" / name).read_bytes(), name


def test_resources_are_what_the_sdk_builds_from_sglangs_environment(runs: dict[str, Run],
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    # configured: the operator sets OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; SGLang calls
    # Resource.create({service.name: ...}) in every process
    run = runs["pd"]
    for inst in run.labels["instances"]:
        role, name = inst["role"], inst["instance"]
        monkeypatch.setenv("OTEL_SERVICE_NAME", f"sglang-{role}")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"host.name={inst['host']},service.instance.id={name},"
                                                       f"sglang.role={role},service.version=after-fix-2")
        want = list(Resource.create({"service.name": f"sglang-{role}"}).attributes.items())
        assert {tuple(s["resource"]) for s in run.spans if s["instance"] == name} == {tuple(want)}
    # unconfigured: service.name "sglang" and the SDK's random UUID per process
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES")
    keys = list(Resource.create({"service.name": "sglang"}).attributes)
    simulate("pd-abort-race", 2, tmp_path, {"requests": 12}, mode="fast", profile="sample", stock_only=True,
             stock_resources="unconfigured")
    bare = Run(tmp_path)
    for inst in bare.labels["instances"]:
        mine = [s for s in bare.spans if s["instance"] == inst["instance"]]
        assert {tuple(k for k, _ in s["resource"]) for s in mine} == {tuple(keys)}
        ids = {dict(s["resource"])["service.instance.id"] for s in mine}
        assert all(uuid.UUID(i).version == 4 for i in ids) and {dict(s["resource"])["service.name"] for s in mine} == {
            "sglang"}
        assert len(ids) == 1 + TP  # tokenizer + one scheduler process per TP rank (workers are their threads)


def test_trace_levels_drop_the_slices_sglang_drops(tmp_path: Path) -> None:
    names = {}
    for level in (1, 2):
        simulate("pd-abort-race", 2, tmp_path / str(level), {"requests": 12}, mode="fast", profile="sample",
                 stock_only=True, stock_trace_level=level)
        names[level] = {s["name"] for s in load(tmp_path / str(level))}
    assert "api_server_dispatch" in names[2] and "mooncake_worker_send_session" in names[2]
    assert not {"decode_loop", "fake_output"} & (names[1] | names[2])
    assert not {"api_server_dispatch", "mooncake_worker_send_session"} & names[1]
    level1 = Run(tmp_path / "1")
    for rid in level1.requests:  # without the dispatch slice the tokenizer thread span stays open until finish
        root = level1.root("decode", rid)
        [tok] = level1.kids(root, "DecodeTokenizer")
        assert tok["end"] == root["end"]


def test_cli_stock_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["simulate", "--scenario", "pd-abort-race", "--seed", "2", "--requests", "8",
                                       "--stock-only", "--fast", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "stock-only: wrote" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decode-0.otlp.jsonl", "decode-1.otlp.jsonl", "labels.json",
                                                          "prefill-0.otlp.jsonl", "prefill-1.otlp.jsonl"]
    assert not {s["name"] for s in load(tmp_path)} & KVTRACE_NAMES
    for args in (["--stock-only", "--labels-only"], ["--stock-resources", "unconfigured", "--labels-only"]):
        bad = CliRunner().invoke(main, ["simulate", "--scenario", "pd-abort-race", "--requests", "5", *args])
        assert bad.exit_code != 0 and "--stock-only" in bad.output
