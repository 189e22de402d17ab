"""The app's data layer hands the pages polars frames: DuckDB's Arrow result goes to polars without a
copy of its columns, and no page's data passes through pandas (kvtrace does not depend on it)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pytest

from kvtrace.app.data import analysis, anomalies, compare, findings, ingest_files, overview, requests
from kvtrace.app.safe_sql import open_read_only, run_query, to_frame
from kvtrace.app.store import Store


@pytest.fixture(scope="module")
def store(mixed_store: Path) -> Iterator[Store]:
    with Store(mixed_store) as s:
        yield s


def test_page_data_functions_return_polars_frames(store: Store) -> None:
    incidents = findings.list_incidents(store)
    listed = findings.list_findings(store)
    rid = str(requests.search(store, "", 1)["rid"][0])
    fid = str(listed.filter(pl.col("kind") == "abort_before_write_complete")["finding_id"][0])
    tl = findings.timeline(store, fid)
    versions = compare.versions(store)
    frames = {
        "incidents": (incidents, {"incident_id", "kind", "n_victims", "culprit_rid"}),
        "findings": (listed, {"finding_id", "kind", "n_pages", "culprit_rid", "victim_rid"}),
        "incident findings": (
            findings.incident_findings(store, str(incidents["incident_id"][0])),
            {"finding", "pages", "window"},
        ),
        "timeline events": (tl.events, set(findings.EVENT_COLUMNS)),
        "timeline moments": (tl.moments, set(findings.MOMENT_COLUMNS)),
        "request search": (requests.search(store, "", 50), {"rid", "roles", "duration_ms", "anomaly"}),
        "span tree input": (
            requests.waterfall(store, rid),
            {"span_id", "parent_span_id", "start_ms", "duration_ms"},
        ),
        "anomaly linkage": (anomalies.linkage(store), {"rid", "anomaly", "explained"}),
        "bubbleup": (anomalies.bubbleup(store, "e2e_s", 0.0, 1e9), {"attribute", "value", "share_selected"}),
        "versions": (overview.versions(store), {"service_version", "requests"}),
        "compare": (
            compare.side_by_side(store, versions[0], versions[-1]),
            {"context_bucket", "throughput_gain"},
        ),
        "ingested files": (ingest_files.files(store), {"file_id", "path", "spans_read"}),
        "anomaly rate": (analysis.anomaly_rate(store), {"bucket", "per_10k", "bucket_s"}),
        "verdict coverage": (analysis.verdict(store).coverage, {"evidence", "present"}),
    }
    for name, (frame, columns) in frames.items():
        assert isinstance(frame, pl.DataFrame), f"{name}: {type(frame)}"
        assert columns <= set(frame.columns), f"{name}: {frame.columns}"
    assert len(tl.events) > 0 and tl.events.schema["x0_ms"] == pl.Float64
    # the compare table keeps the context buckets in their natural order (a polars sort expression)
    order = [b for b in compare.BUCKET_ORDER if b in set(frames["compare"][0]["context_bucket"])]
    assert frames["compare"][0]["context_bucket"].to_list()[: len(order)] == order


def test_a_large_result_reaches_polars_without_a_copy(mixed_store: Path) -> None:
    """200,000 rows through the app's query guard arrive as polars; the integer column polars holds is
    the very buffer Arrow filled (no copy, no pandas)."""
    con = open_read_only(mixed_store)
    try:
        result = run_query(con, "SELECT i, i * 0.5 AS half FROM range(200000) t(i)", max_rows=250_000)
    finally:
        con.close()
    assert isinstance(result.frame, pl.DataFrame) and not result.truncated
    assert result.frame.height == 200_000 and result.frame["half"][199_999] == 99_999.5
    table = duckdb.sql("SELECT i FROM range(200000) t(i)").to_arrow_table().combine_chunks()
    frame = to_frame(table)
    assert frame["i"].to_arrow().buffers()[1].address == table.column("i").chunk(0).buffers()[1].address


def test_repeated_column_names_and_out_of_range_dates_stay_showable() -> None:
    table = duckdb.sql("SELECT 1 AS a, 2 AS a, DATE '5877642-06-25' AS far").to_arrow_table()
    frame = to_frame(table)
    assert frame.columns == ["a", "a_1", "far"]
    assert frame.row(0) == (1, 2, "5877642-06-25")  # polars would panic reading that date


def test_the_data_layer_never_loads_pandas(mixed_store: Path) -> None:
    """A fresh interpreter runs the pages' data functions on the sample store: pandas is never imported
    (a `.df()` / `to_pandas` anywhere on the way would import it)."""
    code = f"""
import sys
from kvtrace.app.data import anomalies, findings, overview, requests
from kvtrace.app.store import Store
with Store({str(mixed_store)!r}) as s:
    fid = str(findings.list_findings(s)["finding_id"][0])
    findings.timeline(s, fid)
    findings.list_incidents(s)
    rid = str(requests.search(s, "", 5)["rid"][0])
    requests.waterfall(s, rid)
    requests.context(s, rid)
    anomalies.linkage(s)
    overview.ingest_summary(s)
print("pandas" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_plain_labels_escapes_polars_text_columns() -> None:
    from kvtrace.app.charts import plain_labels

    frame = pl.DataFrame({"name": ["<b>x</b>", None], "n": [1, 2]}).with_columns(
        kind=pl.Series(["<i>", "ok"], dtype=pl.Categorical)
    )
    out = plain_labels(frame)
    assert out["name"].to_list() == ["&lt;b&gt;x&lt;/b&gt;", None]
    assert out["kind"].to_list() == ["&lt;i&gt;", "ok"] and out["n"].to_list() == [1, 2]
