"""`kvtrace ingest`, `kvtrace quarantine`, `kvtrace export`: files in, records that failed, Parquet out.

Everything printed that comes from a trace or a file name goes through `term()` (control
characters shown as escapes, so a value cannot rewrite the terminal)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from kvtrace.app.options import db_option, store_wait
from kvtrace.app.terminal import term
from kvtrace.ingest import IngestError, IngestSummary, ingest_paths, open_store
from kvtrace.ingest.export import export_parquet
from kvtrace.ingest.pipeline import (
    DEFAULT_BATCH_SPANS,
    DEFAULT_COMMIT_BYTES,
    DEFAULT_COMMIT_FILES,
    DEFAULT_COMMIT_SPANS,
)
from kvtrace.ingest.sources import MAX_RECORD_BYTES

_LISTED = 10  # files without spans, links not followed: shown one a line up to this many


def _ns(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _short_list(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(term(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "") if items else "-"


def format_summary(s: IngestSummary) -> str:
    """The one-screen summary printed after an ingest (every value escaped for the terminal)."""
    rate = s.spans_read / s.seconds if s.seconds > 0 else 0.0
    lines = [
        f"store        {term(s.db_path)} ({s.store_spans:,} spans in total)",
        f"files        {s.files_ingested} ingested, {s.files_skipped} skipped (already ingested, unchanged)",
        f"spans        {s.spans_read:,} read, {s.spans_new:,} new, {s.spans_read - s.spans_new:,} already stored",
        f"traces       {s.traces:,}",
        f"services     {_short_list(s.services)}",
        f"hosts        {_short_list(s.hosts)}",
        f"time range   {_ns(s.start_ns)} .. {_ns(s.end_ns)}",
        f"quarantined  {s.quarantined:,}" + ("  (see: kvtrace quarantine)" if s.quarantined else ""),
    ]
    empty = s.without_spans
    if empty:
        lines.append(f"no spans     {len(empty):,} file(s):")
        lines += [f"               {term(f.path)}: no spans, {term(f.note)}" for f in empty[:_LISTED]]
        if len(empty) > _LISTED:
            lines.append(f"               (+{len(empty) - _LISTED:,} more; kvtrace quarantine lists their records)")
    links = s.skipped_links
    if links:
        lines.append(f"not followed {len(links):,} symbolic link(s) (--follow-symlinks follows them):")
        lines += [f"               {term(link.path)} -> {term(link.target)}: {link.reason}" for link in links[:_LISTED]]
        if len(links) > _LISTED:
            lines.append(f"               (+{len(links) - _LISTED:,} more)")
    lines.append(f"took         {s.seconds:.2f} s ({rate:,.0f} spans/s)")
    return "\n".join(lines)


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True)
@db_option
@click.option("--batch-spans", type=click.IntRange(min=1), default=DEFAULT_BATCH_SPANS, show_default=True,
              help="Spans per batch handed to DuckDB (memory is bounded by this, not by file size).")
@click.option("--commit-spans", type=click.IntRange(min=1), default=DEFAULT_COMMIT_SPANS, show_default=True,
              help="Commit once a transaction of whole files holds this many spans (big commits write "
                   "row groups straight to the file; a crash redoes the uncommitted files).")
@click.option("--commit-files", type=click.IntRange(min=1), default=DEFAULT_COMMIT_FILES, show_default=True,
              help="... or once it holds this many files (small files are batched up to this many).")
@click.option("--commit-mb", type=click.IntRange(min=1), default=DEFAULT_COMMIT_BYTES >> 20, show_default=True,
              help="... or once it holds this many MB of files.")
@click.option("--max-record-mb", type=click.IntRange(min=1), default=MAX_RECORD_BYTES >> 20, show_default=True,
              help="Largest JSON line or document, or protobuf ResourceSpans frame, read into memory; a larger "
                   "one is quarantined unread (its offset, first bytes and length) and ingest goes on after it.")
@click.option("--follow-symlinks/--no-follow-symlinks", default=False, show_default=True,
              help="Follow symbolic links in a given directory or glob that point outside it (else they are "
                   "skipped and listed).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
              help="duckdb: into the store (--db); spark: into a Parquet trace lake (--lake), one Spark task a file.")
@click.option("--lake", default=None, help="With --engine spark: the lake directory (docs/spark.md).")
@click.option("--master", default=None, help="With --engine spark: the Spark master [default: local[*]].")
@click.option("--remote", default=None, help="With --engine spark: a Spark Connect URL (sc://host:port).")
def ingest_command(paths: tuple[str, ...], db: str, batch_spans: int, commit_spans: int, commit_files: int,
                   commit_mb: int, max_record_mb: int, follow_symlinks: bool, progress: bool,
                   engine: str = "duckdb", lake: str | None = None, master: str | None = None,
                   remote: str | None = None) -> None:
    """Ingest OTLP trace files (JSON, JSON lines, protobuf; gzip/zstd) into the store.

    PATHS are files, directories (searched recursively) or globs. Each file is stored atomically
    (whole files per transaction); re-running skips files already ingested and never stores a
    span twice. A file that gives no spans (empty, not OTLP, every record quarantined) is listed.

    Example:

        kvtrace ingest sample_traces/ --db kvtrace.duckdb
        kvtrace ingest --engine spark sample_traces/ --lake lake/
    """
    if engine == "spark":
        _spark_ingest(paths, lake, master, remote, follow_symlinks)
        return
    try:
        summary = ingest_paths(paths, db, progress=progress, batch_spans=batch_spans, commit_spans=commit_spans,
                               wait_s=store_wait(), commit_files=commit_files, commit_bytes=commit_mb << 20,
                               max_record_bytes=max_record_mb << 20, follow_symlinks=follow_symlinks)
    except IngestError as exc:
        raise click.ClickException(term(exc)) from None
    click.echo(format_summary(summary))


def _spark_ingest(paths: tuple[str, ...], lake: str | None, master: str | None, remote: str | None,
                  follow_symlinks: bool) -> None:
    if not lake:
        raise click.ClickException("--engine spark needs --lake DIR")
    if master and remote:
        raise click.ClickException("give --master or --remote, not both")
    from kvtrace.analytics.errors import StoreError as EngineError
    from kvtrace.analytics.spark.runner import spark_session
    from kvtrace.ingest.spark_ingest import ingest_to_lake

    try:
        summary = ingest_to_lake(spark_session(master, remote), paths, lake, follow_symlinks=follow_symlinks)
    except (IngestError, EngineError) as exc:
        raise click.ClickException(term(exc)) from None
    click.echo(f"lake         {term(summary.lake)}")
    click.echo(f"files        {summary.files_ingested} ingested, {summary.files_skipped} skipped "
               "(already ingested, unchanged)")
    click.echo(f"spans        {summary.spans:,} stored, {summary.quarantined:,} records quarantined")
    for path, error in summary.failed:
        click.echo(f"failed       {term(path)}: {term(error)}")
    click.echo(f"took         {summary.seconds:.2f} s")
    if summary.failed:
        raise SystemExit(1)


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
        con = open_store(db, read_only=True, wait_s=store_wait())
    except IngestError as exc:
        raise click.ClickException(term(exc)) from None
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
        span_text = f" span {term(span_id)}" if span_id else ""
        snippet = bytes(raw[:80]).decode("utf-8", "replace").replace("\n", " ")
        click.echo(f"{term(src)}:{where_text}{span_text}: {term(reason)}")
        click.echo(f"    {term(repr(snippet))}{' ...' if raw_bytes > 80 else ''} ({raw_bytes:,} bytes)")


@click.command("export")
@db_option
@click.option("--parquet", "parquet_dir", default=None, type=click.Path(file_okay=False),
              help="Output directory: <table>/service=<s>/day=<YYYY-MM-DD>/*.parquet.")
@click.option("--lake", "lake_dir", default=None, type=click.Path(file_okay=False),
              help="Output directory: the trace lake `--engine spark` reads (by instance, rank, pool and hour).")
def export_command(db: str, parquet_dir: str | None, lake_dir: str | None = None) -> None:
    """Export the store as hive-partitioned Parquet (by service and day), or as the Spark engine's lake.

    Example:

        kvtrace export --db kvtrace.duckdb --parquet out/parquet
        kvtrace export --db kvtrace.duckdb --lake out/lake
    """
    if (parquet_dir is None) == (lake_dir is None):
        raise click.ClickException("give one of --parquet DIR or --lake DIR")
    try:
        if lake_dir is not None:
            from kvtrace.ingest.export import export_lake

            counts = export_lake(db, lake_dir, wait_s=store_wait())
            parquet_dir = lake_dir
        else:
            counts = export_parquet(db, parquet_dir or "", wait_s=store_wait())
    except IngestError as exc:
        raise click.ClickException(term(exc)) from None
    for table, n in counts.items():
        click.echo(f"{table:16s} {n:,} rows")
    click.echo(f"written to {term(parquet_dir or '')}")


commands: list[click.Command] = [ingest_command, quarantine_command, export_command]
