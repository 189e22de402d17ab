"""The hook points in SGLang (0.5.23 names) and what each emits.

Every hook is registered with SGLang's `HookRegistry` (BEFORE / AFTER / AROUND). A hook never
raises into SGLang: its own work runs in a try block (errors are counted and logged once), and an
AROUND hook calls the original outside it, so SGLang's own exceptions pass through unchanged.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any

from kvtrace.sglang_plugin import _core as C
from kvtrace.sglang_plugin._core import STATS, emit, local, now_ns

# ------------------------------------------------------------------------------------------ helpers


def _name(state: Any) -> str | None:
    if state is None:
        return None
    n = getattr(state, "name", None)
    return str(n) if n is not None else str(state)


def _free_reason(req: Any) -> str:
    fr = getattr(req, "finished_reason", None)
    if fr is not None and type(fr).__name__ == "FINISH_ABORT":
        return "aborted"
    if getattr(req, "is_retracted", False) and fr is None:
        return "retracted"
    return "finished"


def _abort_reason(message: str, stashed: str | None) -> str:
    m = (message or "").lower()
    if "timed out" in m or "timeout" in m:
        return "transfer_timeout"
    if "abortreq" in m:
        return "client_abort"
    if "checksum" in m or "corrupt" in m:
        return "kv_checksum_mismatch"
    if stashed:
        return stashed
    if "transfer failed" in m:
        return "transfer_failed"
    return "other"


def _peek_poll(receiver: Any) -> str | None:
    """The receiver's KVPoll state as its next poll() would start from, read without side effects."""
    cs = getattr(receiver, "conclude_state", None)
    if cs is not None:
        return _name(cs)
    mgr = getattr(receiver, "kv_mgr", None)
    room = getattr(receiver, "bootstrap_room", None)
    rs = getattr(mgr, "request_status", None)
    if isinstance(rs, dict) and room in rs:
        return _name(rs[room])
    if hasattr(receiver, "has_sent_metadata"):  # the fake backend's receiver
        if not getattr(receiver, "bootstrap_done", False):
            return "Bootstrapping"
        return "Transferring" if receiver.has_sent_metadata else "WaitingForInput"
    return None


def _base_attrs(rid: Any, pool: str = "kv") -> dict[str, Any]:
    return {"rid": None if rid is None else str(rid), "tp_rank": C.tp_rank(), "kv.pool": pool}


# decode side: abort decisions waiting for the prepare_abort that follows them:
# room -> (time, reason, KVPoll state at the decision)
_ABORT_STASH: C.BoundedDict = C.BoundedDict()
# receiver -> bootstrap_room, for receivers that do not keep their room (the fake backend's)
_RECEIVER_ROOMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # type: ignore[type-arg]
# prefill side: bootstrap_room -> (rid, OpenTelemetry context of the request's root span)
_PREFILL_ROOMS: C.BoundedDict = C.BoundedDict()
# allocator id -> [(release record, pages)] freed inside a free group, returned at free_group_end
_GROUPED: dict[int, list[tuple[Any, Any]]] = {}


# --------------------------------------------------------------------------------------- kv.alloc


def pre_alloc_around(original: Any, self: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    """DecodePreallocQueue._pre_alloc: the decode instance takes pages for a request whose KV the
    prefill will write (their ids go to the prefill in _send_kv_metadata)."""
    t0 = now_ns()
    kv_loc = original(self, req, *args, **kwargs)
    try:
        t1 = now_ns()
        rid = getattr(req, "rid", None)
        room = getattr(req, "bootstrap_room", None)
        sched = getattr(self, "scheduler", None)
        if kv_loc is not None and C.sampled(rid) and not getattr(sched, "enable_hisparse", False):
            ps = int(self.token_to_kv_pool_allocator.page_size)
            attrs = _base_attrs(rid)
            attrs.update({"kv.page_ranges": C.page_ranges(C.token_pages(kv_loc, ps)), "kv.page_size": ps,
                          "bootstrap_room": C.room_hex(room), "kv.alloc.site": "decode_prealloc"})
            emit("kv.alloc", t0, t1, attrs, context=C.req_context(req))
    except Exception:
        STATS.error("kv.alloc/_pre_alloc")
    return kv_loc


def alloc_for_extend_after(result: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
    """mem_cache.allocation.alloc_for_extend: pages a prefill/extend step gives each request.
    A token at position p starts a new page when p % page_size == 0."""
    try:
        import numpy as np

        out_cache_loc = result[0]
        reqs = list(getattr(batch, "reqs", ()) or ())
        if not reqs or not any(C.sampled(r.rid) for r in reqs):
            return
        t = now_ns()
        ps = int(batch.token_to_kv_pool_allocator.page_size)
        loc = C.to_numpy(out_cache_loc).astype(np.int64, copy=False)
        offset = 0
        for req, prefix_len, extend_len in zip(reqs, batch.prefix_lens, batch.extend_lens, strict=False):
            part = loc[offset:offset + extend_len]
            offset += extend_len
            if not C.sampled(req.rid) or part.size == 0:
                continue
            pos = np.arange(prefix_len, prefix_len + part.size)
            pages = part[pos % ps == 0] // ps
            if pages.size == 0:
                continue
            attrs = _base_attrs(req.rid)
            attrs.update({"kv.page_ranges": C.page_ranges(pages), "kv.page_size": ps, "kv.alloc.site": "extend"})
            emit("kv.alloc", t, t, attrs, context=C.req_context(req))
    except Exception:
        STATS.error("kv.alloc/alloc_for_extend")


def alloc_for_decode_after(result: Any, batch: Any, token_per_req: int = 1, *args: Any, **kwargs: Any) -> None:
    """mem_cache.allocation.alloc_for_decode: a decode step's new token slots; only requests whose
    next token starts a page got a page (checked on the host before any device copy)."""
    try:
        import numpy as np

        reqs = list(getattr(batch, "reqs", ()) or ())
        ps = int(batch.token_to_kv_pool_allocator.page_size)
        seq = np.asarray(batch.seq_lens_cpu.tolist() if hasattr(batch.seq_lens_cpu, "tolist") else batch.seq_lens_cpu,
                         dtype=np.int64)
        tpr = int(token_per_req)
        pos = (seq[:, None] + np.arange(tpr)[None, :]).ravel()
        starts = pos % ps == 0
        if not starts.any():
            return
        t = now_ns()
        loc = C.to_numpy(result).astype(np.int64, copy=False)
        for i, req in enumerate(reqs):
            sel = starts[i * tpr:(i + 1) * tpr]
            if not sel.any() or not C.sampled(req.rid):
                continue
            pages = loc[i * tpr:(i + 1) * tpr][sel] // ps
            attrs = _base_attrs(req.rid)
            attrs.update({"kv.page_ranges": C.page_ranges(pages), "kv.page_size": ps, "kv.alloc.site": "decode"})
            emit("kv.alloc", t, t, attrs, context=C.req_context(req))
    except Exception:
        STATS.error("kv.alloc/alloc_for_decode")


# ---------------------------------------------------------------------------------------- kv.free


@dataclass
class _Release:
    req: Any
    start_ns: int
    mode: str
    now: list[Any] = field(default_factory=list)      # page arrays returned to the free list in the call
    grouped: list[Any] = field(default_factory=list)  # page arrays held by a free group until free_group_end


def release_kv_cache_around(original: Any, req: Any, tree_cache: Any, *args: Any, **kwargs: Any) -> Any:
    """mem_cache.common.release_kv_cache: a request gives its KV row back. The pages it really
    returns are collected by the allocator hooks while this call runs (a radix tree may keep some)."""
    rec = None
    try:
        rec = _Release(req=req, start_ns=now_ns(), mode=getattr(local, "free_mode", None) or "immediate")
    except Exception:
        STATS.error("kv.free/release_kv_cache")
    outer = getattr(local, "release", None)
    local.release = rec
    try:
        return original(req, tree_cache, *args, **kwargs)
    finally:
        local.release = outer
        if rec is not None:
            try:
                _finish_release(rec, tree_cache)
            except Exception:
                STATS.error("kv.free/release_kv_cache")


def _finish_release(rec: _Release, tree_cache: Any) -> None:
    rid = getattr(rec.req, "rid", None)
    if not C.sampled(rid) and _free_reason(rec.req) != "aborted":
        return
    allocator = getattr(tree_cache, "token_to_kv_pool_allocator", None)
    if rec.now:
        _emit_free(rec, rec.now, now_ns(), allocator)
    if rec.grouped and allocator is not None:
        _GROUPED.setdefault(id(allocator), []).append((rec, rec.grouped))


def _emit_free(rec: _Release, parts: list[Any], end_ns: int, allocator: Any) -> None:
    pages = [int(x) for p in parts for x in (p.tolist() if hasattr(p, "tolist") else p)]
    if not pages:
        return
    attrs = _base_attrs(getattr(rec.req, "rid", None))
    attrs.update({
        "kv.page_ranges": C.page_ranges(pages),
        "kv.page_size": int(getattr(allocator, "page_size", 1) or 1),
        "kv.free.mode": rec.mode,
        "kv.free.reason": _free_reason(rec.req),
        "bootstrap_room": C.room_hex(getattr(rec.req, "bootstrap_room", None)),
    })
    emit("kv.free", rec.start_ns, end_ns, attrs, context=C.req_context(rec.req))


def paged_free_before(self: Any, free_index: Any, *args: Any, **kwargs: Any) -> None:
    """PagedTokenToKVPoolAllocator.free / TokenToKVPoolAllocator.free: token slots -> pages."""
    rec = getattr(local, "release", None)
    if rec is None:
        return
    try:
        if free_index.numel() == 0:
            return
        pages = C.token_pages(free_index, int(self.page_size))
        (rec.now if self.free_group is None else rec.grouped).append(pages)
    except Exception:
        STATS.error("kv.free/allocator.free")


def paged_free_page_ids_before(self: Any, page_ids: Any, *args: Any, **kwargs: Any) -> None:
    """PagedTokenToKVPoolAllocator.free_page_ids (free_segment(s) end here): page ids as given."""
    rec = getattr(local, "release", None)
    if rec is None:
        return
    try:
        if page_ids.numel() == 0:
            return
        pages = C.to_numpy(page_ids)
        (rec.now if self.free_group is None else rec.grouped).append(pages)
    except Exception:
        STATS.error("kv.free/allocator.free_page_ids")


def free_group_end_around(original: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    """free_group_end: the pages that releases inside the group held back go to the free list now
    (Paged's override calls the base one: the spans go out when the outermost call returns)."""
    depth = getattr(local, "group_end_depth", 0)
    local.group_end_depth = depth + 1
    try:
        return original(self, *args, **kwargs)
    finally:
        local.group_end_depth = depth
        if depth == 0:
            try:
                pending = _GROUPED.pop(id(self), None)
                if pending:
                    t = now_ns()
                    for rec, parts in pending:
                        _emit_free(rec, parts, t, self)
            except Exception:
                STATS.error("kv.free/free_group_end")


def do_release_around(original: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    """DecodeTransferQueue._do_release: the deferred release (after the prefill's write drained,
    or its timeout): frees inside it are kv.free.mode=deferred."""
    outer = getattr(local, "free_mode", None)
    local.free_mode = "deferred"
    try:
        return original(self, *args, **kwargs)
    finally:
        local.free_mode = outer


# ---------------------------------------------------------------------------------- request.abort


def send_kv_metadata_after(result: Any, self: Any, decode_req: Any, *args: Any, **kwargs: Any) -> None:
    """DecodePreallocQueue._send_kv_metadata: the page ids went to the prefill; remember whose
    receiver this is (an abort later reaches the receiver, not the request)."""
    try:
        receiver = getattr(decode_req, "kv_receiver", None)
        room = getattr(getattr(decode_req, "req", None), "bootstrap_room", None)
        if receiver is not None and room is not None:
            _RECEIVER_ROOMS[receiver] = room
    except Exception:
        STATS.error("request.abort/_send_kv_metadata")


def _receiver_room(receiver: Any) -> Any:
    room = getattr(receiver, "bootstrap_room", None)
    if room is None:
        try:
            room = _RECEIVER_ROOMS.get(receiver)
        except TypeError:
            room = None
    return room


def receiver_abort_before(self: Any, *args: Any, **kwargs: Any) -> None:
    """KV receiver abort() (an AbortReq for a request in the transfer queue): the abort decision."""
    try:
        room = _receiver_room(self)
        if room is not None and room not in _ABORT_STASH:
            _ABORT_STASH[room] = (now_ns(), "client_abort", _peek_poll(self))
    except Exception:
        STATS.error("request.abort/receiver.abort")


def waiting_timeout_around(original: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    """CommonKVReceiver._check_waiting_timeout: the decode gives up waiting for the transfer."""
    before = None
    try:
        before = _peek_poll(self)
    except Exception:
        STATS.error("request.abort/_check_waiting_timeout")
    result = original(self, *args, **kwargs)
    try:
        if result is not None and _name(result) == "Failed":
            room = _receiver_room(self)
            if room is not None and room not in _ABORT_STASH:
                _ABORT_STASH[room] = (now_ns(), "transfer_timeout", before)
    except Exception:
        STATS.error("request.abort/_check_waiting_timeout")
    return result


def prepare_abort_after(result: Any, req: Any, error_message: str = "", *args: Any, **kwargs: Any) -> None:
    """disaggregation.utils.prepare_abort: SGLang marks the request aborted (FINISH_ABORT)."""
    try:
        t = now_ns()
        room = getattr(req, "bootstrap_room", None)
        stashed = _ABORT_STASH.pop(room, None) if room is not None else None
        start, reason, state = stashed if stashed else (t, None, None)
        attrs = _base_attrs(getattr(req, "rid", None))
        attrs.update({
            "abort.reason": _abort_reason(str(error_message), reason),
            "kv.poll_state": state or "Failed",
            "bootstrap_room": C.room_hex(room),
            "abort.message": str(error_message)[:300],
        })
        emit("request.abort", start, t, attrs, context=C.req_context(req))
    except Exception:
        STATS.error("request.abort/prepare_abort")


# ----------------------------------------------------------------------------------- kv.transfer


def create_sender_after(result: Any, self: Any, req: Any, *args: Any, **kwargs: Any) -> None:
    """PrefillBootstrapQueue.create_sender: remember room -> (rid, root context) for the transfer
    worker threads, which see only the room."""
    try:
        if result and getattr(req, "bootstrap_room", None) is not None:
            _PREFILL_ROOMS[req.bootstrap_room] = (req.rid, C.req_context(req))
    except Exception:
        STATS.error("kv.transfer/create_sender")


def fastqueue_get_after(result: Any, self: Any, *args: Any, **kwargs: Any) -> None:
    """disaggregation.common.utils.FastQueue.get: the chunk a transfer worker thread takes next
    (its room names the request the following send_kvcache writes for)."""
    if result is not None and hasattr(result, "room") and hasattr(result, "prefill_kv_indices"):
        local.chunk = result


class _SendHook:
    """AROUND MooncakeKVManager.send_kvcache / send_kvcache_slice / send_kvcache_dcp: one kv.transfer
    per written chunk and destination, from the write's start to its return (the sender has seen
    it complete). Arguments are read by name, bound once from the resolved signature."""

    def __init__(self, label: str, signature: inspect.Signature) -> None:
        self.label = label
        names = list(signature.parameters)
        self.i_session = names.index("mooncake_session_id")
        self.i_src = names.index("prefill_kv_indices")
        self.i_dst = names.index("dst_kv_indices")

    def _arg(self, i: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # i counts `self`; args here exclude it
        return kwargs[name] if name in kwargs else (args[i - 1] if len(args) >= i else None)

    def __call__(self, original: Any, mgr: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = now_ns()
        ret = original(mgr, *args, **kwargs)
        try:
            self._emit(mgr, args, kwargs, t0, now_ns(), ret)
        except Exception:
            STATS.error(f"kv.transfer/{self.label}")
        return ret

    def _emit(self, mgr: Any, args: tuple[Any, ...], kwargs: dict[str, Any], t0: int, t1: int, ret: Any) -> None:
        chunk = getattr(local, "chunk", None)
        room = getattr(chunk, "room", None)
        rid, ctx = _PREFILL_ROOMS.get(room, (None, None)) if room is not None else (None, None)
        if not C.sampled(rid) and rid is not None:
            return
        session = self._arg(self.i_session, "mooncake_session_id", args, kwargs)
        src = self._arg(self.i_src, "prefill_kv_indices", args, kwargs)
        dst = self._arg(self.i_dst, "dst_kv_indices", args, kwargs)
        info = getattr(mgr, "decode_kv_args_table", {}).get(session) if session is not None else None
        endpoint = getattr(info, "endpoint", None)
        port = getattr(info, "dst_port", None)
        dst_instance = None
        if endpoint is not None:
            dst_instance = C.CONFIG.peers.get(f"{endpoint}:{port}") or C.CONFIG.peers.get(str(endpoint)) or str(endpoint)
        n_src = len(src) if src is not None else 0
        item_lens = list(getattr(getattr(mgr, "kv_args", None), "kv_item_lens", None) or [])
        attrs = {
            "rid": None if rid is None else str(rid),
            "tp_rank": C.tp_rank(),
            "kv.pool": "kv",
            "bootstrap_room": C.room_hex(room),
            "kv.page_ranges": C.page_ranges(C.to_numpy(dst)) if dst is not None else [],
            "kv.transfer.dst_instance": dst_instance,
            "kv.transfer.dst_rank": getattr(info, "dst_tp_rank", None),
            "kv.transfer.dst_endpoint": None if endpoint is None else f"{endpoint}:{port}",
            "kv.transfer.bytes": int(n_src * sum(item_lens)) if item_lens else None,
            "kv.transfer.backend": "mooncake",
            "kv.transfer.call": self.label,
            "kv.transfer.last_chunk": bool(getattr(chunk, "is_last_chunk", False)) if chunk is not None else None,
        }
        error = None if ret == 0 else f"{self.label} returned {ret}"
        emit("kv.transfer", t0, t1, attrs, context=ctx, error=error)


# --------------------------------------------------------------------------- spec + output text


def span_attrs_after(result: Any, self: Any, state: Any, recv_obj: Any, i: int, *args: Any, **kwargs: Any) -> Any:
    """TokenizerManager.convert_to_span_attrs: the root span's attributes at finish. Adds what
    SGLang computes per request for speculative decoding (as meta_info defines it) and, when
    KVTRACE_SGLANG_OUTPUT_TEXT=1, the output text."""
    try:
        attrs = dict(result) if isinstance(result, dict) else {}
        verify = getattr(recv_obj, "spec_verify_ct", None)
        correct = getattr(recv_obj, "spec_num_correct_drafts", None)
        if verify and len(verify) > i and verify[i] and correct and len(correct) > i:
            from sglang.srt.runtime_context import get_spec

            draft = int(get_spec().speculative_num_draft_tokens) - 1
            ct = int(verify[i])
            proposed = ct * draft
            attrs["spec.verify_ct"] = ct
            attrs["spec.draft_tokens"] = draft
            attrs["spec.num_proposed_drafts"] = proposed
            attrs["spec.num_correct_drafts"] = int(correct[i])
            if proposed > 0:
                attrs["spec.accept_rate"] = int(correct[i]) / proposed
            completion = getattr(recv_obj, "completion_tokens", None)
            if completion and len(completion) > i:
                attrs["spec.accept_length"] = int(completion[i]) / ct
        if C.CONFIG.output_text:
            text = getattr(state, "text", None)
            if not text and getattr(state, "text_chunks", None):
                text = "".join(state.text_chunks)
            if text:
                attrs["gen_ai.completion"] = str(text)
        return attrs
    except Exception:
        STATS.error("spec/convert_to_span_attrs")
        return None


# ---------------------------------------------------------------------- forward / forward.read


_BATCH = [0]


def run_batch_around(original: Any, self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """Scheduler.run_batch: one batch step on this rank (host-side launch .. return)."""
    t0 = now_ns()
    reads: dict[str, dict[int, int]] | None = {} if C.CONFIG.level >= C.LEVELS["read"] else None
    outer = getattr(local, "reads", None)
    local.reads = reads
    local.forward_start = t0
    try:
        return original(self, batch, *args, **kwargs)
    finally:
        local.reads = outer
        try:
            _emit_forward(batch, t0, now_ns(), reads)
        except Exception:
            STATS.error("forward/run_batch")


def _emit_forward(batch: Any, t0: int, t1: int, reads: dict[str, dict[int, int]] | None) -> None:
    reqs = list(getattr(batch, "reqs", ()) or ())
    rids = [str(r.rid) for r in reqs]
    if not rids or not any(C.sampled(r) for r in rids):
        return
    _BATCH[0] += 1
    mode = getattr(getattr(batch, "forward_mode", None), "name", None)
    children = []
    for pool, layers in (reads or {}).items():
        if not layers:
            continue
        n = max(layers) + 1
        if len(layers) != n:
            continue  # a layer not read through a Python accessor: no honest per-layer list
        children.append(("forward.read", t0, t1, {
            "tp_rank": C.tp_rank(), "kv.pool": pool,
            "forward.layer_read_offsets_ns": [layers[k] - t0 for k in range(n)],
            "forward.read_timing": "host_call",
        }))
    attrs = {"forward.rids": rids, "forward.mode": None if mode is None else str(mode).lower(),
             "forward.batch_id": f"{C.tp_rank()}-{_BATCH[0]}", "tp_rank": C.tp_rank()}
    emit("forward", t0, t1, attrs, children=children)


def _read_hook(pool: str) -> Any:
    def before(self: Any, layer_id: int, *args: Any, **kwargs: Any) -> None:
        reads = getattr(local, "reads", None)
        if reads is None:
            return
        try:
            layer = int(layer_id) - int(getattr(self, "start_layer", 0) or 0)
            seen = reads.setdefault(pool, {})
            if layer not in seen:
                seen[layer] = now_ns()
        except Exception:
            STATS.error(f"forward.read/{pool}")
    before.__name__ = f"read_{pool}_before"
    return before


# --------------------------------------------------------------------------------- hicache.load


def start_loading_around(original: Any, self: Any, *args: Any, **kwargs: Any) -> Any:
    """HiCacheController.start_loading: host->GPU loads issued on the load stream. 0.5.23 records
    each layer's completion with CUDA events created without timing, so the span covers the host
    side issue only and carries no per-layer done offsets (hicache.timing = host_issue)."""
    pages = None
    n_tokens = 0
    try:
        import numpy as np

        ops = list(getattr(self, "load_queue", ()) or ())
        dev = [C.to_numpy(op.device_indices) for op in ops if getattr(op, "device_indices", None) is not None]
        n_tokens = int(sum(len(d) for d in dev))
        if dev:
            ps = int(getattr(self, "page_size", 1) or 1)
            pages = np.unique(np.concatenate(dev).astype(np.int64) // ps)
    except Exception:
        STATS.error("hicache.load/start_loading")
    t0 = now_ns()
    result = original(self, *args, **kwargs)
    try:
        if pages is not None and pages.size:
            attrs = _base_attrs(None)
            attrs.update({"hicache.direction": "L2_to_L1", "hicache.num_tokens": n_tokens,
                          "kv.page_ranges": C.page_ranges(pages), "hicache.timing": "host_issue"})
            emit("hicache.load", t0, now_ns(), attrs)
    except Exception:
        STATS.error("hicache.load/start_loading")
    return result


# ------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class HookSpec:
    span: str       # what it feeds
    target: str     # dotted path, resolved at load
    kind: str       # BEFORE / AFTER / AROUND
    fn: Any         # the hook, or a factory(signature) -> hook when `bind` is set
    level: int      # lowest KVTRACE_SGLANG_LEVEL that attaches it
    params: tuple[str, ...] = ()  # parameter names the hook reads; their absence means the API moved
    bind: bool = False


K, F, R = C.LEVELS["kv"], C.LEVELS["forward"], C.LEVELS["read"]
_D = "sglang.srt.disaggregation"
_M = "sglang.srt.mem_cache"

HOOKS: tuple[HookSpec, ...] = (
    HookSpec("kv.alloc", f"{_D}.decode.DecodePreallocQueue._pre_alloc", "AROUND", pre_alloc_around, K, ("req",)),
    HookSpec("kv.alloc", f"{_M}.allocation.alloc_for_extend", "AFTER", alloc_for_extend_after, F, ("batch",)),
    HookSpec("kv.alloc", f"{_M}.allocation.alloc_for_decode", "AFTER", alloc_for_decode_after, F,
             ("batch", "token_per_req")),
    HookSpec("kv.free", f"{_M}.common.release_kv_cache", "AROUND", release_kv_cache_around, K, ("req", "tree_cache")),
    HookSpec("kv.free", f"{_M}.allocator.paged.PagedTokenToKVPoolAllocator.free", "BEFORE", paged_free_before, K,
             ("free_index",)),
    HookSpec("kv.free", f"{_M}.allocator.paged.PagedTokenToKVPoolAllocator.free_page_ids", "BEFORE",
             paged_free_page_ids_before, K, ("page_ids",)),
    HookSpec("kv.free", f"{_M}.allocator.paged.PagedTokenToKVPoolAllocator.free_group_end", "AROUND",
             free_group_end_around, K),
    HookSpec("kv.free", f"{_M}.allocator.token.TokenToKVPoolAllocator.free", "BEFORE", paged_free_before, K,
             ("free_index",)),
    HookSpec("kv.free", f"{_M}.allocator.base.BaseTokenToKVPoolAllocator.free_group_end", "AROUND",
             free_group_end_around, K),
    HookSpec("kv.free", f"{_D}.decode.DecodeTransferQueue._do_release", "AROUND", do_release_around, K),
    HookSpec("request.abort", f"{_D}.utils.prepare_abort", "AFTER", prepare_abort_after, K, ("req", "error_message")),
    HookSpec("request.abort", f"{_D}.decode.DecodePreallocQueue._send_kv_metadata", "AFTER", send_kv_metadata_after,
             K, ("decode_req",)),
    HookSpec("request.abort", f"{_D}.common.conn.CommonKVReceiver.abort", "BEFORE", receiver_abort_before, K),
    HookSpec("request.abort", f"{_D}.fake.conn.FakeKVReceiver.abort", "BEFORE", receiver_abort_before, K),
    HookSpec("request.abort", f"{_D}.common.conn.CommonKVReceiver._check_waiting_timeout", "AROUND",
             waiting_timeout_around, K),
    HookSpec("kv.transfer", f"{_D}.prefill.PrefillBootstrapQueue.create_sender", "AFTER", create_sender_after, K,
             ("req",)),
    HookSpec("kv.transfer", f"{_D}.common.utils.FastQueue.get", "AFTER", fastqueue_get_after, K),
    HookSpec("kv.transfer", f"{_D}.mooncake.conn.MooncakeKVManager.send_kvcache", "AROUND", _SendHook, K,
             ("mooncake_session_id", "prefill_kv_indices", "dst_kv_indices"), bind=True),
    HookSpec("kv.transfer", f"{_D}.mooncake.conn.MooncakeKVManager.send_kvcache_slice", "AROUND", _SendHook, K,
             ("mooncake_session_id", "prefill_kv_indices", "dst_kv_indices"), bind=True),
    HookSpec("kv.transfer", f"{_D}.mooncake.conn.MooncakeKVManager.send_kvcache_dcp", "AROUND", _SendHook, K,
             ("mooncake_session_id", "prefill_kv_indices", "dst_kv_indices"), bind=True),
    HookSpec("spec", "sglang.srt.managers.tokenizer_manager.TokenizerManager.convert_to_span_attrs", "AFTER",
             span_attrs_after, K, ("state", "recv_obj", "i")),
    HookSpec("forward", "sglang.srt.managers.scheduler.Scheduler.run_batch", "AROUND", run_batch_around, F,
             ("batch",)),
    HookSpec("hicache.load", "sglang.srt.managers.cache_controller.HiCacheController.start_loading", "AROUND",
             start_loading_around, F),
    HookSpec("forward.read", f"{_M}.memory_pool.MHATokenToKVPool.get_key_buffer", "BEFORE", _read_hook("kv"), R,
             ("layer_id",)),
    HookSpec("forward.read", f"{_M}.memory_pool.MLATokenToKVPool.get_key_buffer", "BEFORE", _read_hook("kv"), R,
             ("layer_id",)),
    HookSpec("forward.read", f"{_M}.memory_pool.DSATokenToKVPool.get_index_k_with_scale_buffer", "BEFORE",
             _read_hook("index_k"), R, ("layer_id",)),
    HookSpec("forward.read", f"{_M}.memory_pool.DSATokenToKVPool.get_index_k_scale_buffer", "BEFORE",
             _read_hook("index_k"), R, ("layer_id",)),
)
