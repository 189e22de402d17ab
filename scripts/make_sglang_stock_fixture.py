#!/usr/bin/env python3
"""Make tests/data/sglang_stock/: traces written by SGLang 0.5.23's own tracing code.

Run with the interpreter of the separate venv that holds the real sglang wheel (see
tests/data/sglang_stock/README.md for how to build it):

    .venv-sglang/bin/python scripts/make_sglang_stock_fixture.py [--out tests/data/sglang_stock]

What it does, in short. No model runs here (no GPU, no weights), so the schedulers' work is
replaced by sleeps, but every span comes from SGLang's own tracing objects, called the way SGLang's
managers call them and in their order:

- `sglang.srt.observability.trace`: `process_tracing_init` (which builds the TracerProvider,
  the BatchSpanProcessor and the OTLP gRPC exporter itself), `trace_set_thread_info`,
  `TraceReqContext` (root, thread spans, slices, events, abort, `__del__`), `TraceNullContext`;
- `sglang.srt.observability.req_time_stats`: `APIServerReqTimeStats` (tokenizer side),
  `SchedulerReqTimeStats` (scheduler side, `new_from_obj` after the pickle hop, every `set_*`
  stage stamp), `set_time_batch`, `set_schedule_time_batch`;
- `sglang.srt.observability.mooncake_trace`: `mooncake_trace_func` (decorating the sender's
  `send`, as `MooncakeKVSender.send` is), `mooncake_trace_slice`, `MooncakeRequestStage`;
- `TokenizerManager.convert_to_span_attrs` (the root's gen_ai.* attributes), the finish reasons
  `FINISH_ABORT` / `FINISH_LENGTH` / `FINISH_MATCHED_TOKEN`, `prepare_abort`, `KVTransferError`.

The few lines of manager code that sit between those calls (who calls what when: the
CommonKVSender's trace calls, the mooncake transfer worker's loop, the prefill/decode failure
branches) are restated below with their source locations; their strings (error messages,
thread labels) are copied verbatim.

Process layout, as a real server has it: each server (prefill-0, decode-0, the unified one) is a
tokenizer process (HTTP server main process: root span, tokenize / api_server_dispatch) and a
scheduler process (multiprocessing spawn, as the Engine launches it: thread spans, stage slices,
and on prefill the mooncake sender + its transfer worker thread). The request's trace context
crosses from tokenizer to scheduler by pickling its time_stats, as `send_pyobj` does. Each process
gets its server's environment (OTEL_RESOURCE_ATTRIBUTES etc.), as a scheduler inherits it.

Capture: this script starts an OTLP/gRPC sink on 127.0.0.1 and passes its address as SGLang's
`otlp_traces_endpoint`; SGLang's own exporter (`GRPCSpanExporter(endpoint, insecure=True)`, the
default protocol) sends to it. The sink stores every ExportTraceServiceRequest body byte for byte
(`*.pbld`, length-delimited) and, converted with google.protobuf.json_format by the OTLP JSON rules
(lowerCamelCase, hex trace/span ids, enums as integers, 64-bit integers as strings), as JSON lines
(`*.jsonl`, one request body per line, as the collector's file exporter writes).

The child processes import sglang with one stub module (torchvision: its PyPI build does not load
beside the CPU torch 2.13 used here, and only `sglang.srt.configs` -> `multimodal/internvl_utils`
imports it at module load); the stub lives only in this script's child processes.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import pickle
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "data" / "sglang_stock"
SGLANG_VERSION = "0.5.23"
SERVED_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
EOS_TOKEN = 128009
STUB_MODULES = ("torchvision",)
TRACE_MODULES = "request,mooncake"

# The PD scenario's requests: client-supplied rids (the router passes the same request body, and
# so the same rid, to prefill and decode), router-chosen bootstrap rooms (random 63-bit ints).
REQ = {
    "C": dict(rid="c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8", room=0x1D2E3F405162738A, prompt=412, cached=0,
              max_new=8, steps=3, finish="stop"),
    "A": dict(rid="a1b2c3d4e5f60718293a4b5c6d7e8f90", room=0x5A3C9E1F07B2D468, prompt=1873, cached=0,
              max_new=64, steps=0, finish="abort"),
    "B": dict(rid="b7e2f9a0c1d24e3f8a5b6c7d8e9f0a1b", room=0x2F6B8D0E4A1C3579, prompt=640, cached=128,
              max_new=16, steps=3, finish="stop"),
    "D": dict(rid="d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f", room=0x7C1E5A3B9D2F4068, prompt=256, cached=0,
              max_new=4, steps=3, finish="length"),
}
WAITING_TIMEOUT_S = 2  # SGLANG_DISAGGREGATION_WAITING_TIMEOUT (an EnvInt, whole seconds; default 300)
A_WRITE_S = 3.4  # how long A's RDMA write (send_kvcache) stalls in the transfer worker
NORMAL_WRITE_S = 0.045


# --------------------------------------------------------------------------------------------
# The OTLP/gRPC sink (orchestrator process)
# --------------------------------------------------------------------------------------------


class OtlpSink:
    """An OTLP/gRPC TraceService on 127.0.0.1 that keeps each Export body verbatim."""

    SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"

    def __init__(self):
        import grpc

        self.bodies: list[tuple[int, bytes]] = []
        self.lock = threading.Lock()

        def export(body: bytes, context):  # request_deserializer=None: raw bytes in
            with self.lock:
                self.bodies.append((time.time_ns(), body))
            return b""  # an empty ExportTraceServiceResponse

        handler = grpc.method_handlers_generic_handler(
            self.SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def take(self) -> list[bytes]:
        with self.lock:
            out = [b for _, b in self.bodies]
            self.bodies.clear()
        return out

    def stop(self):
        self.server.stop(grace=1).wait()


# --------------------------------------------------------------------------------------------
# Child processes (tokenizer / scheduler of one server)
# --------------------------------------------------------------------------------------------


def _install_stubs():
    """Empty-module stand-ins for STUB_MODULES, in this process only. transformers' availability
    probe (importlib.util.find_spec from transformers/utils/import_utils.py) is told the package
    is absent, so transformers does not take the stub for a real torchvision."""
    import importlib.abc
    import importlib.machinery
    import types

    class _Dummy:
        def __init__(self, name):
            self._n = name

        def __getattr__(self, k):
            if k.startswith("__"):
                raise AttributeError(k)
            return _Dummy(f"{self._n}.{k}")

        def __call__(self, *a, **k):
            return _Dummy(f"{self._n}()")

    class _StubModule(types.ModuleType):
        def __getattr__(self, k):
            if k.startswith("__"):
                raise AttributeError(k)
            return _Dummy(f"{self.__name__}.{k}")

    class _Loader(importlib.abc.Loader):
        def create_module(self, spec):
            m = _StubModule(spec.name)
            m.__path__ = []
            return m

        def exec_module(self, module):
            pass

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if not any(name == p or name.startswith(p + ".") for p in STUB_MODULES):
                return None
            f = sys._getframe(1)
            while f is not None:
                if "transformers/utils/import_utils.py" in f.f_code.co_filename:
                    return None
                f = f.f_back
            return importlib.machinery.ModuleSpec(name, _Loader(), is_package=True)

    sys.meta_path.insert(0, _Finder())


class _Req:
    """The few fields of managers.schedule_batch.Req that the code paths used here read."""

    def __init__(self, rid, bootstrap_room, time_stats, prompt_len, cached, max_new):
        self.rid = rid
        self.bootstrap_room = bootstrap_room
        self.time_stats = time_stats
        self.origin_input_ids = [0] * prompt_len
        self.cached_tokens = cached
        self.max_new_tokens = max_new
        self.output_ids: list[int] = []
        self.finished_reason = None
        self.return_logprob = False
        self.disagg_kv_sender = None

    def out(self):
        """What stream_output puts in BatchStrOutput for a finished request."""
        return dict(
            rid=self.rid,
            finished_reason=self.finished_reason.to_json(),
            prompt_tokens=len(self.origin_input_ids),
            completion_tokens=len(self.output_ids),
            cached_tokens=self.cached_tokens,
        )


class _Batch:
    """ScheduleBatch as set_schedule_time_batch reads it: .reqs and .forward_mode."""

    def __init__(self, reqs, forward_mode):
        self.reqs = reqs
        self.forward_mode = forward_mode


def _warm_imports():
    """Import, before the process reports ready, every sglang module the handlers use, so no
    first-call import (seconds here) lands inside a traced interval."""
    import sglang.srt.disaggregation.base.conn
    import sglang.srt.disaggregation.common.conn
    import sglang.srt.disaggregation.utils
    import sglang.srt.environ
    import sglang.srt.managers.schedule_batch
    import sglang.srt.managers.tokenizer_manager
    import sglang.srt.model_executor.forward_batch_info
    import sglang.srt.observability.mooncake_trace
    import sglang.srt.observability.req_time_stats  # noqa: F401


def child_main(conn, kind: str, role: str, endpoint: str):
    """One SGLang process. kind: 'tokenizer' | 'scheduler'; role: 'prefill' | 'decode' | 'unified'."""
    _install_stubs()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)

    _warm_imports()
    from sglang.srt.observability import trace as sgl_trace

    # entrypoints/http_server.py:320-330 (tokenizer, single-tokenizer HTTP server: label "Tokenizer",
    # prefixed "Prefill"/"Decode" with no space) and managers/scheduler.py:6346-6357 (scheduler).
    sgl_trace.process_tracing_init(endpoint, None, trace_modules=TRACE_MODULES)
    if kind == "tokenizer":
        label = {"prefill": "Prefill", "decode": "Decode", "unified": ""}[role] + "Tokenizer"
        sgl_trace.trace_set_thread_info(label)
        handler = _Tokenizer(role)
    else:
        label = {"prefill": "Prefill Scheduler", "decode": "Decode Scheduler", "unified": "Scheduler"}[role]
        # run_scheduler_process(..., tp_rank=0, pp_rank=0, dp_rank=None): no DP controller
        sgl_trace.trace_set_thread_info(label, 0, None, 0)
        handler = _Scheduler(role)
    conn.send(("ready", os.getpid()))
    while True:
        cmd, kwargs = conn.recv()
        if cmd == "shutdown":
            provider = sgl_trace.trace.get_tracer_provider()
            provider.force_flush()
            provider.shutdown()
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", getattr(handler, cmd)(**kwargs)))
        except Exception:  # report, do not hang the orchestrator
            import traceback

            conn.send(("error", traceback.format_exc()))


class _Tokenizer:
    """TokenizerManager's calls on APIServerReqTimeStats (managers/tokenizer_manager.py)."""

    def __init__(self, role):
        from sglang.srt.disaggregation.utils import DisaggregationMode
        from sglang.srt.managers.tokenizer_manager import TokenizerManager

        self.mode = {"prefill": DisaggregationMode.PREFILL, "decode": DisaggregationMode.DECODE,
                     "unified": DisaggregationMode.NULL}[role]
        self.TokenizerManager = TokenizerManager
        # the attributes convert_to_span_attrs reads from the manager
        self.fake_mgr = SimpleNamespace(enable_trace=True, served_model_name=SERVED_MODEL)
        self.states = {}

    def new_request(self, rid, bootstrap_room, sampling_params, tokenize_s=0.002):
        from sglang.srt.observability.req_time_stats import APIServerReqTimeStats

        created_time = time.perf_counter()
        # _init_req_state (tokenizer_manager.py:3840-3845)
        time_stats = APIServerReqTimeStats(disagg_mode=self.mode)
        time_stats.init_trace_ctx(rid, bootstrap_room, None)
        time_stats.set_created_time(created_time)
        obj = SimpleNamespace(rid=rid, sampling_params=sampling_params, stream=False)
        self.states[rid] = SimpleNamespace(obj=obj, time_stats=time_stats)
        time.sleep(tokenize_s)  # tokenization
        time_stats.set_tokenize_finish_time()  # tokenizer_manager.py:1660
        # _send_one_request (tokenizer_manager.py:1785-1796): dispatch, pickle (send_pyobj), done
        time_stats.set_api_server_dispatch_time()
        blob = pickle.dumps(time_stats)
        time_stats.set_api_server_dispatch_finish_time()
        return blob

    def finish(self, out):
        """_handle_batch_output for a finished request (tokenizer_manager.py:2731-2752)."""
        state = self.states.pop(out["rid"])
        first_output_time = time.perf_counter()
        if state.time_stats.first_token_time == 0.0:
            # non-streaming: scheduler time_stats carry no timing without --enable-metrics, so
            # _get_scheduler_first_token_time gives None and the arrival time is used
            state.time_stats.set_first_token_time(ts=first_output_time)
            state.time_stats.set_last_time(ts=first_output_time)
        recv_obj = SimpleNamespace(
            completion_tokens=[out["completion_tokens"]], prompt_tokens=[out["prompt_tokens"]],
            cached_tokens=[out["cached_tokens"]], finished_reasons=[out["finished_reason"]],
        )
        span_attrs = self.TokenizerManager.convert_to_span_attrs(self.fake_mgr, state, recv_obj, 0)
        state.time_stats.set_finished_time(ts=first_output_time, span_attrs=span_attrs)
        return span_attrs


class _KVSenderTraced:
    """The tracing of CommonKVSender (disaggregation/common/conn.py:2109-2468) and
    MooncakeKVSender.send (disaggregation/mooncake/conn.py:3311-3325), over a room status table
    kept like CommonKVManager.request_status."""

    def __init__(self, mgr, bootstrap_room):
        from sglang.srt.disaggregation.base.conn import KVPoll
        from sglang.srt.observability.trace import TraceNullContext, TraceReqContext

        self.kv_mgr = mgr
        self.bootstrap_room = bootstrap_room
        self.conclude_state = None
        # common/conn.py:2127-2137, verbatim but for get_observability().enable_trace (True here)
        self.trace_ctx = TraceNullContext()
        if self.kv_mgr.sender_trace_module:
            self.trace_ctx = TraceReqContext(
                rid=str(hex(self.bootstrap_room)),
                bootstrap_room=self.bootstrap_room,
                role="Sender",
                module_name=self.kv_mgr.sender_trace_module,
            )
            if not self.trace_ctx.tracing_enable:
                self.trace_ctx = TraceNullContext()
        self.trace_ctx.trace_req_start()
        self.kv_mgr.request_status[bootstrap_room] = KVPoll.Bootstrapping

    def _send(self, kv_indices, write_s):
        # CommonKVSender.send -> kv_mgr.add_transfer_request(..., trace_ctx=self.trace_ctx.copy_for_thread())
        self.kv_mgr.add_transfer_request(self.bootstrap_room, kv_indices, write_s,
                                         trace_ctx=self.trace_ctx.copy_for_thread())

    def poll(self):
        """CommonKVSender._poll_with_status (common/conn.py:2349-2382), trace part."""
        from sglang.srt.disaggregation.base.conn import KVPoll

        if self.conclude_state is not None:
            return self.conclude_state
        status = self.kv_mgr.request_status.get(self.bootstrap_room, KVPoll.Failed)
        if status in (KVPoll.Success, KVPoll.Failed):
            self.conclude_state = status
            self.trace_ctx.trace_req_finish()
        return status

    def clear(self):
        self.kv_mgr.request_status.pop(self.bootstrap_room, None)

    def failure_exception(self):
        """common/conn.py:2446-2456."""
        from sglang.srt.disaggregation.base.conn import KVPoll
        from sglang.srt.disaggregation.common.conn import KVTransferError

        self.conclude_state = KVPoll.Failed
        self.clear()
        failure_reason = self.kv_mgr.failure_records.pop(self.bootstrap_room, None)
        self.trace_ctx.trace_req_finish()
        raise KVTransferError(
            self.bootstrap_room,
            failure_reason or "Failed due to an unknown reason from another rank",
            is_from_another_rank=failure_reason is None,
        )


def _decorate_send():
    """MooncakeKVSender.send carries @mooncake_trace_func(MooncakeRequestStage.MOONCAKE_SEND):
    apply SGLang's own decorator to the restated send."""
    from sglang.srt.observability.mooncake_trace import MooncakeRequestStage, mooncake_trace_func

    if not getattr(_KVSenderTraced, "_decorated", False):
        _KVSenderTraced.send = mooncake_trace_func(MooncakeRequestStage.MOONCAKE_SEND)(_KVSenderTraced._send)
        _KVSenderTraced._decorated = True


class _MooncakeKVManagerTraced:
    """The prefill-side room table and the transfer worker thread of MooncakeKVManager
    (disaggregation/mooncake/conn.py:2488-2860), reduced to what its tracing sees: one decode
    session, so one transfer queue (shard = sum of session ports % SGLANG_DISAGGREGATION_QUEUE_SIZE)
    served by one worker thread, in FIFO order."""

    sender_trace_module = "mooncake"  # mooncake/conn.py:254

    def __init__(self, worker_index):
        import queue

        self.request_status = {}
        self.failure_records = {}
        self.concluded = {}  # room -> threading.Event, set when the worker is done with it
        self.queue = queue.Queue()
        self.worker_index = worker_index
        threading.Thread(target=self.transfer_worker, daemon=True).start()

    def add_transfer_request(self, room, kv_indices, write_s, trace_ctx):
        self.concluded.setdefault(room, threading.Event())
        self.queue.put(SimpleNamespace(room=room, kv_indices=kv_indices, write_s=write_s,
                                       is_last_chunk=True, trace_ctx=trace_ctx))

    def transfer_worker(self):
        from sglang.srt.disaggregation.base.conn import KVPoll
        from sglang.srt.observability.mooncake_trace import MooncakeRequestStage, mooncake_trace_slice
        from sglang.srt.observability.trace import trace_set_thread_info

        # mooncake/conn.py:2495-2500: attn_tp_rank 0, attn_dp_rank 0 without DP attention
        trace_set_thread_info(f"mooncake transfer worker {self.worker_index}", tp_rank=0, dp_rank=0)
        while True:
            kv_chunk = self.queue.get()
            kv_chunk.trace_ctx.rebuild_thread_context()
            kv_chunk.trace_ctx.trace_slice_start(
                MooncakeRequestStage.MOONCAKE_WORKER_SEND.stage_name,
                MooncakeRequestStage.MOONCAKE_WORKER_SEND.level,
            )
            if (kv_chunk.room not in self.request_status
                    or self.request_status[kv_chunk.room] == KVPoll.Failed):
                # conn.py:2547-2561: skip a room that already failed
                kv_chunk.trace_ctx.trace_slice_end(
                    MooncakeRequestStage.MOONCAKE_WORKER_SEND.stage_name,
                    MooncakeRequestStage.MOONCAKE_WORKER_SEND.level,
                    thread_finish_flag=True,
                )
                self.concluded[kv_chunk.room].set()
                continue
            for _decode_target in [kv_chunk.room]:  # transfer_infos[room]: one decode rank
                start_ts = time.perf_counter()
                time.sleep(kv_chunk.write_s)  # send_kvcache: batch_transfer_sync of the KV pages
                if kv_chunk.is_last_chunk:  # send_aux, then conclude_transfer(Success)
                    if self.request_status.get(kv_chunk.room) not in (None, KVPoll.Failed):
                        self.request_status[kv_chunk.room] = KVPoll.Success
                # conn.py:2828-2834
                mooncake_trace_slice(
                    kv_chunk.trace_ctx,
                    MooncakeRequestStage.MOONCAKE_WORKER_SEND_SESSION,
                    start_ts,
                )
            # conn.py:2836-2840
            kv_chunk.trace_ctx.trace_slice_end(
                MooncakeRequestStage.MOONCAKE_WORKER_SEND.stage_name,
                MooncakeRequestStage.MOONCAKE_WORKER_SEND.level,
                thread_finish_flag=True,
            )
            self.concluded[kv_chunk.room].set()


class _Scheduler:
    """The Scheduler's stage stamps for one server."""

    def __init__(self, role):
        from sglang.srt.disaggregation.utils import DisaggregationMode

        self.role = role
        self.mode = {"prefill": DisaggregationMode.PREFILL, "decode": DisaggregationMode.DECODE,
                     "unified": DisaggregationMode.NULL}[role]
        self.reqs: dict[str, _Req] = {}
        self.receivers = {}  # decode: rid -> receiver state
        if role == "prefill":
            _decorate_send()
            # decode session "10.0.0.21:17002": 17002 % 4 queues -> transfer worker 2
            self.kv_mgr = _MooncakeKVManagerTraced(worker_index=2)

    # ---- arrival -------------------------------------------------------------------------
    def recv(self, rid, blob, bootstrap_room, prompt_len, cached, max_new):
        """Req.__init__ (managers/schedule_batch.py:1387-1392) + Scheduler._add_request_to_queue
        (managers/scheduler.py:3480-3510)."""
        from sglang.srt.observability.req_time_stats import SchedulerReqTimeStats

        time_stats = SchedulerReqTimeStats.new_from_obj(pickle.loads(blob))
        time_stats.set_metrics_collector(None)
        time_stats.set_scheduler_recv_time()
        req = _Req(rid, bootstrap_room, time_stats, prompt_len, cached, max_new)
        self.reqs[rid] = req
        time.sleep(0.0005)  # request validation, queue bookkeeping
        if self.role == "unified":
            req.time_stats.set_wait_queue_entry_time()
        elif self.role == "prefill":
            # PrefillBootstrapQueue.add creates the kv sender (prefill.py:407-412), then the stamp
            req.disagg_kv_sender = _KVSenderTraced(self.kv_mgr, bootstrap_room)
            req.time_stats.set_prefill_bootstrap_queue_entry_time()
        else:
            # DecodePreallocQueue.add creates the kv receiver (no tracing in it)
            self.receivers[rid] = SimpleNamespace(init_time=None, status=None, conclude_state=None)
            req.time_stats.set_decode_prealloc_queue_entry_time()
        return True

    # ---- decode: prealloc queue -> transfer queue ------------------------------------------
    def decode_bootstrapped_and_allocated(self, rid, alloc_s=0.003):
        """pop_preallocated: receiver poll -> WaitingForInput (decode.py:1155-1157), then _pre_alloc
        and _send_kv_metadata, whose last line stamps the transfer-queue entry (decode.py:1875)."""
        req = self.reqs[rid]
        req.time_stats.set_bootstrap_done_time()
        time.sleep(alloc_s)  # allocate req_to_token slot + KV pages, build page indices
        self.receivers[rid].init_time = time.time()  # CommonKVReceiver.send_metadata
        req.time_stats.set_decode_transfer_queue_entry_time()
        return True

    def decode_kv_status(self, rid, status_name):
        """The prefill's terminal status message for the room (KVPoll.Success) arrives."""
        from sglang.srt.disaggregation.base.conn import KVPoll

        self.receivers[rid].status = getattr(KVPoll, status_name)
        return True

    def decode_wait_transfer(self, rid, poll_interval_s=0.005):
        """DecodeTransferQueue.pop_transferred (decode.py:2833-2930): poll the receiver until the
        transfer concludes (CommonKVReceiver._poll, common/conn.py:2590-2612, with its
        _check_waiting_timeout, common/conn.py:2888-2912). Returns 'success' or the failure."""
        from sglang.srt.disaggregation.base.conn import KVPoll
        from sglang.srt.disaggregation.common.conn import KVTransferError
        from sglang.srt.disaggregation.utils import prepare_abort
        from sglang.srt.environ import envs

        waiting_timeout = envs.SGLANG_DISAGGREGATION_WAITING_TIMEOUT.get()
        rcv = self.receivers[rid]
        req = self.reqs[rid]
        failure_reason = None
        while True:
            if rcv.status == KVPoll.Success:
                break
            elapsed = time.time() - rcv.init_time
            if elapsed >= waiting_timeout:
                failure_reason = (f"Request {req.bootstrap_room} timed out after {elapsed:.1f}s "
                                  f"in KVPoll.WaitingForInput")
                break
            time.sleep(poll_interval_s)
        if failure_reason is None:
            return {"result": "success"}
        # the failure branch of pop_transferred (decode.py:2861-2915); the AbortNotification to
        # the prefill was sent by _check_waiting_timeout
        decode_req = SimpleNamespace(req=req)
        self_tp_rank = 0
        error_message = (
            f"Decode transfer failed for request rank={self_tp_rank} "
            f"{decode_req.req.rid=} {decode_req.req.bootstrap_room=}"
        )
        try:
            raise KVTransferError(req.bootstrap_room, failure_reason, is_from_another_rank=False)
        except Exception as e:
            error_message += f" with exception {e}"
        from http import HTTPStatus

        prepare_abort(decode_req.req, error_message, status_code=HTTPStatus.INTERNAL_SERVER_ERROR)
        out = req.out()
        # stream_output, then the request leaves the queue and its pages are released at once
        # (SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE=False). No code on this path closes the
        # request's scheduler thread span: TraceReqContext.__del__ does, when the Req is collected
        # (abort(abort_info={"reason": "have unclosed span, auto closed"}), status ERROR).
        del decode_req, req
        del self.reqs[rid], self.receivers[rid]
        return {"result": "failed", "out": out, "error_message": error_message}

    def decode_run(self, rid, steps, step_s, finish):
        """After a successful transfer: _commit_transfer_to_req (decode.py:2600-2776), then the
        prebuilt batch (decode.py:3245-3249, 3426; batch_result_processor.py:117-126), then the decode
        steps (set_schedule_time_batch, process_batch_result_decode:
        batch_result_processor.py:1034, 1468)."""
        from sglang.srt.managers.schedule_batch import FINISH_LENGTH, FINISH_MATCHED_TOKEN
        from sglang.srt.model_executor.forward_batch_info import ForwardMode
        from sglang.srt.observability.req_time_stats import set_schedule_time_batch, set_time_batch

        req = self.reqs[rid]
        req.output_ids.append(1000)  # the prefill's first token from the metadata buffer
        req.time_stats.set_wait_queue_entry_time()  # decode_transferred
        del self.receivers[rid]
        time.sleep(0.004)  # waiting queue -> get_new_prebuilt_batch
        set_time_batch([req], "set_forward_entry_time")  # decode_waiting, decode_forward starts
        req.time_stats.set_decode_prebuilt_finish_time()  # process_batch_result_prebuilt
        for i in range(steps):
            set_schedule_time_batch(_Batch([req], ForwardMode.DECODE))
            time.sleep(step_s)  # forward + sample
            req.time_stats.set_last_decode_finish_time()
            last = i == steps - 1
            req.output_ids.append(EOS_TOKEN if (last and finish == "stop") else 1001 + i)
            if last:
                req.finished_reason = (FINISH_MATCHED_TOKEN(matched=EOS_TOKEN) if finish == "stop"
                                       else FINISH_LENGTH(length=len(req.output_ids)))
                req.time_stats.set_completion_time()  # release_kv_cache, then this
        out = req.out()
        del self.reqs[rid]
        return out

    # ---- prefill ---------------------------------------------------------------------------
    def prefill_pop_bootstrapped(self, rid):
        """PrefillBootstrapQueue.pop_bootstrapped: sender poll -> WaitingForInput, finalize_bootstrap
        (prefill.py:436), then the waiting-queue stamp (prefill.py:547)."""
        from sglang.srt.disaggregation.base.conn import KVPoll

        req = self.reqs[rid]
        self.kv_mgr.request_status[req.bootstrap_room] = KVPoll.WaitingForInput  # decode's metadata
        req.disagg_kv_sender.poll()
        req.time_stats.set_bootstrap_done_time()
        req.time_stats.set_wait_queue_entry_time()  # prefill_bootstrap
        return True

    def prefill_forward(self, rids, forward_s, write_s):
        """get_new_batch_prefill (scheduler.py:4332, prefill.py:679), run_batch, then
        process_batch_result_disagg_prefill (prefill.py:971-1074): prefill done, send_kv_chunk
        (last chunk) through the sender, transfer-queue stamp."""
        from sglang.srt.model_executor.forward_batch_info import ForwardMode
        from sglang.srt.observability.req_time_stats import set_schedule_time_batch, set_time_batch

        reqs = [self.reqs[r] for r in rids]
        set_time_batch(reqs, "set_forward_entry_time")  # prefill_waiting, prefill_forward starts
        set_schedule_time_batch(_Batch(reqs, ForwardMode.EXTEND))
        time.sleep(forward_s)  # the prefill forward
        for req in reqs:
            req.time_stats.set_prefill_finished_time()
            req.output_ids.append(1000)
            n_pages = -(-len(req.origin_input_ids) // 64)
            req.disagg_kv_sender.send(list(range(n_pages)), write_s[req.rid])
            req.time_stats.set_prefill_transfer_queue_entry_time()
        return True

    def prefill_abort_notification(self, bootstrap_room):
        """MooncakeKVManager._handle_legacy_abort_notification (mooncake/conn.py:2922-2931): the
        room is marked Failed, no failure record, no tracing."""
        from sglang.srt.disaggregation.base.conn import KVPoll

        status = self.kv_mgr.request_status.get(bootstrap_room)
        if status is not None and status != KVPoll.Success:
            self.kv_mgr.request_status[bootstrap_room] = KVPoll.Failed
        return True

    def prefill_wait_room_worker_done(self, bootstrap_room, timeout_s=30):
        """Block until the transfer worker is done with the room (the orchestrator then forwards
        the terminal status to decode, as conclude_transfer's status message does)."""
        ok = self.kv_mgr.concluded[bootstrap_room].wait(timeout_s)
        return ok

    def prefill_process_inflight(self, rids, poll_interval_s=0.003, timeout_s=30):
        """process_disagg_prefill_inflight_queue (prefill.py:1160-1270) until these reqs conclude,
        with handle_inflight_transfer_failure (prefill.py:1282-1314) for a failed one."""
        from http import HTTPStatus

        from sglang.srt.disaggregation.base.conn import KVPoll
        from sglang.srt.disaggregation.utils import prepare_abort
        from sglang.srt.managers.schedule_batch import FINISH_ABORT, FINISH_LENGTH

        pending = [self.reqs[r] for r in rids]
        done = []
        t_end = time.time() + timeout_s
        while pending and time.time() < t_end:
            still = []
            for req in pending:
                poll = req.disagg_kv_sender.poll()
                if poll in (KVPoll.WaitingForInput, KVPoll.Transferring):
                    still.append(req)
                elif poll == KVPoll.Success:
                    if not isinstance(req.finished_reason, FINISH_ABORT):
                        req.finished_reason = FINISH_LENGTH(length=0)
                    req.disagg_kv_sender.clear()
                    done.append(req)
                    req.time_stats.set_prefill_kv_transfer_finish_time()
                elif poll == KVPoll.Failed:
                    # handle_inflight_transfer_failure, verbatim but for get_parallel().tp_rank (0)
                    error_message = (
                        f"Prefill transfer failed for request rank={0} "
                        f"{req.rid=} {req.bootstrap_room=}"
                    )
                    exc = None
                    try:
                        req.disagg_kv_sender.failure_exception()
                    except Exception as e:
                        exc = e
                        error_message += f" with exception {e}"
                    req.time_stats.trace_ctx.abort(abort_info={"reason": error_message})
                    if req.finished_reason is None:
                        req.finished_reason = FINISH_LENGTH(length=0)
                    if not isinstance(req.finished_reason, FINISH_ABORT):
                        prepare_abort(req, error_message, status_code=HTTPStatus.INTERNAL_SERVER_ERROR)
                    done.append(req)
                else:
                    still.append(req)
            pending = still
            if pending:
                time.sleep(poll_interval_s)
        for req in done:
            req.time_stats.set_completion_time()
        outs = [req.out() for req in done]
        for req in done:
            del self.reqs[req.rid]
        return outs

    # ---- unified ---------------------------------------------------------------------------
    def unified_run(self, rid, queue_s, forward_s, steps, step_s, finish):
        """Non-PD: get_new_batch_prefill (scheduler.py:4332, 4023), process_batch_result_prefill
        (batch_result_processor.py:352), decode steps (set_last_scheduled_time through
        set_schedule_time_batch; batch_result_processor.py:1034, 1468)."""
        from sglang.srt.managers.schedule_batch import FINISH_LENGTH, FINISH_MATCHED_TOKEN
        from sglang.srt.model_executor.forward_batch_info import ForwardMode
        from sglang.srt.observability.req_time_stats import set_schedule_time_batch, set_time_batch

        req = self.reqs[rid]
        time.sleep(queue_s)
        set_time_batch([req], "set_forward_entry_time")
        set_schedule_time_batch(_Batch([req], ForwardMode.EXTEND))
        time.sleep(forward_s)
        req.time_stats.set_prefill_finished_time()
        req.output_ids.append(1000)
        for i in range(steps):
            set_schedule_time_batch(_Batch([req], ForwardMode.DECODE))
            time.sleep(step_s)
            req.time_stats.set_last_decode_finish_time()
            last = i == steps - 1
            req.output_ids.append(EOS_TOKEN if (last and finish == "stop") else 1001 + i)
            if last:
                req.finished_reason = (FINISH_MATCHED_TOKEN(matched=EOS_TOKEN) if finish == "stop"
                                       else FINISH_LENGTH(length=len(req.output_ids)))
                req.time_stats.set_completion_time()
        out = req.out()
        del self.reqs[rid]
        return out


# --------------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------------

_ENV_LOCK = threading.Lock()


class Proc:
    """A spawned SGLang process with a command pipe."""

    def __init__(self, name, kind, role, endpoint, resource_attrs: str | None, extra_env: dict):
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        env = dict(extra_env)
        with _ENV_LOCK:
            saved = dict(os.environ)
            os.environ.pop("OTEL_RESOURCE_ATTRIBUTES", None)
            os.environ.pop("OTEL_SERVICE_NAME", None)
            os.environ.pop("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", None)
            if resource_attrs is not None:
                os.environ["OTEL_RESOURCE_ATTRIBUTES"] = resource_attrs
            os.environ.update(env)
            try:
                self.proc = ctx.Process(target=child_main, args=(child, kind, role, endpoint), name=name)
                self.proc.start()
            finally:
                os.environ.clear()
                os.environ.update(saved)
        self.pid = None

    def wait_ready(self, timeout=600):
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name} did not start")
        status, pid = self.conn.recv()
        self.pid = pid

    def __call__(self, cmd, **kwargs):
        self.conn.send((cmd, kwargs))
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.name}.{cmd} failed:\n{value}")
        return value

    def shutdown(self):
        self("shutdown")
        self.proc.join(30)


def _sampling(max_new):
    return {"max_new_tokens": max_new, "temperature": 0.7, "top_p": 0.9}


def run_pd(endpoint: str) -> dict:
    """Prefill-0 and decode-0, requests C, A (aborted during its transfer), B (admitted on decode-0
    inside the window), D. Returns what the orchestrator knows (rids, rooms, roles)."""
    common_env = {
        "SGLANG_DISAGGREGATION_WAITING_TIMEOUT": str(WAITING_TIMEOUT_S),
        "SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE": "False",
    }
    attrs_p = "host.name=gpu-node-p0,service.instance.id=prefill-0,sglang.role=prefill,service.version=0.5.23"
    attrs_d = "host.name=gpu-node-d0,service.instance.id=decode-0,sglang.role=decode,service.version=0.5.23"
    procs = {
        "p_tok": Proc("prefill-0 tokenizer", "tokenizer", "prefill", endpoint, attrs_p, common_env),
        "p_sch": Proc("prefill-0 scheduler", "scheduler", "prefill", endpoint, attrs_p, common_env),
        "d_tok": Proc("decode-0 tokenizer", "tokenizer", "decode", endpoint, attrs_d, common_env),
        "d_sch": Proc("decode-0 scheduler", "scheduler", "decode", endpoint, attrs_d, common_env),
    }
    for p in procs.values():
        p.wait_ready()
    p_tok, p_sch, d_tok, d_sch = procs["p_tok"], procs["p_sch"], procs["d_tok"], procs["d_sch"]
    log = {}

    def admit(key):
        r = REQ[key]
        sp = _sampling(r["max_new"])
        # the router sends the same body to both servers; decode first, as the PD router does
        blob_d = d_tok("new_request", rid=r["rid"], bootstrap_room=r["room"], sampling_params=sp)
        blob_p = p_tok("new_request", rid=r["rid"], bootstrap_room=r["room"], sampling_params=sp)
        kw = dict(bootstrap_room=r["room"], prompt_len=r["prompt"], cached=r["cached"], max_new=r["max_new"])
        d_sch("recv", rid=r["rid"], blob=blob_d, **kw)
        p_sch("recv", rid=r["rid"], blob=blob_p, **kw)
        time.sleep(0.015)  # bootstrap handshake (decode <-> prefill bootstrap server)
        d_sch("decode_bootstrapped_and_allocated", rid=r["rid"])
        p_sch("prefill_pop_bootstrapped", rid=r["rid"])

    def normal(key, write_s=NORMAL_WRITE_S):
        r = REQ[key]
        admit(key)
        time.sleep(0.004)
        p_sch("prefill_forward", rids=[r["rid"]], forward_s=0.03, write_s={r["rid"]: write_s})
        p_sch("prefill_wait_room_worker_done", bootstrap_room=r["room"])
        d_sch("decode_kv_status", rid=r["rid"], status_name="Success")
        outs = p_sch("prefill_process_inflight", rids=[r["rid"]])
        p_tok("finish", out=outs[0])
        res = d_sch("decode_wait_transfer", rid=r["rid"])
        assert res["result"] == "success", res
        out = d_sch("decode_run", rid=r["rid"], steps=r["steps"], step_s=0.012, finish=r["finish"])
        d_tok("finish", out=out)

    # C: an ordinary request before
    normal("C")
    time.sleep(0.25)

    # A: decode allocates and bootstraps, prefill runs and starts the transfer, whose RDMA write
    # stalls (A_WRITE_S); decode's waiting timeout fires first and it aborts A
    a = REQ["A"]
    admit("A")
    time.sleep(0.004)
    p_sch("prefill_forward", rids=[a["rid"]], forward_s=0.06, write_s={a["rid"]: A_WRITE_S})
    res = d_sch("decode_wait_transfer", rid=a["rid"])  # returns after WAITING_TIMEOUT_S
    assert res["result"] == "failed", res
    log["A_decode_error_message"] = res["error_message"]
    # the AbortNotification reaches prefill's bootstrap thread; the prefill scheduler sees Failed
    time.sleep(0.002)
    p_sch("prefill_abort_notification", bootstrap_room=a["room"])
    outs = p_sch("prefill_process_inflight", rids=[a["rid"]])
    d_tok("finish", out=res["out"])
    p_tok("finish", out=outs[0])

    # B: admitted on decode-0 after A's abort, while A's write is still running
    time.sleep(0.2)
    b = REQ["B"]
    admit("B")
    time.sleep(0.004)
    p_sch("prefill_forward", rids=[b["rid"]], forward_s=0.04, write_s={b["rid"]: 0.06})
    # B's chunk waits in the same transfer queue behind A's stalled write
    p_sch("prefill_wait_room_worker_done", bootstrap_room=a["room"])
    p_sch("prefill_wait_room_worker_done", bootstrap_room=b["room"])
    d_sch("decode_kv_status", rid=b["rid"], status_name="Success")
    outs = p_sch("prefill_process_inflight", rids=[b["rid"]])
    p_tok("finish", out=outs[0])
    res = d_sch("decode_wait_transfer", rid=b["rid"])
    assert res["result"] == "success", res
    out = d_sch("decode_run", rid=b["rid"], steps=b["steps"], step_s=0.012, finish=b["finish"])
    d_tok("finish", out=out)

    # D: an ordinary request after
    time.sleep(0.25)
    normal("D")

    time.sleep(0.1)
    for p in procs.values():
        p.shutdown()
    log["pids"] = {k: p.pid for k, p in procs.items()}
    return log


def run_unified(endpoint: str, resource_attrs: str | None, requests: list[dict]) -> dict:
    procs = {
        "tok": Proc("unified tokenizer", "tokenizer", "unified", endpoint, resource_attrs, {}),
        "sch": Proc("unified scheduler", "scheduler", "unified", endpoint, resource_attrs, {}),
    }
    for p in procs.values():
        p.wait_ready()
    tok, sch = procs["tok"], procs["sch"]
    for r in requests:
        blob = tok("new_request", rid=r["rid"], bootstrap_room=None, sampling_params=_sampling(r["max_new"]))
        sch("recv", rid=r["rid"], blob=blob, bootstrap_room=None, prompt_len=r["prompt"],
            cached=r["cached"], max_new=r["max_new"])
        out = sch("unified_run", rid=r["rid"], queue_s=0.003, forward_s=0.025, steps=r["steps"],
                  step_s=0.011, finish=r["finish"])
        tok("finish", out=out)
        time.sleep(0.05)
    time.sleep(0.1)
    for p in procs.values():
        p.shutdown()
    return {"pids": {k: p.pid for k, p in procs.items()}}


# --------------------------------------------------------------------------------------------
# Writing and reading the capture
# --------------------------------------------------------------------------------------------

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(obj):
    """json_format writes bytes as base64; OTLP JSON wants trace/span ids as hex."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _ID_KEYS and isinstance(v, str):
                obj[k] = base64.b64decode(v).hex()
            else:
                _hex_ids(v)
    elif isinstance(obj, list):
        for v in obj:
            _hex_ids(v)
    return obj


def body_to_otlp_json(body: bytes) -> dict:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    msg = ExportTraceServiceRequest.FromString(body)
    d = json_format.MessageToDict(msg, preserving_proto_field_name=False, use_integers_for_enums=True)
    return _hex_ids(d)


def write_capture(out_dir: Path, stem: str, bodies: list[bytes]):
    def varint(n):
        b = bytearray()
        while True:
            x = n & 0x7F
            n >>= 7
            if n:
                b.append(x | 0x80)
            else:
                b.append(x)
                return bytes(b)

    (out_dir / f"{stem}.pbld").write_bytes(b"".join(varint(len(b)) + b for b in bodies))
    with open(out_dir / f"{stem}.jsonl", "w") as f:
        for b in bodies:
            f.write(json.dumps(body_to_otlp_json(b), separators=(",", ":")) + "\n")


def _anyvalue(v):
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_anyvalue(x) for x in v["arrayValue"].get("values", [])]
    return v


def load_spans(path: Path) -> list[dict]:
    """Flat span dicts from an OTLP JSON lines file (for checks and expected.json)."""
    spans = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        for rs in d.get("resourceSpans", []):
            res = {a["key"]: _anyvalue(a["value"]) for a in rs.get("resource", {}).get("attributes", [])}
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    spans.append(dict(
                        name=s["name"], trace_id=s["traceId"], span_id=s["spanId"],
                        parent=s.get("parentSpanId", ""), start=int(s["startTimeUnixNano"]),
                        end=int(s["endTimeUnixNano"]),
                        attrs={a["key"]: _anyvalue(a["value"]) for a in s.get("attributes", [])},
                        status=s.get("status", {}), events=s.get("events", []), links=s.get("links", []),
                        resource=res, scope=ss.get("scope", {}).get("name"),
                    ))
    return spans


def derive_expected(spans: list[dict], log: dict) -> dict:
    by_id = {s["span_id"]: s for s in spans}

    def root_of(s):
        while s["parent"] and s["parent"] in by_id:
            s = by_id[s["parent"]]
        return s

    def one(pred, what):
        got = [s for s in spans if pred(s)]
        if len(got) != 1:
            raise AssertionError(f"expected one {what}, found {len(got)}")
        return got[0]

    reqs = {}
    for key in ("C", "A", "B", "D"):
        r = REQ[key]
        entry = {"rid": r["rid"], "bootstrap_room": r["room"], "bootstrap_room_hex": hex(r["room"]),
                 "sides": {}}
        for role, inst in (("prefill", "prefill-0"), ("decode", "decode-0")):
            root = one(lambda s: s["name"] == f"{role} Req {r['rid'][:8]}" and not s["parent"],
                       f"{role} root of {key}")
            sched = one(lambda s: root_of(s) is root and s["name"].startswith(
                "Prefill Scheduler" if role == "prefill" else "Decode Scheduler"), f"{role} thread of {key}")
            entry["sides"][role] = {
                "instance": inst,
                "trace_id": root["trace_id"],
                "root_span_id": root["span_id"],
                "root_start_ns": root["start"],
                "root_end_ns": root["end"],
                "finish_reasons_attr": root["attrs"].get("gen_ai.response.finish_reasons"),
                "finish_reason": json.loads(root["attrs"]["gen_ai.response.finish_reasons"])[0],
                "scheduler_thread_span_id": sched["span_id"],
                "scheduler_thread_status": sched["status"],
                "scheduler_thread_end_ns": sched["end"],
                "scheduler_thread_reason_attr": sched["attrs"].get("reason"),
                "stage_slices": {s["name"]: [s["start"], s["end"]] for s in spans
                                 if s["parent"] == sched["span_id"]},
            }
        sender = one(lambda s: s["name"] == f"Sender Req {hex(r['room'])[:8]}" and not s["parent"],
                     f"Sender root of {key}")
        session = one(lambda s: s["name"] == "mooncake_worker_send_session" and root_of(s) is sender,
                      f"send session of {key}")
        entry["sender"] = {"instance": "prefill-0", "trace_id": sender["trace_id"],
                           "root_span_id": sender["span_id"], "root_start_ns": sender["start"],
                           "root_end_ns": sender["end"],
                           "send_session_span_id": session["span_id"],
                           "send_session_start_ns": session["start"],
                           "send_session_end_ns": session["end"]}
        reqs[key] = entry

    A, B = reqs["A"], reqs["B"]
    win_start = A["sides"]["decode"]["scheduler_thread_end_ns"]
    win_end = A["sender"]["send_session_end_ns"]
    checks = {
        "decode aborted A before A's write ended": win_start < win_end,
        "decode root of A ended (abort) before A's write ended": A["sides"]["decode"]["root_end_ns"] < win_end,
        "A's write started before decode aborted A": A["sender"]["send_session_start_ns"] < win_start,
        "B admitted on decode-0 after A's abort": B["sides"]["decode"]["root_start_ns"] > max(
            win_start, A["sides"]["decode"]["root_end_ns"]),
        "B's decode_bootstrap (pages allocated, indices sent) ended inside the window":
            B["sides"]["decode"]["stage_slices"]["decode_bootstrap"][1] < win_end,
        "B's own write started after A's write ended": B["sender"]["send_session_start_ns"] >= win_end,
    }
    bad = [k for k, v in checks.items() if not v]
    if bad:
        raise AssertionError(f"scenario timing not as intended: {bad}")

    def summary(key):
        e = reqs[key]
        return {
            "rid": e["rid"],
            "bootstrap_room": e["bootstrap_room"],
            "bootstrap_room_hex": e["bootstrap_room_hex"],
            "prefill": {k: e["sides"]["prefill"][k] for k in (
                "instance", "trace_id", "root_span_id", "root_start_ns", "root_end_ns", "finish_reason",
                "finish_reasons_attr", "scheduler_thread_status", "scheduler_thread_reason_attr",
                "scheduler_thread_end_ns")},
            "decode": {k: e["sides"]["decode"][k] for k in (
                "instance", "trace_id", "root_span_id", "root_start_ns", "root_end_ns", "finish_reason",
                "finish_reasons_attr", "scheduler_thread_status", "scheduler_thread_reason_attr",
                "scheduler_thread_end_ns")},
            "mooncake_sender": e["sender"],
            **({"decode_stage_slices_ns": e["sides"]["decode"]["stage_slices"]} if key in ("A", "B") else {}),
        }

    return {
        "file": "pd_abort_during_transfer.jsonl",
        "same_spans_verbatim": "pd_abort_during_transfer.pbld",
        "requests": {k: summary(k) for k in ("C", "A", "B", "D")},
        "culprit": {
            "rid": A["rid"], "bootstrap_room": A["bootstrap_room"], "instance": "decode-0",
            "what": "aborted by decode-0 (transfer waiting timeout) while prefill-0's "
                    "mooncake_worker_send_session for its room was still running",
        },
        "candidate_victims": [{
            "rid": B["rid"], "bootstrap_room": B["bootstrap_room"], "instance": "decode-0",
            "what": "admitted on decode-0 (root start, decode_prepare, decode_bootstrap) inside the window",
        }],
        "not_victims": [reqs["C"]["rid"], reqs["D"]["rid"]],
        "window": {
            "instance": "decode-0",
            "start_ns": win_start,
            "start_is": "end of A's decode-0 scheduler thread span (status ERROR): the decode scheduler "
                        "dropped A there (pages released, deferred release off)",
            "decode_root_end_ns": A["sides"]["decode"]["root_end_ns"],
            "decode_root_end_is": "end of A's decode root span (finish_reasons [\"abort\"]), on the decode tokenizer",
            "end_ns": win_end,
            "end_is": "end of mooncake_worker_send_session in A's Sender trace on prefill-0 (its late write ended)",
        },
        "confidence_expected": "possible (no page ids in stock spans)",
        "checks": checks,
        "decode_error_message_not_in_any_span": log.get("A_decode_error_message"),
    }


def describe(spans: list[dict]) -> str:
    """A readable tree of one capture: per trace, spans with status, attrs, events, links."""
    lines = []
    by_trace = {}
    for s in spans:
        by_trace.setdefault(s["trace_id"], []).append(s)
    for tid, ss in sorted(by_trace.items(), key=lambda kv: min(x["start"] for x in kv[1])):
        kids = {}
        for s in ss:
            kids.setdefault(s["parent"], []).append(s)
        ids = {s["span_id"] for s in ss}

        def walk(s, depth):
            st = s["status"].get("code", 0)
            lines.append(f"{'  ' * depth}{s['name']!r} [{s['resource'].get('service.instance.id')}]"
                         f" {(s['end'] - s['start']) / 1e6:.1f}ms status={st}"
                         f"{' msg=' + s['status']['message'] if s['status'].get('message') else ''}"
                         f" attrs={s['attrs']}"
                         f"{' events=' + str([e['name'] for e in s['events']]) if s['events'] else ''}"
                         f"{' links=' + str(len(s['links'])) if s['links'] else ''}")
            for k in sorted(kids.get(s["span_id"], []), key=lambda x: x["start"]):
                walk(k, depth + 1)

        lines.append(f"trace {tid}")
        for r in sorted([s for s in ss if not s["parent"] or s["parent"] not in ids], key=lambda x: x["start"]):
            walk(r, 1)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--describe", action="store_true", help="print the span trees of the written files")
    args = ap.parse_args()

    from importlib.metadata import version  # fail early outside the sglang venv

    assert version("sglang") == SGLANG_VERSION, version("sglang")
    args.out.mkdir(parents=True, exist_ok=True)
    sink = OtlpSink()
    print(f"OTLP/gRPC sink on {sink.endpoint}", flush=True)

    t0 = time.time()
    log = run_pd(sink.endpoint)
    time.sleep(0.5)
    pd_bodies = sink.take()
    write_capture(args.out, "pd_abort_during_transfer", pd_bodies)
    print(f"pd: {len(pd_bodies)} export requests ({time.time() - t0:.0f}s)", flush=True)

    unified_reqs = [
        dict(rid="e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9", prompt=128, cached=0, max_new=8, steps=3, finish="stop"),
        dict(rid="f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4", prompt=96, cached=32, max_new=3, steps=2, finish="length"),
    ]
    run_unified(sink.endpoint,
                "host.name=gpu-node-u0,service.instance.id=unified-0,sglang.role=unified,service.version=0.5.23",
                unified_reqs)
    time.sleep(0.5)
    write_capture(args.out, "unified", sink.take())
    run_unified(sink.endpoint, None,
                [dict(rid="0a1b2c3d4e5f60718293a4b5c6d7e8f9", prompt=64, cached=0, max_new=4, steps=3,
                      finish="length")])
    time.sleep(0.5)
    write_capture(args.out, "unified_no_resource_attrs", sink.take())
    sink.stop()

    spans = load_spans(args.out / "pd_abort_during_transfer.jsonl")
    expected = derive_expected(spans, log)
    expected["unified"] = {
        "file": "unified.jsonl",
        "instance": "unified-0",
        "requests": [{"rid": r["rid"], "root_name": f" Req {r['rid'][:8]}", "finish_reason": r["finish"]}
                     for r in unified_reqs],
    }
    expected["unified_no_resource_attrs"] = {
        "file": "unified_no_resource_attrs.jsonl",
        "instance": None,
        "note": "no OTEL_RESOURCE_ATTRIBUTES: each process (tokenizer, scheduler) has its own random "
                "service.instance.id (UUID v4) from the SDK, no host.name / sglang.role / service.version",
        "requests": [{"rid": "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "root_name": " Req 0a1b2c3d",
                      "finish_reason": "length"}],
    }
    expected["made_with"] = {"sglang": SGLANG_VERSION, "trace_modules": TRACE_MODULES,
                             "SGLANG_DISAGGREGATION_WAITING_TIMEOUT": WAITING_TIMEOUT_S}
    for key in ("unified", "unified_no_resource_attrs"):
        uspans = load_spans(args.out / expected[key]["file"])
        for r in expected[key]["requests"]:
            root = [s for s in uspans if s["name"] == r["root_name"] and not s["parent"]]
            assert len(root) == 1, r
            assert root[0]["attrs"]["gen_ai.response.finish_reasons"] == json.dumps([r["finish_reason"]]), r
        ids = {s["resource"].get("service.instance.id") for s in uspans}
        assert ids == ({"unified-0"} if key == "unified" else ids) and len(ids) == (1 if key == "unified" else 2), ids
    (args.out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print("window:", expected["window"]["start_ns"], "->", expected["window"]["end_ns"],
          f"({(expected['window']['end_ns'] - expected['window']['start_ns']) / 1e6:.0f} ms)")
    if args.describe:
        for stem in ("pd_abort_during_transfer", "unified", "unified_no_resource_attrs"):
            print(f"===== {stem}")
            print(describe(load_spans(args.out / f"{stem}.jsonl")))


if __name__ == "__main__":
    main()
