"""Options shared by several commands, written once (the sqlite-utils habit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from kvtrace.ingest.store import DEFAULT_WAIT_S, WAIT_ENV, default_wait_s

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DB = "kvtrace.duckdb"
DB_ENV = "KVTRACE_DB"
_WAIT_META = "kvtrace.wait_s"


def db_option(func: F) -> F:
    """`--db FILE` (env KVTRACE_DB; default kvtrace.duckdb in the working directory) and
    `--wait SECONDS` (env KVTRACE_WAIT): the store, and how long to wait for another process
    holding it. The command reads the wait with `store_wait()`."""
    return wait_option(_db(func, default=DEFAULT_DB, help=f"DuckDB store file (env {DB_ENV})."))


def optional_db_option(help: str) -> Callable[[F], F]:
    """`--db FILE` that may be left out (default: none, or KVTRACE_DB when set), with `--wait`."""

    def decorate(func: F) -> F:
        return wait_option(_db(func, default=None, help=f"{help} (env {DB_ENV})."))

    return decorate


def server_db_option(func: F) -> F:
    """`--db FILE` for `kvtrace serve`, whose writer never waits: it spools while the store is held."""
    return _db(func, default=DEFAULT_DB, help=f"DuckDB store file (env {DB_ENV}).")


def _db(func: F, *, default: str | None, help: str) -> F:
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False),
        default=default,
        show_default=default is not None,
        envvar=DB_ENV,
        help=help,
    )(func)


def _keep_wait(ctx: click.Context, _param: click.Parameter, value: float | None) -> None:
    ctx.meta[_WAIT_META] = value


def wait_option(func: F) -> F:
    """`--wait SECONDS`: how long to wait for a store another process holds (the one wait policy)."""
    return click.option(
        "--wait",
        type=click.FloatRange(min=0),
        default=DEFAULT_WAIT_S,
        show_default=True,
        envvar=WAIT_ENV,
        expose_value=False,
        callback=_keep_wait,
        help=f"Seconds to wait for a store another process (e.g. kvtrace serve) holds (env {WAIT_ENV}).",
    )(func)


def store_wait() -> float:
    """The running command's --wait (outside a command: KVTRACE_WAIT, else the default)."""
    ctx = click.get_current_context(silent=True)
    value = ctx.meta.get(_WAIT_META) if ctx is not None else None
    return default_wait_s() if value is None else float(value)
