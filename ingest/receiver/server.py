"""`Receiver`: the spool, the store-writer process and both OTLP transports, started and stopped together."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvtrace.ingest.receiver.front import Front, Limits
from kvtrace.ingest.receiver.grpc_transport import start_grpc_server
from kvtrace.ingest.receiver.http_transport import OtlpHttpServer
from kvtrace.ingest.receiver.spool import Spool
from kvtrace.ingest.receiver.writer_process import WriterProcess

log = logging.getLogger(__name__)


def default_spool_dir(db_path: Path) -> Path:
    """The spool lives beside the store: `kvtrace.duckdb` -> `kvtrace.duckdb.spool/`."""
    return db_path.with_name(db_path.name + ".spool")


@dataclass(frozen=True)
class ReceiverConfig:
    """Where to listen and store, and every limit. Port None disables that transport; 0 picks one."""

    db_path: Path
    host: str = "127.0.0.1"
    grpc_port: int | None = 4317
    http_port: int | None = 4318
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    spool_dir: Path | None = None
    store_hold_s: float = 5.0
    store_release_s: float = 1.0
    grpc_workers: int = 8


class Receiver:
    """A running OTLP receiver (see the package docstring for the durability contract)."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        spool_dir = config.spool_dir or default_spool_dir(config.db_path)
        self.spool = Spool(spool_dir, max_bytes=config.limits.max_spool_bytes, external_reader=True)
        assert self.spool.board is not None
        self.board = self.spool.board
        self.front = Front(self.spool, config.limits, config.token)
        # The store writer (ingest.ingest_payload into DuckDB) runs in its own process: see writer_process.py.
        self.writer = WriterProcess(spool_dir, config.db_path, self.board,
                                    hold_s=config.store_hold_s, release_s=config.store_release_s)
        self._grpc: Any = None
        self._http: OtlpHttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port: int | None = None
        self.http_port: int | None = None

    def start(self) -> None:
        """Replay what the spool holds into the store (in the background) and start listening."""
        backlog = self.spool.backlog_bytes()
        if backlog:
            log.info("spool holds %d bytes from a previous run; storing them", backlog)
        self.writer.start()
        cfg = self.config
        try:
            if cfg.grpc_port is not None:
                self._grpc, self.grpc_port = start_grpc_server(self.front, cfg.host, cfg.grpc_port, cfg.grpc_workers)
            if cfg.http_port is not None:
                self._http = OtlpHttpServer((cfg.host, cfg.http_port), self.front, self.status)
                self.http_port = self._http.server_address[1]
                self._http_thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                                                     name="otlp-http", daemon=True)
                self._http_thread.start()
        except BaseException:
            self.stop(drain_timeout_s=0)
            raise

    def status(self) -> dict[str, Any]:
        """Counters for `GET /status`, the periodic log line and the bench."""
        front = self.front.snapshot()
        writer = self.writer.snapshot()
        http = self._http
        return {
            "requests": front.requests,
            "accepted_spans": front.accepted_spans,
            "rejected_spans": front.rejected_spans,
            "refused_requests": front.refused,
            # open HTTP connections by state (pending: waiting for a request head; idle: keep-alive;
            # busy: serving a request) and how many were closed to make room for others
            "http_connections": {**http.slots.counts(), "evicted": http.slots.evicted} if http else {},
            "spool_backlog_bytes": self.spool.backlog_bytes(),
            "store_holds_lock": self.writer.holds_store(),
            "store_writer_pid": self.writer.pid(),
            "store_writer_restarts": self.writer.restarts,
            **{f"store_{k}": v for k, v in asdict(writer).items()},
        }

    def stop(self, drain_timeout_s: float = 30.0) -> bool:
        """Stop listening, store what is spooled (up to the timeout); True when nothing is left.

        Calling it again is harmless and reports whether the spool is empty.
        """
        if self._grpc is not None:
            self._grpc.stop(grace=2.0).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        # Every acknowledged frame is fsync'd and on the board already. The spool (and its lock) is
        # closed only after the writer process is gone, so a new receiver cannot start reading it
        # while the old writer still commits.
        drained = self.writer.stop(drain_timeout_s) or self.spool.backlog_bytes() == 0
        self.spool.close()
        return drained
