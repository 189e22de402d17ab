"""Stock-only mode: what an unmodified SGLang 0.5.23 emits, from the same model run.

`StockSglangSink` sits between the model and a real sink (SdkSink or FastJsonSink). The model
emits its kvtrace-convention records as always (same requests, same races, same labels.json,
same span counts in the summary); this sink drops every kvtrace-only record (kv.alloc, kv.free,
kv.transfer, request.abort, hicache.load, forward, forward.read, feedback) and rebuilds, from
the times those records carry, the spans that SGLang's own tracing writes with
`--enable-trace --trace-modules request,mooncake` (sglang/srt/observability/trace.py and the
callers of req_time_stats.py, disaggregation/{prefill,decode}.py, disaggregation/common/conn.py,
disaggregation/mooncake/conn.py). docs/simulator.md ("Stock-only mode") lists the shapes.

How SGLang's TraceReqContext works, and what `_Thread` / `_Ctx` / `_Root` reproduce:
- a request's root span is opened by the tokenizer process ("{role} Req {rid[:8]}", attributes
  `rid`, `module` = "sglang::<module>", `bootstrap_room` = hex(room)); every process (thread)
  that touches the request opens a *thread span* under it (named after its thread label, TP/PP/DP
  ranks, host id and native thread id) and its stage slices go under that thread span; a slice
  opened when no other slice of that thread is open is "first level" and gets a link to the
  previous first-level slice; nested slices (level 2, 3) go under the open slice;
- a slice whose level is above SGLANG_TRACE_LEVEL (default 3) is not emitted at all;
- the context crosses processes pickled (tokenizer -> each TP rank's scheduler): the thread span's
  parent and the first slice's link are then remote span contexts; a copy for another thread
  (scheduler -> mooncake transfer worker) keeps the parent local and makes the link remote;
- abort(abort_info) ends the open slices and the thread span, with status ERROR (no description)
  and the info as attributes; a request context dropped with its thread span still open is closed
  by `__del__` with {"reason": "have unclosed span, auto closed"} (decode after a failed transfer);
- finish attributes go on the root when the tokenizer sees the request finish.

A request's records arrive from the model together (ClusterModel._emit_request: its prefill root
first, then the rest of its prefill records, then its decode records); the batch `forward`
records in between belong to other traces and are dropped. A new prefill root therefore closes
the previous request, and close() the last one. Ids, pids, host ids, UUIDs and the small stock-only
delays (queue polls, IPC hops) come from a generator of their own, so the model's dynamics and
labels are untouched and a seed still gives identical bytes.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field

from opentelemetry.sdk.version import __version__ as SDK_VERSION

from kvtrace.simulator.config import Knobs, SimulatorError
from kvtrace.simulator.model import id_stream
from kvtrace.simulator.records import (
    STATUS_ERROR,
    AttrValue,
    InstanceInfo,
    ResourceAttrs,
    SpanRecord,
    SpanSink,
)

STOCK_SCOPE = "sglang server"  # trace.get_tracer("sglang server") in process_tracing_init
STOCK_SGLANG_VERSION = "0.5.23"
RESOURCE_MODES = ("configured", "unconfigured")
TRACE_LEVELS = (1, 2, 3)  # SGLANG_TRACE_LEVEL; SGLang's default is 3
MODEL_NAME = "deepseek-ai/DeepSeek-V3.2"  # gen_ai.response.model (--served-model-name)
TRANSFER_QUEUES = 4  # mooncake transfer workers per rank; a destination session always maps to one
AUTO_CLOSED = {"reason": "have unclosed span, auto closed"}  # TraceReqContext.__del__
US = 1_000  # ns


def check_stock_options(resources: str, trace_level: int) -> None:
    """Raise SimulatorError for an unknown resource mode or trace level."""
    if resources not in RESOURCE_MODES:
        raise SimulatorError(f"unknown stock resources {resources!r}; choose one of {', '.join(RESOURCE_MODES)}")
    if trace_level not in TRACE_LEVELS:
        raise SimulatorError(f"stock trace level must be 1, 2 or 3 (SGLANG_TRACE_LEVEL), got {trace_level}")


def _int(record: SpanRecord, key: str) -> int:
    value = record.attributes.get(key)
    if not isinstance(value, int):
        raise SimulatorError(f"stock mode: span {record.name!r} lacks the int attribute {key}")
    return value


@dataclass(frozen=True)
class _Thread:
    """TraceThreadInfo of one traced thread, with the Resource of its process."""

    instance: InstanceInfo
    version: str
    resource: ResourceAttrs
    label: str
    host_id: str
    pid: int  # threading.get_native_id()
    tp_rank: int | None = None
    pp_rank: int | None = None
    dp_rank: int | None = None

    @property
    def span_name(self) -> str:  # TraceReqContext.__create_thread_context
        name = self.label
        if self.tp_rank is not None:
            name += f" [TP {self.tp_rank}] "
        if self.pp_rank is not None:
            name += f" [PP {self.pp_rank}] "
        if self.dp_rank is not None:
            name += f" [DP {self.dp_rank}] "
        return name + f"(host:{self.host_id[:8]} | pid:{self.pid})"

    def attributes(self) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {}
        for key, rank in (("tp_rank", self.tp_rank), ("pp_rank", self.pp_rank), ("dp_rank", self.dp_rank)):
            if rank is not None:
                attrs[key] = rank
        attrs.update({"host_id": self.host_id, "pid": self.pid, "thread_label": self.label})
        return attrs


Link = tuple[int, bool]  # (span id, is_remote) of the previous first-level slice


@dataclass
class _Open:
    span_id: int
    name: str
    level: int
    start: int
    parent: int
    link: Link | None


class _Out:
    """Where the emulated spans go: ids from the stock generator, records into the real sink."""

    def __init__(self, sink: SpanSink, rng: random.Random, level: int) -> None:
        self.sink = sink
        self.rng = rng
        self.level = level
        self.spans_by_version: dict[str, int] = {}

    def new_id(self) -> int:  # TraceCustomIdGenerator: getrandbits(64)
        return self.rng.getrandbits(64) or 1

    def emit(self, thread: _Thread, trace_id: int, span_id: int, parent: int | None, name: str, start: int,
             end: int, attrs: dict[str, AttrValue], *, parent_remote: bool = False, link: Link | None = None,
             error: bool = False) -> None:
        self.sink.emit(SpanRecord(
            thread.instance, thread.version, trace_id, span_id, parent, name, start, end, attrs,
            STATUS_ERROR if error else 0, None, [(trace_id, link[0])] if link else [],
            resource=thread.resource, scope=STOCK_SCOPE, parent_remote=parent_remote,
            links_remote=(link[1],) if link else ()))
        self.spans_by_version[thread.version] = self.spans_by_version.get(thread.version, 0) + 1


class _Root:
    """A TraceReqContext's root span (trace_req_start .. trace_req_finish)."""

    def __init__(self, out: _Out, thread: _Thread, name: str, start: int, attrs: dict[str, AttrValue]) -> None:
        self.out, self.thread, self.name, self.start, self.attrs = out, thread, name, start, attrs
        self.trace_id = out.new_id()
        self.span_id = out.new_id()
        self.ctx = _Ctx(self, thread, start, parent_remote=False, last=None)  # the opening thread's context

    def finish(self, ts: int, attrs: dict[str, AttrValue] | None = None) -> None:
        self.ctx.abort(ts)  # trace_req_finish ends the opening thread's span if still open
        if attrs:
            self.attrs.update(attrs)
        self.out.emit(self.thread, self.trace_id, self.span_id, None, self.name, self.start, ts, self.attrs)


class _Ctx:
    """One thread's context within a root's trace: its thread span and slice stack."""

    def __init__(self, root: _Root, thread: _Thread, start: int, *, parent_remote: bool, last: Link | None) -> None:
        self.root, self.thread, self.start = root, thread, start
        self.out = root.out
        self.span_id = self.out.new_id()
        self.parent_remote = parent_remote
        self.last = last
        self.stack: list[_Open] = []
        self.attrs = thread.attributes()
        self.closed = False

    def _begin(self, name: str, level: int, start: int) -> _Open:
        first = not self.stack
        parent = self.span_id if first else self.stack[-1].span_id
        return _Open(self.out.new_id(), name, level, start, parent, self.last if first else None)

    def _end(self, span: _Open, end: int, attrs: dict[str, AttrValue] | None = None) -> None:
        self.out.emit(self.thread, self.root.trace_id, span.span_id, span.parent, span.name, span.start, end,
                      dict(attrs or {}), link=span.link)
        if not self.stack:  # only a first-level slice becomes the next one's predecessor
            self.last = (span.span_id, False)

    def slice(self, name: str, level: int, start: int, end: int, attrs: dict[str, AttrValue] | None = None) -> None:
        """trace_slice: a slice with both ends known."""
        if self.closed or level > self.out.level:
            return
        self._end(self._begin(name, level, start), end, attrs)

    def open(self, name: str, level: int, start: int) -> None:
        """trace_slice_start."""
        if self.closed or level > self.out.level:
            return
        self.stack.append(self._begin(name, level, start))

    def close(self, name: str, level: int, end: int, *, finish: bool = False) -> None:
        """trace_slice_end (finish = thread_finish_flag: the thread span ends with the slice)."""
        if self.closed or level > self.out.level:
            return
        span = self.stack.pop()
        assert (span.name, span.level) == (name, level), (span.name, name)
        self._end(span, end)
        if finish:
            self.abort(end)

    def handoff(self) -> Link | None:
        """The predecessor a pickled or thread copy carries (__getstate__ / copy_for_thread): the
        outermost open slice, else the last first-level one; as a remote span context."""
        span_id = self.stack[0].span_id if self.stack else self.last[0] if self.last else None
        return (span_id, True) if span_id is not None else None

    def abort(self, ts: int, abort_info: dict[str, AttrValue] | None = None) -> None:
        if self.closed:
            return
        while self.stack:
            span = self.stack.pop()
            self.out.emit(self.thread, self.root.trace_id, span.span_id, span.parent, span.name, span.start, ts,
                          {}, link=span.link)
        if abort_info:
            self.attrs.update(abort_info)
        self.out.emit(self.thread, self.root.trace_id, self.span_id, self.root.span_id, self.thread.span_name,
                      self.start, ts, self.attrs, parent_remote=self.parent_remote, error=bool(abort_info))
        self.closed = True

    def in_process(self, thread: _Thread, start: int, handoff: Link | None) -> _Ctx:
        """The context unpickled in another process (tokenizer -> scheduler), from the state `handoff()`
        gave when it was pickled."""
        return _Ctx(self.root, thread, start, parent_remote=True, last=handoff)

    def for_thread(self, thread: _Thread, start: int) -> _Ctx:
        """copy_for_thread + rebuild_thread_context in a worker thread of the same process."""
        return _Ctx(self.root, thread, start, parent_remote=False, last=self.handoff())


@dataclass
class _Request:
    """What the model's records of one request say (times on each host's own clock)."""

    pre: dict[str, SpanRecord] = field(default_factory=dict)  # first record of each name, prefill side
    dec: dict[str, SpanRecord] = field(default_factory=dict)  # same, decode side

    def add(self, rec: SpanRecord) -> None:
        side = self.pre if rec.instance.role == "prefill" else self.dec
        key = "root" if rec.parent_id is None else rec.name
        side.setdefault(key, rec)


@dataclass
class _Deployment:
    """The processes of one instance running one build (a redeploy starts new ones)."""

    host_id: str
    tokenizer: _Thread
    schedulers: list[_Thread]
    workers: dict[tuple[int, int], _Thread] = field(default_factory=dict)  # (tp rank, queue) -> thread


class StockSglangSink:
    """SpanSink: turns the model's kvtrace-convention records into stock SGLang 0.5.23 spans."""

    def __init__(self, inner: SpanSink, knobs: Knobs, scenario: str, seed: int, *, resources: str = "configured",
                 trace_level: int = 3) -> None:
        check_stock_options(resources, trace_level)
        self.inner = inner
        self.k = knobs
        self.resources = resources
        self.rng = id_stream("stock", scenario, seed)
        self.out = _Out(inner, self.rng, trace_level)
        self._hosts: dict[str, str] = {}
        self._deployments: dict[tuple[str, str], _Deployment] = {}
        self._queue_of: dict[tuple[str, str, int, str], int] = {}
        self._request: _Request | None = None

    @property
    def spans_by_version(self) -> dict[str, int]:
        """Stock spans written per service.version (labels.json counts the model's records)."""
        return self.out.spans_by_version

    # ------------------------------------------------------------------ the SpanSink protocol
    def emit(self, record: SpanRecord) -> None:
        if record.parent_id is None and record.name.startswith("prefill Req "):
            self._flush()
            self._request = _Request()
        if record.name in ("forward", "forward.read"):
            return  # batch traces (own trace ids), not part of a request
        if self._request is None:
            raise SimulatorError(f"stock mode: span {record.name!r} arrived before its request's prefill root")
        self._request.add(record)

    def close(self) -> None:
        self._flush()
        self.inner.close()

    def _flush(self) -> None:
        if self._request is not None:
            self._emit_request(self._request)
            self._request = None

    # ------------------------------------------------------------------ processes
    def _uuid4(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _resource(self, inst: InstanceInfo, version: str) -> ResourceAttrs:
        """Resource.create({service.name: ...}) as SGLang calls it, in the SDK's merge order."""
        base = [("telemetry.sdk.language", "python"), ("telemetry.sdk.name", "opentelemetry"),
                ("telemetry.sdk.version", SDK_VERSION)]
        if self.resources == "unconfigured":  # a random UUID per process, service.name "sglang"
            return (*base, ("service.instance.id", self._uuid4()), ("service.name", "sglang"))
        # OTEL_SERVICE_NAME=sglang-<role> and OTEL_RESOURCE_ATTRIBUTES=host.name=..,service.instance.id=..,
        # sglang.role=..,service.version=..: the env value replaces the UUID in place
        return (*base, ("service.instance.id", inst.instance_id), ("host.name", inst.host),
                ("sglang.role", inst.role), ("service.version", version), ("service.name", f"sglang-{inst.role}"))

    def _deployment(self, inst: InstanceInfo, version: str) -> _Deployment:
        key = (inst.instance_id, version)
        dep = self._deployments.get(key)
        if dep is None:
            host_id = self._hosts.setdefault(inst.host, f"{self.rng.getrandbits(128):032x}")  # /etc/machine-id
            role = inst.role.capitalize()
            pid = self.rng.randrange(3_000, 3_000_000)
            # launch_server: the HTTP server's lifespan labels the main thread "Tokenizer", prefixed by role
            tokenizer = _Thread(inst, version, self._resource(inst, version), f"{role}Tokenizer", host_id, pid)
            schedulers = [_Thread(inst, version, self._resource(inst, version), f"{role} Scheduler", host_id,
                                  pid + 60 + 9 * rank + self.rng.randrange(9), tp_rank=rank, pp_rank=0)
                          for rank in range(self.k.tp)]
            dep = self._deployments[key] = _Deployment(host_id, tokenizer, schedulers)
        return dep

    def _worker(self, dep: _Deployment, rank: int, dst: InstanceInfo) -> _Thread:
        """The mooncake transfer worker of prefill rank `rank` that serves destination `dst`."""
        sched = dep.schedulers[rank]
        key = (sched.instance.instance_id, sched.version, rank, dst.instance_id)
        queue = self._queue_of.setdefault(key, self.rng.randrange(TRANSFER_QUEUES))
        thread = dep.workers.get((rank, queue))
        if thread is None:
            thread = dep.workers[(rank, queue)] = _Thread(
                sched.instance, sched.version, sched.resource, f"mooncake transfer worker {queue}", dep.host_id,
                sched.pid + 200 + 17 * queue + self.rng.randrange(17), tp_rank=rank, dp_rank=0)
        return thread

    def _hop(self) -> int:
        """IPC / poll delays SGLang adds between the model's events (0.05 .. 0.5 ms)."""
        return self.rng.randrange(50 * US, 500 * US)

    # ------------------------------------------------------------------ one request
    def _emit_request(self, req: _Request) -> None:
        pre_root, dec_root = req.pre.get("root"), req.dec.get("root")
        if pre_root is None or dec_root is None:
            raise SimulatorError("stock mode: a request's records lack its prefill or decode root")
        p, d = pre_root.instance, dec_root.instance
        rid = str(pre_root.attributes["rid"])
        room = int(str(pre_root.attributes["bootstrap_room"]), 16)
        version = pre_root.version
        abort = req.dec.get("request.abort")
        t_abort_true = abort.start_ns - d.offset_ns if abort is not None else None
        self._emit_prefill(req, p, d, rid, room, version, t_abort_true)
        self._emit_decode(req, d, rid, room, version)

    def _finish_attrs(self, rid: str, prompt: int, cached: int, completion: int, finish: str) -> dict[str, AttrValue]:
        """TokenizerManager.convert_to_span_attrs (sampling params: max_new_tokens set, temperature 0)."""
        return {
            "gen_ai.usage.completion_tokens": completion,
            "gen_ai.usage.prompt_tokens": prompt,
            "gen_ai.usage.cached_tokens": cached,
            "gen_ai.request.id": rid,
            "gen_ai.request.max_tokens": self.k.max_output_tokens,
            "gen_ai.response.model": MODEL_NAME,
            "gen_ai.response.finish_reasons": json.dumps([finish]),
        }

    @staticmethod
    def _latency_attrs(created: int, dispatched: int, first_token: int, finished: int) -> dict[str, AttrValue]:
        """APIServerReqTimeStats.convert_to_gen_ai_span_attrs (seconds, as perf_counter differences)."""
        return {
            "gen_ai.latency.time_to_first_token": (first_token - created) / 1e9,
            "gen_ai.latency.e2e": (finished - created) / 1e9,
            "gen_ai.latency.time_in_model_decode": (finished - first_token) / 1e9,
            "gen_ai.latency.time_in_model_inference": (finished - dispatched) / 1e9,
            "gen_ai.latency.time_in_model_prefill": (first_token - dispatched) / 1e9,
        }

    def _tokenizer(self, dep: _Deployment, role: str, rid: str, room: int, arrive: int, gap: int,
                   split: tuple[float, float, float]) -> tuple[_Root, int, Link | None]:
        """The tokenizer's root and thread span: tokenize, then api_server_dispatch, during which the
        context is pickled to the schedulers, and which ends the thread span (thread_finish_flag).
        Returns the root, the dispatch end and what the pickled context carries."""
        root = _Root(self.out, dep.tokenizer, f"{role} Req {rid[:8]}", arrive,
                     {"rid": rid, "module": "sglang::request", "bootstrap_room": str(hex(room))})
        tokenized, dispatch, dispatched = (arrive + round(gap * f) for f in split)
        root.ctx.open("tokenize", 1, arrive)  # set_created_time
        root.ctx.close("tokenize", 1, tokenized)
        root.ctx.open("api_server_dispatch", 2, dispatch)
        handoff = root.ctx.handoff()
        root.ctx.close("api_server_dispatch", 2, dispatched, finish=True)
        return root, dispatched, handoff

    def _emit_prefill(self, req: _Request, p: InstanceInfo, d: InstanceInfo, rid: str, room: int, version: str,
                      t_abort_true: int | None) -> None:
        dep = self._deployment(p, version)
        root_rec, dec_root = req.pre["root"], req.dec["root"]
        enqueue = root_rec.start_ns
        issue, fwd_end = req.pre["prefill_forward"].start_ns, req.pre["prefill_forward"].end_ns
        arrive = dec_root.start_ns - d.offset_ns + p.offset_ns  # the router sends to both at once
        gap = enqueue - arrive
        root, dispatched, handoff = self._tokenizer(dep, "prefill", rid, room, arrive, gap, (0.45, 0.5, 0.6))
        recv = arrive + round(gap * 0.7)
        # pop_bootstrapped moves it to the waiting queue at the next scheduler pass, then it is scheduled
        wait_entry = enqueue + 30 * US + min(70 * US, (issue - enqueue) // 2)
        forward_entry = max(issue, wait_entry) + 20 * US
        prompt = _int(dec_root, "gen_ai.usage.prompt_tokens")
        cached = _int(dec_root, "gen_ai.usage.cached_tokens")
        transfer = req.pre.get("kv.transfer")
        dropped = transfer is None  # client disconnected during the forward (offload-race)
        poll = self._hop()
        tx_start = tx_end = done = 0
        failed = False
        if transfer is not None:
            tx_start, tx_end = transfer.start_ns, transfer.end_ns
            # decode's ABORT notification (sent at its timeout) reaches prefill; the room fails if the
            # write is still running then, else the transfer had already concluded Success
            arrival = None if t_abort_true is None else t_abort_true + p.offset_ns + self._hop()
            failed = arrival is not None and arrival < tx_end
            done = (arrival if arrival is not None and failed else tx_end) + poll  # the scheduler's poll
        for rank, sched in enumerate(dep.schedulers):
            skew = 2 * US * rank
            ctx = root.ctx.in_process(sched, recv + skew, handoff)  # SchedulerReqTimeStats.new_from_obj
            # CommonKVSender.__init__ (bootstrap queue add): its own trace, root on the scheduler thread
            sender = _Root(self.out, sched, f"Sender Req {hex(room)[:8]}", enqueue - 5 * US + skew,
                           {"rid": hex(room), "module": "sglang::mooncake", "bootstrap_room": str(hex(room))})
            ctx.slice("prefill_prepare", 1, recv + skew, enqueue + skew)
            ctx.slice("prefill_bootstrap", 1, enqueue + skew, wait_entry + skew)
            ctx.slice("prefill_waiting", 1, wait_entry + skew, forward_entry + skew)
            ctx.open("prefill_forward", 1, forward_entry + skew)
            ctx.close("prefill_forward", 1, fwd_end + skew)
            if dropped:  # abort method 3: retired after the forward; sender.abort(), then completion
                sender.ctx.abort(fwd_end + 5 * US + skew, {"reason": "Aborted"})
                sender.finish(fwd_end + 5 * US + skew)
                ctx.abort(fwd_end + 10 * US + skew)
                continue
            self._sender_transfer(dep, sender, rank, d, tx_start + skew, tx_end, failed)
            sender.finish(done + skew)  # _poll_with_status concludes Success or Failed
            if failed:  # handle_inflight_transfer_failure
                msg = (f"Prefill transfer failed for request rank={rank} req.rid={rid!r} req.bootstrap_room={room}"
                       f" with exception KVTransferError(bootstrap_room={room}): Failed due to an unknown reason"
                       f" from another rank")
                ctx.abort(done + 5 * US + skew, {"reason": msg})
            else:
                ctx.slice("prefill_transfer_kv_cache", 1, fwd_end + 20 * US + skew, done + 5 * US + skew)
                ctx.abort(done + 10 * US + skew)  # set_completion_time
        end = (fwd_end + 10 * US if dropped else done + 10 * US) + self._hop()
        finish = "abort" if dropped or failed else "length"
        attrs = self._finish_attrs(rid, prompt, cached, 0 if dropped else 1, finish)
        attrs.update(self._latency_attrs(arrive, dispatched, end, end))  # one output: first token = finish
        root.finish(end, attrs)

    def _sender_transfer(self, dep: _Deployment, sender: _Root, rank: int, dst: InstanceInfo, start: int,
                         write_end: int, failed: bool) -> None:
        """mooncake_send on the scheduler thread, then the transfer worker's mooncake_worker_send with a
        mooncake_worker_send_session per destination session, which ends when the RDMA write ends."""
        sender.ctx.open("mooncake_send", 1, start)
        worker = sender.ctx.for_thread(self._worker(dep, rank, dst), start + 25 * US)  # queued inside send()
        sender.ctx.close("mooncake_send", 1, start + 15 * US)
        worker.open("mooncake_worker_send", 1, start + 25 * US)
        # With DSA the indexer cache goes as a state component after the KV; a room that failed meanwhile
        # (decode's ABORT arrived) then breaks out before the session slice is traced.
        has_state = "index_k" in self.k.pools
        if not (failed and has_state):
            worker.slice("mooncake_worker_send_session", 2, start + 30 * US, write_end)
        worker.close("mooncake_worker_send", 1, write_end + 10 * US, finish=True)

    def _emit_decode(self, req: _Request, d: InstanceInfo, rid: str, room: int, version: str) -> None:
        dep = self._deployment(d, version)
        dec_root = req.dec["root"]
        arrive = dec_root.start_ns
        prealloc = req.dec["kv.alloc"].start_ns
        boot_end = req.dec["decode_bootstrap"].end_ns
        gap = prealloc - arrive
        root, dispatched, handoff = self._tokenizer(dep, "decode", rid, room, arrive, gap, (0.2, 0.25, 0.3))
        recv, prealloc_entry = arrive + round(gap * 0.4), arrive + round(gap * 0.45)
        abort = req.dec.get("request.abort")
        attrs = dec_root.attributes
        prompt = _int(dec_root, "gen_ai.usage.prompt_tokens")
        cached = _int(dec_root, "gen_ai.usage.cached_tokens")
        if abort is not None:
            free = req.dec.get("kv.free")
            deferred = free is not None and free.attributes.get("kv.free.mode") == "deferred"
            # the request object is dropped (and its context auto-closed) at release: at once, or, with
            # deferred release, once the late write drained
            gone = (free.start_ns if deferred and free is not None else abort.start_ns) + 60 * US
            for rank, sched in enumerate(dep.schedulers):
                skew = 2 * US * rank
                ctx = root.ctx.in_process(sched, recv + skew, handoff)
                ctx.slice("decode_prepare", 1, recv + skew, prealloc_entry + skew)
                ctx.slice("decode_bootstrap", 1, prealloc_entry + skew, boot_end + skew)
                ctx.abort(gone + skew, dict(AUTO_CLOSED))
            end = abort.start_ns + 10 * US + self._hop()  # prepare_abort + stream_output
            finish = self._finish_attrs(rid, prompt, cached, 0, "abort")
            finish.update(self._latency_attrs(arrive, dispatched, end, end))
            root.finish(end, finish)
            return
        moved = req.dec["decode_transferred"].end_ns
        start, decode_end = req.dec["decode_forward"].start_ns, req.dec["decode_forward"].end_ns
        steps = attrs.get("spec.step_end_offsets_ns")
        step_ends = [arrive + int(o) for o in steps] if isinstance(steps, list) else [decode_end]
        prebuilt = start + min(300 * US, (step_ends[0] - start) // 4)
        for rank, sched in enumerate(dep.schedulers):
            skew = 2 * US * rank
            ctx = root.ctx.in_process(sched, recv + skew, handoff)
            ctx.slice("decode_prepare", 1, recv + skew, prealloc_entry + skew)
            ctx.slice("decode_bootstrap", 1, prealloc_entry + skew, boot_end + skew)
            ctx.slice("decode_transferred", 1, boot_end + skew, moved + skew)
            ctx.slice("decode_waiting", 1, moved + skew, start + skew)
            ctx.open("decode_forward", 1, start + skew)
            ctx.slice("fake_output", 3, start + skew, prebuilt + skew)  # the prebuilt (first-token) batch
            last = prebuilt
            for ct, step_end in enumerate(step_ends):  # one decode_loop per verify step
                ctx.slice("decode_loop", 3, last + skew, step_end + skew, {"decode_ct": ct})
                last = step_end
            ctx.abort(decode_end + 10 * US + skew)  # set_completion_time closes decode_forward
        first_token = prebuilt + self._hop()
        end = decode_end + 10 * US + self._hop()
        finish_reasons = attrs.get("gen_ai.response.finish_reasons")
        reason = finish_reasons[0] if isinstance(finish_reasons, list) and finish_reasons else "stop"
        finish = self._finish_attrs(rid, prompt, cached, _int(dec_root, "gen_ai.usage.completion_tokens"), str(reason))
        finish.update(self._latency_attrs(arrive, dispatched, max(first_token, dispatched), end))
        root.finish(end, finish)

