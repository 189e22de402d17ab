"""`kvtrace app`: start the Streamlit investigation app over a store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kvtrace.app.options import db_option

ENTRYPOINT = Path(__file__).resolve().parents[1] / "streamlit_app.py"


def streamlit_argv(port: int, address: str) -> list[str]:
    """The `streamlit run` command line: headless, no telemetry, no file watcher."""
    return [
        sys.executable, "-m", "streamlit", "run", str(ENTRYPOINT),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
    ]


@click.command("app")
@db_option
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="HTTP port.")
@click.option("--address", default="localhost", show_default=True, help="Address to listen on.")
def app_command(db: str, port: int, address: str) -> None:
    """Start the investigation app (Streamlit) on localhost over the store, read-only.

    The app reads a private snapshot of the store, refreshed when the file changes, so a
    `kvtrace ingest` into the same file can run meanwhile. Stop it with Ctrl-C.

    Example:

        kvtrace app --db demo/kvtrace.duckdb --port 8501
    """
    path = Path(db)
    if not path.is_file():
        raise click.ClickException(f"store {path} does not exist: run `kvtrace ingest PATH --db {path}` first")
    env = {**os.environ, "KVTRACE_DB": str(path.resolve())}
    click.echo(f"kvtrace app on http://{address}:{port} over {path} (Ctrl-C stops it)", err=True)
    argv = streamlit_argv(port, address)
    # Replace this process with streamlit: signals (Ctrl-C, SIGTERM) reach the server directly and
    # no orphan is left behind when a supervisor stops `kvtrace app`.
    os.execve(argv[0], argv, env)


commands: list[click.Command] = [app_command]
