"""bench/sglang_plugin: what kvtrace's SGLang plugin costs a server, at each level.

Run in the venv that has the real sglang (0.5.23) and a CPU torch:

    PYTHONPATH=/work/main .venv-sglang/bin/python bench/sglang_plugin.py [--requests 400] [--batch 8]

Each level runs in its own process (SGLang's HookRegistry patches for good), booted as the tests
boot it (tests/test_sglang_plugin.py: SGLang's loader, its tracer with a BatchSpanProcessor whose
OTLP exporter is swapped for the SDK's in-memory one, its paged allocator and decode queues on CPU).
One request's lifecycle is driven through SGLang's own code: decode `_pre_alloc` +
`_send_kv_metadata` (kv.alloc), the prefill's `MooncakeKVManager.send_kvcache` (kv.transfer; the
compiled engine is a no-op stand-in), `release_kv_cache` at finish (kv.free); one request in 20 is
aborted by the client during its transfer (`receiver.abort`, `pop_transferred`:
request.abort + kv.free). A "step" is what a decode scheduler step does for `--batch` arrivals and
`--batch` finishes. At level `forward` the plugin's `Scheduler.run_batch` hook runs around each
step (a real Scheduler needs a model on a GPU, so its original is the step itself), and at
`read` the pool accessors a 32-layer eager forward calls (MHATokenToKVPool.get_key_buffer) are
called through the hook.

Reported per level: spans per request, OTLP protobuf bytes per request (the SDK's own encoder, as
SGLang's exporter sends them), CPU microseconds per step and per request (process CPU, all
threads, the BatchSpanProcessor's included), and the difference to `off` (hooks absent; separate
processes, so on a shared machine this difference carries their noise). "of which span emission"
is measured inside one process: the same steps interleaved with the plugin's span emission
short-circuited (hooks, page math and bookkeeping still run), median difference per request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("off", "kv", "forward", "read")
LAYERS = 32


def child(level: str, n_requests: int, batch: int, freeze_gc: bool = False) -> dict:
    import tempfile
    import types

    sys.path.insert(0, str(ROOT / "tests"))
    import test_sglang_plugin as T  # the harness the tests use: SGLang's objects on CPU

    sg = T._boot(Path(tempfile.mkdtemp(prefix="kvtrace-bench-")), level=level)
    import torch
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from sglang.srt.managers.schedule_batch import FINISH_LENGTH
    from sglang.srt.mem_cache.common import release_kv_cache
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    from kvtrace.sglang_plugin import _hooks

    pool = MHATokenToKVPool(size=64, page_size=T.PAGE, dtype=torch.float16, head_num=1, head_dim=8,
                            layer_num=LAYERS, device="cpu", enable_memory_saver=False)
    decode = T._Decode(pages=4096, slots=4 * batch)
    prefill = T._Prefill(delay_s=0.0)

    class _Sched:
        pass

    def one_step(arrivals: list, finishes: list) -> None:
        for dr in arrivals:
            prefill.admit(dr.req.rid, len(dr.req.origin_input_ids), dr.req.bootstrap_room)
            pages = decode.preallocate(dr)
            prefill.write_async(dr.req.bootstrap_room, pages).join()
        for dr, aborted in finishes:
            if aborted:
                dr.kv_receiver.abort()
                decode.transfer_queue.pop_transferred(rids_to_check=[dr.req.rid])
            else:
                decode.transfer_queue.queue.remove(dr)
                decode.transfer_queue.req_to_metadata_buffer_idx_allocator.free(dr.metadata_buffer_index)
                dr.req.finished_reason = FINISH_LENGTH(length=8)
                release_kv_cache(dr.req, decode.tree, checkpoint=False)
        if level == "read":
            for layer in range(LAYERS):
                pool.get_key_buffer(layer)

    def step(arrivals: list, finishes: list) -> None:
        if level in ("forward", "read"):
            batch_ns = types.SimpleNamespace(reqs=[dr.req for dr, _ in finishes] or [dr.req for dr in arrivals],
                                             forward_mode=types.SimpleNamespace(name="DECODE"))
            _hooks.run_batch_around(lambda self, b: one_step(arrivals, finishes), _Sched(), batch_ns)
        else:
            one_step(arrivals, finishes)

    # warm-up: a few requests through every path, then clear what they emitted
    reqs = [decode.request(f"warm-{i}", 120, 0x100000 + i) for i in range(2 * batch)]
    step(reqs[:batch], [])
    step(reqs[batch:], [(dr, i == 0) for i, dr in enumerate(reqs[:batch])])
    step([], [(dr, False) for dr in reqs[batch:]])
    trace.get_tracer_provider().force_flush()
    sg.exporter.clear()
    if freeze_gc:  # what SGLang's FreezeGCReq does: the server's startup heap leaves the GC's scans
        import gc

        gc.collect()
        gc.freeze()

    n_steps = n_requests // batch
    made = [decode.request(f"req-{i}", 120, 0x200000 + i) for i in range(n_steps * batch + batch)]
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    per_step = []
    for s in range(n_steps + 1):
        arrivals = made[s * batch:(s + 1) * batch] if s < n_steps else []
        finishes = [(dr, (s * batch + i) % 20 == 7) for i, dr in enumerate(made[(s - 1) * batch:s * batch])] if s else []
        c = time.process_time()
        step(arrivals, finishes)
        if arrivals and finishes:
            per_step.append(time.process_time() - c)
    trace.get_tracer_provider().force_flush()
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    per_step.sort()
    median_step = per_step[len(per_step) // 2]

    spans = [sp for sp in sg.exporter.get_finished_spans() if sp.name.startswith(("kv.", "request.", "forward", "hicache"))]
    sglang_spans = [sp for sp in sg.exporter.get_finished_spans() if sp not in spans]
    n = n_steps * batch
    plugin_bytes = len(encode_spans(spans).SerializeToString()) if spans else 0
    by_name: dict[str, int] = {}
    for sp in spans:
        by_name[sp.name] = by_name.get(sp.name, 0) + 1
    # in-process split: the same steps with the plugin's span emission short-circuited (hooks,
    # page math and bookkeeping still run), interleaved with normal ones
    from kvtrace.sglang_plugin import _core

    emit_share = None
    if level != "off":
        tracer_fn = _core._tracer
        extra = [decode.request(f"split-{i}", 120, 0x400000 + i) for i in range(40 * batch)]
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(20):
            for emit_on in (True, False):
                k = 2 * r + (0 if emit_on else 1)
                drs = extra[k * batch:(k + 1) * batch]
                _core._tracer = tracer_fn if emit_on else (lambda: None)
                c = time.process_time()
                step(drs, [])
                step([], [(dr, False) for dr in drs])
                times[emit_on].append(time.process_time() - c)
                _core._tracer = tracer_fn
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        emit_share = (med[True] - med[False]) / batch
    return {"level": level, "requests": n, "steps": n_steps + 1, "cpu_s": cpu, "wall_s": wall, "median_step_s": median_step, "emit_s_per_request": emit_share,
            "spans": len(spans), "by_name": by_name, "bytes": plugin_bytes,
            "sglang_spans": len(sglang_spans),
            "attached": sum(h["status"] == "attached" for h in sg.plugin.report()["hooks"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2, help="runs per level; the lowest median step is kept")
    ap.add_argument("--child", choices=LEVELS)
    ap.add_argument("--freeze-gc", action="store_true",
                    help="gc.freeze() after warm-up, as SGLang's /freeze_gc does (default: the GC as it comes)")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.requests, args.batch, args.freeze_gc)))
        return
    results = {}
    for level in LEVELS:
        best = None
        for _ in range(args.repeat):
            env = {**os.environ, "PYTHONPATH": str(ROOT), "KVTRACE_SGLANG_LEVEL": level}
            cmd = [sys.executable, __file__, "--child", level, "--requests", str(args.requests), "--batch", str(args.batch)]
            proc = subprocess.run(cmd + (["--freeze-gc"] if args.freeze_gc else []), capture_output=True, text=True,
                                  env=env, timeout=900)
            if proc.returncode != 0:
                sys.exit(f"level {level} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
            if best is None or r["median_step_s"] < best["median_step_s"]:
                best = r
        results[level] = best
    off = results["off"]
    print(f"{args.requests} requests, {args.batch} arrivals + {args.batch} finishes per step, 1 in 20 aborted "
          f"during its transfer; median step of the lowest of {args.repeat} runs per level; "
          f"GC {'frozen after warm-up' if args.freeze_gc else 'as it comes'}")
    print("| level | hooks attached | spans/request | OTLP protobuf bytes/request | CPU µs/step (median) | "
          "added CPU µs/step | added CPU µs/request | of which span emission µs/request | spans by name |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for level in LEVELS:
        r = results[level]
        per_step = r["median_step_s"] * 1e6
        added = (r["median_step_s"] - off["median_step_s"]) * 1e6
        per_req = added / args.batch
        names = ", ".join(f"{k} {v / r['requests']:.2f}" for k, v in sorted(r["by_name"].items())) or "-"
        print(f"| {level} | {r['attached']} | {r['spans'] / r['requests']:.2f} | {r['bytes'] / r['requests']:.0f} | "
              f"{per_step:.0f} | {added:+.0f} | {per_req:+.0f} | "
              f"{'-' if r['emit_s_per_request'] is None else format(r['emit_s_per_request'] * 1e6, '.0f')} | {names} |")
    for level in ("kv", "forward", "read"):
        b = results[level]["bytes"] / results[level]["requests"]
        print(f"10,000 requests/s at level {level}: {b * 1e4 / 1e6:.1f} MB/s of OTLP protobuf "
              f"({b * 1e4 * 86400 / 1e12:.2f} TB/day) before the collector's compression")


if __name__ == "__main__":
    main()
