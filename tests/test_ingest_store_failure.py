"""The store failing mid-ingest (here: DuckDB out of memory under a 1 MB limit on a file with a
200,000-page span) gives one clear error naming the file, with DuckDB's own reason, not the
"transaction aborted" noise of the statements after it; the open transaction is rolled back,
files committed before are kept, and re-running completes the job with exact counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest_otlp_builders import json_lines, pd_request_spans
from ingest_support import query

from kvtrace.ingest import IngestError, ingest_paths, open_store
from kvtrace.ingest.pipeline import ingest_files


def big_file(path: Path) -> Path:
    pages = b",".join(b'{"intValue":"%d"}' % i for i in range(200_000))
    key = b'{"key":"kv.page_ids","value":{"arrayValue":{"values":['
    path.write_bytes(json_lines(pd_request_spans(seed=2, rid="b" * 16)).replace(key, key + pages + b",", 1))
    return path


def test_store_failure_names_the_file_rolls_back_and_a_rerun_completes(tmp_path: Path) -> None:
    small = tmp_path / "a.jsonl"
    small.write_bytes(json_lines(pd_request_spans()))
    big = big_file(tmp_path / "b.jsonl")
    db = tmp_path / "s.duckdb"
    assert ingest_paths([small], db, progress=False).spans_new == 14

    con = open_store(db)
    try:
        con.execute("SET memory_limit = '1MB'")
        with pytest.raises(IngestError) as failed:
            ingest_files(con, [big])
    finally:
        con.close()
    message = str(failed.value)
    assert message.startswith(f"{big.resolve()}: the store failed: Out of Memory Error")
    assert "rolled back" in message and "aborted" not in message
    assert query(db, "SELECT count(*), count(DISTINCT file_id) FROM spans") == [(14, 1)]
    assert query(db, "SELECT count(*) FROM ingested_files") == [(1,)]

    again = ingest_paths([small, big], db, progress=False)
    assert (again.files_skipped, again.spans_new) == (1, 14)
    assert query(db, "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans") == [(28, 28)]
    assert query(db, "SELECT max(n_pages) > 200_000 FROM kv_events") == [(True,)]
