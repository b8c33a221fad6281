"""``import nni_darts_ext`` is cheap, has no side effects and prints no warnings (README): checked in a fresh
interpreter, with warnings turned into errors, in an empty working folder and home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import json, logging, sys
root = logging.getLogger()
before = (list(root.handlers), root.level, dict(logging.Logger.manager.loggerDict))
import nni_darts_ext
after_loggers = logging.Logger.manager.loggerDict
print(json.dumps({
    "heavy": sorted(m for m in ("torch", "nni", "pytorch_lightning", "omegaconf", "matplotlib", "numpy")
                    if m in sys.modules),
    "root_handlers_added": len(root.handlers) - len(before[0]),
    "root_level_changed": root.level != before[1],
    "handlers": sorted(name for name, lg in after_loggers.items()
                       if isinstance(lg, logging.Logger) and lg.handlers),
    "version": nni_darts_ext.__version__,
}))
"""


@pytest.mark.e2e  # a fresh interpreter
def test_import_is_cheap_silent_and_writes_nothing(tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, "-W", "error", "-c", _PROBE], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warning, no log line
    report = json.loads(done.stdout)
    assert report["heavy"] == []  # public names are imported on first use only
    assert report["root_handlers_added"] == 0 and not report["root_level_changed"] and report["handlers"] == []
    assert list(work.iterdir()) == [] and list(home.iterdir()) == []  # no file written

