"""`pip install kvtrace` as a user installs it: the wheel, no extras, a fresh venv outside the
repository, run from a folder that holds an unrelated `app/` package (most web services have one).

The wheel must carry one import namespace (`kvtrace`), and every installed command must work on
the base dependencies alone. The venv reuses this machine's pip cache, so after the first build
it installs without downloading.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# one worker builds the wheel and the venv once for every test here (pytest-xdist, --dist loadgroup);
# session scope: a module-scoped fixture is built again each time a worker comes back to this module
# after a test of another one (that cost two venv installs a run)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]


def _run(cmd: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _source_copy(dst: Path) -> Path:
    """The files git would commit (tracked, and untracked ones not ignored), links kept as links: the
    wheel is built from what a clean clone holds, and never in the checkout's own build/ folder, which
    another build (a second test worker, `setup.py build_ext --inplace`) may be using."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src, out = ROOT / name, dst / name
        if not src.exists() and not src.is_symlink():  # deleted in the working tree, not yet committed
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        else:
            shutil.copy2(src, out)
    return dst


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp_path_factory.mktemp("source") / "kvtrace")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)], cwd=out)
    wheels = list(out.glob("kvtrace-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed, no extras; returns its bin/ folder."""
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    venv.create(env_dir, with_pip=True)
    # --no-compile: no bytecode for the dependencies' tens of thousands of files (Python compiles
    # what it imports); the install is otherwise the one a user runs
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile", str(wheel)], cwd=env_dir)
    return env_dir / "bin"


def test_wheel_installs_only_the_kvtrace_namespace(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"kvtrace"}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    # the SQL files, the schema and the streamlit pages travel with the code
    for needed in ("kvtrace/ingest/schema.sql", "kvtrace/analytics/sql/findings.sql",
                   "kvtrace/app/streamlit_app.py", "kvtrace/app/views/overview.py", "kvtrace/replay/run.py"):
        assert needed in names, needed


def test_installed_commands_work_next_to_a_foreign_app_package(installed: Path, tmp_path: Path) -> None:
    """simulate -> ingest -> analyze -> report from a folder whose own `app/` would shadow a
    top-level `app` package."""
    work = tmp_path / "service"
    (work / "app").mkdir(parents=True)
    (work / "app" / "__init__.py").write_text("raise ImportError('the user project app package was imported')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(work)  # the user's project on the path, as in its own test runs
    kv = str(installed / "kvtrace")
    assert "simulate" in _run([kv, "--help"], cwd=work, env=env)
    _run([kv, "simulate", "--scenario", "pr35049", "--out", "traces"], cwd=work, env=env)
    out = _run([kv, "ingest", "traces", "--db", "t.duckdb"], cwd=work, env=env)
    assert "spans" in out
    _run([kv, "analyze", "--db", "t.duckdb"], cwd=work, env=env)
    _run([kv, "report", "--db", "t.duckdb", "--out", "report"], cwd=work, env=env)
    assert (work / "report" / "report.html").stat().st_size > 10_000
    summary = (work / "report" / "summary.md").read_text()
    assert "abort_before_write_complete" in summary
    # pip show -f lists no top-level package but kvtrace
    files = _run([str(installed / "python"), "-m", "pip", "show", "-f", "kvtrace"], cwd=work, env=env)
    listed = [line.strip() for line in files.split("Files:", 1)[1].splitlines() if line.strip()]
    tops = {f.split("/")[0] for f in listed if not f.startswith("..")}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"kvtrace"}, tops


def test_the_gpu_replay_entry_runs_without_duckdb(installed: Path, tmp_path: Path) -> None:
    """The GPU host runs `python -m kvtrace.replay.run` with torch only: no duckdb import on the way."""
    code = ("import sys, kvtrace.replay.run, kvtrace.replay.cpu; "
            "print(','.join(m for m in ('duckdb', 'click', 'pyarrow') if m in sys.modules))")
    out = _run([str(installed / "python"), "-c", code], cwd=tmp_path)
    assert out.strip() == ""
    plan = ROOT / "replay" / "plans" / "samples"
    plans = sorted(plan.rglob("*.json"))
    if plans:
        out = _run([str(installed / "python"), "-m", "kvtrace.replay.run", str(plans[0]), "--device", "cpu"], cwd=tmp_path)
        assert plans[0].stem in out
