"""Options shared by several commands, written once (the sqlite-utils habit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DB = "kvtrace.duckdb"


def db_option(func: F) -> F:
    """`--db FILE`: the embedded DuckDB store (default kvtrace.duckdb in the working directory)."""
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False),
        default=DEFAULT_DB,
        show_default=True,
        envvar="KVTRACE_DB",
        help="DuckDB store file (env KVTRACE_DB).",
    )(func)
