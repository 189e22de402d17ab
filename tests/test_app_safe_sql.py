"""The app's read-only guard: every attack the issue names is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from kvtrace.app.safe_sql import (
    QueryError,
    QueryRefused,
    QueryTimeout,
    check_read_only_sql,
    open_read_only,
    run_query,
)


@pytest.fixture()
def store_file(tmp_path: Path) -> Path:
    path = tmp_path / "store.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE requests AS SELECT 'r' || i AS rid, i AS n FROM range(50) t(i)")
    con.close()
    return path


@pytest.fixture()
def con(store_file: Path) -> duckdb.DuckDBPyConnection:
    connection = open_read_only(store_file)
    yield connection
    connection.close()


# (statement, what the person reads): the guard's message names the statement type.
ATTACKS = [
    ("COPY requests TO '{tmp}/leak.csv'", "COPY statements are not allowed"),
    ("ATTACH '{tmp}/other.duckdb' AS other", "ATTACH statements are not allowed"),
    ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
    ("SELECT * FROM read_text('/etc/passwd')", "file system operations are disabled"),
    ("SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')", "file system operations are disabled"),
    ("INSTALL httpfs", "LOAD statements are not allowed"),
    ("LOAD httpfs", "LOAD statements are not allowed"),
    ("SET enable_external_access = true", "SET statements are not allowed"),
    ("RESET lock_configuration", "SET statements are not allowed"),
    ("CREATE TABLE t2 (a INTEGER)", "CREATE statements are not allowed"),
    ("CREATE TEMP TABLE t2 AS SELECT 1", "CREATE statements are not allowed"),
    ("INSERT INTO requests VALUES ('x', 1)", "INSERT statements are not allowed"),
    ("DROP TABLE requests", "DROP statements are not allowed"),
    ("EXPORT DATABASE '{tmp}/dump'", "EXPORT statements are not allowed"),
    ("SELECT 1; DROP TABLE requests", "one statement at a time"),
    # EXPLAIN ANALYZE executes what it explains: only a SELECT may be explained.
    ("EXPLAIN ANALYZE CREATE TEMP TABLE t2 AS SELECT 1", "only a SELECT may be explained here, not CREATE"),
    ("EXPLAIN ANALYZE SET memory_limit = '100GB'", "only a SELECT may be explained here, not SET"),
    ("EXPLAIN ANALYZE CHECKPOINT", "only a SELECT may be explained here, not CALL"),
]


@pytest.mark.parametrize(("sql", "message"), ATTACKS)
def test_console_refuses_with_clear_message(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, sql: str, message: str
) -> None:
    with pytest.raises(QueryRefused, match=r"refused|one statement") as info:
        run_query(con, sql.format(tmp=tmp_path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "leak.csv").exists()
    assert not (tmp_path / "dump").exists()
    assert not (tmp_path / "other.duckdb").exists()


# The connection itself refuses each, even if the statement guard were bypassed.
CONNECTION_LEVEL = [
    ("COPY requests TO '{tmp}/leak.csv'", "file system operations are disabled"),
    ("ATTACH '{tmp}/other.duckdb' AS other", "file system operations are disabled"),
    ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
    ("INSTALL httpfs", "disabled by configuration"),
    ("LOAD httpfs", "disabled through configuration"),
    ("SET enable_external_access = true", "the configuration has been locked"),
    ("SET memory_limit = '100GB'", "the configuration has been locked"),
    ("CREATE TABLE t2 (a INTEGER)", "read-only mode"),
    ("INSERT INTO requests VALUES ('x', 1)", "read-only mode"),
]


@pytest.mark.parametrize(("sql", "message"), CONNECTION_LEVEL)
def test_connection_layer_refuses_without_the_guard(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, sql: str, message: str
) -> None:
    with pytest.raises(duckdb.Error, match=message):
        con.execute(sql.format(tmp=tmp_path))
    assert not (tmp_path / "leak.csv").exists()


def test_store_is_unchanged_after_attacks(con: duckdb.DuckDBPyConnection, store_file: Path, tmp_path: Path) -> None:
    for sql, _ in ATTACKS:
        with pytest.raises(QueryError):
            run_query(con, sql.format(tmp=tmp_path))
    con.close()
    check = duckdb.connect(str(store_file), read_only=True)
    assert check.execute("SELECT count(*) FROM requests").fetchone() == (50,)
    assert [r[0] for r in check.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == ["requests"]


def test_select_and_explain_run(con: duckdb.DuckDBPyConnection) -> None:
    result = run_query(con, "SELECT rid, n FROM requests WHERE n < $k ORDER BY n", {"k": 3})
    assert result.frame.to_dicts() == [{"rid": "r0", "n": 0}, {"rid": "r1", "n": 1}, {"rid": "r2", "n": 2}]
    assert not result.truncated
    plan = run_query(con, "EXPLAIN SELECT count(*) FROM requests")
    assert list(plan.frame.columns) == ["explain_key", "explain_value"]


def test_row_cap_truncates_and_says_so(con: duckdb.DuckDBPyConnection) -> None:
    result = run_query(con, "SELECT * FROM range(1000000) t(i)", max_rows=7)
    assert result.truncated
    assert result.frame["i"].to_list() == list(range(7))
    exact = run_query(con, "SELECT * FROM requests", max_rows=50)
    assert not exact.truncated and len(exact.frame) == 50


def test_timeout_interrupts_a_runaway_query(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(QueryTimeout, match=r"interrupted after the 0.3 s limit"):
        run_query(con, "SELECT count(*) FROM range(1000000000000) a", timeout_s=0.3)
    # The connection still serves the next query.
    assert run_query(con, "SELECT 42 AS x").frame["x"].to_list() == [42]


def test_syntax_error_is_one_line(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(QueryError, match="does not parse") as info:
        check_read_only_sql("SELEC 1")
    assert "\n" not in str(info.value)
    with pytest.raises(QueryError, match="does not exist"):
        run_query(con, "SELECT * FROM no_such_table")
