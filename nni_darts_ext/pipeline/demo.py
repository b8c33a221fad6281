"""``nni-darts demo``: search, plot and retrain in one folder, optionally with a random-cell baseline.

The stages share one :class:`~nni_darts_ext.recipe_data.RecipeData`: each dataset is built once for the demo.

Example::

    summary = run_demo(load_recipe("demo"), RunOptions(out="runs/demo"), baseline="random")
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..arch import random_arch
from ..errors import UsageError
from ..io import atomic_write_json
from ..recipe_data import RecipeData
from ..recipes import Recipe
from .assemble import check_device, check_search, data_errors, write_dataset_info
from .options import RunOptions
from .retrain import run_retrain
from .run_folder import (
    ALPHAS_PLOT,
    ARCH_FILE,
    CELLS_PLOT,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    MODEL_FILE,
    SUMMARY_FILE,
    refuse_if_in_use,
)
from .runtime import holding_run_lock, run_facts
from .search import run_search

__all__ = ["run_demo"]

_STAGES = ("search", "retrain", "random")


def run_demo(recipe: Recipe, options: RunOptions, *, baseline: str | None = None,
             report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Search, plot and retrain with ``recipe`` in ``DIR/search`` and ``DIR/retrain``; ``baseline='random'`` also
    retrains a uniformly random cell (``arch.random_arch(seed)``) the same way in ``DIR/random``.

    With ``options.resume`` finished stages are kept and an interrupted one continues from its checkpoint.
    ``report(line)`` is called as each stage finishes. Writes ``DIR/summary.json``.

    Example::

        summary = run_demo(load_recipe("demo"), RunOptions(out="runs/demo"), baseline="random")
    """
    if baseline not in (None, "random"):
        raise UsageError(f"--baseline {baseline}: expected 'random'")
    if options.out is None:
        raise UsageError("--out: required")
    out = Path(options.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    refuse_if_in_use(out)
    if not options.resume and any((out / name).exists() for name in (SUMMARY_FILE, *_STAGES)):
        raise UsageError(f"--out {out}: already holds a demo; pass --resume to continue it or choose another folder")
    check_device(options.accelerator, options.devices, search=True)
    check_search(recipe)
    data = RecipeData(recipe)
    info = data_errors(lambda: data.info())
    with holding_run_lock(out, options):
        say = report or (lambda line: None)
        start = time.perf_counter()

        def stage(name: str, run: Callable[[RunOptions], dict[str, Any]]) -> dict[str, Any]:
            folder = out / name
            done = folder / SUMMARY_FILE
            if options.resume and done.is_file():
                return json.loads(done.read_text(encoding="utf-8"))
            resume = options.resume and (folder / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
            return run(dataclasses.replace(options, out=folder, resume=resume, lock=False))  # the demo holds the lock

        searched = stage("search", lambda o: run_search(recipe, o, data=data))
        say(f"search: {searched['search_seconds']:.1f} s, genotype {searched['genotype']}")
        retrained = stage("retrain", lambda o: run_retrain(recipe, out / "search" / ARCH_FILE, o, data=data))
        say(f"retrain: {retrained['retrain_seconds']:.1f} s, test accuracy {retrained['test_accuracy']:.4f}")
        summary: dict[str, Any] = {
            "command": "demo",
            "recipe": recipe.name,
            "dataset": recipe.dataset.name,
            "test_accuracy": retrained["test_accuracy"],
            "params": retrained["params"],
            "search_seconds": searched["search_seconds"],
            "retrain_seconds": retrained["retrain_seconds"],
            "arch": f"search/{ARCH_FILE}",
            "genotype": searched["genotype"],
            "cells_plot": f"search/{CELLS_PLOT}",
            "alphas_plot": f"search/{ALPHAS_PLOT}",
            "weights": f"retrain/{MODEL_FILE}",
            "device": retrained["device"],
            **run_facts(recipe),
            **info.summary(),
        }
        if baseline == "random":
            arch = random_arch(recipe.seed)
            random_run = stage("random", lambda o: run_retrain(recipe, arch, o, data=data))
            summary["random_arch_test_accuracy"] = random_run["test_accuracy"]
            summary["random_arch"] = f"random/{ARCH_FILE}"
            summary["random_arch_params"] = random_run["params"]
            summary["random_retrain_seconds"] = random_run["retrain_seconds"]
            say(f"random cell: {random_run['retrain_seconds']:.1f} s, test accuracy {random_run['test_accuracy']:.4f}")
        summary["total_seconds"] = round(time.perf_counter() - start, 2)
        write_dataset_info(out, info)
        atomic_write_json(out / SUMMARY_FILE, summary)
        return summary
