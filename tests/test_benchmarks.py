"""Smoke tests of the benchmark scripts (search_step.py, retrain_step.py, gpu.sh, hessian_eigenvalue.py,
precision_agreement.py) at tiny sizes: real runs, JSON, tables."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "search_step.py"
RETRAIN = BENCHMARKS / "retrain_step.py"
# At most 2 warm-up steps (the rule compares two), then 3 steady steps: 6 batches with the FLOP step.
TIMING = ["--steps", "3", "--warmup", "1", "--max-warmup", "2", "--threads", "1", "--matmul-size", "64"]
TINY = ["--width", "8", "--cells", "3", "--batch", "4", "--image-size", "16", *TIMING]


def _load(name: str):
    """A benchmark script as a module (``benchmarks/NAME.py``)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_script():
    return _load("search_step")


@pytest.mark.e2e
def test_search_step_harness_writes_the_documented_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--presets", "nni-stock,pc-darts:partial_channels=2",
                           "--precision", "bf16-mixed", "--checkpointing", "cells", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report) == {"config", "results"}
    config = report["config"]
    assert (config["width"], config["cells"], config["batch"], config["steps"], config["threads"]) == (8, 3, 4, 3, 1)
    assert (config["warmup"], config["max_warmup"], config["tolerance"]) == (1, 2, 0.05)
    assert config["precision"] == "bf16-mixed" and config["compile"] is False and config["checkpointing"] == "cells"
    assert [r["name"] for r in report["results"]] == ["nni-stock", "pc-darts:partial_channels=2"]
    # nni-stock always runs as the tutorial does; the precision applies to our presets only.
    assert [r["precision"] for r in report["results"]] == ["32-true", "bf16-mixed"]
    assert [r["checkpointing"] for r in report["results"]] == ["none", "cells"]
    for r in report["results"]:
        assert {"name", "step_seconds", "images_per_second", "peak_memory_mb", "startup_seconds"} <= set(r)
        assert r["step_seconds"] > 0 and r["peak_memory_mb"] > 0 and r["startup_seconds"] > 0
        assert r["images_per_second"] == pytest.approx(2 * 4 / r["step_seconds"])
        # every step's time, warm-up included; the reported step is the median of the steady ones
        assert r["warmup_steps"] == 2 and isinstance(r["steady"], bool) and r["threads"] == 1
        assert len(r["step_times_s"]) == 2 + 3 and r["steady_steps"] == 3
        assert r["step_seconds"] == pytest.approx(sorted(r["step_times_s"][2:])[1])
        assert r["flops"] > 0 and r["matmul_flops_per_second"] > 0
        assert r["matmul_fraction"] == pytest.approx(r["flops"] / r["step_seconds"] / r["matmul_flops_per_second"])
    # Partial channels (1/2 of the channels through the ops) cost fewer FLOPs than the stock full cell.
    assert report["results"][1]["flops"] < report["results"][0]["flops"]
    assert [r["strategy"] for r in report["results"]] == ["DARTS", "DartsSearch"]
    # The markdown table, with the stock row as the 1.00x reference.
    assert "| preset | step (s) | images/s | vs stock |" in proc.stdout
    assert "| nni-stock |" in proc.stdout and "| 1.00x |" in proc.stdout
    assert "| GFLOP/step | matmul fraction |" in proc.stdout


@pytest.mark.parametrize("durations, expected", [
    ([3.0, 2.0, 1.97, 1.96], (3, True)),     # steps 2 and 3 agree within 5%: 3 warm-up steps
    ([3.0, 2.99], (2, True)),                # the first two agree already
    ([3.0, 2.0], None),                      # undecided: another step is needed
    ([8.0, 4.0, 2.0, 1.0], (4, False)),      # the cap ends the warm-up: not steady
])
def test_warmup_ends_when_two_consecutive_steps_agree_within_the_tolerance(durations, expected):
    common = _load("_common")
    assert common.warmup_length(durations, minimum=1, maximum=4, tolerance=0.05) == expected
    # at least `minimum` warm-up steps, even when earlier steps agree
    assert common.warmup_length([2.0, 2.0, 2.0, 2.0], minimum=3, maximum=8, tolerance=0.05) == (3, True)


def test_format_table_and_failures():
    bench = _load_script()
    results = [
        {"name": "nni-stock", "step_seconds": 2.0, "images_per_second": 64.0, "peak_memory_mb": 1000.0,
         "startup_seconds": 10.0, "step_cpu_seconds": 3.0},
        {"name": "pc-darts", "step_seconds": 0.5, "images_per_second": 256.0, "peak_memory_mb": 300.0,
         "startup_seconds": 11.0, "step_cpu_seconds": 0.7, "flops": 2.5e9, "matmul_fraction": 0.125},
        {"name": "broken", "step_seconds": None, "images_per_second": None, "peak_memory_mb": None,
         "startup_seconds": None, "error": "exit code 1: boom"},
    ]
    table = bench.format_table(results)
    assert "| pc-darts | 0.500 | 256.0 | 4.00x | 300 | 0.30x | 11.0 | 0.700 | 2.50 | 12.5% |" in table
    assert "| nni-stock | 2.000 | 64.0 | 1.00x | 1000 | 1.00x | 10.0 | 3.000 | - | - |" in table
    assert "| broken | failed: exit code 1: boom |" in table


def test_parse_preset_reads_overrides_as_python_literals():
    bench = _load_script()
    assert bench.parse_preset("pc-darts") == ("pc-darts", {})
    assert bench.parse_preset(" first-order:order=2 ") == ("first-order", {"order": 2})
    assert bench.parse_preset("pc-darts:order=2:edge_normalization=False:partial_channels=8") == (
        "pc-darts", {"order": 2, "edge_normalization": False, "partial_channels": 8})
    assert bench.parse_preset("gdas:tau=(10.0, 0.1):mode=hard") == ("gdas", {"tau": (10.0, 0.1), "mode": "hard"})
    for bad in ("pc-darts:order", ":order=2", "pc-darts:order=1:order=2", "pc-darts:2x=1"):
        with pytest.raises(ValueError):
            bench.parse_preset(bad)


def test_precision_dtype_and_matmul_rate():
    import torch

    bench = _load("_common")
    assert bench.precision_dtype("bf16-mixed") is torch.bfloat16 and bench.precision_dtype("32-true") is torch.float32
    assert bench.precision_dtype("16-mixed") is torch.float16 and bench.precision_dtype("64-true") is torch.float64
    assert bench.matmul_flops_per_second(32, torch.float32, "cpu", repeats=2) > 0


def test_unknown_preset_is_one_line_and_exit_2(capsys):
    bench = _load_script()
    assert bench.main(["--presets", "nni-stock,no-such-preset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-preset" in err[0]


@pytest.mark.e2e
def test_retrain_step_reports_flops_and_fraction_in_bf16(tmp_path):
    out = tmp_path / "retrain.json"
    proc = subprocess.run([sys.executable, str(RETRAIN), "--width", "4", "--cells", "3", "--batch", "2",
                           "--image-size", "8", *TIMING, "--precision", "bf16-mixed", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert (r["arch"], r["width"], r["cells"], r["batch"], r["precision"], r["compile"]) == (
        "darts-v2", 4, 3, 2, "bf16-mixed", False)
    assert r["step_seconds"] > 0 and r["images_per_second"] == pytest.approx(2 / r["step_seconds"])
    assert r["flops"] > 0 and r["peak_memory_mb"] > 0
    assert r["warmup_steps"] == 2 and len(r["step_times_s"]) == 5 and r["steady_steps"] == 3
    assert r["matmul_fraction"] == pytest.approx(r["flops"] / r["step_seconds"] / r["matmul_flops_per_second"])
    assert "GFLOP/step" in proc.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_gpu_script_cpu_rehearsal(tmp_path):
    env = {**os.environ, "BENCH_DEVICE": "cpu", "BENCH_TINY": "1", "BATCHES": "2", "OUT_DIR": str(tmp_path),
           "PYTHON": sys.executable, "BUDGET_S": "850"}
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh")], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    search = json.loads((tmp_path / "search_b2_bf16-mixed.json").read_text())
    assert [r["name"] for r in search["results"]] == ["nni-stock", "first-order"]
    retrain = [json.loads((tmp_path / f"retrain_b2_{p}.json").read_text()) for p in ("fp32", "bf16-mixed")]
    assert [r["precision"] for r in retrain] == ["32-true", "bf16-mixed"]
    assert all(r["flops"] > 0 for r in retrain)


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--steps", "2"], ["--warmup", "3", "--max-warmup", "2"],
                                  ["--tolerance", "0"], ["--threads", "0"], ["--strategy-kwargs", "[1]"],
                                  ["--device", "tpu"], ["--precision", "fp8"], ["--presets", "pc-darts:order"],
                                  ["--matmul-size", "0"]])
def test_bad_arguments_exit_with_code_2(argv):
    bench = _load_script()
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2


@pytest.mark.e2e
def test_hessian_eigenvalue_benchmark_reports_cost(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "hessian_eigenvalue.py"
    out = tmp_path / "hessian.json"
    proc = subprocess.run([sys.executable, str(script), "--width", "4", "--cells", "3", "--batch", "2",
                           "--image-size", "8", "--threads", "1", "--hessian-batch-size", "1", "--checkpointing",
                           "cells", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["seconds"] > 0 and 1 <= r["hessian_vector_products"] <= 20 and r["peak_rss_mb"] > 0
    assert isinstance(r["eigenvalue"], float) and r["threads"] == 1
    assert r["hessian_batch_size"] == 1 and r["checkpointing"] == "cells"


def test_precision_agreement_counts_differing_edges_per_node(darts_v2_arch):
    bench = _load("precision_agreement")
    a = darts_v2_arch  # normal node 2: (0, sep_conv_3x3), (1, sep_conv_3x3); node 3 the same; reduce node 2 max pools
    swapped = {**a, "normal/op_4_0": "skip_connect", "normal/input_4_0": [0], "normal/op_4_1": "sep_conv_3x3",
               "normal/input_4_1": [1]}
    assert bench.edge_difference(a, swapped) == 0  # the same two edges of node 4, listed in the other order
    other = {**a, "normal/op_2_1": "dil_conv_3x3", "reduce/input_2_0": [1]}
    assert bench.edge_difference(a, other) == 2
    runs = [{"precision": p, "seed": s, "arch": arch} for p, s, arch in
            [("32-true", 0, a), ("32-true", 1, other), ("bf16-mixed", 0, swapped), ("bf16-mixed", 1, other)]]
    comparison = bench.compare(runs, "32-true")
    assert comparison["across_precision"] == {"bf16-mixed": {0: 0, 1: 0}}
    assert comparison["across_seeds"] == {"0-1": 2}


@pytest.mark.e2e
def test_precision_agreement_runs_the_searches_and_reports(tmp_path):
    out = tmp_path / "report.json"
    tiny = ["dataset.image_size=8", "dataset.max_samples=64", "search.width=4", "search.cells=3", "search.epochs=1",
            "search.batch_size=16"]
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "precision_agreement.py"), "--seeds", "0", "1",
                           "--precisions", "32-true", "bf16-mixed", "--jobs", "2", "--out", str(tmp_path / "runs"),
                           "--json", str(out), "--set", *tiny], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert sorted((r["precision"], r["seed"]) for r in report["runs"]) == [
        ("32-true", 0), ("32-true", 1), ("bf16-mixed", 0), ("bf16-mixed", 1)]
    assert all(0 <= r["train_acc"] <= 1 and r["genotype"].startswith("Genotype(") for r in report["runs"])
    differing = report["comparison"]["across_precision"]["bf16-mixed"]
    assert set(differing) == {"0", "1"} and all(0 <= n <= 16 for n in differing.values())
    assert "edges differing" in proc.stdout


def test_flop_totals_without_module_tracking_match_torch_counter():
    """The step benchmarks count FLOPs with FlopCounterMode minus its module tracker (which kept SDARTS-ADV's attack
    graphs alive); the totals must stay torch's."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    common = _load("_common")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(288, 4))
    x = torch.randn(2, 3, 8, 8)
    totals = []
    for tracked in (True, False):
        counter = FlopCounterMode(display=False)
        if not tracked:
            counter.mod_tracker = common.GlobalOnly()
        with counter:
            net(x).sum().backward()
        totals.append(counter.get_total_flops())
    assert totals[0] == totals[1] > 0


@pytest.mark.e2e
def test_pareto_benchmark_smoke(tmp_path):
    """benchmarks/pareto.py at tiny size: the unconstrained search, one cost target, one random cell each."""
    pareto = _load("pareto")
    tiny = ["dataset.image_size=8", "dataset.max_samples=64", "search.width=4", "search.cells=3", "search.epochs=1",
            "search.batch_size=16", "retrain.width=4", "retrain.cells=3", "retrain.epochs=1", "retrain.batch_size=16"]
    out = tmp_path / "pareto"
    result = pareto.run_pareto(pareto.parse_args(["--out", str(out), "--targets", "0.6", "--random", "1",
                                                  "--pool", "8", "--threads", "1", "--set", *tiny]))
    kinds = [row["kind"] for row in result["rows"]]
    assert kinds == ["unconstrained", "cost", "random", "random"]
    cost = result["rows"][1]
    assert cost["macs"] <= cost["target"] and all(0.0 <= row["test_accuracy"] <= 1.0 for row in result["rows"])
    assert json.loads((out / "pareto.json").read_text())["rows"] == result["rows"]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
