"""The package's import graph: ``errors`` and ``checks`` stay light, no module needs another imported first (no
import cycle), and every exception class of the package lives in ``errors``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nni_darts_ext"
HEAVY = ("torch", "omegaconf", "pytorch_lightning", "lightning_fabric", "nni", "yaml", "numpy")


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("module", ["nni_darts_ext.errors", "nni_darts_ext.checks"])
def test_errors_and_checks_import_nothing_heavy(module):
    loaded = json.loads(_run(f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"))
    assert not [name for name in loaded if name.split(".")[0] in HEAVY]


@pytest.mark.e2e
def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh package state (an import cycle fails for some entry point)."""
    code = (
        "import importlib, sys\n"
        f"names = {_modules()!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'nni_darts_ext' or m.startswith('nni_darts_ext.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    assert _run(code).strip() == ""


def test_every_exception_class_lives_in_errors():
    """A class deriving from an exception is defined in nni_darts_ext/errors.py only."""
    exception_bases = {"Exception", "ValueError", "TypeError", "RuntimeError", "OSError", "SystemExit", "KeyError",
                       "BaseException", "Warning", "UserWarning"}
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}
                if bases & exception_bases or any(name.endswith(("Error", "Exception")) for name in bases):
                    elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert not elsewhere
