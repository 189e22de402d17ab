"""The one SQL guard of the app's console and `kvtrace query` (issue 15, item 2).

What a person relies on: a console query cannot run anything but a read-only SELECT (EXPLAIN
ANALYZE included), cannot take the shared app down by time or memory, and whatever it returns is
shown (as text where needed) or refused in one line, never as a traceback.

The bomb tests run the real thing in a subprocess (`kvtrace query`, and the console's guard
function on a real Store) and watch its wall time and the peak RSS of its whole process tree with
psutil; the watcher kills the tree past 40 s or 3.5 GB, so code without the guard fails them
without taking this shared box down.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import psutil
import pytest
from click.testing import CliRunner

from kvtrace.app.cli import main
from kvtrace.app.data.sql_console import run_console
from kvtrace.app.safe_sql import (
    QueryError,
    QueryRefused,
    QueryTimeout,
    check_read_only_sql,
    open_read_only,
    run_isolated,
    run_query,
)
from kvtrace.app.store import Store

KVTRACE = str(Path(sys.executable).with_name("kvtrace"))

BOMBS = {
    "repeat_1g_x3": "SELECT sum(length(repeat('x', 1000000000))) FROM range(3)",
    "repeat_3.8g": "SELECT length(repeat('xy', 1900000000))",
}
BAR_S = 15.0
BAR_RSS = 2.5e9


@pytest.fixture()
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    path = tmp_path / "store.duckdb"
    setup = duckdb.connect(str(path))
    setup.execute("CREATE TABLE requests AS SELECT 'r' || i AS rid, i AS n FROM range(50) t(i)")
    setup.close()
    connection = open_read_only(path)
    yield connection
    connection.close()


@pytest.fixture()
def store(mixed_store: Path) -> Iterator[Store]:
    with Store(mixed_store) as s:
        yield s


# -- the statement guard: EXPLAIN [ANALYZE] only of a SELECT -----------------------------------------

EXPLAINED = [
    ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
    ("EXPLAIN ANALYZE SET memory_limit = '100GB'", "SET"),
    ("EXPLAIN ANALYZE SET VARIABLE v = 42", "SET"),
    ("EXPLAIN ANALYZE CALL pragma_version()", "CALL"),
    ("EXPLAIN ANALYZE CHECKPOINT", "CALL"),
    ("EXPLAIN ANALYZE PREPARE p AS SELECT 1", "PREPARE"),
    ("EXPLAIN ANALYZE EXECUTE p", "EXECUTE"),
    ("EXPLAIN (ANALYZE) CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
    ("EXPLAIN (ANALYZE true, FORMAT json) CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
    ("explain /* a comment */ analyse\n create temp table t as select 1", "CREATE"),
    ("EXPLAIN CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
]


@pytest.mark.parametrize(("sql", "kind"), EXPLAINED)
def test_explain_of_anything_but_a_select_is_refused(con: duckdb.DuckDBPyConnection, sql: str, kind: str) -> None:
    with pytest.raises(QueryRefused) as info:
        run_query(con, sql)
    message = str(info.value)
    assert f"only a SELECT may be explained here, not {kind}" in message
    assert "\n" not in message


def test_a_refused_explain_analyze_ran_nothing(con: duckdb.DuckDBPyConnection) -> None:
    """On one cursor, what the refused statements would have left behind is absent."""
    cur = con.cursor()
    for sql in ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", "EXPLAIN ANALYZE SET VARIABLE v = 42",
                "EXPLAIN ANALYZE PREPARE p AS SELECT 1"):
        with pytest.raises(QueryRefused):
            cur.execute(check_read_only_sql(sql))
    assert cur.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'").fetchone() == (0,)
    assert cur.execute("SELECT getvariable('v')").fetchone() == (None,)
    with pytest.raises(duckdb.Error, match="Prepared statement"):
        cur.execute("EXECUTE p")


@pytest.mark.parametrize("sql", [
    "EXPLAIN SELECT count(*) FROM requests",
    "EXPLAIN ANALYZE SELECT count(*) FROM requests",
    "EXPLAIN (ANALYZE, FORMAT json) SELECT count(*) FROM requests",
    "explain /* c */ analyze FROM requests",
    "EXPLAIN ANALYZE WITH x AS (SELECT 1) SELECT * FROM x",
])
def test_explain_of_a_select_still_runs(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    plan = run_query(con, sql)
    assert list(plan.frame.columns) == ["explain_key", "explain_value"]
    assert plan.frame["explain_key"][0] == ("analyzed_plan" if "anal" in sql.lower() else "physical_plan")


def test_explain_cannot_carry_a_second_statement(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(QueryRefused, match="one statement at a time"):
        run_query(con, "EXPLAIN ANALYZE SELECT 1; CREATE TEMP TABLE t AS SELECT 1")


# -- results that Arrow, pandas or CSV cannot hold ----------------------------------------------------

# (expression, the text a person sees: DuckDB's own)
UNSHOWABLE = {
    "u": ("union_value(k := 1)", "1"),
    "l": ("[1, 2]", "[1, 2]"),
    "s": ("{'a': 1, 'b': [2]}", "{'a': 1, 'b': [2]}"),
    "m": ("MAP {'k': 1}", "{k=1}"),
    "b": ("'\\xAA'::BLOB", "\\xAA"),
    "i": ("INTERVAL 3 MONTH", "3 months"),
    "h": ("340282366920938463463374607431768211455::UHUGEINT", "340282366920938463463374607431768211455"),
    "t": ("'infinity'::TIMESTAMP", "infinity"),
    "d": ("DATE '5877642-06-25'", "5877642-06-25"),
}


def test_console_shows_unconvertible_columns_as_text(store: Store) -> None:
    sql = ("SELECT " + ", ".join(f"{expr} AS {name}" for name, (expr, _) in UNSHOWABLE.items())
           + ", 7 AS n, sum(x) AS total FROM (VALUES (170141183460469231731687303715884105726::HUGEINT), (1)) v(x)")
    result = run_console(store, sql)
    row = result.frame.row(0, named=True)
    total = row.pop("total")
    assert row == {**{name: text for name, (_, text) in UNSHOWABLE.items()}, "n": 7}
    assert total is not None  # a HUGEINT stays a number, exact in the Arrow st.dataframe gets from polars
    assert int(result.frame.to_arrow().column("total")[0].as_py()) == 170141183460469231731687303715884105727


def test_app_query_of_a_date_python_cannot_hold_is_text(con: duckdb.DuckDBPyConnection) -> None:
    """The app's own queries keep their types (no display casts); a date past Python's range (which
    polars would panic on when read) becomes DuckDB's text of it instead of a traceback."""
    frame = run_query(con, "SELECT DATE '2024-05-01' AS ok, DATE '5877642-06-25' AS far, [1, 2] AS l").frame
    assert str(frame["ok"][0]) == "2024-05-01"
    assert frame["far"][0] == "5877642-06-25"
    assert list(frame["l"][0]) == [1, 2]


def test_kvtrace_query_prints_nested_columns_as_text(mixed_store: Path) -> None:
    out = CliRunner().invoke(main, ["query", "--db", str(mixed_store), "SELECT * FROM findings LIMIT 1"])
    assert out.exit_code == 0, out.output
    header, row = out.output.splitlines()[:2]
    assert '"evidence_span_ids"' in header
    assert ',"[' in row  # the list, as DuckDB's text
    union = CliRunner().invoke(main, ["query", "--db", str(mixed_store), "SELECT union_value(k := 1) AS u"])
    assert (union.exit_code, union.output) == (0, '"u"\n"1"\n')


def test_byte_cap_cuts_a_wide_result_and_says_so(mixed_store: Path) -> None:
    result = run_isolated(mixed_store, "SELECT repeat('x', 1000000) AS wide FROM range(100)", max_bytes=8 * 2**20)
    assert result.truncated and 1 <= result.table.num_rows < 9
    assert "reached the 8 MB limit" in result.note
    with pytest.raises(QueryError, match="the first row alone is over the 1 MB"):
        run_isolated(mixed_store, "SELECT repeat('x', 2000000)", max_bytes=2**20)


def test_worker_runs_under_duckdb_limits_it_cannot_change(mixed_store: Path) -> None:
    settings = run_isolated(
        mixed_store,
        "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t, "
        "current_setting('enable_external_access') AS x").table.to_pylist()
    assert settings == [{"m": "953.6 MiB", "t": 2, "x": False}]
    with pytest.raises(QueryRefused, match="SET statements are not allowed"):
        run_isolated(mixed_store, "SET memory_limit = '100GB'")


def test_worker_timeout_interrupts_a_long_scan(mixed_store: Path) -> None:
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"interrupted after the 3 s limit"):
        run_isolated(mixed_store, "SELECT count(*) FROM range(1000000000000)", timeout_s=3.0)
    assert time.monotonic() - started < 6.0


# -- both fronts refuse EXPLAIN ANALYZE of a write ----------------------------------------------------


def test_console_refuses_explain_analyze_create(store: Store) -> None:
    with pytest.raises(QueryRefused, match="EXPLAIN ANALYZE runs the statement it explains"):
        run_console(store, "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1")


@pytest.mark.parametrize("sql", ["EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
                                 "EXPLAIN ANALYZE SET memory_limit='100GB'"])
def test_kvtrace_query_refuses_explain_analyze_of_a_write(mixed_store: Path, sql: str) -> None:
    out = CliRunner().invoke(main, ["query", "--db", str(mixed_store), sql])
    assert out.exit_code == 1
    assert out.output.startswith("Error: refused: EXPLAIN ANALYZE runs the statement it explains")
    assert len(out.output.splitlines()) == 1


# -- the bombs: a real process, its wall time and the peak RSS of its process tree -------------------


@dataclass
class Watched:
    returncode: int | None
    wall_s: float
    peak_rss: int  # the process itself
    peak_tree_rss: int  # the process and every child at the same instant
    output: str
    killed: str


def _watch(argv: list[str], *, kill_s: float = 40.0, kill_rss: float = 3.5e9) -> Watched:
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    me = psutil.Process(proc.pid)
    peak = peak_tree = 0
    killed = ""
    while proc.poll() is None:
        try:
            rss = me.memory_info().rss
            kids = me.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        tree = rss
        for kid in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                tree += kid.memory_info().rss
        peak, peak_tree = max(peak, rss), max(peak_tree, tree)
        elapsed = time.monotonic() - started
        if tree > kill_rss or elapsed > kill_s:
            killed = f"killed by the test at {elapsed:.1f} s, {tree / 1e9:.2f} GB"
            for p in [*kids, me]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            break
        time.sleep(0.02)
    output = proc.communicate()[0].decode("utf-8", "replace")
    return Watched(proc.returncode, time.monotonic() - started, peak, peak_tree, output, killed)


@pytest.mark.slow
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_kvtrace_query_stops_the_console_bombs(mixed_store: Path, bomb: str) -> None:
    run = _watch([KVTRACE, "query", "--db", str(mixed_store), BOMBS[bomb]])
    assert not run.killed, (run.killed, run.output[-500:])
    assert run.wall_s < BAR_S, run
    assert run.peak_tree_rss < BAR_RSS, run
    assert run.returncode == 1
    lines = run.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.output, run.output[-2000:]
    expected = "interrupted after the 10 s limit" if bomb == "repeat_1g_x3" else "out of memory"
    assert lines[0].startswith("Error: query ") and expected in lines[0]


_CONSOLE = textwrap.dedent("""
    import json, sys, time
    from kvtrace.app.data.sql_console import run_console
    from kvtrace.app.safe_sql import QueryError
    from kvtrace.app.store import Store
    with Store(sys.argv[1]) as store:
        started = time.monotonic()
        try:
            run_console(store, sys.argv[2])
            answer = {"error": None}
        except QueryError as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
        answer["call_s"] = time.monotonic() - started
    print(json.dumps(answer))
""")


@pytest.mark.slow
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_console_guard_stops_the_console_bombs(mixed_store: Path, bomb: str) -> None:
    """The app's process (here a Python process with the app's Store, as Streamlit holds it) stays
    small and the console's call returns within the bar; the query's worker is bounded too."""
    run = _watch([sys.executable, "-c", _CONSOLE, str(mixed_store), BOMBS[bomb]])
    assert not run.killed, (run.killed, run.output[-500:])
    assert run.returncode == 0, run.output[-2000:]
    answer = json.loads(run.output.strip().splitlines()[-1])
    assert answer["call_s"] < BAR_S, answer
    assert run.peak_rss < BAR_RSS and run.peak_tree_rss < BAR_RSS, run
    if bomb == "repeat_1g_x3":
        assert answer["error"] == "QueryTimeout" and "interrupted after the 10 s limit" in answer["message"]
    else:
        assert answer["error"] == "QueryOutOfMemory" and "out of memory" in answer["message"]
    assert "\n" not in answer["message"]
