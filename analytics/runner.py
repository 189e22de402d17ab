"""Running registered analyses on a store connection, and read-only ad-hoc SQL.

Results of an analysis live, for the session, in a temporary table named after it (or a temporary
view, for the intermediate steps whose header says `-- materialise: view`; temporary
tables shadow the store's own tables of the same name, so a freshly computed `findings` wins over
a materialised one); `materialise()` copies them into the store's result tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa

from kvtrace.analytics.errors import ReadOnlyQueryError, StoreError
from kvtrace.analytics.registry import ParamValue, Registry, create_result, default_registry, install_macros
from kvtrace.ingest import store

REQUIRED_TABLES: Final = store.KVTRACE_TABLES
_ALLOWED_STATEMENTS: Final = {"SELECT", "EXPLAIN"}


def connect(db_path: str | Path, *, read_only: bool = True, wait_s: float = 0.0) -> duckdb.DuckDBPyConnection:
    """An existing kvtrace store, through the one door (`kvtrace.ingest.store.open_store`);
    read-only connections also lose access to files and extensions. Waits up to `wait_s` seconds
    while another process (e.g. `kvtrace serve`) holds the file; raises `store.StoreError`."""
    config: store.DuckDBConfig = {"enable_external_access": False} if read_only else {}
    return store.open_store(db_path, read_only=read_only, wait_s=wait_s, create=False, config=config)


def compute(
    con: duckdb.DuckDBPyConnection,
    names: list[str] | None = None,
    params: dict[str, ParamValue] | None = None,
    registry: Registry | None = None,
) -> list[str]:
    """Compute `names` (default: all) and what they require into temporary tables; returns the order.

    `params` overrides defaults by name for every analysis that declares that parameter.
    """
    reg = registry or default_registry()
    install_macros(con, reg.macros_sql)
    wanted: list[str] = []
    for name in names if names is not None else list(reg.order):
        for dep in reg.closure(name):
            if dep not in wanted:
                wanted.append(dep)
    order = [n for n in reg.order if n in wanted]
    for name in order:
        analysis = reg.get(name)
        try:
            create_result(con, analysis, params)
        except duckdb.Error as exc:
            raise StoreError(f"analysis {name} ({analysis.path.name}) failed: {str(exc).splitlines()[0]}") from exc
    return order


def run(
    con: duckdb.DuckDBPyConnection,
    name: str,
    params: dict[str, ParamValue] | None = None,
    registry: Registry | None = None,
) -> pa.Table:
    """Compute one analysis (and its requirements) and return its rows."""
    compute(con, [name], params, registry)
    return con.sql(f"SELECT * FROM temp.main.{name}").to_arrow_table()


def computed(con: duckdb.DuckDBPyConnection, name: str) -> pa.Table:
    """Rows of an analysis computed earlier on this connection."""
    return con.sql(f"SELECT * FROM temp.main.{name}").to_arrow_table()


def read_only_query(con: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int = 10_000) -> pa.Table:
    """Run one ad-hoc SELECT (or EXPLAIN); anything that would write or reach outside is refused."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlyQueryError(f"cannot parse the query: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise ReadOnlyQueryError(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in _ALLOWED_STATEMENTS:
        raise ReadOnlyQueryError(f"only SELECT/EXPLAIN queries are allowed here, not {kind}")
    try:
        relation = con.sql(sql)
        if relation is None:
            raise ReadOnlyQueryError("the query returned no result set")
        reader = relation.to_arrow_reader(batch_size=min(max_rows, 100_000))
        batches: list[pa.RecordBatch] = []
        taken = 0
        for batch in reader:
            batches.append(batch.slice(0, max_rows - taken))
            taken += batches[-1].num_rows
            if taken >= max_rows:
                break
        return pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.Error as exc:
        raise ReadOnlyQueryError(str(exc).splitlines()[0]) from exc
