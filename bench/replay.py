"""Bench: replaying a 1,000-operation window. Target: under 1 s of GPU time with a compressing --time-scale.

Rows, measured side by side in one run:
- the CPU executor (the deterministic prediction; the baseline every GPU verdict is checked against);
- the GPU replay at time scale 1 (the recorded timing: the baseline that compression must beat);
- the GPU replay at compressing time scales.
Each GPU row: median of --repeats replays (the first replay of the Replayer includes its warm-up),
GPU time from CUDA events (gate end to last lane), host wall time per replay, the planned device
window (time warp of replay.timing: races >= --floor-ms apart), the host enqueue time, and whether
every replay's verdict made the CPU executor's claims. Each measurement also prints where the wall
time of its first replay went (launch kind, graph capture, enqueue, readback). Without CUDA only
the CPU rows are measured.

    python bench/replay.py [--ops 1000] [--repeats 5] [--scales 0.02,1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # 10 lanes = 10 streams: more than CUDA's default 8 queues

from kvtrace.replay.cpu import predict, run_cpu
from kvtrace.replay.examples import synthetic_plan
from kvtrace.replay.plan import compile_plan
from kvtrace.replay.timing import DEFAULT_FLOOR_NS, device_timing
from kvtrace.replay.verdict import judge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scales", default="0.02,1", help="time scales, the compressing target first, 1 (recorded) last")
    ap.add_argument("--floor-ms", type=float, default=DEFAULT_FLOOR_NS / 1e6, help="time warp floor between racing accesses")
    ap.add_argument("--out", default="bench/out/replay.json")
    args = ap.parse_args()
    plan = synthetic_plan(args.ops, seed=0)
    window_ms = (plan.window_ns()[1] - plan.window_ns()[0]) / 1e6
    lanes = len(compile_plan(plan, "as-recorded").lanes)
    print(f"plan: {len(plan.ops)} ops, {lanes} lanes (CUDA streams), recorded window {window_ms:.1f} ms", flush=True)
    rows: list[dict] = []
    for mode in ("as-recorded", "fixed"):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            v = run_cpu(plan, mode).verdict
            times.append((time.perf_counter() - t) * 1e3)
        rows.append({"variant": f"CPU executor ({mode})", "mode": mode, "ms": statistics.median(times), "wall_ms": None, "planned_ms": None,
                     "enqueue_ms": None, "agree": True, "late": len(v.late_writes), "device": platform.processor() or "cpu"})
        print(f"  {rows[-1]['variant']}: {rows[-1]['ms']:.1f} ms", flush=True)
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        from kvtrace.replay.gpu import Replayer

        rp = Replayer(plan, "cuda")
        clean = predict(plan, "fixed")[0]
        name = torch.cuda.get_device_name()
        want = {m: judge(plan, predict(plan, m)[0], clean).claims() for m in ("as-recorded", "fixed")}

        def measure(label: str, scale: float, mode: str, graph: bool) -> None:
            dt = device_timing(plan, mode, scale, args.floor_ms * 1e6)
            walls, runs = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                runs.append(rp.run_graph(dt.program, 1.0) if graph else rp.run(dt.program, 1.0, dt.lane_end_ns))
                walls.append(time.perf_counter() - t)
            first = runs[0].timing
            print(f"  {label}: {args.repeats} replays, wall s {[round(w, 2) for w in walls]} (first: launch {first.get('launch')}, "
                  f"capture {first.get('capture_s', '-')} s, enqueue {first.get('enqueue_ms', '-')} ms, readback "
                  f"{first.get('readback_ms')} ms), GPU ms {sorted(round(r.gpu_ms or 0.0, 2) for r in runs)}", flush=True)
            verdicts = [judge(plan, r.obs, clean) for r in runs]
            rows.append({
                "variant": label,
                "mode": mode,
                "ms": statistics.median(r.gpu_ms or 0.0 for r in runs),
                "wall_ms": statistics.median(walls) * 1e3,
                "planned_ms": dt.makespan_ns / 1e6,
                "enqueue_ms": statistics.median(r.timing.get("enqueue_ms", 0.0) for r in runs) if not graph else None,
                "agree": all(v.claims() == want[mode] for v in verdicts),
                "late": len(verdicts[-1].late_writes),
                "gate_overruns": sum(bool(r.timing.get("eager_gate_overrun") or r.timing.get("gate_overrun")) for r in runs),
                "lane_dev_ms": runs[-1].timing.get("lane_end_deviation_ms"),
                "device": name,
            })

        for scale in [float(x) for x in args.scales.split(",")]:
            for mode in ("as-recorded", "fixed"):
                measure(f"GPU replay scale {scale:g} ({mode})", scale, mode, graph=False)
        for mode in ("as-recorded", "fixed"):
            scale = float(args.scales.split(",")[0])
            try:
                measure(f"GPU graph scale {scale:g} ({mode})", scale, mode, graph=True)
            except Exception as exc:  # report, do not hide: graph capture is the less travelled path
                print(f"graph replay failed: {type(exc).__name__}: {exc}")
    print(f"replay bench: {len(plan.ops)} ops, {plan.num_layers} layers, recorded window {window_ms:.1f} ms, "
          f"python {platform.python_version()}")
    head = (f"{'variant':<36} {'median ms':>10} {'wall ms':>9} {'planned ms':>11} {'enqueue ms':>11} {'late writes':>12} "
            f"{'agree':>6} {'overruns':>8} {'vs scale 1':>10}")
    print(head)
    print("-" * len(head))
    base = {r["mode"]: r["ms"] for r in rows if r["variant"].startswith("GPU replay scale 1 (")}
    for r in rows:
        ratio = f"{base[r['mode']] / r['ms']:.1f}x" if r["mode"] in base and r["variant"].startswith("GPU") and r["ms"] else "-"
        planned = f"{r['planned_ms']:.2f}" if r["planned_ms"] is not None else "-"
        enq = f"{r['enqueue_ms']:.1f}" if r["enqueue_ms"] is not None else "-"
        wall = f"{r['wall_ms']:.0f}" if r.get("wall_ms") is not None else "-"
        print(f"{r['variant']:<36} {r['ms']:>10.2f} {wall:>9} {planned:>11} {enq:>11} {r['late']:>12} {('yes' if r['agree'] else 'NO'):>6} {r.get('gate_overruns', '-'):>8} {ratio:>10}")
    print(f"device: {rows[-1]['device']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
