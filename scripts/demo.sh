#!/usr/bin/env bash
# `make demo`: sample traces -> DuckDB -> analyses -> report -> the app, on the embedded store.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=demo
mkdir -p "$OUT"
echo "== 1/5 simulate: the 'mixed' scenario (before fix, after fix 1, after both)"
$BIN/kvtrace simulate --scenario mixed --seed 7 --out "$OUT/traces"
