"""Discrete-event model of a PD-disaggregated SGLang cluster with HiCache, and its ground truth.

Time inside the model is true time in seconds from the run's start (float); every span is written
on its host's clock: `time_base_ns + round(t * 1e9) + host offset`. One event heap drives all
instances. Per request:

  arrive -> decode prealloc (kv.alloc, page indices sent) -> prefill queue -> [hicache.load] +
  extend forward -> kv.transfer into the decode pages -> decode_transferred | timeout abort ->
  decode (spec steps) -> kv.free.

Bug 1 lives in `_on_abort` (immediate free while the write is in flight) and `_take_pages`
(reuse of those pages); bug 2 in `_prefill_forward` (index_k reads that skip the layer wait).
All randomness that shapes the dynamics comes from one `random.Random(seed)`; ids come from
generators salted with the scenario name (`id_stream`), per-request output detail from generators
seeded by (seed, request index).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvtrace.simulator.allocator import (
    PagedAllocator,
    Runs,
    runs_intersect,
    runs_len,
    runs_pages,
    runs_ranges,
    runs_slice,
)
from kvtrace.simulator.config import PAGE_FORMATS, Knobs, Phase, SimulatorError
from kvtrace.simulator.outputs import completion_text, draw_accept_prob, sample_steps
from kvtrace.simulator.records import STATUS_ERROR, AttrValue, InstanceInfo, SpanRecord, SpanSink

ALLOC_NS = 20_000  # a kv.alloc / kv.free span lasts 20 us


def id_stream(purpose: str, scenario: str, seed: int) -> random.Random:
    """A generator of ids salted with the scenario, so that runs of different scenarios with one seed
    never share a rid, trace id or span id (sample_traces/ is ingested into one store).
    Seeding with a str is deterministic across processes (sha512, not hash())."""
    return random.Random(f"kvtrace-{purpose}:{scenario}:{seed}")


@dataclass
class Race:
    race_id: str
    kind: str
    instance: str
    tp_rank: int
    kv_pool: str
    pages: list[int]
    layers: list[int]
    culprit_rid: str
    victim_rid: str | None  # None for unsafe_free (a near miss has no victim)
    window_start_ns: int
    window_end_ns: int
    service_version: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Request:
    index: int
    rid: str
    room: int
    session: int
    phase: Phase
    prompt: int
    cached: int
    loaded: int
    out_tokens: int
    t_arrive: float
    prefill: Instance | None = None
    decode: Instance | None = None
    t_prealloc: float = 0.0
    dec_runs: Runs = field(default_factory=list)
    out_runs: Runs = field(default_factory=list)
    pre_runs: Runs = field(default_factory=list)
    t_enqueue: float = 0.0
    t_issue: float = 0.0
    load_start: float = 0.0
    load_end: float = 0.0
    load_done: dict[str, list[float]] = field(default_factory=dict)
    fwd_start: float = 0.0
    fwd_end: float = 0.0
    reads: dict[str, list[float]] = field(default_factory=dict)
    batch_id: str = ""
    tx_start: float = 0.0
    tx_end: float = 0.0
    tx_bytes: dict[str, int] = field(default_factory=dict)
    t_abort: float | None = None
    t_dec_free: float = 0.0
    free_mode: str = "immediate"
    t_transferred: float = 0.0
    t_decode_start: float = 0.0
    t_decode_end: float = 0.0
    t_out_alloc: float = 0.0
    accepted: list[int] = field(default_factory=list)
    step_s: float = 0.0
    state: str = "ok"
    cause: str | None = None
    corrupted_at: float | None = None
    feedback: tuple[float, str] | None = None
    victim_of: list[tuple[Request, Runs, float]] = field(default_factory=list)
    t_pre_abort: float | None = None  # client disconnected during the prefill forward (offload-race)
    abort_reason: str = "transfer_timeout"
    poll_state: str = "Transferring"  # KVPoll at the decode-side abort
    reused_in_flight: bool = False  # another request took these decode pages while our write was in flight

    @property
    def aborted(self) -> bool:
        return self.t_abort is not None


@dataclass
class Instance:
    info: InstanceInfo
    index: int
    allocator: PagedAllocator
    queue: deque[Request] = field(default_factory=deque)
    busy: bool = False
    gpu_free: float = 0.0
    load_free: float = 0.0
    active_tx: list[float] = field(default_factory=list)  # heap of in-flight transfer end times
    pending_writes: list[tuple[float, Request]] = field(default_factory=list)
    running: dict[str, Request] = field(default_factory=dict)
    released_reading: list[Request] = field(default_factory=list)  # freed while their forward still reads
    outstanding: int = 0
    batches: int = 0
    tick_scheduled: bool = False

    @property
    def id(self) -> str:
        return self.info.instance_id

    def active_transfers(self, now: float, t: float) -> int:
        """Transfers from this instance still in flight at t (>= now; ended ones are dropped)."""
        while self.active_tx and self.active_tx[0] <= now:
            heapq.heappop(self.active_tx)
        return sum(1 for end in self.active_tx if end > t)


@dataclass
class RunResult:
    knobs: Knobs
    scenario: str
    seed: int
    instances: list[InstanceInfo]
    races: list[Race]
    requests: list[Request]
    spans_by_version: dict[str, int]  # the model's (conventions) spans, what labels.json's summary counts
    stock_spans_by_version: dict[str, int] | None = None  # spans written in stock-only mode (simulator.stock)


class ClusterModel:
    """Runs the phases of one scenario and feeds span records to a sink (None = labels only)."""

    def __init__(self, knobs: Knobs, seed: int, sink: SpanSink | None, scenario: str = "custom",
                 span_budget: int | None = None, page_format: str = "ids") -> None:
        self.k = knobs.validate()
        if page_format not in PAGE_FORMATS:
            raise SimulatorError(f"unknown page format {page_format!r}; choose one of {', '.join(PAGE_FORMATS)}")
        # how kv spans give their page set: kv.page_ids (every id) or kv.page_ranges (inclusive runs)
        self.page_format = page_format
        self.span_budget = span_budget  # fast path: stop issuing requests after this many spans
        self._emitted = 0
        self._in_flight = 0
        self._phase_budget: int | None = None
        self._phase_first_span = 0
        self._phase_first_request = 0
        self.seed = seed
        self.scenario = scenario
        self.sink = sink
        self.rng = random.Random(seed)
        self.names = id_stream("names", scenario, seed)  # rids and bootstrap rooms
        self.ids = id_stream("ids", scenario, seed)  # span and batch trace ids (emission only)
        self.races: list[Race] = []
        self.requests: list[Request] = []
        self.spans_by_version: dict[str, int] = {}
        self.instances = self._make_instances()
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.now = 0.0

    # ---------------------------------------------------------------- cluster set-up
    def _make_instances(self) -> list[InstanceInfo]:
        out: list[InstanceInfo] = []
        for role, count in (("prefill", self.k.prefill), ("decode", self.k.decode)):
            for i in range(count):
                skew = self.rng.gauss(0.0, self.k.clock_skew_ms) if self.k.clock_skew_ms > 0 else 0.0
                out.append(InstanceInfo(f"{role}-{i}", role, f"gpu-{role[0]}{i:02d}", round(skew * 1e6)))
        return out

    def _pool_pages(self) -> int:
        per_req = math.ceil((self.k.max_context + self.k.max_output_tokens) / self.k.page_size)
        return per_req * self.k.concurrency * 2 + 1

    def _fresh_state(self, phase: Phase) -> tuple[list[Instance], list[Instance]]:
        pages = self._pool_pages()
        pre: list[Instance] = []
        dec: list[Instance] = []
        for info in self.instances:
            inst = Instance(info, len(pre) if info.role == "prefill" else len(dec),
                            PagedAllocator(pages, f"{info.instance_id} ({phase.version})"))
            (pre if info.role == "prefill" else dec).append(inst)
        return pre, dec

    # ---------------------------------------------------------------- event loop
    def _at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, args))

    def run(self) -> RunResult:
        t0 = 0.0
        remaining = self.k.requests
        for i, phase in enumerate(self.k.phases):
            share = round(self.k.requests * phase.share) if i < len(self.k.phases) - 1 else remaining
            share = min(share, remaining)
            remaining -= share
            if self.span_budget is not None:
                last = i == len(self.k.phases) - 1
                self._phase_budget = (self.span_budget - self._emitted if last
                                      else round(self.span_budget * phase.share))
            if share > 0:
                t0 = self._run_phase(phase, share, t0) + 60.0
        for req in self.requests:
            if req.state == "ok":
                req.cause = None
        if self.sink is not None:
            self.sink.close()
        return RunResult(self.k, self.scenario, self.seed, self.instances, self.races, self.requests,
                         self.spans_by_version)

    def _run_phase(self, phase: Phase, n_requests: int, t0: float) -> float:
        self.prefills, self.decodes = self._fresh_state(phase)
        self.phase = phase
        self._to_issue = n_requests
        self._phase_first_span = self._emitted
        self._phase_first_request = len(self.requests)
        for s in range(min(self.k.concurrency, n_requests)):
            self._at(t0 + self.rng.uniform(0.0, 2.0), self._arrive, s)
        last = t0
        while self._heap:
            t, _, fn, args = heapq.heappop(self._heap)
            self.now = t
            last = max(last, t)
            fn(*args)
        return last

    # ---------------------------------------------------------------- load
    def _context_tokens(self) -> int:
        k = self.k
        mu = math.log(k.mean_context) - k.context_sigma**2 / 2
        return int(min(k.max_context, max(k.min_context, self.rng.lognormvariate(mu, k.context_sigma))))

    def _arrive(self, session: int) -> None:
        if self._phase_budget is not None and self._over_budget():
            self._to_issue = 0
        if self._to_issue <= 0:
            return
        self._to_issue -= 1
        k, rng = self.k, self.rng
        prompt = self._context_tokens()
        cached = 0
        if rng.random() < k.prefix_hit_prob:
            new = max(min(1024, prompt // 2), int(prompt * min(0.9, rng.expovariate(1.0 / k.new_token_frac))))
            cached = ((prompt - new) // k.page_size) * k.page_size
        loaded = cached if cached and rng.random() < k.l2_hit_prob else 0
        mu = math.log(k.mean_output_tokens) - 0.8**2 / 2
        out_tokens = int(min(k.max_output_tokens, max(8, rng.lognormvariate(mu, 0.8))))
        req = Request(
            index=len(self.requests), rid=f"{self.names.getrandbits(128):032x}",
            room=self.names.getrandbits(63) or 1, session=session, phase=self.phase,
            prompt=prompt, cached=cached, loaded=loaded, out_tokens=out_tokens, t_arrive=self.now,
        )
        self.requests.append(req)
        self._in_flight += 1
        req.prefill = min(self.prefills, key=lambda p: (p.outstanding, p.index))
        req.decode = min(self.decodes, key=lambda d: (d.outstanding, d.index))
        req.prefill.outstanding += 1
        req.decode.outstanding += 1
        self._at(self.now + rng.uniform(0.002, 0.006), self._prealloc, req)
        self._at(self.now + rng.uniform(0.001, 0.003), self._enqueue_prefill, req)

    def _over_budget(self) -> bool:
        """Fast path: will this phase's spans, counting those of requests in flight, reach its budget?"""
        assert self._phase_budget is not None
        done = self._emitted - self._phase_first_span
        finished = len(self.requests) - self._phase_first_request - self._in_flight
        per_request = done / finished if finished > 0 else 45.0
        return done + per_request * self._in_flight >= self._phase_budget

    def _load_per_instance(self) -> float:
        """Requests in flight per instance: what congestion (fabric, host memory) scales with."""
        return self._in_flight / (self.k.prefill + self.k.decode)

    def _pages_for(self, tokens: int) -> int:
        return max(1, math.ceil(tokens / self.k.page_size))

    # ---------------------------------------------------------------- decode side
    def _take_pages(self, req: Request, n_pages: int) -> Runs:
        """Allocate on the decode instance; a page still under a late write makes `req` a victim."""
        dec = req.decode
        assert dec is not None
        runs = dec.allocator.alloc(n_pages)
        dec.pending_writes = [(end, c) for end, c in dec.pending_writes if end > self.now]
        for end, culprit in dec.pending_writes:
            if runs_intersect(culprit.dec_runs, runs):
                culprit.reused_in_flight = True
                req.victim_of.append((culprit, runs, end))
                self._corrupt(req, self.now)
        return runs

    def _corrupt(self, req: Request, t: float) -> None:
        if req.corrupted_at is None or t < req.corrupted_at:
            req.corrupted_at = t

    def _prealloc(self, req: Request) -> None:
        req.t_prealloc = self.now
        req.dec_runs = self._take_pages(req, self._pages_for(req.prompt))

    def _on_tx_done_seen(self, req: Request) -> None:
        req.t_transferred = self.now
        self._at(self.now + self.rng.uniform(0.001, 0.015), self._decode_start, req)

    def _on_abort(self, req: Request) -> None:
        dec = req.decode
        assert dec is not None
        req.t_abort = self.now
        if req.phase.bug1_abort_free:
            req.free_mode, req.t_dec_free = "immediate", self.now
            dec.allocator.free(req.dec_runs)
            if req.tx_end > self.now:
                dec.pending_writes.append((req.tx_end, req))
                self._at(req.tx_end, self._record_near_miss, req)
            self._release_victim_windows(req, req.t_dec_free)
        else:
            req.free_mode, req.t_dec_free = "deferred", req.tx_end + self.rng.uniform(0.0005, 0.003)
            self._at(req.t_dec_free, self._deferred_free, req)
        dec.outstanding -= 1
        self._finish(req)

    def _deferred_free(self, req: Request) -> None:
        assert req.decode is not None
        req.decode.allocator.free(req.dec_runs)
        self._release_victim_windows(req, self.now)

    def _decode_start(self, req: Request) -> None:
        dec, k = req.decode, self.k
        assert dec is not None
        req.t_decode_start = self.now
        extra = self._pages_for(req.prompt + req.out_tokens) - runs_len(req.dec_runs)
        req.t_out_alloc = self.now
        req.out_runs = self._take_pages(req, extra) if extra > 0 else []
        if req.corrupted_at is not None and req.state == "ok":
            req.state = "garbled" if self.rng.random() < k.garbled_share else "repetition"
        p = draw_accept_prob(self.rng, req.state)
        req.accepted = sample_steps(self.seed, req.index, p, req.out_tokens, k.draft_tokens)
        batch = len(dec.running) + 1
        req.step_s = (k.decode_step_ms + k.decode_step_ms_per_req * batch) / 1000 * (1 + req.prompt / 400_000)
        dec.running[req.rid] = req
        if not dec.tick_scheduled and self.sink is not None and k.decode_trace_ms > 0:
            period = k.decode_trace_ms / 1000
            dec.tick_scheduled = True
            self._at((math.floor(self.now / period) + 1) * period, self._decode_tick, dec)
        self._at(self.now + len(req.accepted) * req.step_s, self._decode_end, req)

    def _decode_end(self, req: Request) -> None:
        dec = req.decode
        assert dec is not None
        req.t_decode_end = req.t_dec_free = self.now
        del dec.running[req.rid]
        dec.allocator.free(req.dec_runs + req.out_runs)
        dec.outstanding -= 1
        self._release_victim_windows(req, self.now)
        if req.state != "ok" and self.rng.random() < self.k.feedback_prob:
            req.feedback = (self.now + self.rng.uniform(5.0, 120.0), req.state)
        elif req.state == "ok" and self.rng.random() < self.k.ok_feedback_prob:
            req.feedback = (self.now + self.rng.uniform(5.0, 120.0), "ok")
        self._finish(req)

    def _finish(self, req: Request) -> None:
        self._in_flight -= 1
        if self.sink is not None:
            self._emit_request(req)
        else:  # labels only: keep what labels.json needs, drop the per-step and per-layer detail
            req.accepted, req.reads, req.load_done = [], {}, {}
        self._at(self.now + self.rng.expovariate(1.0 / self.k.think_time_s), self._arrive, req.session)

    def _release_victim_windows(self, victim: Request, t_free: float) -> None:
        """The victim gave its pages back: its unsafe windows end here at the latest."""
        for culprit, runs, write_end in victim.victim_of:
            self._record_bug1(culprit, victim, runs, write_end, t_free)

    def _record_bug1(self, culprit: Request, victim: Request, runs: Runs, write_end: float, t_free: float) -> None:
        dec = victim.decode
        assert dec is not None
        pages = runs_intersect(culprit.dec_runs, runs)
        t_alloc = victim.t_prealloc if runs is victim.dec_runs else victim.t_out_alloc
        start = self._ns(t_alloc, dec.info)
        end = self._ns(min(write_end, t_free), dec.info)
        for rank in range(self.k.tp):
            for pool in self.k.pools:
                race = Race(f"race-{len(self.races) + 1:05d}", "abort_before_write_complete", dec.id, rank, pool,
                            pages, [], culprit.rid, victim.rid, start, end, victim.phase.version)
                self.races.append(race)
                if victim.cause is None:
                    victim.cause = race.race_id
        victim.victim_of = []

    def _record_near_miss(self, culprit: Request) -> None:
        """The late write has landed: if nobody took the freed pages meanwhile, it was a near miss."""
        if culprit.reused_in_flight:
            return
        dec = culprit.decode
        assert dec is not None
        pages = sorted(runs_pages(culprit.dec_runs))
        start, end = self._ns(culprit.t_dec_free, dec.info), self._ns(culprit.tx_end, dec.info)
        for rank in range(self.k.tp):
            for pool in self.k.pools:
                self.races.append(Race(f"race-{len(self.races) + 1:05d}", "unsafe_free", dec.id, rank, pool, pages,
                                       [], culprit.rid, None, start, end, culprit.phase.version))

    # ---------------------------------------------------------------- prefill side
    def _enqueue_prefill(self, req: Request) -> None:
        pre = req.prefill
        assert pre is not None
        req.t_enqueue = self.now
        pre.queue.append(req)
        if not pre.busy:
            self._prefill_forward(pre)

    def _prefill_forward(self, pre: Instance) -> None:
        k, rng = self.k, self.rng
        req = pre.queue.popleft()
        pre.busy = True
        req.t_issue = self.now
        req.pre_runs = pre.allocator.alloc(self._pages_for(req.prompt))
        pre.batches += 1
        req.batch_id = f"{pre.id}-b{pre.batches}"
        # the compute stream is serial: a forward starts after the previous one (still running if its
        # request was aborted mid-forward and the scheduler moved on)
        req.fwd_start = max(self.now + rng.uniform(0.6, 1.4) * k.sched_prep_ms / 1000, pre.gpu_free)
        new_tokens = req.prompt - req.cached
        fwd_time = 0.015 + new_tokens / k.prefill_tokens_per_s * (1 + req.prompt / 131_072)
        per_layer = fwd_time / k.layers
        idx_done: list[float] | None = None
        kv_done: list[float] | None = None
        if req.loaded:
            req.load_start = max(self.now, pre.load_free)
            if not req.phase.bug3_load_nowait_compute:  # the fix: the load stream waits for the compute stream
                req.load_start = max(req.load_start, pre.gpu_free)
            others = pre.active_transfers(self.now, req.load_start)
            pcie = k.pcie_gbps * 1e9 / 8 / (1 + 0.5 * others)  # RDMA DMA shares the host's PCIe
            load = self._load_per_instance()
            l_idx = req.loaded * k.index_k_bytes_per_token_layer / pcie if "index_k" in k.pools else 0.0
            l_kv = req.loaded * k.kv_bytes_per_token_layer / pcie
            total = (l_idx + l_kv) * k.layers
            stall_layer, stall = k.layers, 0.0
            hazard = k.hicache_stall_rate * total * load
            if hazard > 0 and rng.random() < 1 - math.exp(-hazard):
                stall_layer = rng.randrange(k.layers)
                stall = min(2.0, k.hicache_stall_min_ms / 1000 * rng.paretovariate(k.hicache_stall_alpha))
            idx_done, kv_done = [], []
            for layer in range(k.layers):
                base = req.load_start + layer * (l_idx + l_kv) + (stall if layer >= stall_layer else 0.0)
                idx_done.append(base + l_idx)  # index_k of a layer is copied first (small) ...
                kv_done.append(base + l_idx + l_kv)  # ... then its kv; the layer event follows both
            req.load_end = kv_done[-1]
            pre.load_free = req.load_end
            req.load_done = {"kv": kv_done, "index_k": idx_done}
            self._record_write_while_read(req, pre)
        x = req.fwd_start
        idx_reads: list[float] = []
        kv_reads: list[float] = []
        for layer in range(k.layers):
            # indexer first: bug 2 skips wait_until(layer) for index_k; kv always waits.
            if idx_done is not None and not req.phase.bug2_index_nowait:
                x = max(x, idx_done[layer])
            idx_reads.append(x)
            x += 0.08 * per_layer
            if kv_done is not None:
                x = max(x, kv_done[layer])
            kv_reads.append(x)
            x += 0.92 * per_layer
        req.reads = {"kv": kv_reads, "index_k": idx_reads}
        req.fwd_end = pre.gpu_free = x
        if k.client_abort_prob > 0 and rng.random() < k.client_abort_prob:
            # the client goes away after the request's own load, while its forward still reads
            first_read = max(reads[0] for pool, reads in req.reads.items() if pool in k.pools)
            self._at(rng.uniform(max(first_read, req.load_end), req.fwd_end), self._prefill_client_abort, req)
        if idx_done is not None and "index_k" in k.pools:
            self._record_bug2(req, idx_reads, idx_done)
        self._at(req.fwd_end, self._prefill_done, req)

    def _record_bug2(self, req: Request, reads: list[float], done: list[float]) -> None:
        early = [layer for layer, (r, d) in enumerate(zip(reads, done, strict=True)) if r < d]
        if not early:
            return
        pre = req.prefill
        assert pre is not None
        pages = sorted(runs_pages(runs_slice(req.pre_runs, self._pages_for(req.loaded))))
        start = self._ns(min(reads[layer] for layer in early), pre.info)
        end = self._ns(max(done[layer] for layer in early), pre.info)
        self._corrupt(req, reads[early[0]])
        for rank in range(self.k.tp):
            race = Race(f"race-{len(self.races) + 1:05d}", "read_before_load", pre.id, rank, "index_k", pages,
                        early, req.rid, req.rid, start, end, req.phase.version)
            self.races.append(race)
            if req.cause is None:
                req.cause = race.race_id  # cleared again if the request never produced bad output

    def _prefill_client_abort(self, req: Request) -> None:
        """The scheduler drops the request and frees its pages at once, while the GPU still runs its forward."""
        pre = req.prefill
        assert pre is not None
        req.t_pre_abort = self.now
        pre.allocator.free(req.pre_runs)
        pre.released_reading.append(req)
        pre.busy = False
        if pre.queue:
            self._prefill_forward(pre)
        self._at(self.now + self.rng.uniform(0.001, 0.005), self._client_abort_decode, req)

    def _client_abort_decode(self, req: Request) -> None:
        dec = req.decode
        assert dec is not None
        if not req.dec_runs:  # the decode prealloc has not happened yet
            self._at(self.now + 0.005, self._client_abort_decode, req)
            return
        req.t_abort = req.t_dec_free = self.now
        req.abort_reason, req.poll_state, req.free_mode = "client_disconnect", "WaitingForInput", "immediate"
        dec.allocator.free(req.dec_runs)  # nothing was written into them yet: safe
        dec.outstanding -= 1
        self._finish(req)

    def _record_write_while_read(self, loader: Request, pre: Instance) -> None:
        """A load into pages that a released request's forward is still reading (vLLM #47324)."""
        pre.released_reading = [r for r in pre.released_reading if r.fwd_end > self.now]
        loaded = runs_slice(loader.pre_runs, self._pages_for(loader.loaded))
        for reader in pre.released_reading:
            pages = runs_intersect(reader.pre_runs, loaded)
            if not pages or loader.load_start >= reader.fwd_end:
                continue
            assert reader.t_pre_abort is not None
            start = self._ns(max(loader.load_start, reader.t_pre_abort), pre.info)
            for rank in range(self.k.tp):
                for pool in self.k.pools:
                    end = self._ns(min(loader.load_done[pool][-1], reader.fwd_end), pre.info)
                    self.races.append(Race(f"race-{len(self.races) + 1:05d}", "page_hazard", pre.id, rank, pool,
                                           pages, [], loader.rid, reader.rid, start, end, loader.phase.version))

    def _prefill_done(self, req: Request) -> None:
        pre, k, rng = req.prefill, self.k, self.rng
        assert pre is not None
        if req.t_pre_abort is not None:  # dropped mid-forward: pages already freed, no transfer
            pre.outstanding -= 1
            return
        pre.busy = False
        if pre.queue:
            self._prefill_forward(pre)
        req.tx_start = max(self.now, req.t_prealloc + 0.0003)
        others = pre.active_transfers(self.now, req.tx_start)
        per_token = {"kv": k.kv_bytes_per_token_layer, "index_k": k.index_k_bytes_per_token_layer}
        req.tx_bytes = {pool: req.prompt * per_token[pool] * k.layers for pool in k.pools}
        rdma = k.rdma_gbps * 1e9 / 8 / (1 + others)
        base = 0.001 + sum(req.tx_bytes.values()) / rdma * rng.lognormvariate(0.0, 0.15)
        hazard = k.rdma_stall_rate * base * self._load_per_instance()
        stall = 0.0
        if hazard > 0 and rng.random() < 1 - math.exp(-hazard):
            stall = min(30.0, k.rdma_stall_min_s * rng.paretovariate(k.rdma_stall_alpha))
        req.tx_end = req.tx_start + base + stall
        heapq.heappush(pre.active_tx, req.tx_end)
        self._at(req.tx_end, self._prefill_free, req)
        seen = req.tx_end + rng.uniform(0.0005, 0.005)
        deadline = req.tx_start + k.transfer_timeout_s
        if seen <= deadline:
            self._at(seen, self._on_tx_done_seen, req)
        else:
            self._at(deadline + rng.uniform(0.0, 0.005), self._on_abort, req)

    def _prefill_free(self, req: Request) -> None:
        assert req.prefill is not None
        req.prefill.allocator.free(req.pre_runs)
        req.prefill.outstanding -= 1

    # ---------------------------------------------------------------- emission helpers
    def _ns(self, t: float, inst: InstanceInfo) -> int:
        return self.k.time_base_ns + round(t * 1e9) + inst.offset_ns

    def _span_id(self) -> int:
        return self.ids.getrandbits(64) or 1

    def _emit(self, inst: InstanceInfo, version: str, trace_id: int, parent: int | None, name: str,
              start_ns: int, end_ns: int, attrs: dict[str, AttrValue], *, status: int = 0,
              message: str | None = None, links: list[tuple[int, int]] | None = None) -> int:
        span_id = self._span_id()
        assert self.sink is not None
        self.sink.emit(SpanRecord(inst, version, trace_id, span_id, parent, name, start_ns, end_ns, attrs,
                                  status, message, links or []))
        self.spans_by_version[version] = self.spans_by_version.get(version, 0) + 1
        self._emitted += 1
        return span_id

    def _page_attr(self, runs: Runs) -> tuple[str, list[int]]:
        """The page set attribute of `runs`: ("kv.page_ids", every id in run order) or
        ("kv.page_ranges", inclusive pairs), per page_format."""
        if self.page_format == "ranges":
            return "kv.page_ranges", runs_ranges(runs)
        return "kv.page_ids", runs_pages(runs)

    def _kv_spans(self, inst: InstanceInfo, version: str, trace: int, parent: int, name: str, start_ns: int,
                  end_ns: int, rid: str, runs: Runs, extra: Callable[[str, int], dict[str, AttrValue]]) -> None:
        key, pages = self._page_attr(runs)
        for rank in range(self.k.tp):
            for pool in self.k.pools:
                attrs: dict[str, AttrValue] = {"rid": rid, "tp_rank": rank, "kv.pool": pool, key: pages}
                attrs.update(extra(pool, rank))
                self._emit(inst, version, trace, parent, name, start_ns, end_ns, attrs)

    def _emit_request(self, req: Request) -> None:
        self._emit_prefill(req)
        self._emit_decode(req)

    def _emit_prefill(self, req: Request) -> None:
        pre, dec, k = req.prefill, req.decode, self.k
        assert pre is not None and dec is not None
        p, v, trace = pre.info, req.phase.version, req.room

        def ns(t: float) -> int:
            return self._ns(t, p)

        room = f"{req.room:016x}"
        dropped = req.t_pre_abort is not None
        root_end = ns(req.fwd_end) if dropped else ns(req.tx_end) + 200_000
        root = self._emit(p, v, trace, None, f"prefill Req {req.rid[:8]}", ns(req.t_enqueue), root_end,
                          {"rid": req.rid, "bootstrap_room": room}, status=STATUS_ERROR if dropped else 0,
                          message="client disconnected" if dropped else None)
        boot = self._emit(p, v, trace, root, "prefill_bootstrap", ns(req.t_enqueue),
                          ns(max(req.t_enqueue, req.t_prealloc) + 0.0002),
                          {"rid": req.rid, "bootstrap_room": room})
        fwd = self._emit(p, v, trace, root, "prefill_forward", ns(req.t_issue), ns(req.fwd_end),
                         {"rid": req.rid, "bootstrap_room": room}, links=[(trace, boot)])
        if not dropped:
            self._emit(p, v, trace, root, "prefill_transfer_kv_cache", ns(req.tx_start), ns(req.tx_end),
                       {"rid": req.rid, "bootstrap_room": room}, links=[(trace, fwd)])
        pages = req.pre_runs
        self._kv_spans(p, v, trace, root, "kv.alloc", ns(req.t_issue), ns(req.t_issue) + ALLOC_NS, req.rid, pages,
                       lambda pool, rank: {"kv.page_size": k.page_size})
        if req.loaded:
            loaded_key, loaded = self._page_attr(runs_slice(req.pre_runs, self._pages_for(req.loaded)))
            start = ns(req.load_start)
            for rank in range(k.tp):
                for pool in k.pools:
                    offsets = [ns(t) - start for t in req.load_done[pool]]
                    self._emit(p, v, trace, root, "hicache.load", start, start + offsets[-1],
                               {"rid": req.rid, "tp_rank": rank, "kv.pool": pool, loaded_key: loaded,
                                "hicache.direction": "L2_to_L1", "hicache.num_tokens": req.loaded,
                                "hicache.layer_done_offsets_ns": offsets})
        for rank in range(k.tp):
            batch_trace = self.ids.getrandbits(64) or 1
            f_start, f_end = ns(req.fwd_start), ns(req.fwd_end)
            parent = self._emit(p, v, batch_trace, None, "forward", f_start, f_end,
                                {"tp_rank": rank, "forward.rids": [req.rid], "forward.mode": "extend",
                                 "forward.batch_id": req.batch_id})
            for pool in k.pools:
                offsets = [ns(t) - f_start for t in req.reads[pool]]
                self._emit(p, v, batch_trace, parent, "forward.read", f_start + offsets[0], f_end,
                           {"tp_rank": rank, "kv.pool": pool, "forward.layer_read_offsets_ns": offsets})
        if req.t_pre_abort is not None:
            at = ns(req.t_pre_abort)
            self._kv_spans(p, v, trace, root, "kv.free", at, at + ALLOC_NS, req.rid, pages,
                           lambda pool, rank: {"kv.free.mode": "immediate", "kv.free.reason": "aborted"})
            return
        self._kv_spans(p, v, trace, root, "kv.transfer", ns(req.tx_start), ns(req.tx_end), req.rid, req.dec_runs,
                       lambda pool, rank: {"bootstrap_room": room, "kv.transfer.dst_instance": dec.id,
                                           "kv.transfer.dst_rank": rank, "kv.transfer.bytes": req.tx_bytes[pool],
                                           "kv.transfer.backend": "mooncake"})
        self._kv_spans(p, v, trace, root, "kv.free", ns(req.tx_end) + 50_000, ns(req.tx_end) + 50_000 + ALLOC_NS,
                       req.rid, pages, lambda pool, rank: {"kv.free.mode": "immediate", "kv.free.reason": "finished"})

    def _emit_decode(self, req: Request) -> None:
        dec, k = req.decode, self.k
        assert dec is not None
        d, v, trace = dec.info, req.phase.version, req.room

        def ns(t: float) -> int:
            return self._ns(t, d)

        room = f"{req.room:016x}"
        end = req.t_abort if req.t_abort is not None else req.t_decode_end
        root_attrs: dict[str, AttrValue] = {"rid": req.rid, "bootstrap_room": room}
        root_attrs.update(self._finish_attrs(req))
        root = self._emit(d, v, trace, None, f"decode Req {req.rid[:8]}", ns(req.t_arrive), ns(end), root_attrs,
                          status=STATUS_ERROR if req.aborted else 0,
                          message=(("KV transfer timed out" if req.abort_reason == "transfer_timeout"
                                    else "client disconnected") if req.aborted else None))
        ids = {"rid": req.rid, "bootstrap_room": room}
        boot_end = ns(req.t_prealloc) + ALLOC_NS + 5_000  # page indices sent right after the alloc
        boot = self._emit(d, v, trace, root, "decode_bootstrap", ns(req.t_arrive), boot_end, dict(ids))
        pages = req.dec_runs
        alloc_at = ns(req.t_prealloc)
        self._kv_spans(d, v, trace, root, "kv.alloc", alloc_at, alloc_at + ALLOC_NS, req.rid, pages,
                       lambda pool, rank: {"kv.page_size": k.page_size})
        if req.t_abort is not None:
            self._emit(d, v, trace, root, "request.abort", ns(req.t_abort), ns(req.t_abort) + 50_000,
                       {"rid": req.rid, "tp_rank": 0, "abort.reason": req.abort_reason,
                        "kv.poll_state": req.poll_state})
            self._kv_spans(d, v, trace, root, "kv.free", ns(req.t_dec_free), ns(req.t_dec_free) + ALLOC_NS, req.rid,
                           pages, lambda pool, rank: {"kv.free.mode": req.free_mode, "kv.free.reason": "aborted"})
            return
        moved = self._emit(d, v, trace, root, "decode_transferred", boot_end, ns(req.t_transferred),
                           dict(ids), links=[(trace, boot)])
        wait = self._emit(d, v, trace, root, "decode_waiting", ns(req.t_transferred), ns(req.t_decode_start),
                          dict(ids), links=[(trace, moved)])
        self._emit(d, v, trace, root, "decode_forward", ns(req.t_decode_start), ns(req.t_decode_end), dict(ids),
                   links=[(trace, wait)])
        if req.out_runs:
            at = ns(req.t_out_alloc)
            self._kv_spans(d, v, trace, root, "kv.alloc", at, at + ALLOC_NS, req.rid, req.out_runs,
                           lambda pool, rank: {"kv.page_size": k.page_size})
        at = ns(req.t_decode_end)
        self._kv_spans(d, v, trace, root, "kv.free", at, at + ALLOC_NS, req.rid, req.dec_runs + req.out_runs,
                       lambda pool, rank: {"kv.free.mode": "immediate", "kv.free.reason": "finished"})
        if req.feedback is not None:
            t_fb, label = req.feedback
            self._emit(d, v, trace, root, "feedback", ns(t_fb), ns(t_fb) + 1000,
                       {"rid": req.rid, "feedback.label": label})

    def _finish_attrs(self, req: Request) -> dict[str, AttrValue]:
        k = self.k
        attrs: dict[str, AttrValue] = {
            "gen_ai.usage.prompt_tokens": req.prompt,
            "gen_ai.usage.cached_tokens": req.cached,
        }
        if req.t_abort is not None:
            attrs["gen_ai.usage.completion_tokens"] = 0
            attrs["gen_ai.response.finish_reasons"] = ["abort"]
            attrs["gen_ai.latency.e2e"] = round(req.t_abort - req.t_arrive, 6)
            return attrs
        steps = len(req.accepted)
        correct = sum(req.accepted)
        proposed = steps * (k.draft_tokens - 1)
        finish = "length" if req.out_tokens >= k.max_output_tokens else "stop"
        offsets = [round((i + 1) * req.step_s * 1e9) for i in range(steps)]
        offset0 = round((req.t_decode_start - req.t_arrive) * 1e9)
        attrs.update({
            "gen_ai.usage.completion_tokens": req.out_tokens,
            "gen_ai.response.finish_reasons": [finish],
            "gen_ai.latency.time_to_first_token": round(req.t_decode_start + req.step_s - req.t_arrive, 6),
            "gen_ai.latency.e2e": round(req.t_decode_end - req.t_arrive, 6),
            "spec.verify_ct": steps,
            "spec.num_proposed_drafts": proposed,
            "spec.num_correct_drafts": correct,
            "spec.accept_rate": round(correct / proposed, 6) if proposed else 0.0,
            "spec.accept_length": round(req.out_tokens / steps, 6),
            "spec.draft_tokens": k.draft_tokens,
            "spec.accepted_per_step": req.accepted,
            "spec.step_end_offsets_ns": [offset0 + o for o in offsets],
        })
        if k.completion_chars > 0:
            attrs["gen_ai.completion"] = completion_text(self.seed, req.index, req.state, k.completion_chars)
        return attrs

    def _decode_tick(self, dec: Instance) -> None:
        """A traced decode step: which requests' pages the batch read (sampled every decode_trace_ms)."""
        if not dec.running:
            dec.tick_scheduled = False
            return
        k = self.k
        d = dec.info
        rids = sorted(dec.running)
        step = max(r.step_s for r in dec.running.values())
        dec.batches += 1
        version = self.phase.version
        start = self._ns(self.now, d)
        end = start + round(step * 1e9)
        per_layer = round(step * 1e9 / k.layers)
        for rank in range(k.tp):
            trace = self.ids.getrandbits(64) or 1
            parent = self._emit(d, version, trace, None, "forward", start, end,
                                {"tp_rank": rank, "forward.rids": rids, "forward.mode": "decode",
                                 "forward.batch_id": f"{dec.id}-b{dec.batches}"})
            for pool in k.pools:
                shift = 0 if pool == "index_k" else per_layer // 10
                offsets = [layer * per_layer + shift for layer in range(k.layers)]
                self._emit(d, version, trace, parent, "forward.read", start + offsets[0], end,
                           {"tp_rank": rank, "kv.pool": pool, "forward.layer_read_offsets_ns": offsets})
        self._at(self.now + k.decode_trace_ms / 1000, self._decode_tick, dec)

