"""`kvtrace analyses / query / analyze / findings / report`: the analytics layer at the terminal."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kvtrace.analytics import findings as findings_mod
from kvtrace.analytics import runner
from kvtrace.analytics.errors import AnalyticsError
from kvtrace.analytics.materialise import analyze as analyze_store
from kvtrace.analytics.registry import default_registry
from kvtrace.app.options import db_option, store_wait
from kvtrace.app.safe_sql import DEFAULT_TIMEOUT_S, QueryError, QueryRefused, process_started_at, run_isolated
from kvtrace.ingest.store import StoreError

if TYPE_CHECKING:
    from kvtrace.analytics.spark.runner import SparkAnalytics


def _fail(exc: AnalyticsError | StoreError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.command("analyses")
def analyses_command() -> None:
    """List the registered SQL analyses (validated at start-up) with their descriptions.

    Example:

        kvtrace analyses
    """
    try:
        registry = default_registry()
    except AnalyticsError as exc:
        raise _fail(exc) from exc
    for analysis in registry:
        click.echo(click.style(analysis.name, bold=True) + f"  ({analysis.path.name})")
        click.echo(f"    {analysis.description}")
        for param in analysis.params:
            click.echo(f"    ${param.name} {param.sql_type} = {param.default}: {param.description}")
        if analysis.requires:
            click.echo(f"    requires: {', '.join(analysis.requires)}")


@click.command("query")
@db_option
@click.argument("sql")
@click.option("--max-rows", type=click.IntRange(min=1), default=1000, show_default=True, help="Rows shown at most.")
@click.option("--analyses/--no-analyses", "with_analyses", default=False,
              help="Compute the analyses first so the query can read them by name (findings, ...).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds the command may run (--analyses' own time not counted); the query is stopped then.")
def query_command(db: str, sql: str, max_rows: int, with_analyses: bool, timeout_s: float) -> None:
    """Run one read-only SELECT (or EXPLAIN [ANALYZE] of one) against the store; print the rows as CSV.

    The app's SQL console guard: a process of its own with a time and a memory limit, no file,
    network or extension access; columns CSV cannot hold (lists, structs, ...) print as text.

    Example:

        kvtrace query --db demo/kvtrace.duckdb "SELECT op, count(*) FROM kv_events GROUP BY op"
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    checked_at = time.monotonic()
    try:
        runner.connect(db, read_only=True, wait_s=store_wait()).close()  # a kvtrace store? (one clear line)
    except (AnalyticsError, StoreError) as exc:
        raise _fail(exc) from exc
    # The limit counts from the command's start, less any wait for a store another process held.
    started_at = process_started_at() + (time.monotonic() - checked_at)
    try:
        result = run_isolated(db, sql, timeout_s=timeout_s, max_rows=max_rows, analyses=with_analyses,
                              wait_s=store_wait(), started_at=started_at)
    except QueryRefused as exc:
        if exc.statement_type:
            raise click.ClickException(f"only SELECT/EXPLAIN queries are allowed here, not {exc.statement_type}") from exc
        raise click.ClickException(str(exc)) from exc
    except QueryError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        pacsv.write_csv(result.table, sys.stdout.buffer)
    except pa.ArrowException as exc:
        raise click.ClickException(f"the result cannot be written as CSV: {str(exc).splitlines()[0]}") from exc
    if result.truncated:
        click.echo(result.note or f"first {max_rows:,} rows shown (--max-rows)", err=True)


@click.command("analyze")
@db_option
def analyze_command(db: str) -> None:
    """Compute every analysis and store its result table in the store (findings, request_anomalies, ...).

    Example:

        kvtrace analyze --db demo/kvtrace.duckdb
    """
    try:
        con = runner.connect(db, read_only=False, wait_s=store_wait())
        try:
            with click.progressbar(length=1, label="analysing", file=sys.stderr) as bar:
                summary = analyze_store(con)
                bar.update(1)
        finally:
            con.close()
    except (AnalyticsError, StoreError) as exc:
        raise _fail(exc) from exc
    for table, rows in summary.rows.items():
        click.echo(f"{table:<26} {rows:>9} rows")
    click.echo(f"analysed in {summary.seconds:.2f} s")


@click.command("findings")
@db_option
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
              help="duckdb: the store (--db); spark: Apache Spark over a Parquet trace lake (--lake, docs/spark.md).")
@click.option("--lake", type=str, default=None, help="With --engine spark: the lake directory or URL "
              "(written by `kvtrace export --lake` or `kvtrace ingest --engine spark`).")
@click.option("--master", default=None, help="With --engine spark: the Spark master [default: local[*]].")
@click.option("--remote", default=None, help="With --engine spark: a Spark Connect URL (sc://host:port) instead of --master.")
@click.option("--windows", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --engine spark: race analyses in this many overlapping time windows (bounds executor memory).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet", "csv"]), default="jsonl", show_default=True, help="Output format.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: stdout for jsonl and csv].")
def findings_command(db: str, fmt: str, out: Path | None, engine: str = "duckdb", lake: str | None = None,
                     master: str | None = None, remote: str | None = None, windows: int = 1) -> None:
    """Write the race findings (conventions' "Findings" fields plus extras), computed from the store.

    Example:

        kvtrace findings --db demo/kvtrace.duckdb --format parquet --out findings.parquet
        kvtrace findings --engine spark --lake demo/lake --master spark://head:7077
    """
    if fmt == "parquet" and out is None:
        raise click.ClickException("--format parquet needs --out FILE")
    try:
        if engine == "spark":
            table = _spark_engine(lake, master, remote, windows, ["findings"]).table("findings")
        else:
            con = runner.connect(db, read_only=True, wait_s=store_wait())
            try:
                table = findings_mod.compute(con)
            finally:
                con.close()
    except (AnalyticsError, StoreError) as exc:
        raise _fail(exc) from exc
    if out is not None:
        findings_mod.write(table, out, fmt)  # type: ignore[arg-type]
        click.echo(f"{table.num_rows} findings -> {out}", err=True)
    elif fmt == "jsonl":
        sys.stdout.buffer.write(findings_mod.to_jsonl(table))
    else:
        sys.stdout.buffer.write(findings_mod.to_csv(table))


@click.command("report")
@db_option
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
              help="duckdb: the store (--db); spark: Apache Spark over a Parquet trace lake (--lake, docs/spark.md).")
@click.option("--lake", type=str, default=None, help="With --engine spark: the lake directory or URL "
              "(written by `kvtrace export --lake` or `kvtrace ingest --engine spark`).")
@click.option("--master", default=None, help="With --engine spark: the Spark master [default: local[*]].")
@click.option("--remote", default=None, help="With --engine spark: a Spark Connect URL (sc://host:port) instead of --master.")
@click.option("--windows", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --engine spark: race analyses in this many overlapping time windows (bounds executor memory).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.html, summary.md, findings.parquet and findings.jsonl.")
@click.option("--labels", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Simulator ground truth (labels.json): adds finding accuracy and the monitor evaluation.")
@click.option("--recompute", is_flag=True, default=False,
              help="Compute every analysis now even when the results `kvtrace analyze` stored are current.")
def report_command(db: str, out_dir: Path, labels: Path | None, recompute: bool, engine: str = "duckdb",
                   lake: str | None = None, master: str | None = None, remote: str | None = None,
                   windows: int = 1) -> None:
    """Write a self-contained HTML report, a Markdown summary and the findings; print the verdict.

    When the store has not changed since `kvtrace analyze` (same spans, files and analyses), the
    report reads the results it stored instead of computing them again; the report says which.

    Example:

        kvtrace report --db demo/kvtrace.duckdb --out demo/report
        kvtrace report --engine spark --lake demo/lake --remote sc://spark-connect:15002 --out demo/report
    """
    from kvtrace.app.report.build import build_report

    try:
        if engine == "spark":
            if labels is not None:
                raise click.ClickException("--labels needs --engine duckdb (the monitor sweep re-runs the detector "
                                           "per threshold on the store)")
            from kvtrace.analytics.reuse import Results
            from kvtrace.analytics.spark.runner import result_names

            spark_run = _spark_engine(lake, master, remote, windows, None)
            con = spark_run.results_to_duckdb(result_names())
            missing = "".join(f" {n} could not run on Spark ({why})." for n, why in spark_run.not_run.items())
            note = Results(False, f"Analysis results computed now on Apache Spark over the lake {lake}.{missing}")
        else:
            con = runner.connect(db, read_only=True, wait_s=store_wait())
            note = None
        try:
            files = build_report(con, out_dir, labels, reuse_stored=not recompute, results=note)
        finally:
            con.close()
    except (AnalyticsError, StoreError) as exc:
        raise _fail(exc) from exc
    click.echo(files.verdict)
    click.echo(f"{files.analyses_note}\nreport: {files.html}\nsummary: {files.markdown}\n"
               f"findings: {files.findings_parquet}, {files.findings_jsonl}", err=True)


def _spark_engine(lake: str | None, master: str | None, remote: str | None, windows: int,
                  names: list[str] | None) -> SparkAnalytics:
    """The analyses `names` (None: all) computed on Spark over `lake` (--engine spark)."""
    if not lake:
        raise click.ClickException("--engine spark needs --lake DIR (see `kvtrace export --lake`)")
    if master and remote:
        raise click.ClickException("give --master or --remote, not both")
    from kvtrace.analytics.spark.runner import run_on_lake

    engine, _ = run_on_lake(lake, names, master=master, remote=remote, windows=windows)
    return engine


commands: list[click.Command] = [analyses_command, query_command, analyze_command, findings_command, report_command]
