"""The worker process of `kvtrace.app.safe_sql.run_isolated`: runs one query typed by a person.

Started by safe_sql (``python -I -c ...`` calling `main`) with a JSON request on stdin; answers on stdout in
length-prefixed frames (8-byte big-endian length, then the bytes): ``{"event": "running"}`` once
the connection is open and the prelude ran (the parent's deadline starts there), then either
``{"event": "error", "kind": ..., "message": ...}`` or ``{"event": "result", ...}`` followed by one
frame of the rows as an Arrow IPC stream. Anything else that writes to fd 1 (a progress bar, a
print) goes to /dev/null, so it cannot corrupt the frames.

Its limits (see safe_sql's docstring, layer 6): DuckDB's memory and thread limits and locked
configuration on the connection, then ``RLIMIT_AS`` over the size it has once set up, so an
allocation DuckDB does not track fails instead of growing the process; the interrupt at the
timeout; and its own exit shortly after the parent's kill deadline, should the parent be gone.
The parent's deadline (CLOCK_MONOTONIC, one clock for all processes) comes in the request.
It also dies with the thread that started it (``PR_SET_PDEATHSIG``).

Imports only duckdb, pyarrow and kvtrace.app.safe_sql (kvtrace.analytics only for ``analyses``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from kvtrace.app import safe_sql


def main() -> int:
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    request: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    _die_with_parent(int(request["parent_pid"]))
    _limit(resource.RLIMIT_CORE, 0)
    try:
        _serve(request, out)
    except safe_sql.QueryError as exc:
        _send_json(out, {"event": "error", "kind": type(exc).__name__, "message": str(exc),
                         "statement_type": getattr(exc, "statement_type", None)})
    except MemoryError:
        _send_json(out, {"event": "error", "kind": "QueryOutOfMemory",
                         "message": safe_sql.out_of_memory_message("the query's process could not allocate more")})
    except Exception as exc:
        _send_json(out, {"event": "error", "kind": "QueryError", "message": safe_sql.first_line(exc)})
    out.flush()
    return 0


def _serve(request: dict[str, Any], out: BinaryIO) -> None:
    sql = str(request["sql"])
    checked = safe_sql.check_read_only_sql(sql)
    timeout_s = float(request["timeout_s"])
    spill = Path(request["work_dir"]) / "spill"
    setup_started = time.monotonic()
    con = safe_sql.open_read_only(request["db"], memory_limit=safe_sql.ISOLATED_MEMORY_LIMIT,
                                  threads=safe_sql.ISOLATED_THREADS, temp_directory=spill,
                                  wait_s=float(request["wait_s"]))
    cur = con.cursor()
    if request.get("analyses"):
        from kvtrace.analytics import runner
        from kvtrace.analytics.errors import AnalyticsError

        try:
            runner.compute(cur)
        except AnalyticsError as exc:
            raise safe_sql.QueryError(str(exc)) from exc
    if request.get("prelude"):
        cur.execute(str(request["prelude"]))
    cur.sql("SELECT 1").fetchall()  # DuckDB's threads exist now; the limit below is on top of them
    _limit(resource.RLIMIT_AS, _address_space() + safe_sql.ADDRESS_SPACE_BUDGET)
    # The trusted setup (a wait for the store's lock, the analyses) does not count against the query.
    setup_s = time.monotonic() - setup_started
    kill_at = float(request["deadline"]) + setup_s
    _send_json(out, {"event": "running", "setup_s": setup_s})
    backstop = threading.Timer(max(kill_at - time.monotonic(), 1.0) + 2.0, os._exit, args=(3,))
    backstop.daemon = True
    backstop.start()
    interrupt_after = max(kill_at - float(request["interrupt_lead_s"]) - time.monotonic(), 0.05)
    result = safe_sql.execute_guarded(cur, checked, timeout_s=timeout_s, max_rows=int(request["max_rows"]),
                                      display=True, max_bytes=int(request["max_bytes"]),
                                      interrupt_after_s=interrupt_after)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, result.table.schema) as writer:
        writer.write_table(result.table)
    payload = sink.getvalue()
    _send_json(out, {"event": "result", "truncated": result.truncated, "elapsed_s": result.elapsed_s,
                     "note": result.note, "rows": result.table.num_rows})
    _send(out, memoryview(payload))


def _send_json(out: BinaryIO, value: dict[str, Any]) -> None:
    _send(out, json.dumps(value).encode())


def _send(out: BinaryIO, data: bytes | memoryview) -> None:
    out.write(struct.pack(">Q", len(data)))
    out.write(data)
    out.flush()


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit(which: int, value: int) -> None:
    with contextlib.suppress(ValueError, OSError):
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, hard))


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the thread that started it ends (Linux); exit if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(4)


if __name__ == "__main__":
    sys.exit(main())
