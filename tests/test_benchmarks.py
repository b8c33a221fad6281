"""Smoke test of benchmarks/search_step.py at a tiny size: one real run per preset process, JSON and table."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "search_step.py"
TINY = ["--width", "8", "--cells", "3", "--batch", "4", "--image-size", "16", "--steps", "2", "--warmup", "1",
        "--threads", "1"]


def _load_script():
    spec = importlib.util.spec_from_file_location("search_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e
def test_search_step_harness_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--presets", "nni-stock,pc-darts", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report) == {"config", "results"}
    config = report["config"]
    assert (config["width"], config["cells"], config["batch"], config["steps"], config["threads"]) == (8, 3, 4, 2, 1)
    assert [r["name"] for r in report["results"]] == ["nni-stock", "pc-darts"]
    for r in report["results"]:
        assert {"name", "step_seconds", "images_per_second", "peak_memory_mb", "startup_seconds"} <= set(r)
        assert r["step_seconds"] > 0 and r["peak_memory_mb"] > 0 and r["startup_seconds"] > 0
        assert r["images_per_second"] == pytest.approx(2 * 4 / r["step_seconds"])
        assert len(r["step_seconds_all"]) == 3 and r["threads"] == 1
    assert [r["strategy"] for r in report["results"]] == ["DARTS", "DartsSearch"]
    # The markdown table, with the stock row as the 1.00x reference.
    assert "| preset | step (s) | images/s | vs stock |" in proc.stdout
    assert "| nni-stock |" in proc.stdout and "| 1.00x |" in proc.stdout


def test_format_table_and_failures():
    bench = _load_script()
    results = [
        {"name": "nni-stock", "step_seconds": 2.0, "images_per_second": 64.0, "peak_memory_mb": 1000.0,
         "startup_seconds": 10.0, "step_cpu_seconds": 3.0},
        {"name": "pc-darts", "step_seconds": 0.5, "images_per_second": 256.0, "peak_memory_mb": 300.0,
         "startup_seconds": 11.0, "step_cpu_seconds": 0.7},
        {"name": "broken", "step_seconds": None, "images_per_second": None, "peak_memory_mb": None,
         "startup_seconds": None, "error": "exit code 1: boom"},
    ]
    table = bench.format_table(results)
    assert "| pc-darts | 0.500 | 256.0 | 4.00x | 300 | 0.30x | 11.0 | 0.700 |" in table
    assert "| broken | failed: exit code 1: boom |" in table


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--threads", "0"], ["--strategy-kwargs", "[1]"],
                                  ["--device", "tpu"]])
def test_bad_arguments_exit_with_code_2(argv):
    bench = _load_script()
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2
