#!/usr/bin/env bash
# `make demo`: sample traces -> DuckDB -> analyses -> report -> the app, on the embedded store.
# Re-running is safe: the simulator is deterministic and ingest stores each span once.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${KVTRACE_DEMO_DIR:-demo}
DB="$OUT/kvtrace.duckdb"
mkdir -p "$OUT"

echo "== 1/5 simulate: the 'mixed' scenario (versions before-fix, after-fix-1, after-both)"
$BIN/kvtrace simulate --scenario mixed --seed 3 --out "$OUT/traces"

echo "== 2/5 ingest the OTLP JSON lines into $DB"
$BIN/kvtrace ingest "$OUT/traces" --db "$DB"

echo "== 3/5 analyse: race findings, anomalies, linkage"
$BIN/kvtrace analyze --db "$DB"

echo "== 4/5 report (with the simulator's ground truth for accuracy)"
$BIN/kvtrace report --db "$DB" --out "$OUT/report" --labels "$OUT/traces/labels.json"
echo "   open $OUT/report/report.html"

if [ "${KVTRACE_DEMO_NO_APP:-0}" = "1" ]; then
  echo "== 5/5 app skipped (KVTRACE_DEMO_NO_APP=1); start it with: $BIN/kvtrace app --db $DB"
  exit 0
fi
echo "== 5/5 the investigation app on http://localhost:${KVTRACE_PORT:-8501} (Ctrl-C to stop)"
exec $BIN/kvtrace app --db "$DB" --port "${KVTRACE_PORT:-8501}"
