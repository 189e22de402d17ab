"""Decode in parallel: jobs (a chunk of JSON lines, a group of protobuf frames, a group of small
files) run on a pool of worker threads, and their results come back in the order the jobs were
made, so the store sees exactly the sequence a single decoder would give.

Why threads and not processes: a job's time is the C decoder (ingest/_otlpfast.c, which releases
the GIL while it parses), the Deriver's DuckDB statements (DuckDB releases the GIL while it runs)
and Arrow kernels (likewise); the Python between them (resources, scopes, building the tables) is
a small share of a job (see bench/ingest.py, "what bounds it"). Threads hand the result to the
store as it is, with no copy and no serialisation; a process would have to write every staged
batch (about a kilobyte a span) through shared memory or a pipe.

One thread (the feeder) runs the job generator: it reads and frames the files (ingest/sources.py)
and submits each job to the pool; at most `depth` jobs are in flight, which bounds memory (each
holds a chunk of about `batch_spans` spans and its staged batch). Each worker thread has its own
state (its own Deriver: a DuckDB connection is used by one thread at a time), made on first use
and closed when the pool ends. An exception in a job or in the generator is raised in the caller
at that job's place in the order; a caller that stops early stops the feeder, waits for the jobs
in flight and closes the generator (its open files) before returning."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")

# The environment variable that caps the decode workers (default: one per core this process may
# run on, as `taskset` or a container's CPU set allows).
WORKERS_ENV = "KVTRACE_INGEST_WORKERS"


def cores() -> int:
    """The cores this process may run on (its affinity mask, so `taskset -c 0` gives 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity masks
        return max(1, os.cpu_count() or 1)


def decode_workers() -> int:
    """How many decode workers to run: KVTRACE_INGEST_WORKERS when set (>= 1), else one a core."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={raw!r}: expected a whole number of worker threads") from None
    return cores()


class _PerThread(Generic[S]):
    """Each worker thread's own state, made by `make` on the thread's first job, closed by
    `close` when the pool ends."""

    def __init__(self, make: Callable[[], S], close: Callable[[S], None]) -> None:
        self.make, self.close_one = make, close
        self.local = threading.local()
        self.made: list[S] = []
        self.lock = threading.Lock()

    def get(self) -> S:
        state: S | None = getattr(self.local, "state", None)
        if state is None:
            state = self.local.state = self.make()
            with self.lock:
                self.made.append(state)
        return state

    def close(self) -> None:
        with self.lock:
            made, self.made = self.made, []
        for state in made:
            self.close_one(state)


_END = object()


def ordered(
    jobs: Iterator[Callable[[S], T]],
    workers: int,
    depth: int,
    make_state: Callable[[], S],
    close_state: Callable[[S], None],
    name: str = "ingest-decode",
) -> Iterator[T]:
    """Run `jobs` (each called with its worker thread's state) on `workers` threads, at most
    `depth` in flight, and yield their results in the jobs' order (see the module docstring)."""
    depth = max(1, depth)
    states: _PerThread[S] = _PerThread(make_state, close_state)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name)
    # the feeder puts each job's future here in order; the slots bound the jobs in flight
    futures: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run(job: Callable[[S], T]) -> T:
        return job(states.get())

    def put(entry: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                futures.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def feed() -> None:
        try:
            for job in jobs:
                if stop.is_set() or not put(("job", pool.submit(run, job))):
                    break
            else:
                put(("end", _END))
        except BaseException as exc:  # handed to the consumer, raised there in order
            put(("error", exc))
        finally:
            close = getattr(jobs, "close", None)
            if close is not None:
                close()

    feeder = threading.Thread(target=feed, name=f"{name}-feeder", daemon=True)
    feeder.start()
    try:
        while True:
            kind, value = futures.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            assert isinstance(value, Future)
            yield value.result()
    finally:
        stop.set()
        # drain, so that a feeder blocked on a full queue sees `stop`; cancel what has not started
        while True:
            try:
                kind, value = futures.get_nowait()
            except queue.Empty:
                if not feeder.is_alive():
                    break
                feeder.join(timeout=0.05)
                continue
            if isinstance(value, Future):
                value.cancel()
        feeder.join()
        pool.shutdown(wait=True, cancel_futures=True)
        states.close()


__all__ = ["WORKERS_ENV", "cores", "decode_workers", "ordered"]
