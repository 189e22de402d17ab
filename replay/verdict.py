"""What a replay saw, and what it means: shared by the CPU and the GPU executor. Standard library only.

Every (page, layer) cell of a pool holds E = 4 + D floats: rid code, page, layer, tag kind, then D
values that are a deterministic function of those four (so the attention check has real numbers to
chew on, and a cell's origin can be read back from the hardware).

An executor reports `Observations`: the tags of every cell at the end, the tag each write found in
its cells just before it landed (its witness), and the tags each read saw. `judge` turns them into
a `Verdict`:
- foreign pages: pages whose cells hold another request's tag when their holder releases them
  (the free's witness) or when the window ends;
- late writes: a write whose witness shows a free-poison or another request's tag (the write landed
  after its pages were freed or handed to somebody else);
- stale reads: a read of a cell that did not hold the reader's own data: another request's tag, or
  the reader's own alloc stamp while a write of that page by the reader is in the window (read
  before its load or transfer landed). A cell the window knows nothing about is no evidence.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from kvtrace.replay.plan import DATA, FREED, STAMP, TAG_NAMES, UNKNOWN, Plan, ownership_at_end

VALUE_DIM = 16
HEAD_DIM = VALUE_DIM // 2
CELL_WIDTH = 4 + VALUE_DIM

Cell = tuple[str, int, int]  # (pool, page, layer)
Tag = tuple[int, int]  # (rid code, kind)


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def cell_values(rid_code: int, page: int, layer: int, kind: int) -> list[float]:
    """The D values of a cell written by (request, page, layer, kind): fixed, and distinct per origin."""
    seed = _splitmix((rid_code << 40) ^ (page << 12) ^ (layer << 4) ^ kind)
    out = []
    for i in range(VALUE_DIM):
        seed = _splitmix(seed + i)
        out.append(((seed >> 11) / float(1 << 53)) * 2.0 - 1.0)
    return out


def cell(rid_code: int, page: int, layer: int, kind: int) -> list[float]:
    """The full E floats of a cell: the tag, then the values."""
    return [float(rid_code), float(page), float(layer), float(kind), *cell_values(rid_code, page, layer, kind)]


@dataclass
class Observations:
    final: dict[Cell, Tag] = field(default_factory=dict)
    witness: dict[tuple[int, str, int, int], Tag] = field(default_factory=dict)
    reads: dict[tuple[int, str, int, int], Tag] = field(default_factory=dict)
    # Actual floats where the executor has them (the GPU); None: regenerate from the tags.
    final_values: dict[Cell, list[float]] | None = None
    read_values: dict[tuple[int, str, int, int], list[float]] | None = None
    witness_values: dict[tuple[int, str, int, int], list[float]] | None = None
    misplaced: list[str] = field(default_factory=list)  # cells whose page/layer slots do not match


@dataclass
class Verdict:
    foreign_pages: list[dict[str, Any]]
    late_writes: list[dict[str, Any]]
    stale_reads: list[dict[str, Any]]
    corrupted_pages: list[int]
    victim_rid: str | None
    divergence: dict[str, float] | None
    misplaced: list[str]

    @property
    def corrupted(self) -> bool:
        return bool(self.foreign_pages or self.late_writes or self.stale_reads)

    def damaged_pages(self) -> list[int]:
        """Pages where a request holds or read another's data (late writes onto free pages excluded)."""
        return sorted({f["page"] for f in self.foreign_pages} | {r["page"] for r in self.stale_reads})

    def signature(self) -> dict[str, list[Any]]:
        """What two executors must agree on: the sets of damaged pages, late writes and stale reads."""
        return {
            "foreign": sorted((f["kv_pool"], f["page"], f["holder"]) for f in self.foreign_pages),
            "late": sorted((w["op_id"], w["kv_pool"], w["page"]) for w in self.late_writes),
            "stale": sorted((r["op_id"], r["kv_pool"], r["page"], r["layer"]) for r in self.stale_reads),
        }

    def claims(self) -> dict[str, Any]:
        """What the verdict asserts, and so what two executors must agree on: whether it corrupts,
        which pages, which (pool, page, layer) cells were read stale, and the victim. How many
        foreign-page or late-write records it took to see that is not a claim (see `counts`)."""
        return {
            "corrupted": self.corrupted,
            "corrupted_pages": self.corrupted_pages,
            "damaged_pages": self.damaged_pages(),
            "stale_cells": sorted({(r["kv_pool"], r["page"], r["layer"]) for r in self.stale_reads}),
            "victim_rid": self.victim_rid,
        }

    def counts(self) -> dict[str, int]:
        return {
            "foreign_pages": len(self.foreign_pages),
            "late_writes": len({(w["op_id"], w["kv_pool"], w["page"]) for w in self.late_writes}),
            "stale_reads": len(self.stale_reads),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "corrupted": self.corrupted,
            "corrupted_pages": self.corrupted_pages,
            "damaged_pages": self.damaged_pages(),
            "n_foreign_pages": len(self.foreign_pages),
            "n_late_writes": len({(w["op_id"], w["kv_pool"], w["page"]) for w in self.late_writes}),
            "n_stale_reads": len(self.stale_reads),
            "stale_layers": sorted({r["layer"] for r in self.stale_reads}),
            "victim_rid": self.victim_rid,
            "divergence": self.divergence,
            "misplaced": self.misplaced[:10],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "foreign_pages": self.foreign_pages,
            "late_writes": self.late_writes,
            "stale_reads": self.stale_reads,
        }


def judge(plan: Plan, obs: Observations, clean: Observations | None = None) -> Verdict:
    """The verdict on one replay. `clean` is the race-free prediction (the CPU executor's fixed
    mode) that the output divergence is measured against; without it no divergence is given."""
    codes = plan.rid_codes()
    rid_of = {c: r for r, c in codes.items()}
    rid_of[0] = ""

    def name(tag: Tag) -> dict[str, Any]:
        return {"found_rid": rid_of.get(tag[0], f"#{tag[0]}"), "found_kind": TAG_NAMES.get(tag[1], str(tag[1]))}

    foreign: list[dict[str, Any]] = []
    writer_of = {o.id: o.rid for o in plan.ops}
    kind_of = {o.id: o.op for o in plan.ops}

    def holds_foreign(holder: str, tag: Tag) -> bool:
        return tag[1] in (DATA, STAMP) and tag[0] != codes[holder]

    # At a release: what the request held when it let its pages go (the free's witness).
    released: dict[tuple[str, int, str], list[tuple[int, Tag]]] = {}
    for (op_id, pool, page, layer), tag in sorted(obs.witness.items()):
        holder = writer_of[op_id]
        if kind_of[op_id] == "free" and holds_foreign(holder, tag):
            released.setdefault((pool, page, holder), []).append((layer, tag))
    # At the window's end: what each holder holds then.
    for (pool, page), holder in sorted(ownership_at_end(plan).items()):
        for layer in range(plan.num_layers):
            end_tag = obs.final.get((pool, page, layer))
            if end_tag is not None and end_tag[0] != codes[holder]:
                released.setdefault((pool, page, holder), []).append((layer, end_tag))
    for (pool, page, holder), bad in sorted(released.items()):
        foreign.append(
            {"kv_pool": pool, "page": page, "holder": holder, "layers": sorted({b[0] for b in bad}), **name(bad[0][1])}
        )

    late: list[dict[str, Any]] = []
    for (op_id, pool, page, layer), tag in sorted(obs.witness.items()):
        if kind_of[op_id] == "free":
            continue
        code = codes[writer_of[op_id]]
        if tag[1] == FREED or (tag[1] in (DATA, STAMP) and tag[0] != code):
            late.append({"op_id": op_id, "rid": writer_of[op_id], "kv_pool": pool, "page": page, "layer": layer, **name(tag)})

    stale: list[dict[str, Any]] = []
    written_by = {(o.rid, o.kv_pool, p) for o in plan.ops if o.op in ("transfer", "load") for p in o.pages}
    for (op_id, pool, page, layer), tag in sorted(obs.reads.items()):
        rid = writer_of[op_id]
        code = codes[rid]
        if tag == (code, DATA) or tag[1] == UNKNOWN:
            continue  # own data, or a cell whose content the window does not know: no evidence
        if tag == (code, STAMP) and (rid, pool, page) not in written_by:
            continue  # read of its own fresh page with no write of it in the window: no evidence
        stale.append({"op_id": op_id, "rid": rid, "kv_pool": pool, "page": page, "layer": layer, **name(tag)})

    pages = {f["page"] for f in foreign} | {w["page"] for w in late} | {r["page"] for r in stale}
    victim = _victim(plan, foreign, stale)
    divergence = _divergence(plan, obs, clean, victim) if victim and clean is not None else None
    return Verdict(foreign, late, stale, sorted(pages), victim, divergence, list(obs.misplaced))


def _victim(plan: Plan, foreign: list[dict[str, Any]], stale: list[dict[str, Any]]) -> str | None:
    expected = plan.expected.get("victim_rid")
    if expected and expected in plan.rid_codes():
        return str(expected)
    counts: dict[str, int] = {}
    for f in foreign:
        counts[f["holder"]] = counts.get(f["holder"], 0) + 1
    for r in stale:
        counts[r["rid"]] = counts.get(r["rid"], 0) + 1
    return max(sorted(counts), key=lambda r: counts[r]) if counts else None


def _victim_reads(plan: Plan, obs: Observations, victim: str) -> dict[int, int]:
    """layer -> the victim's read of that layer to judge: its first read that saw wrong data, else its last."""
    chosen: dict[int, int] = {}
    reads = [o for o in sorted(plan.ops, key=lambda o: (o.start_ns, o.id)) if o.op == "read" and o.rid == victim]
    code = plan.rid_codes()[victim]
    for layer in range(plan.num_layers):
        seen = [o for o in reads if any((o.id, o.kv_pool, p, layer) in obs.reads for p in o.pages)]
        bad = [o for o in seen if any(obs.reads.get((o.id, o.kv_pool, p, layer)) not in (None, (code, DATA)) for p in o.pages)]
        if bad or seen:
            chosen[layer] = (bad or seen[::-1])[0].id
    return chosen


def _victim_view(
    plan: Plan, obs: Observations, victim: str, chosen: dict[int, int]
) -> tuple[list[Cell], list[list[float]]]:
    """The victim's KV as its model would use it: the chosen read of each layer, else its pages at the end."""
    cells: list[Cell] = []
    values: list[list[float]] = []
    if chosen:
        for layer, op_id in sorted(chosen.items()):
            o = plan.op(op_id)
            for p in o.pages:
                key = (o.id, o.kv_pool, p, layer)
                if key not in obs.reads:
                    continue
                cells.append((o.kv_pool, p, layer))
                if obs.read_values is not None:
                    values.append(obs.read_values[key])
                else:
                    code, kind = obs.reads[key]
                    values.append(cell_values(code, p, layer, kind))
        return cells, values
    frees = [o for o in sorted(plan.ops, key=lambda o: (o.start_ns, o.id)) if o.op == "free" and o.rid == victim]
    released: dict[Cell, tuple[int, str, int, int]] = {}
    for o in frees:  # what the victim held when it released its pages (the free's witness)
        for p in o.pages:
            for layer in range(plan.num_layers):
                if (o.id, o.kv_pool, p, layer) in obs.witness:
                    released[(o.kv_pool, p, layer)] = (o.id, o.kv_pool, p, layer)
    for c, key in sorted(released.items()):
        cells.append(c)
        if obs.witness_values is not None:
            values.append(obs.witness_values[key])
        else:
            code, kind = obs.witness[key]
            values.append(cell_values(code, c[1], c[2], kind))
    held = sorted(k for k, r in ownership_at_end(plan).items() if r == victim)
    for pool, p in held:
        for layer in range(plan.num_layers):
            c = (pool, p, layer)
            if c not in obs.final:
                continue
            cells.append(c)
            if obs.final_values is not None:
                values.append(obs.final_values[c])
            else:
                code, kind = obs.final[c]
                values.append(cell_values(code, p, layer, kind))
    return cells, values


def attention(cells: list[Cell], values: list[list[float]], num_layers: int) -> list[float]:
    """One attention head per layer over the victim's cells, with a fixed-seed query: the output vector."""
    rng = random.Random(20240611)
    q = [rng.gauss(0.0, 1.0) for _ in range(HEAD_DIM)]
    out: list[float] = []
    for layer in range(num_layers):
        rows = [v for c, v in zip(cells, values, strict=True) if c[2] == layer]
        if not rows:
            continue
        scores = [sum(qi * ki for qi, ki in zip(q, v[:HEAD_DIM], strict=True)) / math.sqrt(HEAD_DIM) for v in rows]
        m = max(scores)
        w = [math.exp(s - m) for s in scores]
        z = sum(w)
        out.extend(sum(wi * v[HEAD_DIM + j] for wi, v in zip(w, rows, strict=True)) / z for j in range(HEAD_DIM))
    return out


def _divergence(plan: Plan, obs: Observations, clean: Observations, victim: str) -> dict[str, float] | None:
    """Attention over the victim's KV as replayed vs as the race-free replay leaves it."""
    chosen = _victim_reads(plan, obs, victim)
    cells, values = _victim_view(plan, obs, victim, chosen)
    ref_cells, ref_values = _victim_view(plan, clean, victim, chosen)
    if not cells or cells != ref_cells:
        return None
    got = attention(cells, values, plan.num_layers)
    ref = attention(ref_cells, ref_values, plan.num_layers)
    dot = sum(a * b for a, b in zip(got, ref, strict=True))
    na = math.sqrt(sum(a * a for a in got))
    nb = math.sqrt(sum(b * b for b in ref))
    cos = dot / (na * nb) if na and nb else 0.0
    return {"cosine": round(cos, 6), "max_abs_err": round(max(abs(a - b) for a, b in zip(got, ref, strict=True)), 6)}


def initial_tags(plan: Plan) -> dict[Cell, Tag]:
    """Cell tags when the window opens: a holder's data for pages held then, `unknown` for the rest."""
    codes = plan.rid_codes()
    tags: dict[Cell, Tag] = {}
    for pool, pages in plan.pool_pages().items():
        for p in pages:
            for layer in range(plan.num_layers):
                tags[(pool, p, layer)] = (0, UNKNOWN)
    for h in plan.initial:
        for p in h.pages:
            for layer in range(plan.num_layers):
                tags[(h.kv_pool, p, layer)] = (codes[h.rid], DATA)
    return tags


ACTION_KIND = {"stamp": STAMP, "poison": FREED, "write": DATA}
