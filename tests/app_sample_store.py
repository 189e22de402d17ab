"""Session stores for the app's tests, built by the real pipeline: sample traces -> ingest -> analyze."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

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


@pytest.fixture(scope="session")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample_traces/mixed ingested and analysed: three versions, both bug kinds."""
    root = tmp_path_factory.mktemp("app_mixed")
    files = _copy_traces(MIXED, root / "traces")
    db = root / "kvtrace.duckdb"
    ingest_paths(files, db, progress=False)
    _analyze(db)
    return db


def _analyze(db: Path) -> None:
    """`kvtrace analyze`'s library call: analytics.materialise.analyze on the store."""
    con = open_store(db)
    try:
        analyze(con)
    finally:
        con.close()


@pytest.fixture(scope="session")
def ingested_only_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample_traces/pr35049 ingested but never analysed: pages must say `run kvtrace analyze`."""
    root = tmp_path_factory.mktemp("app_pr35049")
    files = _copy_traces(PR35049, root / "traces")
    db = root / "kvtrace.duckdb"
    ingest_paths(files, db, progress=False)
    return db
