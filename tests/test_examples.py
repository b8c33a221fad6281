"""The examples run end to end (tiny settings, offline digits)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from nni_darts_ext.arch import load_arch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# A retrain of the searched cell at search size keeps the one-batch run to seconds (docs/HELPERS.md sizes).
TINY_RETRAIN = ["--set", "retrain.cells=3", "--set", "retrain.width=4", "--set", "retrain.batch_size=16",
                "--set", "search.batch_size=16", "--set", "dataset.max_samples=200"]


def test_darts_cifar10_example_fast_dev_run_on_digits(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "out"
    # NNI's manifest goes to HOME. One torch thread: two threads on two busy shared cores are many times slower.
    env = {**os.environ, "HOME": str(home), "NNI_HOME": str(home / ".nni"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(EXAMPLES / "darts_cifar10.py"), "--dataset", "digits", "--fast-dev-run",
               "--accelerator", "cpu", "--out", str(out), *TINY_RETRAIN]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "digits" and result["recipe"] == "demo" and result["fast_dev_run"] is True
    assert 0.0 <= result["test_acc"] <= 1.0
    arch = load_arch(out / "arch.json")  # validated by normalize_arch
    assert len(arch) == 32
    assert (out / "cells.png").stat().st_size > 0
    assert "test accuracy" in done.stdout
    manifest = json.loads((home / "nni-experiments" / ".experiment").read_text())
    [entry] = manifest.values()
    assert entry["status"] == "STOPPED" and entry["logDir"] == str(out / "nni-experiments")


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_darts_cifar10_example_rejects_a_bad_override(tmp_path, capsys):
    example = _load_example("darts_cifar10")
    assert example.main(["--dataset", "digits", "--set", "retrain.epochs=zero", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "retrain.epochs" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written
