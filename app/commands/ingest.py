"""`kvtrace ingest`, `kvtrace quarantine`, `kvtrace export`: files in, records that failed, Parquet out."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from kvtrace.app.options import db_option
from kvtrace.ingest import IngestError, IngestSummary, ingest_paths, open_store
from kvtrace.ingest.export import export_parquet
from kvtrace.ingest.pipeline import DEFAULT_BATCH_SPANS, DEFAULT_COMMIT_SPANS
from kvtrace.ingest.store import CLI_WAIT_S


def _ns(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _short_list(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "") if items else "-"


def format_summary(s: IngestSummary) -> str:
    """The one-screen summary printed after an ingest."""
    rate = s.spans_read / s.seconds if s.seconds > 0 else 0.0
    lines = [
        f"store        {s.db_path} ({s.store_spans:,} spans in total)",
        f"files        {s.files_ingested} ingested, {s.files_skipped} skipped (already ingested, unchanged)",
        f"spans        {s.spans_read:,} read, {s.spans_new:,} new, {s.spans_read - s.spans_new:,} already stored",
        f"traces       {s.traces:,}",
        f"services     {_short_list(s.services)}",
        f"hosts        {_short_list(s.hosts)}",
        f"time range   {_ns(s.start_ns)} .. {_ns(s.end_ns)}",
        f"quarantined  {s.quarantined:,}" + ("  (see: kvtrace quarantine)" if s.quarantined else ""),
        f"took         {s.seconds:.2f} s ({rate:,.0f} spans/s)",
    ]
    return "\n".join(lines)


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True)
@db_option
@click.option("--batch-spans", type=click.IntRange(min=1), default=DEFAULT_BATCH_SPANS, show_default=True,
              help="Spans per batch handed to DuckDB (memory is bounded by this, not by file size).")
@click.option("--commit-spans", type=click.IntRange(min=1), default=DEFAULT_COMMIT_SPANS, show_default=True,
              help="Commit once a transaction of whole files holds this many spans (big commits write "
                   "row groups straight to the file; a crash redoes the uncommitted files).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def ingest_command(paths: tuple[str, ...], db: str, batch_spans: int, commit_spans: int, progress: bool) -> None:
    """Ingest OTLP trace files (JSON, JSON lines, protobuf; gzip/zstd) into the store.

    PATHS are files, directories (searched recursively) or globs. Each file is stored atomically
    (whole files per transaction); re-running skips files already ingested and never stores a
    span twice.

    Example:

        kvtrace ingest sample_traces/ --db kvtrace.duckdb
    """
    try:
        summary = ingest_paths(paths, db, progress=progress, batch_spans=batch_spans, commit_spans=commit_spans,
                               wait_s=CLI_WAIT_S)
    except IngestError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_summary(summary))


@click.command("quarantine")
@db_option
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Rows to show.")
@click.option("--source", default=None, help="Only records from this file / live source (substring).")
def quarantine_command(db: str, limit: int, source: str | None) -> None:
    """List records that ingest could not store: where they were, why, and their first bytes.

    Example:

        kvtrace quarantine --db kvtrace.duckdb --limit 20
    """
    try:
        con = open_store(db, read_only=True, wait_s=CLI_WAIT_S)
    except IngestError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        where, params = ("WHERE contains(source, ?)", [source]) if source else ("", [])
        total = con.execute(f"SELECT count(*) FROM quarantine {where}", params).fetchall()[0][0]
        rows = con.execute(
            f"SELECT source, line, byte_offset, span_id, reason, raw, raw_bytes FROM quarantine {where} "
            "ORDER BY source, byte_offset NULLS LAST, line NULLS LAST LIMIT ?",
            [*params, limit],
        ).fetchall()
    finally:
        con.close()
    click.echo(f"{total:,} quarantined record(s)" + (f", showing {len(rows)}" if total > len(rows) else ""))
    for src, line, offset, span_id, reason, raw, raw_bytes in rows:
        where_text = f"line {line}" if line is not None else f"byte {offset}"
        span_text = f" span {span_id}" if span_id else ""
        snippet = bytes(raw[:80]).decode("utf-8", "replace").replace("\n", " ")
        click.echo(f"{src}:{where_text}{span_text}: {reason}")
        click.echo(f"    {snippet!r}{' ...' if raw_bytes > 80 else ''} ({raw_bytes} bytes)")


@click.command("export")
@db_option
@click.option("--parquet", "parquet_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory: <table>/service=<s>/day=<YYYY-MM-DD>/*.parquet.")
def export_command(db: str, parquet_dir: str) -> None:
    """Export the store as hive-partitioned Parquet (by service and day).

    Example:

        kvtrace export --db kvtrace.duckdb --parquet out/parquet
    """
    try:
        counts = export_parquet(db, parquet_dir, wait_s=CLI_WAIT_S)
    except IngestError as exc:
        raise click.ClickException(str(exc)) from None
    for table, n in counts.items():
        click.echo(f"{table:16s} {n:,} rows")
    click.echo(f"written to {parquet_dir}")


commands: list[click.Command] = [ingest_command, quarantine_command, export_command]
