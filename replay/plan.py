"""Replay plans: load, validate and save them; derive their ordering edges; compile them into lane programs.

A plan (format in replay/PLAN_FORMAT.md) is the ordered accesses of one window of one decode instance
and rank: allocs, frees, transfer writes, per-layer loads and per-layer reads, with their actors,
pages and recorded times. Both executors (replay.cpu, replay.gpu) interpret the same compiled lane
programs, so a GPU verdict and a CPU verdict differ only where physical timing differs.

Standard library only: this module must import on a GPU host that has torch and nothing else.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

FORMAT = "kvtrace-replay-plan"
VERSION = 1
OPS = ("alloc", "free", "transfer", "load", "read")
WRITE_OPS = ("transfer", "load")

# Tag kinds written into the first four floats of every (page, layer) cell: rid code, page, layer, kind.
UNKNOWN, DATA, STAMP, FREED = 0, 1, 2, 3
TAG_NAMES = {UNKNOWN: "unknown", DATA: "data", STAMP: "alloc-stamp", FREED: "free-poison"}

RECORDED_EDGE_KINDS = (
    "alloc_before_write",
    "free_before_realloc",
    "transfer_before_read",
    "step_before_step",
    "read_before_free",
    "alloc_before_use",
)
FIX_EDGE_KINDS = ("write_before_free", "read_before_free", "layer_load_before_read")


class PlanError(ValueError):
    """A plan file that is not a valid kvtrace replay plan; the message names the file and the op."""


@dataclass(frozen=True)
class Op:
    id: int
    op: str
    actor: str
    rid: str
    kv_pool: str
    pages: tuple[int, ...]
    start_ns: int
    end_ns: int
    layer_offsets_ns: tuple[int, ...] = ()
    span_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True)
class Edge:
    before: int
    after: int
    kind: str
    before_layer: int | None = None
    after_layer: int | None = None


@dataclass(frozen=True)
class Holding:
    rid: str
    kv_pool: str
    pages: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...]
    num_layers: int
    edges: tuple[Edge, ...] = ()
    initial: tuple[Holding, ...] = ()
    resource: dict[str, Any] = field(default_factory=dict)
    t0_ns: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------------------------------
    def op(self, op_id: int) -> Op:
        for o in self.ops:
            if o.id == op_id:
                return o
        raise PlanError(f"no op with id {op_id}")

    def rids(self) -> list[str]:
        """Every request of the plan, in order of first appearance (code = position + 1)."""
        seen: dict[str, None] = {}
        for h in self.initial:
            seen.setdefault(h.rid, None)
        for o in sorted(self.ops, key=_op_order):
            seen.setdefault(o.rid, None)
        return list(seen)

    def rid_codes(self) -> dict[str, int]:
        return {rid: i + 1 for i, rid in enumerate(self.rids())}

    def pool_pages(self) -> dict[str, list[int]]:
        """Every page the plan touches, per pool, sorted (the replay's pool tensors hold these)."""
        pages: dict[str, set[int]] = {}
        for h in self.initial:
            pages.setdefault(h.kv_pool, set()).update(h.pages)
        for o in self.ops:
            pages.setdefault(o.kv_pool, set()).update(o.pages)
        return {pool: sorted(p) for pool, p in sorted(pages.items())}

    def window_ns(self) -> tuple[int, int]:
        if not self.ops:
            return (0, 0)
        return (min(o.start_ns for o in self.ops), max(o.end_ns for o in self.ops))

    def with_ops(self, ops: Iterable[Op]) -> Plan:
        """The same plan restricted to `ops`: edges to dropped ops go too."""
        kept = tuple(ops)
        ids = {o.id for o in kept}
        edges = tuple(e for e in self.edges if e.before in ids and e.after in ids)
        return replace(self, ops=kept, edges=edges)


def _op_order(o: Op) -> tuple[int, int]:
    return (o.start_ns, o.id)


# ---- reading and writing ---------------------------------------------------------------------------------


def _fail(source: str, where: str, msg: str) -> PlanError:
    return PlanError(f"{source}: {where}: {msg}")


def _int_list(value: Any, source: str, where: str, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _fail(source, where, f"`{name}` must be a list of integers")
    return tuple(value)


def _op_from_json(raw: Any, index: int, num_layers: int, source: str) -> Op:
    where = f"ops[{index}]"
    if not isinstance(raw, dict):
        raise _fail(source, where, "must be an object")
    for key in ("id", "op", "actor", "rid", "kv_pool", "pages", "start_ns", "end_ns"):
        if key not in raw:
            raise _fail(source, where, f"missing `{key}`")
    kind = raw["op"]
    if kind not in OPS:
        raise _fail(source, where, f"unknown op {kind!r} (expected one of {', '.join(OPS)})")
    if not isinstance(raw["id"], int):
        raise _fail(source, where, "`id` must be an integer")
    start, end = raw["start_ns"], raw["end_ns"]
    if not isinstance(start, int) or not isinstance(end, int):
        raise _fail(source, where, "`start_ns` and `end_ns` must be integers")
    if end < start:
        raise _fail(source, where, f"end_ns {end} is before start_ns {start}")
    pages = _int_list(raw["pages"], source, where, "pages")
    if kind != "read" and not pages:
        raise _fail(source, where, f"a {kind} needs at least one page")
    offsets = _int_list(raw.get("layer_offsets_ns", []), source, where, "layer_offsets_ns")
    if kind in ("load", "read") and offsets:
        if len(offsets) != num_layers:
            raise _fail(source, where, f"{len(offsets)} layer offsets for {num_layers} layers")
        if any(o < 0 or o > end - start for o in offsets):
            raise _fail(source, where, "layer offsets must lie within the op's [start, end]")
    known = {"id", "op", "actor", "rid", "kv_pool", "pages", "start_ns", "end_ns", "layer_offsets_ns", "span_id"}
    return Op(
        id=raw["id"],
        op=kind,
        actor=str(raw["actor"]),
        rid=str(raw["rid"]),
        kv_pool=str(raw["kv_pool"]),
        pages=tuple(sorted(set(pages))),
        start_ns=start,
        end_ns=end,
        layer_offsets_ns=offsets,
        span_id=raw.get("span_id"),
        info={k: v for k, v in raw.items() if k not in known},
    )


def plan_from_json(doc: Any, source: str = "<plan>") -> Plan:
    """Validate a decoded plan document; every problem names `source` and the offending entry."""
    if not isinstance(doc, dict):
        raise _fail(source, "top level", "must be a JSON object")
    if doc.get("format") != FORMAT:
        raise _fail(source, "format", f"expected {FORMAT!r}, got {doc.get('format')!r}")
    if doc.get("version") != VERSION:
        raise _fail(source, "version", f"this kvtrace reads plan version {VERSION}, got {doc.get('version')!r}")
    num_layers = doc.get("num_layers")
    if not isinstance(num_layers, int) or num_layers < 1:
        raise _fail(source, "num_layers", "must be a positive integer")
    raw_ops = doc.get("ops")
    if not isinstance(raw_ops, list):
        raise _fail(source, "ops", "must be a list")
    ops = tuple(_op_from_json(r, i, num_layers, source) for i, r in enumerate(raw_ops))
    ids = [o.id for o in ops]
    if len(set(ids)) != len(ids):
        raise _fail(source, "ops", "op ids must be unique")
    by_id = {o.id: o for o in ops}
    edges = []
    for i, raw in enumerate(doc.get("edges", [])):
        where = f"edges[{i}]"
        if not isinstance(raw, dict) or raw.get("before") not in by_id or raw.get("after") not in by_id:
            raise _fail(source, where, "`before` and `after` must name op ids of this plan")
        edge = Edge(
            before=raw["before"],
            after=raw["after"],
            kind=str(raw.get("kind", "recorded")),
            before_layer=raw.get("before_layer"),
            after_layer=raw.get("after_layer"),
        )
        for layer in (edge.before_layer, edge.after_layer):
            if layer is not None and not (isinstance(layer, int) and 0 <= layer < num_layers):
                raise _fail(source, where, f"layer {layer!r} outside 0..{num_layers - 1}")
        edges.append(edge)
    initial = []
    for i, raw in enumerate(doc.get("initial", [])):
        where = f"initial[{i}]"
        if not isinstance(raw, dict) or "rid" not in raw or "pages" not in raw:
            raise _fail(source, where, "needs `rid` and `pages`")
        initial.append(
            Holding(str(raw["rid"]), str(raw.get("kv_pool", "kv")), _int_list(raw["pages"], source, where, "pages"))
        )
    return Plan(
        ops=ops,
        num_layers=num_layers,
        edges=tuple(edges),
        initial=tuple(initial),
        resource=dict(doc.get("resource", {})),
        t0_ns=int(doc.get("t0_ns", 0)),
        meta=dict(doc.get("meta", {})),
        expected=dict(doc.get("expected", {})),
    )


def plan_to_json(plan: Plan) -> dict[str, Any]:
    def op_doc(o: Op) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": o.id,
            "op": o.op,
            "actor": o.actor,
            "rid": o.rid,
            "kv_pool": o.kv_pool,
            "pages": list(o.pages),
            "start_ns": o.start_ns,
            "end_ns": o.end_ns,
        }
        if o.layer_offsets_ns:
            d["layer_offsets_ns"] = list(o.layer_offsets_ns)
        if o.span_id is not None:
            d["span_id"] = o.span_id
        d.update(o.info)
        return d

    def edge_doc(e: Edge) -> dict[str, Any]:
        d: dict[str, Any] = {"before": e.before, "after": e.after, "kind": e.kind}
        if e.before_layer is not None:
            d["before_layer"] = e.before_layer
        if e.after_layer is not None:
            d["after_layer"] = e.after_layer
        return d

    return {
        "format": FORMAT,
        "version": VERSION,
        "meta": plan.meta,
        "resource": plan.resource,
        "t0_ns": plan.t0_ns,
        "num_layers": plan.num_layers,
        "initial": [{"rid": h.rid, "kv_pool": h.kv_pool, "pages": list(h.pages)} for h in plan.initial],
        "ops": [op_doc(o) for o in plan.ops],
        "edges": [edge_doc(e) for e in plan.edges],
        "expected": plan.expected,
    }


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise PlanError(f"{p}: no such plan file") from exc
    except json.JSONDecodeError as exc:
        raise PlanError(f"{p}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    return plan_from_json(doc, str(p))


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(json.dumps(plan_to_json(plan), indent=1) + "\n")


# ---- ordering edges ----------------------------------------------------------------------------------------


def _overlap(a: Op, b: Op) -> bool:
    return a.kv_pool == b.kv_pool and bool(set(a.pages) & set(b.pages))


def recorded_edges(ops: Iterable[Op]) -> list[Edge]:
    """The causal orderings that existed in the serving system, derived from the ops alone.

    - alloc_before_write: a write into a request's pages is posted after that request's allocation
      (decode sends the page indices to prefill only after preallocating them);
    - free_before_realloc: the allocator hands a page out only after it was freed;
    - transfer_before_read: decode schedules a request only after it saw its transfer complete
      (KVPoll Success), so a read follows the completion of the request's own transfers;
    - step_before_step: a request's forward steps run one after the other;
    - read_before_free: a request's pages are released only after its last step finished;
    - alloc_before_use: a request reads or releases pages only after it was allocated them (the
      scheduler allocates before it schedules, on the rank's one compute stream: the compute actor's
      overlapping ops may be replayed on several lanes, and this keeps them ordered).
    A HiCache load gives a read no edge: the missing `wait_until(layer)` is the bug replayed.
    """
    ordered = sorted(ops, key=_op_order)
    edges: list[Edge] = []
    for i, op in enumerate(ordered):
        earlier = ordered[:i]
        if op.op in WRITE_OPS:
            allocs = [a for a in earlier if a.op == "alloc" and a.rid == op.rid and _overlap(a, op)]
            if allocs:
                edges.append(Edge(allocs[-1].id, op.id, "alloc_before_write"))
        elif op.op == "alloc":
            befores: dict[int, None] = {}
            for page in op.pages:
                frees = [f for f in earlier if f.op == "free" and f.kv_pool == op.kv_pool and page in f.pages]
                if frees:
                    befores.setdefault(frees[-1].id, None)
            edges.extend(Edge(b, op.id, "free_before_realloc") for b in befores)
        if op.op in ("read", "free"):
            edges.extend(
                Edge(a.id, op.id, "alloc_before_use")
                for a in earlier
                if a.op == "alloc" and a.rid == op.rid and _overlap(a, op)
            )
        if op.op == "read":
            for t in earlier:
                if t.op == "transfer" and t.rid == op.rid and t.end_ns <= op.start_ns and _overlap(t, op):
                    edges.append(Edge(t.id, op.id, "transfer_before_read"))
            steps = [r for r in earlier if r.op == "read" and r.rid == op.rid and r.kv_pool == op.kv_pool and r.end_ns <= op.start_ns]
            if steps:
                edges.append(Edge(steps[-1].id, op.id, "step_before_step"))
        elif op.op == "free":
            steps = [r for r in earlier if r.op == "read" and r.rid == op.rid and _overlap(r, op) and r.end_ns <= op.start_ns]
            if steps:
                edges.append(Edge(steps[-1].id, op.id, "read_before_free"))
    return edges


def fix_edges(plan: Plan) -> list[Edge]:
    """The synchronization that the fix inserts (fixed mode only).

    - write_before_free: a free waits for the completion event of every write into those pages by
      the same request posted before it (SGLang's deferred release, #35049);
    - read_before_free: a free also waits for the request's reads of those pages still in flight
      (a dropped request's forward may still read them: vLLM #47324's fix);
    - layer_load_before_read: a read of layer l waits for layer l's load event of every load into
      its pages issued before it (`wait_until(layer)` in every KV accessor, #22811).
    """
    edges: list[Edge] = []
    ordered = sorted(plan.ops, key=_op_order)
    for i, op in enumerate(ordered):
        earlier = ordered[:i]
        if op.op == "free":
            edges.extend(
                Edge(w.id, op.id, "write_before_free")
                for w in earlier
                if w.op in WRITE_OPS and w.rid == op.rid and _overlap(w, op)
            )
            edges.extend(
                Edge(r.id, op.id, "read_before_free")
                for r in earlier
                if r.op == "read" and r.rid == op.rid and _overlap(r, op) and r.end_ns > op.start_ns
            )
        elif op.op == "read":
            for ld in earlier:
                if ld.op == "load" and _overlap(ld, op):
                    edges.extend(
                        Edge(ld.id, op.id, "layer_load_before_read", before_layer=layer, after_layer=layer)
                        for layer in range(plan.num_layers)
                    )
    return edges


# ---- jitter ------------------------------------------------------------------------------------------------


def jittered(plan: Plan, pct: float, seed: int) -> Plan:
    """The plan with every recorded duration scaled by an independent factor in [1-pct%, 1+pct%].

    Start times stay as recorded; per-layer offsets scale with their op. Seeded, so sweeps repeat.
    """
    rng = random.Random(seed)
    frac = pct / 100.0
    ops = []
    for o in plan.ops:
        f = max(0.0, 1.0 + rng.uniform(-frac, frac))
        dur = round(o.duration_ns * f)
        offs = tuple(min(dur, round(x * f)) for x in o.layer_offsets_ns)
        ops.append(replace(o, end_ns=o.start_ns + dur, layer_offsets_ns=offs))
    return replace(plan, ops=tuple(ops))


# ---- compiled lane programs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One memory effect: stamp/poison/write cells, or read them. `layers` are the layers touched."""

    kind: str  # "stamp" | "poison" | "write" | "read"
    op_id: int
    rid: str
    kv_pool: str
    pages: tuple[int, ...]
    layers: tuple[int, ...]
    planned_ns: int  # planned (recorded) time of the effect, relative to the plan's window


# A lane program is a list of instructions, interpreted identically by both executors:
#   ("sleep", ns)        advance this lane by ns of planned time (scaled by the time scale on a device)
#   ("wait", key)        block until `key` completed on whichever lane records it
#   ("act", Action)      perform a memory effect
#   ("record", key)      mark `key` complete; key = (op_id, layer or None)
Instr = tuple[str, Any]
Key = tuple[int, int | None]


@dataclass(frozen=True)
class Program:
    lanes: dict[str, list[Instr]]
    edges: tuple[Edge, ...]
    mode: str


def assign_lanes(ops: Iterable[Op]) -> dict[int, str]:
    """Interval partitioning of each actor's ops: ops of one lane never overlap in recorded time.

    A lane is one CUDA stream on the device, so two overlapping transfers of one prefill actor
    run concurrently there, as they did on the wire.
    """
    lanes: dict[str, list[int]] = {}
    out: dict[int, str] = {}
    for o in sorted(ops, key=_op_order):
        ends = lanes.setdefault(o.actor, [])
        for k, end in enumerate(ends):
            if end <= o.start_ns:
                ends[k] = o.end_ns
                out[o.id] = f"{o.actor}#{k}"
                break
        else:
            ends.append(o.end_ns)
            out[o.id] = f"{o.actor}#{len(ends) - 1}"
    return out


def _layer_times(o: Op, num_layers: int) -> list[int]:
    """Absolute planned time of each layer's effect of a load/read (evenly spread without offsets)."""
    if o.layer_offsets_ns:
        return [o.start_ns + x for x in o.layer_offsets_ns]
    if o.op == "read":
        return [o.start_ns] * num_layers
    return [o.start_ns + round(o.duration_ns * (k + 1) / num_layers) for k in range(num_layers)]


def compile_plan(plan: Plan, mode: str) -> Program:
    """The per-lane instruction lists for `mode` ("as-recorded" or "fixed")."""
    if mode not in ("as-recorded", "fixed"):
        raise PlanError(f"unknown mode {mode!r} (expected as-recorded or fixed)")
    edges = list(plan.edges) + (fix_edges(plan) if mode == "fixed" else [])
    lane_of = assign_lanes(plan.ops)
    waits_before: dict[int, list[Key]] = {}
    waits_layer: dict[tuple[int, int], list[Key]] = {}
    for e in edges:
        key: Key = (e.before, e.before_layer)
        if e.after_layer is None:
            waits_before.setdefault(e.after, []).append(key)
        else:
            waits_layer.setdefault((e.after, e.after_layer), []).append(key)
    all_layers = tuple(range(plan.num_layers))
    lanes: dict[str, list[Instr]] = {}
    cursor: dict[str, int] = {}
    start = plan.window_ns()[0]
    for o in sorted(plan.ops, key=_op_order):
        lane = lane_of[o.id]
        prog = lanes.setdefault(lane, [])
        now = cursor.get(lane, start)

        def advance(to: int, prog: list[Instr] = prog) -> None:
            nonlocal now
            if to > now:
                prog.append(("sleep", to - now))
                now = to

        advance(o.start_ns)
        prog.extend(("wait", k) for k in dict.fromkeys(waits_before.get(o.id, [])))
        if o.op == "alloc":
            prog.append(("act", Action("stamp", o.id, o.rid, o.kv_pool, o.pages, all_layers, o.start_ns)))
        elif o.op == "free":
            prog.append(("act", Action("poison", o.id, o.rid, o.kv_pool, o.pages, all_layers, o.start_ns)))
        elif o.op in WRITE_OPS:
            # A load's layers land at their recorded offsets. A transfer's layers land evenly spread
            # over its recorded interval, the last at the completion the sender saw (a layer-wise
            # KV transfer): the data is in flight, and can land, anywhere in that interval.
            for layer, t in enumerate(_layer_times(o, plan.num_layers)):
                advance(t)
                prog.append(("act", Action("write", o.id, o.rid, o.kv_pool, o.pages, (layer,), t)))
                prog.append(("record", (o.id, layer)))
        elif o.op == "read":
            for layer, t in enumerate(_layer_times(o, plan.num_layers)):
                advance(t)
                prog.extend(("wait", k) for k in dict.fromkeys(waits_layer.get((o.id, layer), [])))
                prog.append(("act", Action("read", o.id, o.rid, o.kv_pool, o.pages, (layer,), t)))
        advance(o.end_ns)
        prog.append(("record", (o.id, None)))
        cursor[lane] = now
    return Program(lanes=lanes, edges=tuple(edges), mode=mode)


def launch_order(program: Program) -> list[tuple[str, Instr | None]]:
    """Every lane's instructions interleaved so that each event is recorded before it is awaited
    (a CUDA stream waits on an event's latest record at the time of the wait call)."""
    lanes = program.lanes
    pc = dict.fromkeys(lanes, 0)
    recorded: set[Key] = set()
    out: list[tuple[str, Instr | None]] = [(lane, None) for lane in lanes]
    progress = True
    while progress:
        progress = False
        for lane, prog in lanes.items():
            while pc[lane] < len(prog):
                kind, arg = prog[pc[lane]]
                if kind == "wait" and arg not in recorded:
                    break
                if kind == "record":
                    recorded.add(arg)
                out.append((lane, prog[pc[lane]]))
                pc[lane] += 1
                progress = True
    return out


def ownership_at_end(plan: Plan) -> dict[tuple[str, int], str]:
    """(pool, page) -> the request holding it when the window ends, by the allocator's own order."""
    owner: dict[tuple[str, int], str] = {}
    for h in plan.initial:
        for p in h.pages:
            owner[(h.kv_pool, p)] = h.rid
    for o in sorted(plan.ops, key=_op_order):
        if o.op == "alloc":
            for p in o.pages:
                owner[(o.kv_pool, p)] = o.rid
        elif o.op == "free":
            for p in o.pages:
                if owner.get((o.kv_pool, p)) == o.rid:
                    del owner[(o.kv_pool, p)]
    return owner


def check_well_formed(plan: Plan) -> list[str]:
    """Allocator consistency problems, by recorded start order: an alloc of a held page, a free of
    a page not held, a write or read of pages the request did not hold when it began.

    Recorded plans are well-formed; minimize keeps only well-formed sub-plans.
    """
    problems: list[str] = []
    owner: dict[tuple[str, int], str] = {}
    for h in plan.initial:
        for p in h.pages:
            owner[(h.kv_pool, p)] = h.rid
    for o in sorted(plan.ops, key=_op_order):
        if o.op == "alloc":
            taken = [p for p in o.pages if (o.kv_pool, p) in owner]
            if taken:
                problems.append(f"op {o.id}: alloc by {o.rid} of pages held by others: {taken[:5]}")
            for p in o.pages:
                owner[(o.kv_pool, p)] = o.rid
            continue
        not_held = [p for p in o.pages if owner.get((o.kv_pool, p)) != o.rid]
        if not_held:
            problems.append(f"op {o.id}: {o.op} by {o.rid} of pages it does not hold: {not_held[:5]}")
        if o.op == "free":
            for p in o.pages:
                owner.pop((o.kv_pool, p), None)
    return problems
