"""`kvtrace app` as a real process for the browser and HTTP tests: on a free loopback port, waited
for until `/_stcore/health` answers, stopped (and killed if it must be) afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

KVTRACE = str(Path(sys.executable).with_name("kvtrace"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def kvtrace_app(db: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`kvtrace app --db DB ARGS...` on 127.0.0.1; yields (port, process) once it is healthy."""
    port = free_port()
    proc = subprocess.Popen(
        [KVTRACE, "app", "--db", str(db), "--port", str(port), "--address", "127.0.0.1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env if env is not None else {**os.environ},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"kvtrace app did not start (exit {proc.poll()}):\n{out}")
            time.sleep(0.3)
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
