"""The torch executor: re-execute a plan's lane programs on a GPU. Needs torch and nothing else.

One pool tensor per KV pool, shape [pages, layers, 4 + D] float32. Every lane is its own CUDA
stream; recorded gaps become `cuda._sleep` busy-waits (calibrated in-process after a warm-up,
the achieved lane timings checked with CUDA events); ordering edges become events recorded on one
stream and awaited on another. As-recorded mode has only the edges that existed; fixed mode adds
the fix's (replay.plan.fix_edges). Every write first gathers its cells' tags into a witness buffer
on its own stream (so does every free: what the request held when it let go), every read copies its
cells into its own buffer, so after the replay the host knows what each write overwrote, what each
request held at its release and each read saw, and the final pool says who holds what.

All work is enqueued behind a gate (a sleep on the launching stream that every lane waits for), so
host launch overhead cannot reorder the replay; a gate that ran out before the host finished
enqueueing is detected and the replay repeated with a longer gate.

`sanitize=True` is for runs under PyTorch's CUDA stream sanitizer (TORCH_CUDA_SANITIZER=1): every
access then goes through a view of one (page, layer) cell, because CSAN tracks accesses by the data
pointer of the tensor an op touches; its verdict is thereby per cell, not per pool. Each CSAN report
is caught, mapped back to its cell and lanes, and the replay goes on.

`device="cpu"` runs the same tensor code serially in the CPU executor's predicted order (no streams,
no timing): it exists so that the tensor paths are tested where there is no GPU.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kvtrace.replay.cpu import Schedule, schedule
from kvtrace.replay.plan import Action, Key, Plan, PlanError, Program, compile_plan, launch_order
from kvtrace.replay.verdict import ACTION_KIND, CELL_WIDTH, Observations, cell, initial_tags

# Every lane is a stream, and lanes must run concurrently: with the default 8 hardware queues, the
# streams of a plan with more lanes share queues and serialize (or stall behind each other's event
# waits). 32 is the most CUDA allows; read when the CUDA context is created (lazily, after import).
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")
MAX_LANES = 31  # + the launching stream

# torch.cuda's stream/event API is untyped; one Any-typed handle keeps the checker honest elsewhere.
cuda: Any = torch.cuda

MIN_SLEEP_NS = 2_000  # shorter gaps are below a kernel launch; they are not slept


@dataclass
class _Prepared:
    idx: torch.Tensor
    src: torch.Tensor | None  # [n, layers, E] for stamp/poison/write
    out: torch.Tensor | None  # witness (write) or read buffer, [n, layers, E]
    pages: tuple[int, ...]
    rows: tuple[int, ...]


@dataclass
class GpuRun:
    obs: Observations
    gpu_ms: float | None
    timing: dict[str, Any] = field(default_factory=dict)
    sanitizer: list[dict[str, Any]] | None = None


class Replayer:
    """Holds a plan's device buffers; runs it as many times as asked (modes, time scales, jitter)."""

    def __init__(self, plan: Plan, device: str = "cuda", sanitize: str | None = None) -> None:
        """`sanitize`: None, "cell" (every access through a (page, layer) view) or "pool" (the
        production layout: whole-pool index ops, which CSAN sees as one tensor)."""
        self.plan = plan
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.sanitize = sanitize
        self.codes = plan.rid_codes()
        self.rows = {pool: {p: i for i, p in enumerate(pages)} for pool, pages in plan.pool_pages().items()}
        L = plan.num_layers
        init = initial_tags(plan)
        self.init: dict[str, torch.Tensor] = {}
        for pool, pages in plan.pool_pages().items():
            host = torch.tensor(
                [[cell(init[(pool, p, layer)][0], p, layer, init[(pool, p, layer)][1]) for layer in range(L)] for p in pages],
                dtype=torch.float32,
            )
            self.init[pool] = host.to(self.device)
        self.pools = {pool: t.clone() for pool, t in self.init.items()}
        self.prepared: dict[tuple[int, str, tuple[int, ...]], _Prepared] = {}
        self.streams: dict[str, Any] = {}
        self.cycles_per_ms: float | None = None
        self.gate_ns = 50_000_000
        self._cell_of_ptr: dict[int, tuple[str, int, int]] = {}
        self._graphs: dict[int, tuple[Program, float, Any]] = {}  # id(program) -> (program, scale, graph)
        self._pool_of_op = {o.id: o.kv_pool for o in plan.ops}
        if sanitize == "pool":
            for pool, t in self.pools.items():
                self._cell_of_ptr[t.data_ptr()] = (pool, -1, -1)
        elif sanitize == "cell":
            for pool, t in self.pools.items():
                for p, r in self.rows[pool].items():
                    for layer in range(L):
                        self._cell_of_ptr[t[r, layer].data_ptr()] = (pool, p, layer)

    # ---- buffers ---------------------------------------------------------------------------------------------
    def _prep(self, a: Action) -> _Prepared:
        key = (a.op_id, a.kind, a.layers)
        got = self.prepared.get(key)
        if got is not None:
            return got
        rows = tuple(self.rows[a.kv_pool][p] for p in a.pages)
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        src = out = None
        n, nl = len(a.pages), len(a.layers)
        if a.kind != "read":
            code = self.codes[a.rid]
            kind = ACTION_KIND[a.kind]
            src = torch.tensor(
                [[cell(code, p, layer, kind) for layer in a.layers] for p in a.pages], dtype=torch.float32
            ).to(self.device)
        if a.kind in ("write", "poison", "read"):
            out = torch.full((n, nl, CELL_WIDTH), -1.0, dtype=torch.float32, device=self.device)
        got = _Prepared(idx, src, out, a.pages, rows)
        self.prepared[key] = got
        return got

    def prepare(self, program: Program) -> None:
        for prog in program.lanes.values():
            for kind, arg in prog:
                if kind == "act":
                    self._prep(arg)

    # ---- one effect ------------------------------------------------------------------------------------------
    def _act(self, a: Action) -> None:
        pr = self._prep(a)
        pool = self.pools[a.kv_pool]
        if self.sanitize == "cell":
            self._act_per_cell(a, pr, pool)
            return
        if self.sanitize == "pool":
            self._guard(a, lambda: self._act_pool(a, pr, pool))
            return
        self._act_pool(a, pr, pool)

    def _act_pool(self, a: Action, pr: _Prepared, pool: torch.Tensor) -> None:
        if len(a.layers) == self.plan.num_layers:
            view = pool
            src, out = pr.src, pr.out
        else:
            (layer,) = a.layers
            view = pool[:, layer]
            src = None if pr.src is None else pr.src[:, 0]
            out = None if pr.out is None else pr.out[:, 0]
        if out is not None:
            torch.index_select(view, 0, pr.idx, out=out)
        if src is not None:
            view.index_copy_(0, pr.idx, src)

    def _act_per_cell(self, a: Action, pr: _Prepared, pool: torch.Tensor) -> None:
        for i, r in enumerate(pr.rows):
            for j, layer in enumerate(a.layers):
                target = pool[r, layer]
                self._guard(a, lambda target=target, i=i, j=j: self._cell_effect(pr, target, i, j))

    @staticmethod
    def _cell_effect(pr: _Prepared, target: torch.Tensor, i: int, j: int) -> None:
        if pr.out is not None:
            pr.out[i, j].copy_(target)
        if pr.src is not None:
            target.copy_(pr.src[i, j])

    def _guard(self, a: Action, fn: Any) -> None:
        from torch.cuda._sanitizer import CUDASanitizerErrors

        try:
            fn()
        except CUDASanitizerErrors as exc:
            for err in exc.errors:
                ptr = getattr(err, "data_ptr", None)
                cur = getattr(err, "current_access", None)
                prev = getattr(err, "previous_access", None)
                lane_of = {s.cuda_stream: name for name, s in self.streams.items()}
                self._csan.append(
                    {
                        "cell": self._cell_of_ptr.get(ptr) if ptr is not None else None,
                        "op_id": a.op_id,
                        "action": a.kind,
                        "rid": a.rid,
                        "lane": lane_of.get(getattr(cur, "stream", None), "default"),
                        "previous_lane": lane_of.get(getattr(prev, "stream", None), "default"),
                        "previous_operator": str(getattr(prev, "operator", "")),
                    }
                )

    # ---- serial run (CPU torch: tests of the tensor paths) -----------------------------------------------------
    def run_serial(self, sched: Schedule) -> Observations:
        self._reset()
        for t in sched.actions:
            self._act(t.action)
        return self._readback()

    def _reset(self) -> None:
        for pool, t in self.pools.items():
            t.copy_(self.init[pool])
        for pr in self.prepared.values():
            if pr.out is not None:
                pr.out.fill_(-1.0)  # poison: a buffer that stays -1 was never written

    # ---- calibration --------------------------------------------------------------------------------------------
    def calibrate(self, repeats: int = 5, cycles: int = 2_000_000) -> float:
        """Busy-wait cycles per millisecond on this card now (clock boost varies it 4x between processes)."""
        times = []
        for _ in range(repeats):
            a, b = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            a.record()
            cuda._sleep(cycles)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        self.cycles_per_ms = cycles / statistics.median(times)
        return self.cycles_per_ms

    def _sleep_ns(self, ns: float) -> None:
        assert self.cycles_per_ms is not None
        if ns >= MIN_SLEEP_NS:
            cuda._sleep(int(ns * self.cycles_per_ms / 1e6))

    def _stream(self, lane: str) -> Any:
        s = self.streams.get(lane)
        if s is None:
            s = self.streams[lane] = cuda.Stream(device=self.device)
        return s

    # ---- stream run ----------------------------------------------------------------------------------------------
    def run(self, program: Program, time_scale: float = 1.0, planned_lane_end_ns: dict[str, float] | None = None) -> GpuRun:
        """One replay on the device. Programs from replay.timing.device_timing have their sleeps in
        device ns already (time_scale 1); `planned_lane_end_ns` (device ns from the gate) lets the
        achieved lane timings be checked with CUDA events.

        A program whose eager launch outran the gate twice is replayed as a CUDA graph from then on,
        captured once and relaunched (a 1,000-op window has thousands of launches: capturing it anew
        for every replay cost seconds each)."""
        cached = self._graphs.get(id(program))
        if cached is not None and cached[0] is program and cached[1] == time_scale:
            return self._launch_graph(cached[2])
        if self.cycles_per_ms is None:
            self.prepare(program)
            if not self.sanitize:  # under CSAN the timing does not matter; its verdict is happens-before
                warm = self._run_once(program, time_scale, None)  # warm-up: module loads, allocator, clocks
                # The gate must outlast the host's enqueueing of the whole replay: 3x what the warm-up took.
                self.gate_ns = max(2_000_000, int(3e6 * warm.timing["enqueue_ms"]))
            self.calibrate()
        result = self._run_once(program, time_scale, planned_lane_end_ns)
        if result.timing.get("gate_overrun") and not self.sanitize:
            # The host fell behind the gate: once more with a gate sized from what enqueueing took;
            # if it falls behind again (a launch queue filled up), launch the replay as a CUDA graph.
            self.gate_ns = int(2e6 * result.timing["enqueue_ms"]) + 5_000_000
            result = self._run_once(program, time_scale, planned_lane_end_ns)
            if result.timing.get("gate_overrun"):
                graph = self.run_graph(program, time_scale)
                graph.timing["eager_gate_overrun"] = True
                return graph
        return result

    def _enqueue(self, program: Program, scale: float, start: Any) -> None:
        """Put the program's lanes on their streams: each lane waits for `start`, then its sleeps,
        event waits, event records and memory actions in launch order (eager launch and graph
        capture share this)."""
        events: dict[Key, Any] = {}
        for lane, instr in launch_order(program):
            s = self._stream(lane)
            if instr is None:  # lane start
                s.wait_event(start)
                continue
            kind, arg = instr
            with cuda.stream(s):
                if kind == "sleep":
                    self._sleep_ns(arg * scale)
                elif kind == "wait":
                    s.wait_event(events[arg])
                elif kind == "record":
                    ev = cuda.Event()
                    ev.record(s)
                    events[arg] = ev
                elif kind == "act":
                    self._act(arg)

    def _run_once(self, program: Program, scale: float, planned_lane_end_ns: dict[str, float] | None) -> GpuRun:
        if len(program.lanes) > MAX_LANES:
            raise PlanError(
                f"{len(program.lanes)} lanes: more concurrent streams than CUDA's {MAX_LANES + 1} hardware queues "
                "(replay a shorter window)"
            )
        if self.cycles_per_ms is None:
            self.cycles_per_ms = 1_000_000.0  # warm-up only: any value will do
        self._csan: list[dict[str, Any]] = []
        main = cuda.current_stream(self.device)
        cuda.synchronize(self.device)
        self._reset()
        gate = cuda.Event(enable_timing=True)
        end = cuda.Event(enable_timing=True)
        self._sleep_ns(self.gate_ns)
        gate.record(main)
        lane_end: dict[str, Any] = {}
        t_host = time.perf_counter()
        self._enqueue(program, scale, gate)
        for lane in program.lanes:
            ev = cuda.Event(enable_timing=True)
            ev.record(self._stream(lane))
            lane_end[lane] = ev
            main.wait_event(ev)
        end.record(main)
        enqueue_s = time.perf_counter() - t_host
        overrun = bool(gate.query())
        end.synchronize()
        t_read = time.perf_counter()
        obs = self._readback()
        timing: dict[str, Any] = {
            "launch": "eager",
            "readback_ms": round((time.perf_counter() - t_read) * 1e3, 3),
            "gate_overrun": overrun,
            "enqueue_ms": round(enqueue_s * 1e3, 3),
            "cycles_per_ms": round(self.cycles_per_ms, 1),
        }
        if planned_lane_end_ns is not None:
            devs = [gate.elapsed_time(ev) - planned_lane_end_ns[lane] / 1e6 for lane, ev in lane_end.items()]
            timing["lane_end_deviation_ms"] = {"max": round(max(devs), 4), "min": round(min(devs), 4)}
            timing["planned_ms"] = round(max(planned_lane_end_ns.values(), default=0.0) / 1e6, 4)
        return GpuRun(obs, gate.elapsed_time(end), timing, self._csan if self.sanitize else None)

    # ---- graph run ------------------------------------------------------------------------------------------
    def run_graph(self, program: Program, time_scale: float) -> GpuRun:
        """The same replay captured once into a CUDA graph and launched as one unit: no launch gate,
        no host in the loop (for long windows whose launches would outrun any gate). Captured once
        per program and time scale, relaunched after that."""
        cached = self._graphs.get(id(program))
        if cached is not None and cached[0] is program and cached[1] == time_scale:
            return self._launch_graph(cached[2])
        if self.cycles_per_ms is None:
            warm = self.run(program, time_scale)  # warm-up and calibration
            if warm.timing.get("launch") == "graph":
                return warm  # the warm-up fell back to a graph: captured and cached already
        t_capture = time.perf_counter()
        graph = cuda.CUDAGraph()
        capture = cuda.Stream(device=self.device)
        cuda.synchronize(self.device)
        with cuda.graph(graph, stream=capture):
            fork = cuda.Event()
            fork.record(capture)
            self._enqueue(program, time_scale, fork)
            for lane in program.lanes:
                join = cuda.Event()
                join.record(self._stream(lane))
                capture.wait_event(join)
        self._graphs[id(program)] = (program, time_scale, graph)
        run = self._launch_graph(graph)
        run.timing["capture_s"] = round(time.perf_counter() - t_capture, 3)
        return run

    def _launch_graph(self, graph: Any) -> GpuRun:
        main = cuda.current_stream(self.device)
        cuda.synchronize(self.device)
        self._reset()
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record(main)
        graph.replay()
        end.record(main)
        end.synchronize()
        t_read = time.perf_counter()
        obs = self._readback()
        timing = {"launch": "graph", "gate_overrun": False, "readback_ms": round((time.perf_counter() - t_read) * 1e3, 3)}
        return GpuRun(obs, start.elapsed_time(end), timing)

    # ---- reading back ------------------------------------------------------------------------------------------
    def _readback(self) -> Observations:
        obs = Observations(final_values={}, read_values={}, witness_values={})
        assert obs.final_values is not None and obs.read_values is not None and obs.witness_values is not None
        for pool, t in self.pools.items():
            host = t.cpu().tolist()
            for p, r in self.rows[pool].items():
                for layer in range(self.plan.num_layers):
                    v = host[r][layer]
                    obs.final[(pool, p, layer)] = _tag(v, p, layer, obs.misplaced, f"{pool} page {p} layer {layer}")
                    obs.final_values[(pool, p, layer)] = v[4:]
        bufs = [(key, pr, pr.out) for key, pr in self.prepared.items() if pr.out is not None]
        # One device-to-host copy for all buffers (thousands of small copies took seconds on big plans).
        flat = torch.cat([out.reshape(-1) for _, _, out in bufs]).cpu() if bufs else torch.empty(0)
        offset = 0
        for (op_id, kind, layers), pr, out in bufs:
            size = out.numel()
            host = flat[offset : offset + size].reshape(out.shape).tolist()
            offset += size
            a_pool = self._pool_of(op_id)
            for i, p in enumerate(pr.pages):
                for j, layer in enumerate(layers):
                    v = host[i][j]
                    key = (op_id, a_pool, p, layer)
                    if v[3] < 0:  # never written: this action did not run
                        continue
                    tag = _tag(v, p, layer, obs.misplaced, f"op {op_id} page {p} layer {layer}")
                    if kind in ("write", "poison"):
                        obs.witness[key] = tag
                        obs.witness_values[key] = v[4:]
                    else:
                        obs.reads[key] = tag
                        obs.read_values[key] = v[4:]
        return obs

    def _pool_of(self, op_id: int) -> str:
        return self._pool_of_op[op_id]


def _tag(v: list[float], page: int, layer: int, misplaced: list[str], where: str) -> tuple[int, int]:
    if round(v[1]) != page or round(v[2]) != layer:
        misplaced.append(f"{where}: holds the cell of page {round(v[1])} layer {round(v[2])}")
    return (round(v[0]), round(v[3]))


def replay_serial(plan: Plan, mode: str, device: str = "cpu") -> Observations:
    """Run the tensor paths on any torch device, serially, in the CPU executor's predicted order."""
    program = compile_plan(plan, mode)
    return Replayer(plan, device).run_serial(schedule(program, plan.window_ns()[0]))


@contextlib.contextmanager
def quiet_stderr() -> Any:
    """CSAN prints every report with two stack traces; keep them out of the replay's output."""
    saved = sys.stderr
    sys.stderr = io.StringIO()
    try:
        yield
    finally:
        sys.stderr = saved
