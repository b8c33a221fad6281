"""Smoke test of benchmarks/memory_leak.py: 2 epochs each of the tiny search and retrain, the documented JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the benchmark script (search and retrain) in a subprocess

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_leak.py"


def test_memory_leak_benchmark_reports_rss_per_epoch(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "2", "--settle", "1", "--train-batches", "3",
                           "--checkpoint-every-steps", "2", "--json", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path, env={**os.environ, "NNI_HOME": str(tmp_path / "nni-home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["epochs"] == 2 and report["config"]["threads"] == 1
    assert [(r["stage"], r["epoch"]) for r in report["epochs"]] == [("search", 0), ("search", 1), ("retrain", 0),
                                                                   ("retrain", 1)]
    peaks = [r["peak_rss_mb"] for r in report["epochs"]]
    assert all(p > 0 for p in peaks) and peaks == sorted(peaks)  # a peak never goes down
    for stage in ("search", "retrain"):
        figures = report["summary"][stage]
        first, last = figures["peak_rss_mb_after_settle"], figures["peak_rss_mb_last"]
        assert figures["peak_growth_percent_after_settle"] == 100.0 * (last - first) / first
    assert "search: 2 epochs" in proc.stdout and "retrain: 2 epochs" in proc.stdout


def test_bad_arguments_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--epochs" in proc.stderr
