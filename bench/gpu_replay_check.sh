#!/usr/bin/env bash
# GPU replay check (issue 5): replay every finding of the sample scenarios on a GPU, both modes, and
# print the table: finding, damaged pages / late writes as-recorded and fixed, CUDA stream sanitizer
# verdict, output divergence, GPU ms per replay, GPU-vs-CPU agreement, corruption rate over a sweep.
#
# Two steps, because the GPU host may have torch but no duckdb:
#   bash bench/gpu_replay_check.sh --export   # here: sample_traces -> store -> replay/plans/samples/*.json (committed)
#   bash bench/gpu_replay_check.sh            # on the GPU host: needs python3 with torch only
# Env: PYTHON (default python3), OUT (folder for results.jsonl, default bench/out), SWEEP,
#      JITTER (default 10), REPEATS (GPU replays per mode, default 2); SWEEP default 10;
#      SANITIZE_SAMPLE (plans per scenario and kind run under CSAN, default 2; 0 = all).
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
$PY - <<'PY'
import torch
print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, device {torch.cuda.get_device_name() if torch.cuda.is_available() else '-'}")
PY
mapfile -t plans < <(find "$PLANS" -name '*.json' | sort)
for s in $SCENARIOS; do echo "$s: $(find "$PLANS/$s" -name '*.json' 2>/dev/null | wc -l) findings"; done
$PY -m replay.run "${plans[@]}" --device cuda --sanitize --sanitize-sample "${SANITIZE_SAMPLE:-2}" --repeats "${REPEATS:-2}" \
  --sweep "${SWEEP:-10}" --jitter "${JITTER:-10}" --json "$OUT/gpu_replay_results.jsonl" > "$OUT/gpu_replay_table.txt"
cat "$OUT/gpu_replay_table.txt"
$PY - "$OUT/gpu_replay_results.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
cert = [r for r in recs if r.get("confidence") == "certain"]
asrec = [r for r in cert if r["mode"] == "as-recorded"]
fixed = [r for r in recs if r["mode"] == "fixed"]
print(f"certain findings reproduced as-recorded on GPU: {sum(r['verdict']['corrupted'] for r in asrec)}/{len(asrec)}")
print(f"fixed replays with any corruption on GPU: {sum(r['verdict']['corrupted'] for r in fixed)}/{len(fixed)}")
print(f"GPU verdict == CPU verdict (every repeat): {sum(bool(r.get('agrees_with_cpu')) for r in recs)}/{len(recs)} replays")
for r in recs:
    if not r.get("agrees_with_cpu"):
        dev = (r.get("timing") or {}).get("lane_end_deviation_ms")
        print(f"  disagrees: {r['plan']} {r['mode']} ({r.get('confidence')}): critical gap on the device "
              f"{r.get('critical_gap_us')} us, lane end deviation {dev} ms")
san = [r.get("sanitizer") or {} for r in recs if r["mode"] == "as-recorded"]
ok = [s for s in san if s and "error" not in s]
print(f"CSAN (per-cell views): flags {sum(s['as-recorded/cell']['reports'] > 0 for s in ok)}/{len(ok)} as-recorded, "
      f"clean {sum(s['fixed/cell']['reports'] == 0 for s in ok)}/{len(ok)} fixed; errors {sum(1 for s in san if s and 'error' in s)}; not run {sum(1 for s in san if not s)}")
print(f"CSAN (whole-pool tensor, production layout): flags {sum(s['as-recorded/pool']['reports'] > 0 for s in ok)}/{len(ok)} "
      f"as-recorded and {sum(s['fixed/pool']['reports'] > 0 for s in ok)}/{len(ok)} FIXED (false alarms: it tracks whole tensors)")
errs = sorted({" ".join(s["error"]) for s in san if s and "error" in s})
if errs:
    print("CSAN errors:", *errs[:3], sep="\n  ")
ms = sorted(r["gpu_ms"] for r in recs if r.get("gpu_ms") is not None)
print(f"GPU ms per replay: median {ms[len(ms)//2]:.2f}, max {ms[-1]:.2f}; overruns of the launch gate: "
      f"{sum(bool(r.get('timing', {}).get('gate_overrun')) for r in recs)}")
dev = [abs(r['timing']['lane_end_deviation_ms']['max']) for r in recs if r.get('timing', {}).get('lane_end_deviation_ms')]
print(f"achieved vs planned lane end (CUDA events): worst {max(dev):.3f} ms late" if dev else "")
PY
