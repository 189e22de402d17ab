"""sample_traces/ as a whole: every scenario's folder ingests into one store without losing a span
(ids are salted with the scenario, so no two folders share a trace or span id), and the folders
stay small enough to commit."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
from click.testing import CliRunner

from kvtrace.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_traces"


def file_span_ids(folder: Path) -> list[tuple[str, str]]:
    """(trace id, span id) of every span in the folder's OTLP JSON lines files."""
    ids = []
    for path in sorted(folder.glob("*.otlp.jsonl")):
        for line in path.read_bytes().splitlines():
            for rs in orjson.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    ids += [(s["traceId"], s["spanId"]) for s in ss["spans"]]
    return ids


def test_all_sample_traces_ingest_into_one_store_keeping_every_span(tmp_path: Path) -> None:
    folders = sorted(p for p in SAMPLES.iterdir() if (p / "labels.json").exists())
    assert {p.name for p in folders} >= {"clean", "pd-abort-race", "hicache-race", "mixed", "pr35049", "offload-race"}
    per_folder = {p.name: file_span_ids(p) for p in folders}
    all_ids = [i for ids in per_folder.values() for i in ids]
    assert len({span for _, span in all_ids}) == len(all_ids), "span ids collide across sample folders"
    db = tmp_path / "all.duckdb"
    result = CliRunner().invoke(main, ["ingest", str(SAMPLES), "--db", str(db)])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    try:
        [(stored,)] = con.execute("SELECT count(*) FROM spans").fetchall()
    finally:
        con.close()
    assert stored == len(all_ids) == sum(len(ids) for ids in per_folder.values())


def test_sample_traces_stay_under_10_mb() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 10_000_000, total
