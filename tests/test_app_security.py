"""The app's exposure: a real `kvtrace app` on a loopback port refuses websockets under a foreign
Host (DNS rebinding) or Origin; the write path (upload -> ingest) is off unless the app is started
with --allow-ingest; uploads are removed after the ingest, whether it worked or failed."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_process import kvtrace_app
from app_sample_store import MIXED
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from kvtrace.app.cli import main
from kvtrace.app.commands.app import ALLOW_INGEST_ENV, allowed_hosts, app_environment
from kvtrace.app.data.ingest_files import UPLOAD_PREFIX
from kvtrace.app.ui import DB_ENV

ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
KVTRACE = str(Path(sys.executable).with_name("kvtrace"))
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Streamlit looks up the machine's external IP (an HTTP GET to checkip.amazonaws.com) when a
# websocket's Origin is foreign: point every proxy at a closed loopback port so nothing leaves.
NO_EGRESS = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}


@pytest.fixture(scope="module")
def running_app(ingested_only_store: Path) -> Iterator[tuple[int, int]]:
    """`kvtrace app` without --allow-ingest, from a shell that has the switch's variable set:
    (port, pid of the streamlit process, which `kvtrace app` exec'd into)."""
    env = {**os.environ, **NO_EGRESS, "NO_PROXY": "", "no_proxy": "", ALLOW_INGEST_ENV: "1"}
    with kvtrace_app(ingested_only_store, env=env) as (port, proc):
        yield port, proc.pid


def _handshake(port: int, host: str, origin: str | None) -> int:
    """HTTP status of a websocket upgrade to Streamlit's stream endpoint with these headers."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /_stcore/stream HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Protocol: streamlit"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_websocket_refuses_a_foreign_host_or_origin(running_app: tuple[int, int]) -> None:
    port, _ = running_app
    # the app's own names
    assert _handshake(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}") == 101
    assert _handshake(port, f"localhost:{port}", f"http://localhost:{port}") == 101
    assert _handshake(port, f"localhost:{port}", None) == 101
    # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is same-origin
    # with itself, so only the Host header tells it apart
    assert _handshake(port, f"evil.example:{port}", f"http://evil.example:{port}") == 403
    assert _handshake(port, f"evil.example:{port}", None) == 403
    assert _handshake(port, f"localhost.evil.example:{port}", f"http://localhost.evil.example:{port}") == 403
    # a foreign page talking to the app's own address (cross-site websocket hijacking)
    assert _handshake(port, f"127.0.0.1:{port}", "http://evil.example") == 403


def test_kvtrace_app_writes_only_with_allow_ingest(running_app: tuple[int, int], tmp_path: Path) -> None:
    """--help says so; the switch inherited from the shell does not turn the write path on."""
    _, pid = running_app
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [e for e in environ if e.startswith(ALLOW_INGEST_ENV.encode() + b"=")]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"streamlit" in cmdline[2] and b"--server.allowedHosts" in cmdline

    result = CliRunner().invoke(main, ["app", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "By default the app only reads: it never writes the store" in text
    assert "--allow-ingest Let the Ingest page write uploaded trace files into the store" in text
    assert "read-only" not in text.split("By default", 1)[0], "the first line must not claim read-only"

    base = {ALLOW_INGEST_ENV: "1", "PATH": "/usr/bin"}
    assert ALLOW_INGEST_ENV not in app_environment(tmp_path / "s.duckdb", False, base)
    assert app_environment(tmp_path / "s.duckdb", True, base)[ALLOW_INGEST_ENV] == "1"


def test_allowed_hosts_follow_the_listen_address() -> None:
    assert allowed_hosts("localhost") == ["localhost", "127.0.0.1", "::1"]
    assert allowed_hosts("10.1.2.3") == ["localhost", "127.0.0.1", "::1", "10.1.2.3"]
    assert allowed_hosts("0.0.0.0", ["Box.lan"]) == ["localhost", "127.0.0.1", "::1", "box.lan"]


def _ingest_page(db: Path, monkeypatch: pytest.MonkeyPatch, allow: bool) -> AppTest:
    for key, value in app_environment(db, allow).items():
        if key in (DB_ENV, ALLOW_INGEST_ENV):
            monkeypatch.setenv(key, value)
    if not allow:
        monkeypatch.delenv(ALLOW_INGEST_ENV, raising=False)
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.run()
    at.switch_page("views/ingest.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_ingest_page_is_read_only_without_the_flag(
    ingested_only_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ALLOW_INGEST_ENV, "1")  # as if inherited: app_environment drops it
    at = _ingest_page(ingested_only_store, monkeypatch, allow=False)
    assert not at.get("file_uploader") and not at.button
    assert any("kvtrace app --allow-ingest" in i.value for i in at.info)
    assert len(at.dataframe) == 1  # the ingested files are still shown

    at = _ingest_page(ingested_only_store, monkeypatch, allow=True)
    assert at.get("file_uploader")
    assert not any("--allow-ingest" in i.value for i in at.info)


def _uploads_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(UPLOAD_PREFIX))


def test_uploads_are_removed_after_ingest_and_after_a_failure(
    ingested_only_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "store.duckdb"
    shutil.copy(ingested_only_store, db)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    line = (MIXED / "decode-0.otlp.jsonl").read_bytes().splitlines()[0] + b"\n"

    at = _ingest_page(db, monkeypatch, allow=True)
    at.file_uploader(key="ingest_upload").set_value(("a.otlp.jsonl", line, "application/json")).run()
    at.button(key="ingest_go").click().run()
    assert not at.exception
    assert at.success[0].value.startswith("1 file(s) ingested"), [e.value for e in at.error]
    assert _uploads_left(temp) == []

    # Another process holds the store for writing: the ingest fails, the upload is removed all the same.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(120)", str(db)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        at.file_uploader(key="ingest_upload").set_value(("b.otlp.jsonl", line, "application/json")).run()
        at.button(key="ingest_go").click().run()
        assert not at.exception
        assert any(e.value.startswith("ingest failed: cannot open store") for e in at.error), \
            [e.value for e in at.error]
        assert _uploads_left(temp) == []
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")
def test_browser_ingest_page_has_no_upload_without_the_flag(running_app: tuple[int, int]) -> None:
    from playwright.sync_api import sync_playwright

    port, _ = running_app
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/ingest", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Ingest").first.wait_for(timeout=30_000)
            page.get_by_text("This app is read-only").first.wait_for(timeout=30_000)
            page.get_by_role("heading", name="Ingested files").first.wait_for(timeout=30_000)
            assert page.locator("input[type=file]").count() == 0
            assert page.locator("[data-testid='stFileUploader']").count() == 0
        finally:
            browser.close()
