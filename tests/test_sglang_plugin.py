"""kvtrace's SGLang plugin against the real sglang package (0.5.23), not a re-implementation.

Needs sglang and torch, so the main .venv skips it (cleanly, without importing anything heavy).
Run it in the separate venv that has a CPU torch and the sglang wheel:

    PYTHONPATH=/work/main .venv-sglang/bin/python -m pytest -q -p no:cacheprovider tests/test_sglang_plugin.py

What runs is SGLang's own code: its plugin loader (`load_plugins`, entry point group
`sglang.srt.plugins`) and HookRegistry, its paged allocator on CPU, its decode prealloc/transfer
queues with the fake transfer backend's receiver, `release_kv_cache`, `prepare_abort`, its tracer
(`process_tracing_init`, whose OTLP exporter is swapped for the SDK's in-memory one), and the
Mooncake manager's `send_kvcache` with a stand-in for Mooncake's compiled transfer engine (the
only part that needs RDMA hardware). The one process plays both servers: spans the prefill half
emitted are written under the prefill's resource, as its own process would have.

Test-only stand-ins for compiled extras this venv lacks (torchvision) are installed below, before
sglang is imported; the plugin itself never uses them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAIN_VENV_KVTRACE = ROOT / ".venv" / "bin" / "kvtrace"

_HAVE_SGLANG = importlib.util.find_spec("sglang") is not None and importlib.util.find_spec("torch") is not None
_NEEDS_SGLANG = pytest.mark.skipif(not _HAVE_SGLANG, reason="needs the real sglang package and torch (run in .venv-sglang)")


def needs_sglang(fn: Any) -> Any:
    return pytest.mark.sglang(pytest.mark.slow(_NEEDS_SGLANG(fn)))

PAGE = 4
ROOM_A = 0x5F3A11
ROOM_B = 0x5F3A22
DECODE_RES = {"service.name": "sglang-decode", "service.instance.id": "decode-0", "host.name": "gpu-d01",
              "sglang.role": "decode", "service.version": "0.5.23"}
PREFILL_RES = {"service.name": "sglang-prefill", "service.instance.id": "prefill-0", "host.name": "gpu-p01",
               "sglang.role": "prefill", "service.version": "0.5.23"}
DECODE_ENDPOINT = ("127.0.0.1", 17001)


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for compiled extras absent from this venv (test run only)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            # transformers probes availability with find_spec: let it see the package as absent
            frame = sys._getframe(1)
            while frame is not None:
                if "import_utils" in frame.f_code.co_filename:
                    return None
                frame = frame.f_back
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> Any:
        mod = _StubModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module: Any) -> None:
        pass


def _install_stubs() -> None:
    missing = tuple(n for n in ("torchvision",) if importlib.util.find_spec(n) is None)
    if missing and not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder(missing))


class _Engine:
    """Stands in for Mooncake's compiled TransferEngine (RDMA): `batch_transfer_sync` blocks for
    `delay_s`, as a long write does, and says when the write started."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.started = threading.Event()
        self.calls: list[tuple[str, list[int], list[int], list[int]]] = []

    def batch_transfer_sync(self, session: str, src: list[int], dst: list[int], lengths: list[int]) -> int:
        self.calls.append((session, src, dst, lengths))
        self.started.set()
        time.sleep(self.delay_s)
        return 0


def _entry_point_dir(tmp: Path) -> Path:
    """A dist-info on sys.path declaring pyproject's own `sglang.srt.plugins` entry point, for a
    venv where kvtrace is importable (PYTHONPATH) but not pip-installed."""
    import tomllib

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["sglang.srt.plugins"]
    d = tmp / "kvtrace_ep-0.0.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text("Metadata-Version: 2.1\nName: kvtrace-ep\nVersion: 0.0\n")
    (d / "entry_points.txt").write_text("[sglang.srt.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return tmp


# ------------------------------------------------------------------------------------ fixtures


def _boot(tmp: Path, before_load: Any = None, level: str = "kv") -> Any:
    """sglang imported, a decode topology published (fake backend, deferred release off: the
    configuration bug 1 needs), its tracer initialised, and the plugin loaded by SGLang's loader.
    `before_load` runs just before load_plugins() (to take a hook target away)."""
    _install_stubs()
    os.environ["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(f"{k}={v}" for k, v in DECODE_RES.items())
    os.environ["SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE"] = "false"
    os.environ["SGLANG_PLUGINS"] = "kvtrace"
    os.environ["KVTRACE_SGLANG_LEVEL"] = level
    os.environ["KVTRACE_SGLANG_PEERS"] = f"{DECODE_ENDPOINT[0]}:{DECODE_ENDPOINT[1]}=decode-0"
    import importlib
    from importlib.metadata import entry_points

    import torch.distributed as dist

    if not [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "kvtrace"]:
        (tmp / "ep").mkdir(exist_ok=True)
        sys.path.insert(0, str(_entry_point_dir(tmp / "ep")))
        importlib.invalidate_caches()

    import sglang.srt.observability.trace as sgl_trace
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from sglang.srt.runtime_context import SpawnRanks, publish, reset_context
    from sglang.srt.server_args import ServerArgs

    reset_context()
    publish(ServerArgs(model_path="dummy", device="cpu", disaggregation_mode="decode",
                       disaggregation_transfer_backend="fake"),
            role="test", ranks=SpawnRanks(world_rank=0, dp_rank=None))
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp / 'dist-store'}", rank=0, world_size=1)

    exporter = InMemorySpanExporter()
    real_exporter = sgl_trace.get_otlp_span_exporter
    sgl_trace.get_otlp_span_exporter = lambda endpoint: exporter  # SGLang's init, our exporter
    try:
        sgl_trace.process_tracing_init("127.0.0.1:4317", "sglang-decode", trace_modules="request,mooncake")
    finally:
        sgl_trace.get_otlp_span_exporter = real_exporter
    sgl_trace.trace_set_thread_info("scheduler", tp_rank=0, dp_rank=0)

    if before_load is not None:
        before_load()
    from sglang.srt.plugins import load_plugins

    load_plugins()  # SGLang's loader: entry point -> kvtrace.sglang_plugin.load -> HookRegistry

    from kvtrace import sglang_plugin

    return types.SimpleNamespace(exporter=exporter, trace=sgl_trace, plugin=sglang_plugin)


@pytest.fixture(scope="module")
def sg(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield _boot(tmp_path_factory.mktemp("sg"))
    from sglang.srt.runtime_context import reset_context

    reset_context()


def _flush(sg: Any) -> list[Any]:
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()
    return list(sg.exporter.get_finished_spans())


# ------------------------------------------------------------------------------- SGLang objects


class _Streamer:
    def __init__(self) -> None:
        self.streamed: list[str] = []

    def stream_output(self, reqs: list[Any], return_logprob: bool, *args: Any, **kwargs: Any) -> None:
        self.streamed.extend(r.rid for r in reqs)


class _Decode:
    """A decode instance's KV side built from SGLang's classes on CPU: the paged allocator (freed
    pages go to the front of the free list), the request-to-token pool, a radix cache with
    sharing disabled, and the prealloc / transfer queues. The scheduler is replaced by the
    handful of flags and sinks the queues read (the real one needs a model on a GPU)."""

    def __init__(self, pages: int = 64, slots: int = 8) -> None:
        import torch
        import torch.distributed as dist
        from sglang.srt.disaggregation import decode as D
        from sglang.srt.disaggregation.utils import ReqToMetadataIdxAllocator
        from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
        from sglang.srt.mem_cache.radix_cache import RadixCache

        self.D = D
        self.allocator = PagedTokenToKVPoolAllocator(size=pages * PAGE, page_size=PAGE, dtype=torch.float16,
                                                     device="cpu", kvcache=None, need_sort=False)
        self.r2t = ReqToTokenPool(size=slots, max_context_len=512, device="cpu", enable_memory_saver=False)
        self.tree = RadixCache(CacheInitParams(disable=True, req_to_token_pool=self.r2t,
                                               token_to_kv_pool_allocator=self.allocator, page_size=PAGE))
        self.streamer = _Streamer()
        self.scheduler = types.SimpleNamespace(
            enable_hisparse=False, sliding_window_size=None, enable_decode_hicache=False,
            output_streamer=self.streamer, metrics_reporter=types.SimpleNamespace(enable_metrics=False),
            kv_checksum_computer=None, disagg_decode_prealloc_queue=None)
        meta = ReqToMetadataIdxAllocator(slots)

        tq = D.DecodeTransferQueue.__new__(D.DecodeTransferQueue)
        tq.queue, tq.gloo_group, tq.tp_rank, tq.scheduler, tq.tree_cache = [], dist.group.WORLD, 0, self.scheduler, self.tree
        # the metadata slots' room column reads 0 ("not landed yet"): a Success poll stays Transferring
        tq.req_to_metadata_buffer_idx_allocator = meta
        tq.metadata_buffers = types.SimpleNamespace(clear_slot=lambda i: None, bootstrap_room=torch.zeros((slots, 1)))
        tq.enable_host_receive, tq.enable_staging, tq.staging_handler = False, False, None
        tq.enable_deferred_kv_release, tq.deferred_kv_release_timeout, tq._deferred_releases = False, 30.0, []
        self.transfer_queue = tq

        q = D.DecodePreallocQueue.__new__(D.DecodePreallocQueue)
        q.req_to_token_pool, q.token_to_kv_pool, q.token_to_kv_pool_allocator = self.r2t, None, self.allocator
        q.tree_cache, q.scheduler, q.transfer_queue = self.tree, self.scheduler, tq
        q.req_to_metadata_buffer_idx_allocator, q._num_published_destinations = meta, 0
        self.prealloc_queue = q
        self.scheduler.disagg_decode_prealloc_queue = q

    def request(self, rid: str, n_tokens: int, room: int) -> Any:
        from array import array

        from sglang.srt.disaggregation.fake.conn import FakeKVReceiver
        from sglang.srt.disaggregation.utils import DisaggregationMode
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        req = Req(rid, "", array("q", range(1, n_tokens + 1)), SamplingParams(max_new_tokens=8), bootstrap_room=room,
                  disagg_mode=DisaggregationMode.DECODE)
        # the root span SGLang's tokenizer started for this request, as the scheduler receives it
        req.time_stats.init_trace_ctx(rid, room)
        req.time_stats.trace_ctx.trace_req_start()
        receiver = FakeKVReceiver(None, "2.2.2.2:8998", room)
        receiver.init(prefill_dp_rank=0)
        return self.D.DecodeRequest(req=req, kv_receiver=receiver, waiting_for_input=True)

    def preallocate(self, dr: Any) -> Any:
        """What pop_preallocated does for one request: _pre_alloc, then the page indices to prefill."""
        q = self.prealloc_queue
        q._pre_alloc(dr.req)
        n = len(dr.req.origin_input_ids)
        kv_indices = self.r2t.req_to_token[dr.req.kv.req_pool_idx][0:n]
        pages = q._transfer_page_indices(dr, kv_indices, PAGE)
        q._send_kv_metadata(dr, kv_indices, PAGE)
        self.transfer_queue.queue.append(dr)
        return pages


class _Prefill:
    """The prefill's transfer side: a Mooncake KV manager (SGLang's class, its send path) whose
    engine is the stand-in, a FastQueue of TransferKVChunks, and the bootstrap queue's
    create_sender (fake-backend sender) that tells the plugin which request owns a room."""

    def __init__(self, delay_s: float) -> None:
        import concurrent.futures

        from sglang.srt.disaggregation.base.conn import KVArgs
        from sglang.srt.disaggregation.common.utils import FastQueue
        from sglang.srt.disaggregation.mooncake.conn import KVArgsRegisterInfo, MooncakeKVManager
        from sglang.srt.disaggregation.prefill import PrefillBootstrapQueue
        from sglang.srt.disaggregation.utils import TransferBackend

        self.engine = _Engine(delay_s)
        m = MooncakeKVManager.__new__(MooncakeKVManager)
        kv_args = KVArgs.__new__(KVArgs)
        kv_args.kv_data_ptrs, kv_args.kv_item_lens, kv_args.kv_layer_ids = [0x10000], [PAGE * 1024], None
        m.kv_args, m.engine, m.is_mla_backend, m.is_hybrid_mla_backend = kv_args, self.engine, True, False
        m.state_strides_validated, m.enable_custom_mem_pool, m.max_transfer_batch_indices = set(), False, 0
        self.session = f"{DECODE_ENDPOINT[0]}:{DECODE_ENDPOINT[1]}"
        m.decode_kv_args_table = {self.session: KVArgsRegisterInfo(
            room="0", endpoint=DECODE_ENDPOINT[0], dst_port=DECODE_ENDPOINT[1], mooncake_session_id=self.session,
            dst_kv_ptrs=[0x90000], dst_aux_ptrs=[], dst_state_data_ptrs=[], dst_tp_rank=0, dst_attn_tp_size=1,
            dst_kv_item_len=PAGE * 1024, dst_state_item_lens=[], dst_state_dim_per_tensor=[], dst_kv_layer_ids=[],
            dst_state_layer_ids=[])}
        self.manager = m
        self.queue = FastQueue()
        self.executor = concurrent.futures.ThreadPoolExecutor(1)
        bq = PrefillBootstrapQueue.__new__(PrefillBootstrapQueue)
        bq.max_input_len, bq.kv_manager, bq.bootstrap_port = 1 << 20, None, 8998
        bq.transfer_backend, bq.scheduler = TransferBackend.FAKE, types.SimpleNamespace(output_streamer=_Streamer())
        self.bootstrap_queue = bq

    def admit(self, rid: str, n_tokens: int, room: int) -> None:
        from array import array

        from sglang.srt.disaggregation.utils import FAKE_BOOTSTRAP_HOST
        from sglang.srt.managers.schedule_batch import Req
        from sglang.srt.sampling.sampling_params import SamplingParams

        req = Req(rid, "", array("q", range(1, n_tokens + 1)), SamplingParams(max_new_tokens=8),
                  bootstrap_host=FAKE_BOOTSTRAP_HOST, bootstrap_room=room)
        assert self.bootstrap_queue.create_sender(req, num_kv_heads=1)

    def work(self, dst_pages: Any) -> None:
        """The inner step of MooncakeKVManager.transfer_worker: take a chunk, write it."""
        import numpy as np

        chunk = self.queue.get()
        ret = self.manager.send_kvcache(self.session, chunk.prefill_kv_indices, [0x90000],
                                        np.asarray(dst_pages, dtype=np.int32), self.executor)
        assert ret == 0

    def write_async(self, room: int, dst_pages: Any) -> threading.Thread:
        """Post the last chunk of `room` and let a transfer worker thread write it."""
        import numpy as np
        from sglang.srt.disaggregation.common.utils import TransferKVChunk

        src = np.arange(10, 10 + len(dst_pages), dtype=np.int32)
        self.queue.put(TransferKVChunk(room=room, prefill_kv_indices=src, index_slice=slice(0, len(src)),
                                       is_last_chunk=True, prefill_aux_index=0, state_indices=None))

        th = threading.Thread(target=self.work, args=(dst_pages,), name="mooncake transfer worker 0")
        th.start()
        return th


# ------------------------------------------------------------------------------- OTLP + kvtrace


def _write_otlp_json(spans: list[Any], path: Path) -> None:
    """OTLP JSON as a Collector's file exporter writes it (ids hex), prefill spans under the
    prefill's resource."""
    import base64

    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan

    prefill = Resource.create(PREFILL_RES)
    out = []
    for s in spans:
        if s.name == "kv.transfer":
            s = ReadableSpan(name=s.name, context=s.context, parent=s.parent, resource=prefill,
                             attributes=s.attributes, events=s.events, links=s.links, kind=s.kind,
                             status=s.status, start_time=s.start_time, end_time=s.end_time,
                             instrumentation_scope=s.instrumentation_scope)
        out.append(s)
    doc = json_format.MessageToDict(encode_spans(out))
    for rs in doc.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
                for link in span.get("links", ()):
                    for key in ("traceId", "spanId"):
                        link[key] = base64.b64decode(link[key]).hex()
    path.write_text(json.dumps(doc))


def _kvtrace(*args: str, cwd: Path) -> str:
    proc = subprocess.run([str(MAIN_VENV_KVTRACE), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)})
    assert proc.returncode == 0, f"kvtrace {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _pages(ranges: Any) -> list[int]:
    r = list(ranges)
    return [p for a, b in zip(r[::2], r[1::2], strict=True) for p in range(a, b + 1)]


# ------------------------------------------------------------------------------------------ tests


@needs_sglang
def test_loaded_by_sglangs_loader_and_every_kv_hook_point_attaches(sg: Any) -> None:
    """SGLang's own load_plugins() found the entry point and ran load(); on 0.5.23 every hook
    point of the default level attaches, and SGLang's registry applied each one."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    rep = sg.plugin.report()
    assert rep["loaded"] and rep["level"] == "kv" and rep["sglang_version"] == "0.5.23"
    kv = [h for h in rep["hooks"] if h["level"] == "kv"]
    assert kv and all(h["status"] == "attached" for h in kv), [h for h in kv if h["status"] != "attached"]
    assert {h["status"] for h in rep["hooks"] if h["level"] != "kv"} == {"off"}
    for h in kv:
        assert h["target"] in HookRegistry._patched, h["target"]


@needs_sglang
def test_report_cli_lists_every_hook_point(sg: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m kvtrace.sglang_plugin --report --json`: each hook point with its status; against
    0.5.23 all of them resolve (the forward/read ones too)."""
    import runpy

    old = sys.argv
    sys.argv = ["kvtrace.sglang_plugin", "--report", "--json"]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_module("kvtrace.sglang_plugin", run_name="__main__")
    finally:
        sys.argv = old
    rows = json.loads(capsys.readouterr().out)
    from kvtrace.sglang_plugin._hooks import HOOKS

    assert [r["target"] for r in rows] == [h.target for h in HOOKS]
    assert {r["status"] for r in rows} == {"available"}, [r for r in rows if r["status"] != "available"]
    assert done.value.code == 0


@needs_sglang
def test_forced_abort_during_transfer_gives_a_page_level_finding(sg: Any, tmp_path: Path) -> None:
    """Bug 1 through SGLang's own objects: decode preallocates A's pages and sends their ids, the
    prefill's write into them is in flight, the client aborts A (receiver.abort, as
    Scheduler.abort_request does), pop_transferred sees the failure, prepare_abort and
    release_kv_cache return A's pages to the front of the free list, B's prealloc takes them, and
    only then does the write end. kvtrace ingests the spans and names pages, culprit and victim."""
    sg.exporter.clear()
    decode = _Decode()
    prefill = _Prefill(delay_s=1.5)

    a = decode.request("req-A", 30, ROOM_A)
    prefill.admit("req-A", 30, ROOM_A)
    a_pages = [int(p) for p in decode.preallocate(a)]
    writer = prefill.write_async(ROOM_A, a_pages)
    assert prefill.engine.started.wait(30), "the transfer never started"

    a.kv_receiver.abort()                                  # client abort while the write runs
    assert decode.transfer_queue.pop_transferred() == []   # poll Failed -> prepare_abort -> release
    assert type(a.req.finished_reason).__name__ == "FINISH_ABORT"
    b = decode.request("req-B", 20, ROOM_B)
    b_pages = [int(p) for p in decode.preallocate(b)]
    shared = sorted(set(a_pages) & set(b_pages))
    assert shared, (a_pages, b_pages)  # the allocator handed A's pages straight to B
    assert writer.is_alive(), "the write ended before the reuse: the test forced nothing"
    writer.join(30)
    for dr in (a, b):
        dr.req.time_stats.trace_ctx.trace_req_finish()

    spans = _flush(sg)
    by = {}
    for s in spans:
        by.setdefault(s.name, []).append(s)
    alloc = {(_attrs(s)["rid"]): s for s in by["kv.alloc"]}
    assert _pages(_attrs(alloc["req-A"])["kv.page_ranges"]) == sorted(a_pages)
    assert _pages(_attrs(alloc["req-B"])["kv.page_ranges"]) == sorted(b_pages)
    (free,) = by["kv.free"]
    fa = _attrs(free)
    assert (fa["rid"], fa["kv.free.mode"], fa["kv.free.reason"]) == ("req-A", "immediate", "aborted")
    assert _pages(fa["kv.page_ranges"]) == sorted(a_pages)
    (abort,) = by["request.abort"]
    ab = _attrs(abort)
    assert (ab["rid"], ab["abort.reason"], ab["kv.poll_state"]) == ("req-A", "client_abort", "Transferring")
    (xfer,) = by["kv.transfer"]
    xa = _attrs(xfer)
    assert (xa["rid"], xa["bootstrap_room"], xa["kv.transfer.dst_instance"], xa["kv.transfer.backend"]) == (
        "req-A", hex(ROOM_A), "decode-0", "mooncake")
    assert _pages(xa["kv.page_ranges"]) == sorted(a_pages)
    assert xa["kv.transfer.bytes"] == len(a_pages) * PAGE * 1024
    assert free.end_time < xfer.end_time and alloc["req-B"].start_time < xfer.end_time
    for s in (*by["kv.alloc"], free, abort):
        assert _attrs(s)["tp_rank"] == 0 and _attrs(s)["kv.pool"] == "kv"
    # they join SGLang's traces: children of the request's root span
    roots = {_attrs(s)["rid"]: s for s in spans if s.name.startswith("decode Req")}
    for s in (alloc["req-A"], free, abort):
        assert s.context.trace_id == roots["req-A"].context.trace_id
        assert s.parent.span_id == roots["req-A"].context.span_id

    traces = tmp_path / "traces"
    traces.mkdir()
    _write_otlp_json(spans, traces / "spans.otlp.json")
    db = tmp_path / "kv.duckdb"
    _kvtrace("ingest", str(traces), "--db", str(db), cwd=tmp_path)
    _kvtrace("analyze", "--db", str(db), cwd=tmp_path)
    out = _kvtrace("findings", "--db", str(db), "--format", "jsonl", cwd=tmp_path)
    findings = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    hits = [f for f in findings if f["kind"] == "abort_before_write_complete"]
    assert len(hits) == 1, findings
    f = hits[0]
    assert (f["instance"], f["tp_rank"], f["kv_pool"], f["culprit_rid"], f["victim_rid"]) == (
        "decode-0", 0, "kv", "req-A", "req-B")
    assert f["pages"] == shared


@needs_sglang
def test_spec_attributes_and_output_text_on_the_root_at_finish(sg: Any) -> None:
    """TokenizerManager.convert_to_span_attrs (the decode root's attributes at finish) gains what
    SGLang computes per request for speculative decoding; the output text only with the switch."""
    from sglang.srt.managers.tokenizer_manager import TokenizerManager
    from sglang.srt.runtime_context import get_spec

    from kvtrace.sglang_plugin import _core

    tm = TokenizerManager.__new__(TokenizerManager)
    tm.enable_trace, tm.served_model_name = True, "m"
    state = types.SimpleNamespace(obj=types.SimpleNamespace(rid="req-S", sampling_params={"max_new_tokens": 64}),
                                  text="the output", text_chunks=[])
    recv = types.SimpleNamespace(completion_tokens=[30], prompt_tokens=[100], cached_tokens=[0],
                                 finished_reasons=[{"type": "length"}], spec_verify_ct=[12], spec_num_correct_drafts=[20])
    with get_spec().override(speculative_num_draft_tokens=4):
        attrs = tm.convert_to_span_attrs(state, recv, 0)
        assert attrs["gen_ai.usage.completion_tokens"] == 30  # SGLang's own attributes stay
        assert (attrs["spec.verify_ct"], attrs["spec.draft_tokens"], attrs["spec.num_proposed_drafts"],
                attrs["spec.num_correct_drafts"]) == (12, 3, 36, 20)
        assert attrs["spec.accept_rate"] == pytest.approx(20 / 36)
        assert attrs["spec.accept_length"] == pytest.approx(30 / 12)
        assert "gen_ai.completion" not in attrs
        _core.CONFIG.output_text = True
        try:
            assert tm.convert_to_span_attrs(state, recv, 0)["gen_ai.completion"] == "the output"
        finally:
            _core.CONFIG.output_text = False


_MISSING_CHILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_sglang_plugin as T

def rename():
    # as if a release moved it: the module no longer has the name, its importers keep theirs
    import sglang.srt.disaggregation.decode, sglang.srt.disaggregation.prefill
    import sglang.srt.mem_cache.common as common
    common.release_kv_cache_moved = common.release_kv_cache
    del common.release_kv_cache

sg = T._boot(Path({tmp!r}), before_load=rename)
decode = T._Decode()
a = decode.request("req-A", 30, T.ROOM_A)
a_pages = [int(p) for p in decode.preallocate(a)]
a.kv_receiver.abort()
decode.transfer_queue.pop_transferred()
b = decode.request("req-B", 20, T.ROOM_B)
b_pages = [int(p) for p in decode.preallocate(b)]
names = sorted(s.name for s in T._flush(sg) if s.name.startswith(("kv.", "request.")))
print("RESULT " + json.dumps({{"hooks": sg.plugin.report()["hooks"], "a": a_pages, "b": b_pages,
                               "aborted": type(a.req.finished_reason).__name__, "spans": names}}))
"""


@needs_sglang
def test_a_missing_hook_target_is_reported_and_the_rest_attach(tmp_path: Path) -> None:
    """A hook target gone from its module (release_kv_cache, renamed): the report says which and
    why, every other hook point attaches, and SGLang's decode path runs as before (A's abort frees
    its pages, B reuses them); only the kv.free spans are missing. Own process: hooks stay applied."""
    code = _MISSING_CHILD.format(tests=str(ROOT / "tests"), tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=540,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    status = {h["target"]: (h["status"], h["detail"]) for h in res["hooks"] if h["level"] == "kv"}
    gone = "sglang.srt.mem_cache.common.release_kv_cache"
    assert status[gone][0] == "missing" and "no attribute 'release_kv_cache'" in status[gone][1]
    assert all(st == "attached" for t, (st, _) in status.items() if t != gone), status
    assert res["aborted"] == "FINISH_ABORT" and set(res["a"]) & set(res["b"])
    assert res["spans"] == ["kv.alloc", "kv.alloc", "request.abort"]


# ----------------------------------------------------- without sglang (the main suite runs these)


def test_page_ranges_are_inclusive_runs() -> None:
    """A 70K-token request's ~1,100 pages are a pair or a few, not ~1,100 integers."""
    import numpy as np

    from kvtrace.sglang_plugin._core import page_ranges, token_pages

    assert page_ranges([14, 15, 16, 44, 90, 17, 18]) == [14, 18, 44, 44, 90, 90]
    assert page_ranges([]) == []
    assert page_ranges(np.arange(1, 1101)) == [1, 1100]
    big = np.concatenate((np.arange(5000, 0, -1), [7000, 7001, 7001]))  # past the plain-Python size
    assert page_ranges(big) == [1, 5000, 7000, 7001]
    assert page_ranges(token_pages(np.arange(64 * 3, 64 * 7), 64)) == [3, 6]


def test_sampling_is_the_same_choice_in_every_process_and_levels_parse() -> None:
    import zlib

    from kvtrace.sglang_plugin import _core

    old = _core.CONFIG
    try:
        _core.CONFIG = _core.Config({"KVTRACE_SGLANG_SAMPLE": "0.25", "KVTRACE_SGLANG_LEVEL": "forward"})
        assert _core.CONFIG.level == 2 and _core.CONFIG.level_name == "forward"
        rids = [f"req-{i}" for i in range(4000)]
        chosen = [r for r in rids if _core.sampled(r)]
        assert 800 < len(chosen) < 1200
        # a function of the rid alone (crc32), so prefill, decode and every TP rank agree
        assert chosen == [r for r in rids if zlib.crc32(r.encode()) < 0.25 * 2**32]
        assert _core.Config({"KVTRACE_SGLANG_LEVEL": "bogus"}).level == 1
        assert _core.Config({}).output_text is False
        assert _core.Config({"KVTRACE_SGLANG_PEERS": "10.0.0.7:17001=decode-0,10.0.0.8=decode-1"}).peers == {
            "10.0.0.7:17001": "decode-0", "10.0.0.8": "decode-1"}
    finally:
        _core.CONFIG = old
