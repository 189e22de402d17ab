"""What every hook shares: the knobs, page sets as `kv.page_ranges`, and emitting a span through
SGLang's own tracer so it joins SGLang's traces.

Runs inside the SGLang server: imports only the standard library at module load. numpy, torch and
SGLang's modules are reached lazily (they are there whenever a hook runs, since SGLang called it).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import zlib
from collections import OrderedDict
from typing import Any

logger = logging.getLogger("kvtrace.sglang_plugin")

# Levels, cheapest first. Each includes the ones before it.
LEVELS = {"off": 0, "kv": 1, "forward": 2, "read": 3}
LEVEL_NAMES = {v: k for k, v in LEVELS.items()}


class Config:
    """The knobs, read from the environment once per process (at plugin load)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        raw = env.get("KVTRACE_SGLANG_LEVEL", "kv").strip().lower()
        if raw.isdigit():
            self.level = max(0, min(3, int(raw)))
        elif raw in LEVELS:
            self.level = LEVELS[raw]
        else:
            logger.warning("kvtrace: KVTRACE_SGLANG_LEVEL=%r is not one of %s; using 'kv'", raw, "/".join(LEVELS))
            self.level = LEVELS["kv"]
        try:
            self.sample = float(env.get("KVTRACE_SGLANG_SAMPLE", "1"))
        except ValueError:
            logger.warning("kvtrace: KVTRACE_SGLANG_SAMPLE=%r is not a number; using 1", env.get("KVTRACE_SGLANG_SAMPLE"))
            self.sample = 1.0
        self.sample = max(0.0, min(1.0, self.sample))
        self.output_text = env.get("KVTRACE_SGLANG_OUTPUT_TEXT", "0").strip().lower() in ("1", "true", "yes", "on")
        # decode instances as the prefill sees them ("10.0.0.7:17001=decode-0,10.0.0.8=decode-1"):
        # kv.transfer.dst_instance must be the decode's service.instance.id
        self.peers: dict[str, str] = {}
        for item in env.get("KVTRACE_SGLANG_PEERS", "").split(","):
            if "=" in item:
                key, _, value = item.partition("=")
                if key.strip() and value.strip():
                    self.peers[key.strip()] = value.strip()

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES[self.level]


CONFIG = Config({})  # replaced by load(); a bare import emits nothing


class Stats:
    """Counters the report shows: spans emitted per name, hook errors swallowed per hook."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.no_tracer = 0

    def span(self, name: str) -> None:
        with self.lock:
            self.spans[name] = self.spans.get(name, 0) + 1

    def error(self, hook: str) -> None:
        with self.lock:
            first = hook not in self.errors
            self.errors[hook] = self.errors.get(hook, 0) + 1
        if first:
            logger.exception("kvtrace: hook %s failed; SGLang carries on, the span is dropped (logged once per hook)", hook)


STATS = Stats()

local = threading.local()  # per thread: the release in progress, the current forward, the chunk being sent


class BoundedDict(OrderedDict):  # type: ignore[type-arg]
    """A dict that forgets its oldest keys past `limit` (room -> request maps of a long-running server)."""

    def __init__(self, limit: int = 65536) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if len(self) > self.limit:
            self.popitem(last=False)


def now_ns() -> int:
    return time.time_ns()


def sampled(rid: Any) -> bool:
    """The same answer for a rid in every process (prefill, decode, every TP rank)."""
    s = CONFIG.sample
    if s >= 1.0:
        return True
    if s <= 0.0 or rid is None:
        return False
    return (zlib.crc32(str(rid).encode()) & 0xFFFFFFFF) < s * 4294967296.0


_SMALL = 256  # up to this many ids plain Python beats numpy's per-call overhead (6 us at 30 ids vs ~40 with numpy)


def page_ranges(pages: Any) -> list[int]:
    """Page ids (any order, repeats allowed) -> inclusive runs flattened [first0, last0, first1, last1, ...]."""
    if hasattr(pages, "detach"):
        pages = to_numpy(pages)
    if len(pages) > _SMALL:
        import numpy as np

        arr = np.unique(np.asarray(pages, dtype=np.int64).ravel())
        breaks = np.nonzero(np.diff(arr) != 1)[0]
        firsts = np.concatenate((arr[:1], arr[breaks + 1]))
        lasts = np.concatenate((arr[breaks], arr[-1:]))
        return np.stack((firsts, lasts), axis=1).ravel().tolist()
    out: list[int] = []
    for p in sorted(set(pages.tolist() if hasattr(pages, "tolist") else pages)):
        p = int(p)
        if out and p == out[-1] + 1:
            out[-1] = p
        else:
            out.extend((p, p))
    return out


def to_numpy(t: Any) -> Any:
    """A tensor or array of ints on the host (one device->host copy for a GPU tensor)."""
    import numpy as np

    if hasattr(t, "detach"):
        return t.detach().to("cpu").numpy()
    return np.asarray(t)


def token_pages(token_indices: Any, page_size: int) -> list[int]:
    """Pages of KV token slots (page id = slot // page_size), sorted, each once."""
    ps = max(1, int(page_size))
    slots = to_numpy(token_indices).ravel().tolist()
    return sorted({int(s) // ps for s in slots})


def tp_rank() -> int:
    """This process's TP rank as SGLang published it (0 when it did not)."""
    cached = getattr(local, "tp_rank", None)
    if cached is not None:
        return int(cached)
    rank = 0
    rc = sys.modules.get("sglang.srt.runtime_context")
    if rc is not None:
        try:
            rank = int(rc.get_parallel().tp_rank)
        except Exception:
            rank = 0
    local.tp_rank = rank
    return rank


def room_hex(room: Any) -> str | None:
    """SGLang writes bootstrap_room on its roots as hex(room); kvtrace reads the same form everywhere."""
    if room is None:
        return None
    try:
        return hex(int(room))
    except (TypeError, ValueError):
        return None


def req_context(req: Any) -> Any:
    """The OpenTelemetry context of SGLang's root span for this request, or None."""
    ts = getattr(req, "time_stats", None)
    tc = getattr(ts, "trace_ctx", None)
    if tc is None or not getattr(tc, "tracing_enable", False):
        return None
    return trace_ctx_context(tc)


def trace_ctx_context(tc: Any) -> Any:
    ctx = getattr(tc, "root_span_context", None) if getattr(tc, "tracing_enable", False) else None
    # a live root context is an opentelemetry Context (a dict); a serialized one is a carrier dict
    if ctx is None or type(ctx).__name__ != "Context":
        return None
    return ctx


def _tracer() -> Any:
    mod = sys.modules.get("sglang.srt.observability.trace")
    tracer = getattr(mod, "tracer", None) if mod is not None else None
    if tracer is None:
        STATS.no_tracer += 1
    return tracer


def emit(
    name: str,
    start_ns: int,
    end_ns: int,
    attrs: dict[str, Any],
    *,
    context: Any = None,
    error: str | None = None,
    children: list[tuple[str, int, int, dict[str, Any]]] | None = None,
) -> bool:
    """One span through SGLang's tracer (`sglang.srt.observability.trace.tracer`, set by
    `--enable-trace`), a child of `context` (SGLang's root span of the request) when given.
    Without SGLang tracing there is no exporter: nothing is emitted and the report says so."""
    tracer = _tracer()
    if tracer is None:
        return False
    clean = {k: v for k, v in attrs.items() if v is not None}
    span = tracer.start_span(name, context=context, start_time=int(start_ns), attributes=clean)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
    if children:
        from opentelemetry import trace as otel_trace

        parent_ctx = otel_trace.set_span_in_context(span)
        for cname, cs, ce, cattrs in children:
            child = tracer.start_span(cname, context=parent_ctx, start_time=int(cs),
                                      attributes={k: v for k, v in cattrs.items() if v is not None})
            child.end(end_time=int(ce))
            STATS.span(cname)
    span.end(end_time=int(end_ns))
    STATS.span(name)
    return True
