"""Plans built from the public record and a synthetic generator, for tests, benches and the GPU check.

- `pr35049_plan`: the interleaving logged in SGLang PR #35049: A's pages [14..44] written from
  878.80 s to 884.80 s, A aborted and freed (immediate) at 881.28 s, B allocated [1..32] at 881.31 s.
- `read_before_load_plan`: SGLang PR #22811's shape: the compute stream reads layer k of the
  `index_k` pool before the HiCache load stream has copied layer k.
- `synthetic_plan`: a busy window of n operations with page reuse, for the replay bench.
"""

from __future__ import annotations

import random
from typing import Any

from kvtrace.replay.plan import Edge, Op, Plan, recorded_edges

S = 1_000_000_000  # ns per second
MS = 1_000_000


def _finish(ops: list[Op], num_layers: int, **kw: Any) -> Plan:
    edges = tuple(recorded_edges(ops))
    return Plan(ops=tuple(ops), num_layers=num_layers, edges=edges, **kw)


def pr35049_plan(num_layers: int = 2) -> Plan:

    def t(seconds: float) -> int:  # seconds on decode's clock, as the PR's log gives them
        return round(seconds * S)

    decode, prefill = "decode:decode-0/0", "prefill:prefill-0"
    ops = [
        Op(0, "alloc", decode, "A", "kv", tuple(range(14, 45)), t(878.79), t(878.79)),
        Op(1, "transfer", prefill, "A", "kv", tuple(range(14, 45)), t(878.80), t(884.80)),
        Op(2, "free", decode, "A", "kv", tuple(range(14, 45)), t(881.28), t(881.28), info={"free_mode": "immediate", "free_reason": "aborted"}),
        Op(3, "alloc", decode, "B", "kv", tuple(range(1, 33)), t(881.31), t(881.31)),
    ]
    return _finish(
        ops,
        num_layers,
        initial=(),
        resource={"instance": "decode-0", "tp_rank": 0},
        meta={"source": "manual", "note": "SGLang PR #35049 log"},
        expected={"kind": "abort_before_write_complete", "pages": list(range(14, 33)), "culprit_rid": "A", "victim_rid": "B", "kv_pool": "kv"},
    )


def read_before_load_plan(num_layers: int = 4) -> Plan:
    """R's prefix (pages 0..7 of index_k) is loaded layer by layer; compute reads layers 2 and 3 early."""
    decode, load = "decode:decode-0/0", "hicache-load:decode-0/0"
    pages = tuple(range(8))
    ops = [
        Op(0, "alloc", decode, "R", "index_k", pages, 0, 0),
        # layers land at 15, 25, 40, 50 ms; compute reads them at 30, 35, 38, 42 ms:
        # layers 0 and 1 after their copies, layers 2 and 3 before theirs.
        Op(1, "load", load, "R", "index_k", pages, 10 * MS, 50 * MS, layer_offsets_ns=(5 * MS, 15 * MS, 30 * MS, 40 * MS)[:num_layers]),
        Op(2, "read", decode, "R", "index_k", pages, 30 * MS, 45 * MS, layer_offsets_ns=(0, 5 * MS, 8 * MS, 12 * MS)[:num_layers]),
    ]
    return _finish(
        ops,
        num_layers,
        resource={"instance": "decode-0", "tp_rank": 0},
        meta={"source": "manual", "note": "SGLang PR #22811 shape"},
        expected={"kind": "read_before_load", "pages": list(pages), "layers": [2, 3], "culprit_rid": "R", "victim_rid": "R", "kv_pool": "index_k"},
    )


def synthetic_plan(
    n_ops: int, seed: int = 0, num_layers: int = 2, pages_per_req: int = 8, races: int = 3, unit_ns: int = 25_000
) -> Plan:
    """About n_ops operations: overlapping requests that alloc, receive a transfer, read a few decode
    steps and free. Freed pages go to the front of the free list and are reused at once, as in
    SGLang's allocator; `races` requests are aborted and freed while their transfer is in flight.
    Times are multiples of `unit_ns` (default: arrivals every 1.5-3.5 ms, transfers of 5-10 ms)."""
    rng = random.Random(seed)
    decode = "decode:decode-0/0"
    free_list: list[int] = list(range(4 * pages_per_req))
    next_page = len(free_list)
    pending: list[tuple[int, tuple[int, ...]]] = []  # (free time, pages) not yet back on the list
    ops: list[Op] = []
    n_req = max(1, n_ops // 5)
    abort_at = set(rng.sample(range(1, n_req), min(races, n_req - 1))) if n_req > 1 else set()
    t = 0
    k = 0
    while len(ops) < n_ops:
        rid = f"r{k:04d}"
        t += rng.randint(60, 140) * unit_ns
        for _ft, pg in sorted(p for p in pending if p[0] <= t):
            free_list[:0] = list(pg)
        pending = [p for p in pending if p[0] > t]
        if len(free_list) < pages_per_req:
            free_list.extend(range(next_page, next_page + pages_per_req))
            next_page += pages_per_req
        pages = tuple(sorted(free_list[:pages_per_req]))
        del free_list[:pages_per_req]
        ops.append(Op(len(ops), "alloc", decode, rid, "kv", pages, t, t))
        xfer_start = t + 20 * unit_ns
        xfer_end = xfer_start + rng.randint(200, 400) * unit_ns
        ops.append(Op(len(ops), "transfer", f"prefill:prefill-{k % 2}", rid, "kv", pages, xfer_start, xfer_end))
        if k in abort_at:
            ft = xfer_start + 60 * unit_ns  # aborted and freed while the write is in flight
            ops.append(Op(len(ops), "free", decode, rid, "kv", pages, ft, ft, info={"free_mode": "immediate", "free_reason": "aborted"}))
        else:
            rt = xfer_end + 10 * unit_ns
            for _ in range(2):
                ops.append(Op(len(ops), "read", decode, rid, "kv", pages, rt, rt + 30 * unit_ns))
                rt += 40 * unit_ns
            ft = rt
            ops.append(Op(len(ops), "free", decode, rid, "kv", pages, ft, ft, info={"free_mode": "immediate", "free_reason": "finished"}))
        pending.append((ft, pages))
        k += 1
    ops = ops[:n_ops]
    return _finish(ops, num_layers, resource={"instance": "decode-0", "tp_rank": 0}, meta={"source": "synthetic", "seed": seed})


__all__ = ["Edge", "pr35049_plan", "read_before_load_plan", "synthetic_plan"]
