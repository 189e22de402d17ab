"""One door to the store: every command and layer opens it through `kvtrace.ingest.store.open_store`,
with one error type (`StoreError` and its `reason`) and one wait policy (`--wait`, env KVTRACE_WAIT);
every command that takes `--db` also reads KVTRACE_DB (one test per command family)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner, Result

from kvtrace.analytics import runner
from kvtrace.app.cli import main
from kvtrace.app.commands.serve import commands as serve_commands
from kvtrace.app.safe_sql import StoreUnavailable, open_read_only
from kvtrace.app.store import Store
from kvtrace.ingest.store import DEFAULT_WAIT_S, StoreError, open_store

ROOT = Path(__file__).resolve().parents[1]
WINDOW = "decode-0:878.6s..886.1s"  # the pr35049 race's window (tests/test_replay_export.py)

HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def _ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = _cli(*args, env=env)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture()
def pr35049(ingested_only_store: Path, tmp_path: Path) -> Path:
    """A writable copy of sample_traces/pr35049 ingested."""
    db = tmp_path / "pr35049.duckdb"
    shutil.copyfile(ingested_only_store, db)
    return db


@pytest.fixture()
def foreign(tmp_path: Path) -> Path:
    """Someone else's DuckDB file: no kvtrace tables."""
    db = tmp_path / "foreign.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE invoices AS SELECT 1 AS n")
    return db


# -- the door: one error type, a reason for each refusal -----------------------------------------


def test_every_refusal_is_a_store_error_with_its_reason(tmp_path: Path, foreign: Path) -> None:
    missing = tmp_path / "none.duckdb"
    for opener in (
        lambda: open_store(missing, read_only=True),
        lambda: open_store(missing, create=False),
        lambda: runner.connect(missing),
    ):
        with pytest.raises(StoreError, match=r"does not exist: run `kvtrace ingest PATH --db") as err:
            opener()
        assert err.value.reason == "missing" and err.value.path == missing
    assert not missing.exists()  # a refused open creates nothing

    with pytest.raises(StoreError, match=r"not a kvtrace store \(missing tables: requests") as err:
        runner.connect(foreign)
    assert err.value.reason == "not_kvtrace"
    with pytest.raises(StoreError, match=r"not a kvtrace store \(a DuckDB file without a spans table") as err:
        open_store(foreign)  # ingest does not write its schema into someone else's file
    assert err.value.reason == "not_kvtrace"
    with duckdb.connect(str(foreign), read_only=True) as con:
        assert [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == [
            "invoices"
        ]

    text = tmp_path / "notes.duckdb"
    text.write_text("not a database\n" * 100)
    with pytest.raises(StoreError, match=rf"cannot open store {text}") as err:
        open_store(text, read_only=True)
    assert err.value.reason == "unreadable"


def test_the_app_reads_any_duckdb_file_through_the_same_door(foreign: Path, tmp_path: Path) -> None:
    """The app's guarded reader (and its snapshot) opens any DuckDB file the user names; its
    refusals carry the door's message."""
    with open_read_only(foreign) as con:
        assert con.execute("SELECT n FROM invoices").fetchall() == [(1,)]
    with pytest.raises(StoreUnavailable, match=r"does not exist: run `kvtrace ingest PATH --db"):
        open_read_only(tmp_path / "none.duckdb")
    with Store(foreign) as store:
        assert store.scalar("SELECT n FROM invoices") == 1


def test_a_writable_open_creates_a_store_and_keeps_an_existing_one(tmp_path: Path, pr35049: Path) -> None:
    db = tmp_path / "deep" / "new.duckdb"
    open_store(db).close()  # created, with its folder and the schema
    with open_store(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM spans").fetchone() == (0,)
    with open_store(pr35049, read_only=True) as con:
        before = con.execute("SELECT count(*) FROM spans").fetchone()
    open_store(pr35049).close()  # the schema again: idempotent
    with open_store(pr35049, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM spans").fetchone() == before != (0,)


# -- one wait policy: --wait on every command that takes --db, env KVTRACE_WAIT --------------------


def _hold(db: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait(timeout=30)


def test_wait_is_one_option_with_one_default_for_every_store_command() -> None:
    waits = {}
    for path, command in _store_commands():
        option = next((p for p in command.params if p.name == "wait"), None)
        assert option is not None, f"`{path}` takes --db but not --wait"
        waits[path] = (option.default, option.envvar)
    assert set(waits.values()) == {(DEFAULT_WAIT_S, "KVTRACE_WAIT")}, waits


def _store_commands() -> list[tuple[str, object]]:
    import click

    found = []

    def walk(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}")
        elif any(p.name == "db" for p in cmd.params) and cmd.name != "serve":
            found.append((path.strip(), cmd))

    walk(main, "kvtrace")
    assert len(found) >= 10, found
    return found


def test_a_held_store_is_waited_for_as_long_as_wait_says(pr35049: Path) -> None:
    holder = _hold(pr35049)
    try:
        t0 = time.monotonic()
        result = _cli("query", "--db", str(pr35049), "--wait", "0.5", "SELECT 1")
        assert result.exit_code == 1
        assert "another process held it for the 0.5 s waited" in result.output, result.output
        assert 0.4 < time.monotonic() - t0 < 20
        result = _cli("quarantine", "--db", str(pr35049), env={"KVTRACE_WAIT": "0.2"})
        assert result.exit_code == 1
        assert "another process held it for the 0.2 s waited" in result.output, result.output
    finally:
        _release(holder)
    assert "quarantined record(s)" in _ok(
        "quarantine", "--db", str(pr35049), "--wait", "0"
    )  # released: it opens


# -- KVTRACE_DB: every command family reads it ----------------------------------------------------


def test_ingest_family_reads_kvtrace_db(tmp_path: Path) -> None:
    db = tmp_path / "env.duckdb"
    env = {"KVTRACE_DB": str(db)}
    out = _ok("ingest", str(ROOT / "sample_traces" / "pr35049"), "--no-progress", env=env)
    assert f"store        {db}" in out
    assert "quarantined record(s)" in _ok("quarantine", env=env)
    _ok("export", "--parquet", str(tmp_path / "parquet"), env=env)
    assert list((tmp_path / "parquet" / "spans").rglob("*.parquet"))


def test_analytics_family_reads_kvtrace_db(pr35049: Path, tmp_path: Path) -> None:
    env = {"KVTRACE_DB": str(pr35049)}
    assert _ok("query", "SELECT count(*) AS n FROM spans", env=env).splitlines()[0] == '"n"'
    assert "findings" in _ok("analyze", env=env)
    assert _ok("findings", env=env).strip()
    missing = {"KVTRACE_DB": str(tmp_path / "elsewhere.duckdb")}
    result = _cli("report", "--out", str(tmp_path / "r"), env=missing)
    assert result.exit_code == 1 and "elsewhere.duckdb does not exist" in result.output


def test_replay_family_reads_kvtrace_db(pr35049: Path, tmp_path: Path) -> None:
    env = {"KVTRACE_DB": str(pr35049)}
    plan = tmp_path / "plan.json"
    _ok("replay", "export", "--window", WINDOW, "--out", str(plan), env=env)
    out = _ok("replay", "run", str(plan), "--device", "cpu", env=env)
    assert f"in {pr35049} (replay_runs" in out  # `replay run` stores its records in KVTRACE_DB's store
    with duckdb.connect(str(pr35049), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM replay_runs").fetchone() == (2,)
    # without KVTRACE_DB or --db nothing is stored
    assert "replay_runs" not in _ok("replay", "run", str(plan), "--device", "cpu")
    result = _cli(
        "replay", "run", str(plan), "--device", "cpu", env={"KVTRACE_DB": str(tmp_path / "none.duckdb")}
    )
    assert result.exit_code == 1 and "none.duckdb does not exist" in result.output


def test_app_and_serve_read_kvtrace_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "app.duckdb"
    result = _cli("app", env={"KVTRACE_DB": str(missing)})
    assert result.exit_code == 1 and f"store {missing} does not exist" in result.output
    (serve,) = serve_commands  # `kvtrace serve` runs until stopped: its parsed options are checked
    assert serve.make_context("serve", []).params["db"] == "kvtrace.duckdb"
    monkeypatch.setenv("KVTRACE_DB", str(tmp_path / "served.duckdb"))
    assert serve.make_context("serve", []).params["db"] == str(tmp_path / "served.duckdb")
