#!/usr/bin/env bash
# Regenerates every sample_traces/<scenario>/ folder; deterministic, so the bytes come out identical.
set -euo pipefail
cd "$(dirname "$0")/.."
KV=${KVTRACE:-.venv/bin/kvtrace}
# Small cluster, short contexts, and rate knobs raised far above the realistic defaults so that a
# few dozen requests hold several races (see docs/simulator.md for the realistic settings).
SMALL=(--tp 2 --layers 8 --mean-context 1536 --max-context 8192 --mean-output 120 --concurrency 24
       --think-time-s 0.3 --completion-chars 64 --decode-trace-ms 4000 --transfer-timeout-s 0.3
       --rdma-stall-rate 50 --rdma-stall-min-s 0.1 --hicache-stall-rate 400 --hicache-stall-min-ms 5)
$KV simulate --scenario pr35049 --seed 0 --out sample_traces/pr35049
$KV simulate --scenario pd-abort-race --seed 2 --requests 50 "${SMALL[@]}" --out sample_traces/pd-abort-race
$KV simulate --scenario hicache-race --seed 3 --requests 50 "${SMALL[@]}" --out sample_traces/hicache-race
$KV simulate --scenario mixed --seed 3 --requests 120 "${SMALL[@]}" --out sample_traces/mixed
$KV simulate --scenario clean --seed 0 --requests 30 "${SMALL[@]}" --out sample_traces/clean
