"""Smoke test of benchmarks/loader_throughput.py at tiny sizes: a real run and its JSON (no figures)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "loader_throughput.py"


def _load():
    spec = importlib.util.spec_from_file_location("loader_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.e2e  # runs a (tiny) search
def test_loader_throughput_reports_both_cache_modes_and_the_step(tmp_path):
    out = tmp_path / "loader.json"
    code = _load().main(["--size", "8", "--channels", "1", "--classes", "2", "--per-class", "6", "--batch", "4",
                         "--width", "4", "--cells", "3", "--steps", "2", "--warmup", "1", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["loader"]) == {"memory", "none"}
    for cache in ("memory", "none"):
        assert result["loader"][cache]["images"] == 8  # 12 training images, the warm-up batch of 4 not counted
        assert result["loader"][cache]["images_per_second"] > 0
        assert result["loader_to_step"][cache] > 0
    assert result["search_step"]["step_seconds"] > 0


def test_bad_sizes_exit_2(capsys):
    assert _load().main(["--size", "4"]) == 2
    assert "--size >= 8" in capsys.readouterr().err
