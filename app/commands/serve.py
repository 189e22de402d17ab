"""`kvtrace serve`: the live OTLP receiver (gRPC :4317, HTTP :4318) writing into the store."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import click

from kvtrace.app.options import server_db_option

MB = 1 << 20


def _progress_line(status: dict[str, object]) -> str:
    backlog = int(str(status["spool_backlog_bytes"])) / MB
    refused = status["refused_requests"] or {}
    return (
        f"acknowledged {status['accepted_spans']} spans (partial-success rejects {status['rejected_spans']}), "
        f"stored {status['store_stored_spans']}, refused after ack {status['store_rejected_after_ack']}, "
        f"spool backlog {backlog:.1f} MB, refused requests {refused}"
    )


def _read_token_file(path: Path) -> str:
    """The token in `path` (its first line, surrounding whitespace stripped); warns when others can read it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read the token file {path}: {exc}") from exc
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise click.ClickException(f"token file {path}: the first line is empty")
    if path.stat().st_mode & 0o077:
        click.echo(f"warning: token file {path} is readable by other users (chmod 600 {path})", err=True)
    return token


@click.command("serve")
@server_db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback exposes the receiver: use a token (--token-file).")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=4317, show_default=True,
              help="OTLP/gRPC port (0: any free port).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=4318, show_default=True,
              help="OTLP/HTTP port for POST /v1/traces (0: any free port).")
@click.option("--no-grpc", is_flag=True, help="Do not serve OTLP/gRPC.")
@click.option("--no-http", is_flag=True, help="Do not serve OTLP/HTTP.")
@click.option("--token", envvar="KVTRACE_TOKEN", default=None,
              help="Require `Authorization: Bearer TOKEN` (env KVTRACE_TOKEN). On the command line the "
                   "token is visible to every local user in `ps`: prefer --token-file or the env variable.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the bearer token from this file (its first line; keep it chmod 600).")
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write-ahead spool directory [default: <db>.spool].")
@click.option("--max-request-mb", type=click.FloatRange(min=0.001), default=16.0, show_default=True,
              help="Largest request body (compressed) accepted; larger gets 413.")
@click.option("--max-decompressed-mb", type=click.FloatRange(min=0.001), default=64.0, show_default=True,
              help="Largest decompressed request (gzip bombs stop here with 413).")
@click.option("--max-memory-mb", type=click.FloatRange(min=1), default=256.0, show_default=True,
              help="Request bytes held in memory at once; past it 503 + Retry-After.")
@click.option("--max-spool-mb", type=click.FloatRange(min=1), default=2048.0, show_default=True,
              help="Acknowledged-but-not-stored bytes; past it 429 + Retry-After.")
@click.option("--max-connections", type=click.IntRange(min=1), default=64, show_default=True,
              help="Concurrent HTTP connections and concurrent gRPC calls.")
@click.option("--max-connections-per-client", type=click.IntRange(min=1), default=32, show_default=True,
              help="Of those, how many one client (a source IP address, all its ports) may hold.")
@click.option("--header-timeout", type=click.FloatRange(min=0.01), default=10.0, show_default=True,
              help="Seconds a request head (HTTP headers; the gRPC handshake) may take to arrive; then 408.")
@click.option("--body-timeout", type=click.FloatRange(min=0.01), default=30.0, show_default=True,
              help="Seconds a request body (the gRPC message) may take to arrive after its head; then 408 "
                   "(gRPC DEADLINE_EXCEEDED). Raise it for slow links and large batches.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.01), default=60.0, show_default=True,
              help="Seconds a connection may stay open with no request in flight.")
@click.option("--retry-after", type=click.IntRange(min=1), default=1, show_default=True,
              help="Seconds clients are told to wait under backpressure.")
@click.option("--store-hold", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Longest spell (s) the writer holds the store's lock under sustained load.")
@click.option("--store-release", type=click.FloatRange(min=0.0), default=1.0, show_default=True,
              help="Shortest gap (s) between spells, left for `kvtrace report` and the app.")
@click.option("--status-interval", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds between progress lines on stderr (0: none).")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On shutdown, seconds to spend storing what is spooled (the rest is stored at next start).")
def serve(
    db: str, host: str, grpc_port: int, http_port: int, no_grpc: bool, no_http: bool, token: str | None,
    token_file: Path | None, spool_dir: Path | None, max_request_mb: float, max_decompressed_mb: float,
    max_memory_mb: float, max_spool_mb: float, max_connections: int, max_connections_per_client: int,
    header_timeout: float, body_timeout: float, idle_timeout: float, retry_after: int, store_hold: float,
    store_release: float, status_interval: float, drain_timeout: float,
) -> None:
    """Receive OTLP traces live (gRPC and HTTP) and store them durably in the DuckDB store.

    A batch is acknowledged only once it is fsync'd in the write-ahead spool; a store-writer child
    process (restarted if it dies, gone with this one) moves it into the store. Stop with Ctrl-C or SIGTERM: what is spooled is stored first (or at the
    next start). While it runs, `kvtrace report` and the app read the store between writer spells.

    Slow or stalled clients cannot hold the receiver: every HTTP read has a deadline
    (--header-timeout, --body-timeout, --idle-timeout), the token is checked as soon as a request's
    headers arrive, memory is reserved as body bytes arrive, and connections that hold a slot
    without sending a request are closed to make room for new ones.

    Example:

        kvtrace serve --db kvtrace.duckdb --token-file ~/.config/kvtrace/token
    """
    from kvtrace.ingest.errors import IngestError
    from kvtrace.ingest.receiver import Limits, Receiver, ReceiverConfig
    from kvtrace.ingest.receiver.spool import SpoolError

    logging.basicConfig(level=logging.WARNING, format="kvtrace serve: %(levelname)s %(message)s")
    if no_grpc and no_http:
        raise click.UsageError("--no-grpc and --no-http together leave nothing to serve")
    if token_file is not None:
        if token:
            source = click.get_current_context().get_parameter_source("token")
            given = "KVTRACE_TOKEN" if source == click.core.ParameterSource.ENVIRONMENT else "--token"
            raise click.UsageError(f"give the token once: {given} and --token-file are both set")
        token = _read_token_file(token_file)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        click.echo(f"warning: listening on {host} without a token (--token-file): anyone who can reach it can "
                   "write spans",
                   err=True)
    limits = Limits(
        max_request_bytes=int(max_request_mb * MB),
        max_decompressed_bytes=int(max_decompressed_mb * MB),
        max_inflight_bytes=int(max_memory_mb * MB),
        max_spool_bytes=int(max_spool_mb * MB),
        max_connections=max_connections,
        max_connections_per_client=min(max_connections_per_client, max_connections),
        retry_after_s=retry_after,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        idle_timeout_s=idle_timeout,
    )
    config = ReceiverConfig(
        db_path=Path(db), host=host, grpc_port=None if no_grpc else grpc_port,
        http_port=None if no_http else http_port, token=token, limits=limits, spool_dir=spool_dir,
        store_hold_s=store_hold, store_release_s=store_release,
    )
    try:
        receiver = Receiver(config)
        receiver.start()
    except (SpoolError, IngestError, OSError) as exc:
        raise click.ClickException(f"cannot start the receiver: {exc}") from exc

    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    parts = []
    if receiver.grpc_port is not None:
        parts.append(f"OTLP/gRPC {host}:{receiver.grpc_port}")
    if receiver.http_port is not None:
        parts.append(f"OTLP/HTTP http://{host}:{receiver.http_port}/v1/traces")
    click.echo(f"kvtrace serve: listening on {', '.join(parts)}; store {db}; spool {receiver.spool.directory}",
               err=True)
    while not stop.wait(status_interval or None):
        click.echo(f"kvtrace serve: {_progress_line(receiver.status())}", err=True)
    click.echo(f"kvtrace serve: stopping; storing what is spooled (up to {drain_timeout:.0f} s)", err=True)
    drained = receiver.stop(drain_timeout_s=drain_timeout)
    click.echo(f"kvtrace serve: {_progress_line(receiver.status())}", err=True)
    if not drained:
        click.echo("kvtrace serve: spool not fully stored; the rest is stored at the next start", err=True)


commands: list[click.Command] = [serve]
