"""SGLang-style paged KV allocator whose free list hands freed pages out first.

Pages are kept as half-open runs [lo, hi) so that a 200K-token request (3,125 pages) costs a few
list operations, not thousands. Page 0 is reserved, as SGLang reserves it for padding.
"""

from __future__ import annotations

from collections import deque

from kvtrace.simulator.config import SimulatorError

Runs = list[tuple[int, int]]


class PagedAllocator:
    """One pool on one rank of one instance: `alloc` takes from the front, `free` puts back in front."""

    def __init__(self, num_pages: int, where: str) -> None:
        self._free: deque[tuple[int, int]] = deque([(1, num_pages)])
        self.n_free = num_pages - 1
        self.where = where

    def alloc(self, n: int) -> Runs:
        if n > self.n_free:
            raise SimulatorError(
                f"KV pool of {self.where} exhausted ({n} pages wanted, {self.n_free} free); "
                "lower --concurrency or --mean-context"
            )
        out: Runs = []
        need = n
        while need:
            lo, hi = self._free.popleft()
            take = min(need, hi - lo)
            out.append((lo, lo + take))
            if lo + take < hi:
                self._free.appendleft((lo + take, hi))
            need -= take
        self.n_free -= n
        return out

    def free(self, runs: Runs) -> None:
        """Return pages to the *front* of the free list, in their own order (SGLang's torch.cat)."""
        merged = coalesce(runs)
        front = self._free
        for lo, hi in reversed(merged):
            if front and front[0][0] == hi:  # keeps the list short; page order is unchanged
                hi = front.popleft()[1]
            front.appendleft((lo, hi))
        self.n_free += runs_len(merged)


def coalesce(runs: Runs) -> Runs:
    """Join runs that continue each other ([(1, 4), (4, 9)] -> [(1, 9)]), keeping their order."""
    out: Runs = []
    for lo, hi in runs:
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def runs_len(runs: Runs) -> int:
    return sum(hi - lo for lo, hi in runs)


def runs_pages(runs: Runs) -> list[int]:
    return [p for lo, hi in runs for p in range(lo, hi)]


def runs_ranges(runs: Runs) -> list[int]:
    """The runs as `kv.page_ranges` (docs/conventions.md): inclusive [first, last] pairs, flattened,
    adjacent runs joined: [(14, 45), (90, 91)] -> [14, 44, 90, 90]. Expanded pair by pair they give
    runs_pages(runs) in the same order."""
    return [x for lo, hi in coalesce(runs) if hi > lo for x in (lo, hi - 1)]


def runs_intersect(a: Runs, b: Runs) -> list[int]:
    """Sorted page ids present in both run lists."""
    out: list[int] = []
    for alo, ahi in a:
        for blo, bhi in b:
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo < hi:
                out.extend(range(lo, hi))
    return sorted(set(out))


def runs_slice(runs: Runs, n: int) -> Runs:
    """The first n pages of a run list (the pages a prefix occupies)."""
    out: Runs = []
    for lo, hi in runs:
        if n <= 0:
            break
        take = min(n, hi - lo)
        out.append((lo, lo + take))
        n -= take
    return out
