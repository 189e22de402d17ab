"""Stores built from the sample traces by the real pipeline (ingest, analyze): plain builders that
tests/conftest.py's session fixtures call once per run. Not a test module."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

from kvtrace.analytics.materialise import analyze
from kvtrace.ingest import ingest_paths, open_store

ROOT = Path(__file__).resolve().parents[1]
MIXED = ROOT / "sample_traces" / "mixed"
PR35049 = ROOT / "sample_traces" / "pr35049"


def _copy_traces(src: Path, dst: Path) -> list[Path]:
    dst.mkdir(parents=True)
    for f in src.glob("*.otlp.jsonl"):
        shutil.copy(f, dst / f.name)
    return sorted(dst.glob("*.otlp.jsonl"))


def count_spans(files: list[Path]) -> int:
    """Spans in OTLP JSON lines files, counted without kvtrace's code."""
    total = 0
    for f in files:
        for line in f.read_bytes().splitlines():
            if line.strip():
                for rs in orjson.loads(line)["resourceSpans"]:
                    total += sum(len(ss.get("spans", [])) for ss in rs.get("scopeSpans", []))
    return total


def ingest_sample(src: Path, root: Path) -> Path:
    """The sample traces in `src` copied under `root` and ingested (as `kvtrace ingest` does)."""
    db = root / "kvtrace.duckdb"
    ingest_paths(_copy_traces(src, root / "traces"), db, progress=False)
    return db


def analyse(db: Path) -> None:
    """`kvtrace analyze`'s library call: analytics.materialise.analyze on the store."""
    con = open_store(db)
    try:
        analyze(con)
    finally:
        con.close()
