"""Which accesses of a compiled plan are ordered, and how planned time maps to device time. Standard library only.

Happens-before is what CUDA streams define and PyTorch's CUDA stream sanitizer (CSAN) checks:
program order on one lane (one stream), plus an event recorded on one lane and awaited on another.
`vector_clocks` computes it over the lane programs in launch order. A **conflict** is a pair of
accesses to one (pool, page, layer) cell from different lanes, at least one of them a write,
adjacent in the predicted order (a read and the last write before it; a write and the last write
and the reads since). An **unordered** conflict is one that happens-before does not order: on a
device only timing decides it (the as-recorded races), and CSAN reports it. A plan whose fixed mode
has no unordered conflict is race-free by construction, whatever the timing.

The **time warp** maps planned time (the CPU executor's schedule, recorded ns plus the delays of
waits) to device time: every gap is multiplied by the time scale, except that the two accesses of
an unordered conflict are kept at least `floor_ns` apart on the device (the streams' timing error
is ~0.3 ms on an H100, so a race decided by less than that would be a coin toss there). The warp is
monotone, so the device follows the predicted order; the sleeps of the device program are the
warped gaps.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from kvtrace.replay.cpu import Schedule, schedule
from kvtrace.replay.plan import Action, Plan, Program, compile_plan, launch_order

Cell = tuple[str, int, int]
ActKey = tuple[int, str, tuple[int, ...]]  # (op id, action kind, layers): one act instruction
DEFAULT_FLOOR_NS = 1_000_000  # 1 ms on the device between the two accesses of an unordered conflict


def act_key(a: Action) -> ActKey:
    return (a.op_id, a.kind, a.layers)


@dataclass(frozen=True)
class Stamp:
    lane: str
    seq: int  # position of the act among its lane's acts, from 1
    clock: dict[str, int]  # lane -> the last act of that lane that happens-before this one


def vector_clocks(program: Program) -> dict[ActKey, Stamp]:
    """Each act's vector clock under stream semantics (launch order, as the host enqueues them)."""
    vc: dict[str, dict[str, int]] = {lane: {} for lane in program.lanes}
    events: dict[object, dict[str, int]] = {}
    out: dict[ActKey, Stamp] = {}
    for lane, instr in launch_order(program):
        if instr is None:
            continue
        kind, arg = instr
        own = vc[lane]
        if kind == "act":
            own[lane] = own.get(lane, 0) + 1
            out[act_key(arg)] = Stamp(lane, own[lane], dict(own))
        elif kind == "record":
            events[arg] = dict(own)
        elif kind == "wait":
            for other, n in events[arg].items():
                if n > own.get(other, 0):
                    own[other] = n
    return out


@dataclass(frozen=True)
class Conflict:
    cell: Cell
    first: ActKey
    second: ActKey
    first_lane: str
    second_lane: str
    first_ns: float  # planned times (the CPU schedule)
    second_ns: float
    ordered: bool  # happens-before orders the pair

    @property
    def gap_ns(self) -> float:
        return self.second_ns - self.first_ns

    def to_json(self) -> dict[str, object]:
        return {
            "cell": list(self.cell),
            "first": {"op_id": self.first[0], "action": self.first[1], "lane": self.first_lane},
            "second": {"op_id": self.second[0], "action": self.second[1], "lane": self.second_lane},
            "gap_ns": self.gap_ns,
        }


def conflicts(program: Program, sched: Schedule) -> list[Conflict]:
    """Every conflict of the predicted order, ordered or not (see the module docstring)."""
    stamps = vector_clocks(program)
    last_write: dict[Cell, tuple[ActKey, str, float]] = {}
    reads_since: dict[Cell, list[tuple[ActKey, str, float]]] = {}
    out: list[Conflict] = []
    for t in sched.actions:
        a = t.action
        key = act_key(a)
        me = stamps[key]
        is_write = a.kind != "read"
        for page in a.pages:
            for layer in a.layers:
                c = (a.kv_pool, page, layer)
                priors = [last_write[c]] if c in last_write else []
                if is_write:
                    priors += reads_since.get(c, [])
                for pkey, plane, ptime in priors:
                    if plane == me.lane:
                        continue  # one stream: program order
                    ordered = me.clock.get(plane, 0) >= stamps[pkey].seq
                    out.append(Conflict(c, pkey, key, plane, me.lane, ptime, t.time_ns, ordered))
                if is_write:
                    last_write[c] = (key, me.lane, t.time_ns)
                    reads_since[c] = []
                else:
                    reads_since.setdefault(c, []).append((key, me.lane, t.time_ns))
    return out


def unordered_conflicts(plan: Plan, mode: str) -> list[Conflict]:
    """The races of `mode`: conflicts that only timing orders. Fixed mode must have none."""
    program = compile_plan(plan, mode)
    return [c for c in conflicts(program, schedule(program, plan.window_ns()[0])) if not c.ordered]


@dataclass(frozen=True)
class Warp:
    points: tuple[float, ...]  # planned times, sorted, distinct
    device: tuple[float, ...]  # device ns at each point, from 0

    def __call__(self, t: float) -> float:
        i = bisect.bisect_left(self.points, t)
        if i < len(self.points) and self.points[i] == t:
            return self.device[i]
        if i == 0:
            return self.device[0]
        if i == len(self.points):
            return self.device[-1]
        t0, t1, d0, d1 = self.points[i - 1], self.points[i], self.device[i - 1], self.device[i]
        return d0 + (d1 - d0) * (t - t0) / (t1 - t0)


def make_warp(sched: Schedule, start_ns: float, races: list[Conflict], scale: float, floor_ns: float) -> Warp:
    """Device time = scaled planned time, with every race's two accesses >= floor_ns apart (one pass:
    raising a point only raises the later ones, so no earlier constraint is undone)."""
    pts = sorted({float(start_ns)} | {c for clocks in sched.clocks.values() for c in clocks})
    index = {t: i for i, t in enumerate(pts)}
    need: dict[int, list[int]] = {}
    for r in races:
        if r.second_ns > r.first_ns:
            need.setdefault(index[r.second_ns], []).append(index[r.first_ns])
    dev = [0.0] * len(pts)
    for i in range(1, len(pts)):
        d = dev[i - 1] + (pts[i] - pts[i - 1]) * scale
        for j in need.get(i, ()):
            d = max(d, dev[j] + floor_ns)
        dev[i] = d
    return Warp(tuple(pts), tuple(dev))


@dataclass(frozen=True)
class DeviceTiming:
    """A compiled plan ready for a device: sleeps in device ns, and what the device should achieve."""

    program: Program  # the lane programs, their sleeps in device ns
    schedule: Schedule  # the CPU executor's prediction, in planned time
    scale: float
    floor_ns: float
    lane_end_ns: dict[str, float]  # planned device time of each lane's end
    n_races: int  # unordered conflicts (pairs of accesses)
    race_cells: int  # the cells they are on: what CSAN, per cell, should report
    ties: int  # of those, still at the same planned time: the device may order them either way
    untied: int  # races that were at the same planned time, separated by a 1 ns nudge before the warp
    critical_gap_ns: float | None  # smallest planned gap of a race, before the warp
    device_critical_gap_ns: float | None  # ... and on the device, after it

    @property
    def makespan_ns(self) -> float:
        return max(self.lane_end_ns.values(), default=0.0)


def _untie(program: Program, ties: list[Conflict]) -> Program:
    """Delay the later access of each tied race by 1 ns of planned time (a sleep before its act), so
    that the warp can put the floor between them in the order the CPU executor predicted."""
    later = {t.second for t in ties}
    lanes: dict[str, list[tuple[str, object]]] = {}
    for lane, prog in program.lanes.items():
        out: list[tuple[str, object]] = []
        for instr in prog:
            if instr[0] == "act" and act_key(instr[1]) in later:
                out.append(("sleep", 1))
            out.append(instr)
        lanes[lane] = out
    return Program(lanes=lanes, edges=program.edges, mode=program.mode)


def device_timing(plan: Plan, mode: str, scale: float, floor_ns: float = DEFAULT_FLOOR_NS) -> DeviceTiming:
    program = compile_plan(plan, mode)
    start = plan.window_ns()[0]
    sched = schedule(program, start)
    races = [c for c in conflicts(program, sched) if not c.ordered]
    untied = 0
    for _ in range(8):  # ties: two racing accesses at the same planned time (a 1 ns nudge each round)
        ties = [r for r in races if r.gap_ns <= 0]
        if not ties or floor_ns <= 0:
            break
        untied += len(ties)
        program = _untie(program, ties)
        sched = schedule(program, start)
        races = [c for c in conflicts(program, sched) if not c.ordered]
    warp = make_warp(sched, start, races, scale, floor_ns)
    lanes: dict[str, list[tuple[str, object]]] = {}
    for lane, prog in program.lanes.items():
        prev = float(start)
        out: list[tuple[str, object]] = []
        for instr, t in zip(prog, sched.clocks[lane], strict=True):
            out.append(("sleep", warp(t) - warp(prev)) if instr[0] == "sleep" else instr)
            prev = t
        lanes[lane] = out
    gaps = [r.gap_ns for r in races]
    dev_gaps = [warp(r.second_ns) - warp(r.first_ns) for r in races]
    return DeviceTiming(
        program=Program(lanes=lanes, edges=program.edges, mode=program.mode),
        schedule=sched,
        scale=scale,
        floor_ns=floor_ns,
        lane_end_ns={lane: warp(t) for lane, t in sched.lane_end_ns.items()},
        n_races=len(races),
        race_cells=len({r.cell for r in races}),
        ties=sum(1 for g in gaps if g <= 0),
        untied=untied,
        critical_gap_ns=min(gaps) if gaps else None,
        device_critical_gap_ns=min(dev_gaps) if dev_gaps else None,
    )
