"""search --seeds: one search per seed, --resume continues the unfinished ones, the cell chosen without the test split."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest

from nni_darts_ext import recipe_data
from nni_darts_ext.arch import NUM_EDGES, edge_difference, load_arch
from nni_darts_ext.cli import main
from nni_darts_ext.errors import RunInterrupted
from nni_darts_ext.pipeline import search as search_module
from nni_darts_ext.pipeline import seeds as seeds_module
from nni_darts_ext.pipeline.options import RunOptions
from nni_darts_ext.pipeline.seeds import run_seed_searches
from nni_darts_ext.recipes import load_recipe

# Tiny everything (CONTRIBUTING.md); a quarter of the 40 training digits held out for the selection retrain.
TINY = ["dataset.image_size=8", "dataset.max_samples=40", "search.width=4", "search.cells=3", "search.batch_size=8",
        "search.epochs=1", "retrain.width=4", "retrain.cells=3", "retrain.batch_size=8", "retrain.epochs=1",
        "select.epochs=1", "select.held_out_fraction=0.25"]


def _poison_the_test_split(monkeypatch):
    """Building the test split of any recipe fails from here on: a run that reads test labels cannot finish."""
    real = recipe_data.get_dataset

    def guarded(name, *, train, **kwargs):
        if not train:
            raise AssertionError("the test split was built")
        return real(name, train=train, **kwargs)

    monkeypatch.setattr(recipe_data, "get_dataset", guarded)


@pytest.mark.e2e
def test_the_search_records_the_supernets_final_validation_accuracy(tmp_path, monkeypatch):
    """``last-val`` scores: the supernet's accuracy on the validation half, counted here by hand after the search."""
    import torch

    seen = {}
    real = search_module._supernet_val_accuracy

    def counted_by_hand(trainer, oneshot, loader):
        value = real(trainer, oneshot, loader)
        module = oneshot.training_module
        module.eval()
        correct = total = 0
        with torch.no_grad():  # the demo recipe's first-order preset mixes with a plain softmax: no sampling
            for x, y in loader:
                correct += int((module(x).argmax(dim=1) == y).sum())
                total += len(y)
        seen.update(recorded=value, by_hand=correct / total, total=total)
        return value

    monkeypatch.setattr(search_module, "_supernet_val_accuracy", counted_by_hand)
    summary = search_module.run_search(load_recipe("demo", TINY), RunOptions(out=tmp_path / "s", accelerator="cpu"))
    assert seen["total"] == 20  # the validation half of the 40 training digits
    assert summary["final_val_accuracy"] == seen["recorded"] == pytest.approx(seen["by_hand"], abs=1e-6)
    assert summary["epochs"] == 1 and "supernet" in summary["final_val_note"]


def _copy_searches(source, target, seeds):
    target.mkdir()
    shutil.copy(source / "config.yaml", target / "config.yaml")
    for seed in seeds:
        shutil.copytree(source / f"seed-{seed}", target / f"seed-{seed}")


@pytest.mark.e2e
def test_resume_runs_only_unfinished_seeds_and_selection_never_reads_the_test_split(tmp_path, monkeypatch):
    recipe = load_recipe("demo", [*TINY, "search.seeds=[0, 1]"])
    options = RunOptions(out=tmp_path / "s", accelerator="cpu")
    out = tmp_path / "s"
    calls = []
    real_search = seeds_module.run_search

    def search_stopping_at_seed_1_once(r, o, **kwargs):
        calls.append((r.seed, o.resume, o.out))
        if r.seed == 1 and len(calls) == 2:
            raise RunInterrupted("stopped for the test")
        return real_search(r, o, **kwargs)

    monkeypatch.setattr(seeds_module, "run_search", search_stopping_at_seed_1_once)
    with monkeypatch.context() as poisoned:
        _poison_the_test_split(poisoned)
        with pytest.raises(RunInterrupted):
            run_seed_searches(recipe, options)
        assert (out / "seed-0" / "summary.json").is_file() and not (out / "seeds.json").exists()
        calls.clear()
        summary = run_seed_searches(recipe, dataclasses.replace(options, resume=True))
    assert [(seed, resume) for seed, resume, _ in calls] == [(1, False)]  # seed 0 had finished
    assert calls[0][2] == out / "seed-1"

    assert json.loads((out / "seeds.json").read_text()) == summary
    assert summary["seeds"] == [0, 1] and summary["select"] == "val"
    for run in summary["runs"]:
        seed = run["seed"]
        searched = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert searched["seed"] == seed and run["genotype"] == searched["genotype"]
        alone = load_recipe(str(out / f"seed-{seed}" / "config.yaml"))  # a complete run of its own
        assert alone.seed == seed and alone.search.seeds is None
        selected = json.loads((out / "select" / f"seed-{seed}" / "summary.json").read_text())
        assert "test_accuracy" not in selected and selected["validation"] == "held-out 25% of the training split"
        assert run["score"] == selected["final_val_accuracy"] == selected["validation_curve"][-1]["val_acc"]
        assert selected["epochs"] == 1 and selected["seed"] == recipe.seed
    scores = {run["seed"]: run["score"] for run in summary["runs"]}
    chosen = 0 if scores[0] >= scores[1] else 1  # the first seed among equal scores
    assert summary["chosen_seed"] == chosen and summary["chosen_score"] == scores[chosen]
    assert load_arch(out / "arch.json") == load_arch(out / f"seed-{chosen}" / "arch.json")
    assert (out / "genotype.txt").read_text().strip() == summary["runs"][chosen]["genotype"]
    assert (out / "cells.png").read_bytes()[:4] == b"\x89PNG"
    differ = edge_difference(load_arch(out / "seed-0" / "arch.json"), load_arch(out / "seed-1" / "arch.json"))
    assert summary["agreement"] == [{"seeds": [0, 1], "edges_agreeing": NUM_EDGES - differ}]

    # The same searches chosen from again with the test split readable: the same scores, the same choice.
    _copy_searches(out, tmp_path / "again", (0, 1))
    calls.clear()
    again = run_seed_searches(recipe, RunOptions(out=tmp_path / "again", accelerator="cpu", resume=True))
    assert calls == []  # both searches were finished
    assert [r["score"] for r in again["runs"]] == [r["score"] for r in summary["runs"]]
    assert again["chosen_seed"] == summary["chosen_seed"]

    # last-val: each search's own final validation accuracy, no retrain
    _copy_searches(out, tmp_path / "last", (0, 1))
    last = run_seed_searches(load_recipe("demo", [*TINY, "search.seeds=[0, 1]", "search.select=last-val"]),
                             RunOptions(out=tmp_path / "last", accelerator="cpu", resume=True))
    finals = {seed: json.loads((out / f"seed-{seed}" / "summary.json").read_text())["final_val_accuracy"]
              for seed in (0, 1)}
    assert {run["seed"]: run["score"] for run in last["runs"]} == finals
    assert all(0.0 <= value <= 1.0 for value in finals.values())
    assert last["chosen_seed"] == (0 if finals[0] >= finals[1] else 1)
    assert not (tmp_path / "last" / "select").exists()


@pytest.mark.e2e
def test_cli_seeds_side_by_side(tmp_path):
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "nni_darts_ext", "search", "--recipe", "demo", "--seeds", "0,1", "--parallel", "2",
           "--set", *TINY, "search.select=last-val", "--out", str(out), "--accelerator", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "seeds.json").read_text())
    for seed in (0, 1):
        searched = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert searched["seed"] == seed and searched["torch_threads"] == 1  # one thread per process on a CPU
        assert "search epoch 1/1" in (out / "logs" / f"seed-{seed}.log").read_text()
    assert (out / "arch.json").is_file() and f"chose seed {summary['chosen_seed']} by last-val" in proc.stdout


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "0,1,1"], "--seeds 0,1,1: seed 1 is given twice"),
    (["--seeds", "0,x"], "--seeds 0,x: expected seeds >= 0 separated by commas"),
    (["--seeds", "1.5"], "--seeds 1.5: expected seeds >= 0"),
    (["--seeds", "0,1", "--parallel", "0"], "--parallel must be >= 1, got 0"),
    (["--parallel", "2"], "--parallel: runs several searches side by side; give --seeds"),
    (["--seeds", "0,1", "--set", "search.select=best"], "search.select: must be one of 'val', 'last-val'"),
])
def test_bad_multi_seed_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, words):
    out = tmp_path / "s"
    assert main(["search", *argv, "--out", str(out), "--accelerator", "cpu"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not out.exists()


def test_a_used_folder_is_refused_without_resume(tmp_path, capsys):
    out = tmp_path / "s"
    (out / "seed-0").mkdir(parents=True)
    assert main(["search", "--seeds", "0,1", "--out", str(out), "--accelerator", "cpu"]) == 2
    assert "already holds a multi-seed search (seed-0); pass --resume" in capsys.readouterr().err
    assert main(["search", "--seeds", "0,1", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "holds no multi-seed search to continue" in capsys.readouterr().err
