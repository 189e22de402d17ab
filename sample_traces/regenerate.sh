#!/usr/bin/env bash
# Regenerates every sample_traces/<scenario>/ folder; deterministic, so the bytes come out identical.
# --profile sample is the default: 2P+2D, TP 2, 8 layers, short contexts, raised race rates
# (simulator.config.SAMPLE_PROFILE, docs/simulator.md).
set -euo pipefail
cd "$(dirname "$0")/.."
KV=${KVTRACE:-.venv/bin/kvtrace}
$KV simulate --scenario pr35049 --seed 0 --out sample_traces/pr35049
$KV simulate --scenario pd-abort-race --profile sample --seed 4 --requests 50 --concurrency 4 --rdma-stall-rate 400 --out sample_traces/pd-abort-race
$KV simulate --scenario hicache-race --profile sample --seed 3 --requests 50 --out sample_traces/hicache-race
$KV simulate --scenario mixed --profile sample --seed 3 --requests 120 --out sample_traces/mixed
$KV simulate --scenario clean --profile sample --seed 0 --requests 30 --out sample_traces/clean
$KV simulate --scenario offload-race --profile sample --seed 8 --requests 24 --prefill 1 --decode 1 --tp 1 --l2-hit-prob 0.9 --client-abort-prob 0.3 --out sample_traces/offload-race
