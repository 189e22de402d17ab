"""The layers' arrows point one way (house style): the headless core never pulls in the UI or torch.

Each module is imported in a fresh interpreter, so an import made by another test cannot hide a
forbidden dependency.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("streamlit", "plotly", "torch")
HEADLESS_PACKAGES = ("ingest", "analytics", "simulator")


def _modules(package: str) -> list[str]:
    names = [f"kvtrace.{package}"]
    for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"kvtrace.{package}."):
        names.append(info.name)
    return names


@pytest.mark.parametrize("package", HEADLESS_PACKAGES)
def test_headless_layers_import_no_ui_or_torch(package: str) -> None:
    if not (ROOT / package / "__init__.py").exists():
        pytest.fail(f"package {package}/ is missing")
    modules = _modules(package)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} imports {out.stdout.strip()}"



def test_sglang_plugin_imports_nothing_heavy() -> None:
    """The SGLang plugin runs inside the SGLang server: loading it (and its report CLI module)
    pulls in none of kvtrace's store, UI or dataframe stack, nor torch or numpy of its own."""
    modules = _modules("sglang_plugin")
    heavy = (*FORBIDDEN, "duckdb", "pyarrow", "pandas", "numpy", "kvtrace.ingest", "kvtrace.analytics", "kvtrace.app")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m in {heavy!r} or m.split('.')[0] in {heavy!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"kvtrace.sglang_plugin imports {out.stdout.strip()}"


def test_no_test_module_imports_another() -> None:
    """Tests share code through tests/conftest.py (fixtures) and the support modules beside it
    (plain helpers: ingest_support, receiver_support, ...), never by importing a test module:
    a test module that is a hidden library breaks when its tests move or are renamed."""
    import ast

    tests = ROOT / "tests"
    offenders = []
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                last = name.split(".")[-1]
                if last.startswith("test_") or name.startswith("tests."):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, "test modules imported as libraries (move the helper to a support module):\n" + "\n".join(offenders)
