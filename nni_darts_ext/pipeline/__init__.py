"""The search → retrain → evaluate pipeline behind ``nni-darts``, as library functions, one module per command.

Following a recipe from the command line to the trained model:

1. :mod:`.assemble` turns the recipe and :class:`RunOptions` into what a command runs on, once: the device
   check, the run folder, the datasets (:class:`~nni_darts_ext.recipe_data.RecipeData`) and loaders (with the
   per-device batch), the DARTS space and strategy or the fixed net, the module and the trainer.
2. :mod:`.search`, :mod:`.retrain`, :mod:`.evaluate` and :mod:`.demo` run it and write the run folder
   (:mod:`.run_folder` names its files); :mod:`.runtime` handles seeding, Ctrl-C and the summary's facts;
   :mod:`.pretrained` fetches NNI's published weights.
3. :mod:`.seeds` (``search --seeds``) and :mod:`.compare` run many of those runs in the subfolders of one folder
   (:mod:`.run_set`), one after the other or side by side as processes (:mod:`.parallel`).

Each ``run_*`` function checks everything it can *before* it creates the output folder or writes a file, then runs
and returns the summary it wrote to ``DIR/summary.json``. Known bad input raises
:class:`~nni_darts_ext.errors.UsageError` (or ``RecipeError`` / ``ArchError``, both ``ValueError``), which the CLI
turns into one line and exit code 2. An interrupted run (Ctrl-C, Lightning's graceful stop) raises
:class:`~nni_darts_ext.errors.RunInterrupted` after its last checkpoint is on disk; ``resume=True`` continues it
from ``DIR/checkpoints/last.ckpt``.

Names are imported on first use, so ``from nni_darts_ext.pipeline import RunOptions`` does not load torch.

Example::

    recipe = load_recipe("demo", ["search.epochs=1"])
    summary = run_search(recipe, RunOptions(out="runs/s"))
    run_retrain(recipe, "runs/s/arch.json", RunOptions(out="runs/r"))
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule of this package that defines it
_EXPORTS = {
    "RunOptions": "options",
    "run_search": "search",
    "run_retrain": "retrain",
    "run_evaluate": "evaluate",
    "run_demo": "demo",
    "run_seed_searches": "seeds",
    "run_compare": "compare",
    "Assembly": "assemble",
    "assemble_search": "assemble",
    "assemble_retrain": "assemble",
    "assemble_evaluate": "assemble",
    "check_device": "assemble",
    "per_device_batch": "assemble",
    "resolve_arch": "assemble",
    "pretrained_weights_path": "pretrained",
    "fetch_pretrained": "pretrained",
    "PRETRAINED": "pretrained",
    "CHECKPOINT_DIR": "run_folder",
    "LAST_CHECKPOINT": "run_folder",
    "CONFIG_FILE": "run_folder",
    "SUMMARY_FILE": "run_folder",
    "ARCH_FILE": "run_folder",
    "MODEL_FILE": "run_folder",
    "check_out_dir": "run_folder",
}
# Names that have their own home elsewhere, importable from here as before.
_ELSEWHERE = {
    "UsageError": "nni_darts_ext.errors",
    "RunInterrupted": "nni_darts_ext.errors",
    "load_weights": "nni_darts_ext.checkpoint",
    "read_state_dict": "nni_darts_ext.checkpoint",
}

__all__ = [
    "ARCH_FILE",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "LAST_CHECKPOINT",
    "MODEL_FILE",
    "PRETRAINED",
    "SUMMARY_FILE",
    "Assembly",
    "RunInterrupted",
    "RunOptions",
    "UsageError",
    "assemble_evaluate",
    "assemble_retrain",
    "assemble_search",
    "check_device",
    "check_out_dir",
    "fetch_pretrained",
    "load_weights",
    "per_device_batch",
    "pretrained_weights_path",
    "read_state_dict",
    "resolve_arch",
    "run_compare",
    "run_demo",
    "run_evaluate",
    "run_retrain",
    "run_search",
    "run_seed_searches",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    elif name in _ELSEWHERE:
        module = importlib.import_module(_ELSEWHERE[name])
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
