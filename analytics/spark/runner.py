"""Running the registered analyses on Apache Spark over a trace lake (ingest/export.py's layout).

The lake's tables become the session's temporary views under the store's table names; each
analysis, transpiled from its `.sql` file at run time (transpile.py), is executed with
`spark.sql`, checkpointed, and registered as a view named after it, as the DuckDB runner makes a
temporary table. With `windows` the race analyses run per overlapping time window (partition.py)
and their findings are joined into one `findings`; the request-level analyses then run over all
of the lake. `results_to_duckdb` hands the result tables to the report code, which reads DuckDB.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import duckdb
import pyarrow as pa

from kvtrace.analytics.errors import AnalysisDefinitionError, StoreError
from kvtrace.analytics.materialise import RESULT_SCHEMA_SQL
from kvtrace.analytics.registry import MACROS_SQL, STORE_SCHEMA_SQL, ParamValue, Registry, default_registry
from kvtrace.analytics.spark import partition
from kvtrace.analytics.spark.transpile import Transpiler, load_macros
from kvtrace.ingest.export import LAKE_MANIFEST, LAKE_TABLES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Settings that make Spark compute what DuckDB computes: out-of-range list indexes give NULL (not an
# error), times in UTC.
SEMANTIC_CONF: Final = {
    "spark.sql.ansi.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
}


def spark_session(
    master: str | None = None,
    remote: str | None = None,
    *,
    app_name: str = "kvtrace",
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """A Spark session: `remote` (a Spark Connect URL, sc://host:port), else `master` (local[*] by
    default; spark://, yarn, k8s://... on a cluster)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise StoreError("the Spark engine needs pyspark: pip install 'kvtrace[spark]'") from exc
    if not remote and (master or "local[*]").startswith("local"):
        from kvtrace.ingest.spark_ingest import local_python_env

        local_python_env()
    builder = SparkSession.builder.appName(app_name)
    builder = builder.remote(remote) if remote else builder.master(master or "local[*]")
    for key, value in {**SEMANTIC_CONF, **dict(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in SEMANTIC_CONF.items():  # a session that existed before keeps its settings otherwise
        spark.conf.set(key, value)
    return spark


@dataclass
class Executed:
    """What one analysis ran as on Spark (per window for the windowed ones), and how long it took."""

    name: str
    sql: str
    seconds: float
    window: int | None = None
    steps: list[tuple[str, str]] = field(default_factory=list)  # (view, SQL) run before `sql`


@dataclass
class SparkAnalytics:
    """The analyses of `registry` over the lake at `lake`, on `spark`."""

    spark: SparkSession
    lake: str | Path
    registry: Registry = field(default_factory=default_registry)
    params: Mapping[str, ParamValue] | None = None
    executed: list[Executed] = field(default_factory=list)
    frames: dict[str, DataFrame] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)  # analysis -> why it could not run on Spark

    def __post_init__(self) -> None:
        macros = load_macros(getattr(self.registry, "macros_sql", MACROS_SQL))
        self.transpiler = Transpiler(macros, resolve_columns=lambda sql: list(self.spark.sql(sql).columns))
        self._views: list[str] = []
        self.register_lake()

    # -- the lake ---------------------------------------------------------------------------
    def register_lake(self) -> None:
        """Every lake table as a temporary view (a table the lake lacks: empty, from the schema)."""
        root = str(self.lake).rstrip("/")
        local = Path(root) if "://" not in root else None
        if local is not None and not local.is_dir():
            raise StoreError(
                f"{root}: no such lake (write one with `kvtrace export --db FILE --lake {root}` "
                f"or `kvtrace ingest --engine spark PATH --lake {root}`)"
            )
        if local is not None and not (local / LAKE_MANIFEST).exists() and not (local / "spans").is_dir():
            raise StoreError(f"{root}: not a kvtrace lake (no {LAKE_MANIFEST}, no spans/)")
        empty = _empty_tables()
        for table in LAKE_TABLES:
            path = f"{root}/{table}"
            if local is not None and not any((local / table).rglob("*.parquet")):
                frame = self.spark.createDataFrame(empty[table]) if table in empty else None
            else:
                frame = (
                    self.spark.read.option("recursiveFileLookup", "true")
                    .option("mergeSchema", "true")
                    .parquet(path)
                )
            if frame is not None:
                frame.createOrReplaceTempView(table)

    # -- running ----------------------------------------------------------------------------
    def _order(self, names: Sequence[str] | None) -> list[str]:
        wanted: list[str] = []
        for name in names if names is not None else list(self.registry.order):
            for dep in self.registry.closure(name):
                if dep not in wanted:
                    wanted.append(dep)
        return [n for n in self.registry.order if n in wanted]

    def _run(
        self,
        name: str,
        view: str,
        tables: Mapping[str, str] | None = None,
        window: int | None = None,
        keep: str | None = None,
    ) -> DataFrame:
        analysis = self.registry.get(name)
        started = time.perf_counter()
        made = self.transpiler.spark_sql(analysis, self.params, tables, prefix=view)  # AnalysisDefinitionError
        sql = made.sql
        try:
            for step_view, step_sql in made.steps:  # the CTEs computed once (transpile._split_ctes)
                self.spark.sql(step_sql).localCheckpoint(eager=True).createOrReplaceTempView(step_view)
                self._views.append(step_view)
            frame = self.spark.sql(sql)
            if keep is not None:
                frame = frame.where(keep)
            # `-- materialise: view` steps stay lazy (Spark plans them inside each reader), as in DuckDB
            if getattr(analysis, "materialise", "table") != "view":
                frame = frame.localCheckpoint(eager=True)
        except Exception as exc:
            raise StoreError(
                f"analysis {name} ({analysis.path.name}) failed on Spark: {str(exc).strip().splitlines()[0]}"
            ) from exc
        frame.createOrReplaceTempView(view)
        self._views.append(view)
        self.executed.append(Executed(name, sql, time.perf_counter() - started, window, made.steps))
        return frame

    def compute(
        self,
        names: Sequence[str] | None = None,
        *,
        boundaries: Sequence[int] | None = None,
        windows: int | None = None,
        overlap_ns: int | None = None,
    ) -> list[str]:
        """Compute `names` (default: all) and their requirements; returns the order.

        The race analyses run per time window when `boundaries` (explicit cuts, ns) or `windows`
        (that many equal windows over the KV events' time range) is given; `overlap_ns` defaults to
        the longest in-flight interval measured on the lake (partition.LONGEST_INTERVAL_SQL)."""
        order = self._order(names)
        windowed: list[str] = []
        if (boundaries or (windows or 0) > 1) and partition.WINDOWED_RESULT in order:
            global_first = self._order([g for g in partition.GLOBAL_ANALYSES if g in self.registry])
            windowed = [n for n in self._order([partition.WINDOWED_RESULT]) if n not in global_first]
            for name in global_first:
                self.frames[name] = self._run(name, name)
            self._windowed(windowed, boundaries, windows, overlap_ns)
        # the windows' intermediate steps are not computed again over everything unless asked for
        # by name or read by an analysis outside them (none is today: they feed `findings` only)
        asked = set(names or ())
        read = {dep for n in order if n not in windowed for dep in self.registry.get(n).requires}
        for name in order:
            if name in windowed and name not in asked and name not in read:
                continue
            if name in self.frames:
                continue
            blocked = [d for d in self.registry.get(name).requires if d in self.not_run]
            if blocked and name not in asked:
                self.not_run[name] = f"requires {', '.join(blocked)}, which could not run on Spark"
                continue
            try:
                self.frames[name] = self._run(name, name)
            except AnalysisDefinitionError as exc:
                # SQL the transpiler cannot carry over yet: every other analysis still runs when all
                # are asked for; one asked for by name fails with its file and the reason
                if name in asked:
                    raise StoreError(f"analysis {name} cannot run on Spark: {exc}") from exc
                self.not_run[name] = str(exc)
        return [n for n in order if n not in self.not_run]

    def longest_interval(self) -> tuple[int, int, int | None, int | None]:
        """(longest request interval, largest clock offset, first and last KV event time), ns."""
        sql = partition.LONGEST_INTERVAL_SQL.format(
            skew_bounds="skew_bounds"
            if "skew_bounds" in self.frames
            else "(SELECT 0 AS offset_lo_ns, 0 AS offset_hi_ns, 0 AS offset_est_ns)"
        )
        row = self.spark.sql(sql).collect()[0]
        return int(row[0] or 0), int(row[1] or 0), row[2], row[3]

    def _windowed(
        self, names: list[str], boundaries: Sequence[int] | None, count: int | None, overlap_ns: int | None
    ) -> None:
        interval, skew, t_min, t_max = self.longest_interval()
        overlap = overlap_ns if overlap_ns is not None else interval + skew + partition.SLACK_NS
        cuts = (
            list(boundaries)
            if boundaries
            else (
                partition.even_boundaries(int(t_min), int(t_max), count or 1)
                if t_min is not None and t_max is not None
                else []
            )
        )
        self.windows = partition.windows(cuts, overlap)
        parts: list[DataFrame] = []
        for w in self.windows:
            tables = {}
            for table in LAKE_TABLES:
                view = f"{table}__w{w.index}"
                times = partition.ROW_TIMES.get(table)
                predicate = w.row_filter(*times) if times else "true"
                self.spark.table(table).where(predicate).createOrReplaceTempView(view)
                self._views.append(view)
                tables[table] = view
            for name in names:
                view = f"{name}__w{w.index}"
                if name == partition.WINDOWED_RESULT:
                    parts.append(self._run(name, view, dict(tables), w.index, keep=w.core_filter()))
                else:
                    self._run(name, view, dict(tables), w.index)
                tables[name] = view
        result = parts[0]
        for part in parts[1:]:
            result = result.unionByName(part)
        order = self._result_order()
        if order:
            result = result.orderBy(*order)
        result = result.localCheckpoint(eager=True)
        result.createOrReplaceTempView(partition.WINDOWED_RESULT)
        self.frames[partition.WINDOWED_RESULT] = result

    def _result_order(self) -> list[Any]:
        """The ORDER BY of the windowed analysis' own SQL, applied again to the joined windows."""
        from pyspark.sql import functions as F

        # the tree before its UNION BY NAME are resolved: that needs the views, and the ORDER BY is the same
        tree = self.transpiler.tree(self.registry.get(partition.WINDOWED_RESULT), self.params)
        order = tree.args.get("order")
        if order is None:
            return []
        out = []
        for key in order.expressions:
            column = F.expr(key.this.sql(dialect="spark"))
            desc = bool(key.args.get("desc"))
            nulls_first = bool(key.args.get("nulls_first"))
            if desc:
                out.append(column.desc_nulls_first() if nulls_first else column.desc_nulls_last())
            else:
                out.append(column.asc_nulls_first() if nulls_first else column.asc_nulls_last())
        return out

    # -- results ----------------------------------------------------------------------------
    def table(self, name: str) -> pa.Table:
        """An analysis' rows (computed first when needed), in its SQL's order."""
        if name not in self.frames:
            self.compute([name])
        return _to_arrow(self.frames[name])

    def sql_of(self, name: str) -> str:
        """The Spark SQL that last ran for `name`."""
        for run in reversed(self.executed):
            if run.name == name:
                return run.sql
        raise KeyError(name)

    def results_to_duckdb(
        self, names: Sequence[str], con: duckdb.DuckDBPyConnection | None = None
    ) -> duckdb.DuckDBPyConnection:
        """The result tables `names` as temporary tables of a DuckDB connection (in memory by
        default), where the report and summary code read them."""
        con = con or duckdb.connect(":memory:")
        con.execute(RESULT_SCHEMA_SQL.read_text(encoding="utf-8"))  # empty result tables, for the not-run
        for name in names:
            if name in self.not_run:
                con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM main.{name}")
                continue
            arrow = self.table(name)
            con.register("_kvtrace_spark_result", arrow)
            try:
                con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _kvtrace_spark_result")
            finally:
                con.unregister("_kvtrace_spark_result")
        return con

    def close(self) -> None:
        """Drop this run's views (the session stays, for the caller to stop)."""
        for view in self._views:
            self.spark.catalog.dropTempView(view)
        self._views.clear()


def _to_arrow(frame: DataFrame) -> pa.Table:
    if hasattr(frame, "toArrow"):
        return frame.toArrow()
    return pa.Table.from_pandas(frame.toPandas(), preserve_index=False)


def _empty_tables() -> dict[str, pa.Table]:
    """Every store table, empty, with the schema contract's types (for a lake that lacks one)."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(STORE_SCHEMA_SQL.read_text(encoding="utf-8"))
        out = {}
        for table in LAKE_TABLES:
            arrow = con.sql(f"SELECT * FROM {table} LIMIT 0").to_arrow_table()
            out[table] = pa.table({f.name: pa.array([], _plain(f.type)) for f in arrow.schema})
        return out
    finally:
        con.close()


def _plain(t: pa.DataType) -> pa.DataType:
    """Arrow types Spark takes: extension types (DuckDB's JSON) as strings, unsigned as signed."""
    if isinstance(t, pa.ExtensionType):
        return pa.string()
    if pa.types.is_unsigned_integer(t):
        return pa.int64()
    if pa.types.is_list(t):
        return pa.list_(_plain(t.value_type))
    return t


def result_names() -> list[str]:
    """The result tables a report reads (analytics/schema.sql's, as `kvtrace analyze` stores them)."""
    from kvtrace.analytics.materialise import result_tables

    return result_tables()


def run_on_lake(
    lake: str | Path,
    names: Sequence[str] | None,
    *,
    master: str | None = None,
    remote: str | None = None,
    windows: int | None = None,
    conf: Mapping[str, str] | None = None,
) -> tuple[SparkAnalytics, list[str]]:
    """`kvtrace findings|report --engine spark`: a session, the lake's views, `names` computed."""
    spark = spark_session(master, remote, conf=conf)
    engine = SparkAnalytics(spark, lake)
    order = engine.compute(names, windows=windows)
    return engine, order
