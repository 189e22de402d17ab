#!/usr/bin/env bash
# GPU replay check (issue 5): replay every finding of the sample scenarios on a GPU, both modes, and
# print the table: finding, damaged pages / late writes as-recorded and fixed, CUDA stream sanitizer
# verdict, output divergence, GPU ms per replay, GPU-vs-CPU agreement, corruption rate over a sweep.
#
# Two steps, because the GPU host may have torch but no duckdb:
#   bash bench/gpu_replay_check.sh --export   # here: sample_traces -> store -> replay/plans/samples/*.json (committed)
#   bash bench/gpu_replay_check.sh            # on the GPU host: needs python3 with torch only
# Env: PYTHON (default python3), OUT (folder for the results, default bench/out), REPEATS (GPU replays
#      per mode, default 2), SWEEP (jittered variants per mode, default 5), JITTER (percent, default 10),
#      BENCH_REPEATS (default 3), BENCH_TIMEOUT (s, default 150), SANITIZE_SAMPLE (plans per scenario and
#      kind under CSAN; default 0 = all), SANITIZE_JOBS (CSAN processes at once, default 8),
#      SANITIZE_TIMEOUT (s, default 210; unfinished plans are reported as timeouts).
# Order: timed replays alone on the GPU, then the bench, then CSAN (timing-free) in parallel processes.
set -euo pipefail
cd "$(dirname "$0")/.."
PLANS=replay/plans/samples
SCENARIOS="pr35049 pd-abort-race hicache-race offload-race mixed clean"

if [[ "${1:-}" == "--export" ]]; then
  KV=${KVTRACE:-.venv/bin/kvtrace}
  tmp=$(mktemp -d)
  rm -rf "$PLANS"; mkdir -p "$PLANS"
  for s in $SCENARIOS; do
    $KV ingest --db "$tmp/$s.duckdb" "sample_traces/$s" >/dev/null
    $KV replay export --db "$tmp/$s.duckdb" --all-findings --out "$PLANS/$s" | sed "s|^|$s: |" || true
  done
  rm -rf "$tmp"
  echo "plans: $(find "$PLANS" -name '*.json' | wc -l) in $PLANS"
  exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=32
T0=$(date +%s)
$PY - <<'PY'
import torch
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, device {torch.cuda.get_device_name() if torch.cuda.is_available() else '-'}")
PY
mapfile -t plans < <(find "$PLANS" -name '*.json' | sort)
for s in $SCENARIOS; do echo "$s: $(find "$PLANS/$s" -name '*.json' 2>/dev/null | wc -l) findings"; done
RESULTS="$OUT/gpu_replay_results.jsonl"
# 1. The timed replays, alone on the GPU (CSAN children would perturb the timing).
$PY -m kvtrace.replay.run "${plans[@]}" --device cuda --repeats "${REPEATS:-2}" --sweep "${SWEEP:-5}" --jitter "${JITTER:-10}" \
  --json "$RESULTS" > /dev/null 2> "$OUT/replay_progress.log" || { tail -5 "$OUT/replay_progress.log"; exit 1; }
echo "timed replays of ${#plans[@]} plans: $(( $(date +%s) - T0 )) s"
# 2. The 1,000-operation bench (bounded, so that the sanitizer still runs).
timeout "${BENCH_TIMEOUT:-150}" $PY bench/replay.py --repeats "${BENCH_REPEATS:-3}" --out "$OUT/replay_bench.json" \
  || echo "bench/replay.py: stopped or failed (rc $?) after at most ${BENCH_TIMEOUT:-150} s; rows above were measured"
echo "after the bench: $(( $(date +%s) - T0 )) s"
# 3. CSAN, per cell and per pool, on every plan (SANITIZE_SAMPLE=K: K per scenario and kind), in parallel
#    processes, attached to the records of step 1; then the table.
$PY -m kvtrace.replay.run "${plans[@]}" --device cuda --from-json "$RESULTS" --sanitize --sanitize-sample "${SANITIZE_SAMPLE:-0}" \
  --sanitize-jobs "${SANITIZE_JOBS:-8}" --sanitize-timeout "${SANITIZE_TIMEOUT:-210}" --json "$RESULTS" > "$OUT/gpu_replay_table.txt"
echo "after the sanitizer: $(( $(date +%s) - T0 )) s"
cat "$OUT/gpu_replay_table.txt"
$PY - "$RESULTS" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
cert = [r for r in recs if r.get("confidence") == "certain"]
asrec = [r for r in cert if r["mode"] == "as-recorded"]
fixed = [r for r in recs if r["mode"] == "fixed"]
print(f"certain findings reproduced as-recorded on GPU: {sum(r['verdict']['corrupted'] for r in asrec)}/{len(asrec)}")
print(f"fixed replays with any corruption on GPU: {sum(r['verdict']['corrupted'] for r in fixed)}/{len(fixed)}")
print(f"GPU verdict == CPU verdict (claims: corruption, pages, stale cells, victim; every repeat): "
      f"{sum(bool(r.get('agrees_with_cpu')) for r in recs)}/{len(recs)} replays; "
      f"record counts differ in {sum(bool(r.get('count_diff')) for r in recs)} (listed under the table)")
for r in recs:
    if not r.get("agrees_with_cpu"):
        dev = (r.get("timing") or {}).get("lane_end_deviation_ms")
        print(f"  disagrees: {r['plan']} {r['mode']} ({r.get('confidence')}): races {r.get('races')}, critical gap "
              f"{r.get('recorded_critical_gap_us')} us recorded -> {r.get('critical_gap_us')} us on the device, "
              f"lane end deviation {dev} ms; GPU {r['verdict']['corrupted_pages'][:8]} vs CPU {r['cpu_verdict']['corrupted_pages'][:8]}")
gaps = [r["critical_gap_us"] for r in recs if r.get("critical_gap_us") is not None]
print(f"races (conflicting accesses only timing orders): as-recorded {sum(r.get('races', 0) for r in recs if r['mode'] == 'as-recorded')}, "
      f"fixed {sum(r.get('races', 0) for r in fixed)}; smallest gap between racing accesses on the device "
      f"{min(gaps) if gaps else '-'} us (floor {recs[0].get('floor_us')} us); ties left {sum(r.get('ties', 0) for r in recs)}")
san = {r["plan"]: (r.get("sanitizer") or {}, r) for r in recs if r["mode"] == "as-recorded"}
fx = {r["plan"]: r for r in fixed}
ok = {k: v for k, v in san.items() if v[0] and "error" not in v[0]}
print(f"CSAN (per-cell views) on {len(ok)}/{len(san)} plans: flags {sum(s['as-recorded/cell']['reports'] > 0 for s, _ in ok.values())}/{len(ok)} "
      f"as-recorded, clean {sum(s['fixed/cell']['reports'] == 0 for s, _ in ok.values())}/{len(ok)} fixed; "
      f"errors or timeouts {sum(1 for s, _ in san.values() if s and 'error' in s)}; not run {sum(1 for s, _ in san.values() if not s)}")
same = sum(s["as-recorded/cell"]["n_cells"] == r.get("race_cells") for s, r in ok.values())
print(f"CSAN flagged cells == cells the happens-before analysis predicts (as-recorded): {same}/{len(ok)} plans; "
      f"fixed mode predicted races 0 on {sum(fx[k].get('races', 0) == 0 for k in ok)}/{len(ok)}")
for k, (s, r) in ok.items():
    if s["fixed/cell"]["reports"]:
        print(f"  FIXED FLAGGED: {k}: {s['fixed/cell']['n_cells']} cells, lanes {s['fixed/cell']['pairs'][:3]}")
print(f"CSAN (whole-pool tensor, production layout): flags {sum(s['as-recorded/pool']['reports'] > 0 for s, _ in ok.values())}/{len(ok)} "
      f"as-recorded and {sum(s['fixed/pool']['reports'] > 0 for s, _ in ok.values())}/{len(ok)} FIXED (false alarms: it tracks whole tensors)")
errs = sorted({" ".join(s["error"]) for s, _ in san.values() if s and "error" in s})
if errs:
    print("CSAN errors:", *errs[:3], sep="\n  ")
ms = sorted(r["gpu_ms"] for r in recs if r.get("gpu_ms") is not None)
if ms:
    print(f"GPU ms per replay: median {ms[len(ms)//2]:.2f}, max {ms[-1]:.2f}; overruns of the launch gate: "
          f"{sum(bool(r.get('timing', {}).get('gate_overrun')) for r in recs)}")
dev = [abs(r['timing']['lane_end_deviation_ms']['max']) for r in recs if r.get('timing', {}).get('lane_end_deviation_ms')]
print(f"achieved vs planned lane end (CUDA events): worst {max(dev):.3f} ms late" if dev else "")
PY
echo "total: $(( $(date +%s) - T0 )) s"
