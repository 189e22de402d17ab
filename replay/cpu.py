"""The CPU executor: a deterministic interpretation of a plan's lane programs. No torch, no numpy.

Each lane advances a clock by its sleeps and blocks on waits until the awaited key was recorded
(on any lane); memory effects take no time. The effects are then applied in time order (ties:
causal depth, recorded time, op id), which predicts what the hardware does when the recorded timing is
reproduced. This is what CI tests run, and what GPU verdicts are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvtrace.replay.plan import Action, Key, Plan, PlanError, Program, compile_plan
from kvtrace.replay.verdict import ACTION_KIND, Observations, Verdict, initial_tags, judge


@dataclass(frozen=True)
class TimedAction:
    time_ns: float
    action: Action
    lane: str
    depth: int  # causal depth: an effect after a wait comes after the awaited effects at equal times


@dataclass
class Schedule:
    actions: list[TimedAction]  # in the order their effects land
    completion_ns: dict[Key, float]
    lane_end_ns: dict[str, float]
    delayed_ns: float  # total time lanes spent blocked on waits
    # lane -> the lane's clock after each of its instructions (aligned with the lane program)
    clocks: dict[str, list[float]] = field(default_factory=dict)

    def makespan_ns(self) -> float:
        return max(self.lane_end_ns.values(), default=0.0)


def schedule(program: Program, start_ns: int = 0) -> Schedule:
    """Run every lane's program on a simulated clock; raises PlanError on a cycle of waits."""
    lanes = program.lanes
    pc = dict.fromkeys(lanes, 0)
    clock = {lane: float(start_ns) for lane in lanes}
    depth = dict.fromkeys(lanes, 0)
    done: dict[Key, float] = {}
    done_depth: dict[Key, int] = {}
    timed: list[TimedAction] = []
    clocks: dict[str, list[float]] = {lane: [] for lane in lanes}
    delayed = 0.0
    progress = True
    while progress:
        progress = False
        for lane, prog in lanes.items():
            while pc[lane] < len(prog):
                kind, arg = prog[pc[lane]]
                if kind == "wait":
                    if arg not in done:
                        break
                    if done[arg] > clock[lane]:
                        delayed += done[arg] - clock[lane]
                        clock[lane] = done[arg]
                    depth[lane] = max(depth[lane], done_depth[arg] + 1)
                elif kind == "sleep":
                    clock[lane] += arg
                elif kind == "act":
                    timed.append(TimedAction(clock[lane], arg, lane, depth[lane]))
                    depth[lane] += 1
                elif kind == "record":
                    done[arg] = clock[lane]
                    done_depth[arg] = depth[lane]
                clocks[lane].append(clock[lane])
                pc[lane] += 1
                progress = True
    stuck = [lane for lane, prog in lanes.items() if pc[lane] < len(prog)]
    if stuck:
        waits = [lanes[lane][pc[lane]][1] for lane in stuck]
        raise PlanError(f"ordering edges form a cycle or wait on a missing op: lanes {stuck} wait on {waits}")
    timed.sort(key=lambda t: (t.time_ns, t.depth, t.action.planned_ns, t.action.op_id))
    return Schedule(timed, done, clock, delayed, clocks)


def observe(plan: Plan, sched: Schedule) -> Observations:
    """Apply the scheduled effects to a model of the pool and record what writes and reads saw."""
    codes = plan.rid_codes()
    tags = initial_tags(plan)
    obs = Observations()
    for t in sched.actions:
        a = t.action
        code = codes[a.rid]
        for page in a.pages:
            for layer in a.layers:
                c = (a.kv_pool, page, layer)
                if a.kind == "read":
                    obs.reads[(a.op_id, a.kv_pool, page, layer)] = tags[c]
                    continue
                if a.kind in ("write", "poison"):
                    obs.witness[(a.op_id, a.kv_pool, page, layer)] = tags[c]
                tags[c] = (code, ACTION_KIND[a.kind])
    obs.final = tags
    return obs


@dataclass
class CpuRun:
    verdict: Verdict
    schedule: Schedule

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_json(), "makespan_ns": self.schedule.makespan_ns()}


def predict(plan: Plan, mode: str) -> tuple[Observations, Schedule]:
    sched = schedule(compile_plan(plan, mode), plan.window_ns()[0])
    return observe(plan, sched), sched


def run_cpu(plan: Plan, mode: str, clean: Observations | None = None) -> CpuRun:
    """Predict the outcome of `mode`; the divergence is measured against the fixed-mode prediction."""
    obs, sched = predict(plan, mode)
    if clean is None:
        clean = obs if mode == "fixed" else predict(plan, "fixed")[0]
    return CpuRun(judge(plan, obs, clean), sched)
