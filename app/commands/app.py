"""`kvtrace app`: start the Streamlit investigation app over a store."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import click

from kvtrace.app.options import db_option, store_wait
from kvtrace.ingest.store import WAIT_ENV, missing_store

ENTRYPOINT = Path(__file__).resolve().parents[1] / "streamlit_app.py"

# The environment `kvtrace app` hands the Streamlit process (read by app/ui.py).
DB_ENV = "KVTRACE_DB"
ALLOW_INGEST_ENV = "KVTRACE_APP_ALLOW_INGEST"  # "1": the Ingest page may write uploads into the store

# The largest file the Ingest page takes, in MB: a real per-instance trace file is 1-2 GB
# (Streamlit's own default, 200 MB, refuses them).
MAX_UPLOAD_MB = 4096

# Host names (Host header, port ignored) the app answers on its websocket whatever the address.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "[::]")  # listen on every interface


def allowed_hosts(address: str, extra: Iterable[str] = ()) -> list[str]:
    """Host names the app's websocket accepts: loopback, the listen address itself, and `extra`.

    A page on another site that resolves its own name to this machine (DNS rebinding) reaches
    the app with its own name in the Host header; Streamlit refuses a Host outside this list.
    """
    hosts = list(LOOPBACK_HOSTS)
    if address.strip().lower() not in _WILDCARD_ADDRESSES:
        hosts.append(address.strip().strip("[]"))
    hosts += [h.strip() for h in extra if h.strip()]
    return list(dict.fromkeys(h.lower() for h in hosts))


def streamlit_argv(port: int, address: str, hosts: Iterable[str] = LOOPBACK_HOSTS,
                   max_upload_mb: int = MAX_UPLOAD_MB) -> list[str]:
    """The `streamlit run` command line: headless, no telemetry, no file watcher; the websocket
    only for `hosts`, cross-origin websockets and XSRF refused (set here, so a config.toml cannot
    turn them off); uploads up to `max_upload_mb`."""
    argv = [
        sys.executable, "-m", "streamlit", "run", str(ENTRYPOINT),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--server.enableCORS", "true",
        "--server.enableXsrfProtection", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--server.maxUploadSize", str(max_upload_mb),
    ]
    for host in hosts:
        argv += ["--server.allowedHosts", host]
    return argv


def app_environment(db: Path, allow_ingest: bool, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Streamlit process's environment: the store, and the write path on only when asked.

    An ALLOW_INGEST_ENV inherited from the shell does not count: only `--allow-ingest` turns it on.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != ALLOW_INGEST_ENV}
    env[DB_ENV] = str(db.resolve())
    if allow_ingest:
        env[ALLOW_INGEST_ENV] = "1"
    return env


@click.command("app")
@db_option
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="HTTP port.")
@click.option("--address", default="localhost", show_default=True, help="Address to listen on.")
@click.option("--allow-ingest", is_flag=True, default=False,
              help="Let the Ingest page write uploaded trace files into the store (off: the app only reads).")
@click.option("--allowed-host", "extra_hosts", multiple=True, metavar="NAME",
              help="Another host name or IP that browsers use to reach the app (repeatable); loopback "
                   "names and --address are always accepted, any other Host header is refused.")
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=MAX_UPLOAD_MB, show_default=True,
              help="Largest file the Ingest page accepts, in MB (with --allow-ingest).")
def app_command(db: str, port: int, address: str, allow_ingest: bool, extra_hosts: tuple[str, ...],
                max_upload_mb: int) -> None:
    """Start the investigation app (Streamlit) over the store.

    By default the app only reads: it never writes the store (it reads a private snapshot,
    refreshed when the file changes, so a `kvtrace ingest` into the same file can run
    meanwhile). With --allow-ingest the Ingest page also writes: anyone who can open the app
    can upload trace files and ingest them into the store. The app's websocket (all its data
    and actions) accepts only the host names localhost, 127.0.0.1, ::1, --address and
    --allowed-host: a page of another site that resolves its own name to this machine is
    refused. Stop it with Ctrl-C.

    Example:

    \b
        kvtrace app --db demo/kvtrace.duckdb --port 8501
        kvtrace app --db demo/kvtrace.duckdb --allow-ingest   # the Ingest page may write the store
    """
    path = Path(db)
    if not path.is_file():
        raise click.ClickException(str(missing_store(path)))
    env = app_environment(path, allow_ingest)
    env[WAIT_ENV] = f"{store_wait():g}"  # the app's first open waits as long as --wait says
    hosts = allowed_hosts(address, extra_hosts)
    mode = "uploads are ingested into the store (--allow-ingest)" if allow_ingest else "read-only"
    click.echo(f"kvtrace app on http://{address}:{port} over {path}, {mode} (Ctrl-C stops it)", err=True)
    if address.strip().lower() in _WILDCARD_ADDRESSES and not extra_hosts:
        click.echo("note: browsers on other machines are refused unless you name the host they use "
                   "with --allowed-host", err=True)
    argv = streamlit_argv(port, address, hosts, max_upload_mb)
    # Replace this process with streamlit: signals (Ctrl-C, SIGTERM) reach the server directly and
    # no orphan is left behind when a supervisor stops `kvtrace app`.
    os.execve(argv[0], argv, env)


commands: list[click.Command] = [app_command]
