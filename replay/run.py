"""Replay plans on a device and report: `python -m kvtrace.replay.run PLAN [PLAN...] --device cuda|cpu ...`.

Needs the standard library, plus torch for --device cuda: this is what runs on a GPU host that has
no analytics stack. `kvtrace replay run` calls the same functions and can store the results.

For every plan and mode it reports the verdict (damaged pages, late writes, stale reads), the CPU
executor's prediction and whether the two agree, the output divergence of a small attention layer
over the victim's KV against the race-free replay, the GPU time of the replay and how closely the
device followed the planned timing; with --sanitize, what PyTorch's CUDA stream sanitizer said;
with --sweep N, the corruption rate over N jittered variants.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kvtrace.replay.cpu import observe, predict, run_cpu
from kvtrace.replay.plan import Plan, PlanError, compile_plan, load_plan
from kvtrace.replay.sweep import sweep
from kvtrace.replay.timing import DEFAULT_FLOOR_NS, DeviceTiming, device_timing
from kvtrace.replay.verdict import Verdict, judge

# Lanes are CUDA streams; more than CUDA's default 8 hardware queues would serialize them. Read when
# the CUDA context is created: torch is imported lazily, below, so this comes first.
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")

MODES = ("as-recorded", "fixed")
TARGET_WINDOW_NS = 20_000_000  # an auto-scaled window lasts about 20 ms on the device (plus the floors)


def auto_time_scale(plan: Plan) -> float:
    """Compress (or stretch) recorded time so the as-recorded window lasts ~20 ms on the device.
    Races closer than that are kept apart by the time warp's floor (replay.timing), not by the scale."""
    run = run_cpu(plan, "as-recorded")
    span = max(1.0, run.schedule.makespan_ns() - plan.window_ns()[0])
    return TARGET_WINDOW_NS / span


def count_diff(got: Verdict, want: Verdict) -> dict[str, list[int]]:
    """Record counts that differ between two verdicts that may still agree on every claim."""
    g, w = got.counts(), want.counts()
    return {k: [g[k], w[k]] for k in g if g[k] != w[k]}


def _describe(plan: Plan, name: str) -> dict[str, Any]:
    exp = plan.expected
    return {
        "plan": name,
        "finding_id": exp.get("finding_id") or plan.meta.get("finding_id"),
        "kind": exp.get("kind"),
        "confidence": exp.get("confidence"),
        "n_ops": len(plan.ops),
    }


def run_plan_cpu(
    plan: Plan,
    name: str,
    modes: tuple[str, ...],
    sweep_n: int,
    jitter: float,
    time_scale: float | None = None,
    floor_ns: float = DEFAULT_FLOOR_NS,
) -> list[dict[str, Any]]:
    out = []
    clean = predict(plan, "fixed")[0]
    scale = time_scale if time_scale is not None else auto_time_scale(plan)
    for mode in modes:
        t = time.perf_counter()
        v = run_cpu(plan, mode, clean).verdict
        rec: dict[str, Any] = {
            **_describe(plan, name),
            "mode": mode,
            "device": "cpu",
            "device_name": "cpu executor",
            "verdict": v.summary(),
            "details": v.to_json(),
            "cpu_ms": round((time.perf_counter() - t) * 1e3, 3),
            "time_scale": scale,
            "floor_us": floor_ns / 1e3,
            **_timing_fields(device_timing(plan, mode, scale, floor_ns)),
        }
        if sweep_n:
            rec["sweep"] = sweep(plan, sweep_n, jitter, mode)
        out.append(rec)
    return out


def run_plan_gpu(
    plan: Plan,
    name: str,
    modes: tuple[str, ...],
    time_scale: float | None,
    sweep_n: int,
    jitter: float,
    repeats: int = 1,
    floor_ns: float = DEFAULT_FLOOR_NS,
) -> list[dict[str, Any]]:
    import torch

    from kvtrace.replay.gpu import Replayer

    scale = time_scale if time_scale is not None else auto_time_scale(plan)
    rp = Replayer(plan, "cuda")
    clean = predict(plan, "fixed")[0]
    device_name = torch.cuda.get_device_name()
    out = []
    for mode in modes:
        dt = device_timing(plan, mode, scale, floor_ns)
        cpu_v = judge(plan, observe(plan, dt.schedule), clean)
        runs = [rp.run(dt.program, 1.0, dt.lane_end_ns) for _ in range(max(1, repeats))]
        verdicts = [judge(plan, r.obs, clean) for r in runs]
        gv = verdicts[-1]
        diffs = [count_diff(v, cpu_v) for v in verdicts]
        rec: dict[str, Any] = {
            **_describe(plan, name),
            "mode": mode,
            "device": "cuda",
            "device_name": device_name,
            "time_scale": scale,
            "floor_us": floor_ns / 1e3,
            "verdict": gv.summary(),
            "details": gv.to_json(),
            "cpu_verdict": cpu_v.summary(),
            # Agreement is on what the verdict claims (corruption, pages, stale cells, victim);
            # record counts that differ are reported beside it, never hidden.
            "agrees_with_cpu": all(v.claims() == cpu_v.claims() for v in verdicts),
            "count_diff": next((d for d in diffs if d), {}),
            "repeats": len(runs),
            "gpu_ms": round(sorted(r.gpu_ms or 0.0 for r in runs)[len(runs) // 2], 4),
            "timing": runs[-1].timing,
            **_timing_fields(dt),
        }
        if sweep_n:

            def gpu_runner(variant: Plan, m: str) -> Verdict:
                vt = device_timing(variant, m, scale, floor_ns)
                return judge(variant, rp.run(vt.program, 1.0, vt.lane_end_ns).obs, clean)

            rec["sweep"] = sweep(plan, sweep_n, jitter, mode, gpu_runner)
        out.append(rec)
    return out


def _timing_fields(dt: DeviceTiming) -> dict[str, Any]:
    """How close to the edge the replay ran: the races (conflicting accesses that only timing orders;
    fixed mode has none), their smallest gap as recorded and as achieved on the device by the time
    warp, and the planned device window."""
    return {
        "races": dt.n_races,
        "race_cells": dt.race_cells,
        "ties": dt.ties,
        "untied": dt.untied,
        "recorded_critical_gap_us": None if dt.critical_gap_ns is None else round(dt.critical_gap_ns / 1e3, 3),
        "critical_gap_us": None if dt.device_critical_gap_ns is None else round(dt.device_critical_gap_ns / 1e3, 3),
        "planned_device_ms": round(dt.makespan_ns / 1e6, 4),
    }


def sanitizer_child(plan: Plan, time_scale: float | None) -> dict[str, Any]:
    """Run inside a process started with TORCH_CUDA_SANITIZER=1: each mode at cell and pool granularity.

    CSAN judges happens-before (streams and events), not timing, so the recorded waits are skipped
    (time scale 0) unless a scale is given."""
    import traceback

    from kvtrace.replay.gpu import Replayer, quiet_stderr

    # CSAN captures a Python stack for every tensor access; the replay's accesses are all alike, and
    # the stacks make a per-cell replay minutes long. Its verdict does not depend on them.
    stub = traceback.StackSummary.from_list([traceback.FrameSummary("replay", 0, "replay", lookup_line=False)])
    traceback.StackSummary.extract = classmethod(lambda cls, *a, **k: traceback.StackSummary(stub))  # type: ignore[method-assign,assignment]
    scale = time_scale if time_scale is not None else 0.0
    result: dict[str, Any] = {}
    for granularity in ("cell", "pool"):
        for mode in MODES:
            rp = Replayer(plan, "cuda", sanitize=granularity)
            program = compile_plan(plan, mode)
            with quiet_stderr():
                run = rp.run(program, scale)
            reports = run.sanitizer or []
            cells = sorted({tuple(r["cell"]) for r in reports if r.get("cell")})
            result[f"{mode}/{granularity}"] = {
                "reports": len(reports),
                "cells": [list(c) for c in cells[:20]],
                "n_cells": len(cells),
                "pairs": sorted({(r["lane"], r["previous_lane"]) for r in reports})[:10],
            }
    return result


def sanitizer_check(plan_path: str, time_scale: float | None) -> dict[str, Any]:
    return sanitizer_check_many([plan_path], time_scale)[plan_path]


def sanitizer_check_many(
    plan_paths: list[str], time_scale: float | None, jobs: int = 1, timeout_s: float = 600.0
) -> dict[str, dict[str, Any]]:
    """Children under TORCH_CUDA_SANITIZER=1 (CSAN must be on before torch is imported), `jobs` of
    them at once over interleaved shares of the plans: CSAN judges happens-before, not timing, so
    they may share the GPU. Each child prints one line per plan as it finishes; a child still
    running at `timeout_s` is stopped, and its unfinished plans say so."""
    env = {**os.environ, "TORCH_CUDA_SANITIZER": "1", "PYTHONPATH": str(Path(__file__).absolute().parents[2])}  # the folder holding kvtrace/
    shares = [plan_paths[i :: max(1, jobs)] for i in range(max(1, jobs))]
    procs = []
    for share in (s for s in shares if s):
        cmd = [sys.executable, "-m", "kvtrace.replay.run", *share, "--device", "cuda", "--csan-child"]
        if time_scale is not None:
            cmd += ["--time-scale", str(time_scale)]
        procs.append((share, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.monotonic() + timeout_s
    out: dict[str, dict[str, Any]] = {}
    for share, proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            failure = None if proc.returncode == 0 else ((stderr or "").strip().splitlines()[-3:] or [f"exit {proc.returncode}"])
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            failure = [f"timeout: CSAN did not finish within {timeout_s:.0f} s"]
        for line in (stdout or "").splitlines():
            try:
                done = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(done, dict):
                out.update(done)
        for path in share:
            out.setdefault(path, {"error": failure or ["no result"]})
    for raw in out.values():
        if "error" in raw:
            continue
        as_rec, fixed = raw["as-recorded/cell"], raw["fixed/cell"]
        raw["verdict"] = (
            ("flagged" if as_rec["reports"] else "silent") + " as-recorded, " + ("clean" if not fixed["reports"] else "flagged") + " fixed"
        )
    return out


def _sanitize_sample(paths: list[str], records: list[dict[str, Any]], k: int) -> list[str]:
    if k <= 0:
        return paths
    kind = {r["plan_path"]: r.get("kind") for r in records}
    seen: dict[tuple[str, Any], int] = {}
    out = []
    for p in paths:
        key = (str(Path(p).parent), kind.get(p))
        if seen.get(key, 0) < k:
            seen[key] = seen.get(key, 0) + 1
            out.append(p)
    return out


def sanitizer_label(s: dict[str, Any] | None, predicted: tuple[Any, Any] = (None, None)) -> str:
    """CSAN's per-cell verdict, with the cells the happens-before analysis predicts (replay.timing)."""
    if not s:
        return "not run"
    if "error" in s:
        return "error"
    a, f = s["as-recorded/cell"], s["fixed/cell"]
    pa, pf = ("?" if p is None else p for p in predicted)
    fixed = "clean" if not f["reports"] else f"FLAGS {f['n_cells']}"
    return f"{'flags' if a['reports'] else 'silent'} {a['n_cells']} (pred {pa}) / fixed {fixed} (pred {pf})"


def _sweep_cell(a: dict[str, Any], f: dict[str, Any]) -> str:
    sa, sf = a.get("sweep"), f.get("sweep")
    if not sa or not sf:
        return "-"
    return f"{sa['corruption_rate']:.2f}/{sf['corruption_rate']:.2f} (n={sa['n']},{sa['jitter_pct']:g}%)"


def _agree_cell(a: dict[str, Any], f: dict[str, Any]) -> str:
    recs = [m for m in (a, f) if m and "agrees_with_cpu" in m]
    if not recs:
        return "-"
    if not all(m["agrees_with_cpu"] for m in recs):
        return "NO"
    return "yes*" if any(m.get("count_diff") for m in recs) else "yes"


def _gap_cell(a: dict[str, Any]) -> str:
    rec, dev = a.get("recorded_critical_gap_us"), a.get("critical_gap_us")
    if rec is None:
        return "-"
    return f"{rec:.0f}->{dev:.0f}" if dev is not None else f"{rec:.0f}"


def table(records: list[dict[str, Any]]) -> str:
    """The check table: one line per plan, both modes side by side, then every count that differs
    between the GPU and the CPU executor where their verdicts agree (marked yes*)."""
    by_plan: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        by_plan.setdefault(r["plan"], {})[r["mode"]] = r
    head = (
        f"{'finding':<18} {'kind':<28} {'conf':<8} {'dmg/late as-rec':>15} {'dmg/late fixed':>14} {'races a/f':>10} "
        f"{'gap us rec->dev':>16} {'sanitizer per cell (pred = happens-before)':<46} {'cos / maxerr':>18} "
        f"{'ms/replay':>12} {'agree':>5} {'P(corrupt) as-rec/fixed':>24}"
    )
    lines = [head, "-" * len(head)]
    notes = []
    for name, modes in by_plan.items():
        a, f = modes.get("as-recorded", {}), modes.get("fixed", {})
        va, vf = a.get("verdict", {}), f.get("verdict", {})
        div = va.get("divergence") or {}
        ms = [m.get("gpu_ms") for m in (a, f) if m.get("gpu_ms") is not None]
        fid = str(a.get("finding_id") or name)[:18]
        races = f"{a.get('races', '-')}/{f.get('races', '-')}"
        lines.append(
            f"{fid:<18} {str(a.get('kind') or '-')[:28]:<28} {a.get('confidence') or '-'!s:<8} "
            f"{len(va.get('damaged_pages', [])):>7}/{va.get('n_late_writes', 0):<7} "
            f"{len(vf.get('damaged_pages', [])):>6}/{vf.get('n_late_writes', 0):<7} {races:>10} {_gap_cell(a):>16} "
            f"{sanitizer_label(a.get('sanitizer'), (a.get('race_cells'), f.get('race_cells'))):<46} "
            f"{(str(div.get('cosine', '-')) + ' / ' + str(div.get('max_abs_err', '-'))):>18} "
            f"{('/'.join(f'{x:.2f}' for x in ms) or '-'):>12} {_agree_cell(a, f):>5} {_sweep_cell(a, f):>24}"
        )
        for m in (a, f):
            for key, (gpu, cpu) in (m.get("count_diff") or {}).items():
                notes.append(f"  {fid} {m['mode']}: {key} {gpu} on the GPU vs {cpu} on the CPU executor")
    if notes:
        lines += ["", "counts that differ where the verdicts agree (yes*):", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvtrace.replay.run", description=__doc__.splitlines()[0])
    ap.add_argument("plans", nargs="+", help="plan JSON files (replay/PLAN_FORMAT.md)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--mode", choices=(*MODES, "both"), default="both")
    ap.add_argument("--time-scale", type=float, default=None, help="device time per recorded time (default: auto)")
    ap.add_argument(
        "--min-gap-ms", type=float, default=DEFAULT_FLOOR_NS / 1e6,
        help="keep every race's two accesses at least this far apart on the device (time warp floor; 0 = off)",
    )
    ap.add_argument("--sweep", type=int, default=0, metavar="N")
    ap.add_argument("--jitter", type=float, default=10.0, metavar="PCT")
    ap.add_argument("--repeats", type=int, default=1, help="GPU replays per mode (agreement must hold for all)")
    ap.add_argument("--sanitize", action="store_true", help="also run under TORCH_CUDA_SANITIZER=1 (cuda)")
    ap.add_argument(
        "--sanitize-sample", type=int, default=0, metavar="K",
        help="sanitize at most K plans per (folder, kind) (CSAN is slow; 0 = every plan)",
    )
    ap.add_argument("--sanitize-jobs", type=int, default=8, help="CSAN processes at once (they may share the GPU)")
    ap.add_argument("--sanitize-timeout", type=float, default=300.0, metavar="S", help="stop CSAN after S seconds")
    ap.add_argument(
        "--from-json", default=None, metavar="FILE",
        help="take the replay records from FILE (an earlier --json) instead of replaying: e.g. to add --sanitize",
    )
    ap.add_argument("--json", dest="json_out", default=None, help="write one JSON record per line here")
    ap.add_argument("--csan-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)
    try:
        if args.csan_child:
            for path in args.plans:  # one line per plan, as it finishes (the parent may stop us)
                try:
                    result = sanitizer_child(load_plan(path), args.time_scale)
                except Exception as exc:  # one plan's failure must not hide the others' verdicts
                    result = {"error": [f"{type(exc).__name__}: {exc}"]}
                print(json.dumps({path: result}), flush=True)
            return 0
        records: list[dict[str, Any]] = []
        if args.from_json:
            with open(args.from_json) as fh:
                records = [json.loads(line) for line in fh if line.strip()]
        t_start = time.perf_counter()
        for i, path in enumerate([] if args.from_json else args.plans):
            plan = load_plan(path)
            name = Path(path).stem
            print(f"[{i + 1}/{len(args.plans)}] {name}: {len(plan.ops)} ops (t={time.perf_counter() - t_start:.1f} s)", file=sys.stderr, flush=True)
            if args.device == "cpu":
                recs = run_plan_cpu(plan, name, modes, args.sweep, args.jitter, args.time_scale, args.min_gap_ms * 1e6)
            else:
                recs = run_plan_gpu(
                    plan, name, modes, args.time_scale, args.sweep, args.jitter, args.repeats, args.min_gap_ms * 1e6
                )
                for r in recs:
                    r["plan_path"] = path
            records.extend(recs)
        if args.device == "cuda" and args.sanitize:
            chosen = _sanitize_sample(list(args.plans), records, args.sanitize_sample)
            print(
                f"sanitizer: {len(chosen)} plans under TORCH_CUDA_SANITIZER=1, {args.sanitize_jobs} processes, "
                f"stopped after {args.sanitize_timeout:g} s",
                file=sys.stderr, flush=True,
            )
            t_csan = time.perf_counter()
            verdicts = sanitizer_check_many(chosen, args.time_scale, args.sanitize_jobs, args.sanitize_timeout)
            print(f"sanitizer: done in {time.perf_counter() - t_csan:.0f} s", file=sys.stderr, flush=True)
            for r in records:
                r["sanitizer"] = verdicts.get(r.get("plan_path", ""))
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json_out:
        with open(args.json_out, "w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
