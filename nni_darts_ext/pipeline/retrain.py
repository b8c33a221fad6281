"""``nni-darts retrain``: train the assembled fixed net from scratch, validating every epoch, then test it.

Example::

    summary = run_retrain(load_recipe("demo"), "runs/search/arch.json", RunOptions(out="runs/retrain"))
    summary["test_accuracy"], summary["validation_curve"]
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..arch import build_model, count_parameters, save_arch
from ..checkpoint import allow_checkpoint_globals
from ..io import atomic_torch_save, atomic_write_json
from ..nni_trial import report_final_result
from ..recipe_data import RecipeData
from ..recipes import Recipe
from .assemble import TEST_VALIDATION_NOTE, VALIDATION_ON_TEST, assemble_retrain, write_dataset_info
from .budget import COST_NOTE, net_costs, timing_device
from .options import RunOptions
from .run_folder import ARCH_FILE, MODEL_FILE, SUMMARY_FILE, write_config
from .runtime import (
    check_interrupted,
    device_name,
    explained_out_of_memory,
    holding_run_lock,
    interruptible,
    quiet_nni,
    run_facts,
)

__all__ = ["measure_test", "run_retrain"]

_logger = logging.getLogger("nni_darts_ext.pipeline")


def measure_test(trainer: Any, module: Any, loader: Any) -> dict[str, float]:
    """``trainer.test`` as the summary's ``test_accuracy`` and ``test_loss``.

    Example::

        measure_test(trainer, module, test_loader)   # {'test_accuracy': 0.98, 'test_loss': 0.07}
    """
    results = trainer.test(module, dataloaders=loader, verbose=False)
    metrics = results[0] if results else {}
    return {"test_accuracy": round(float(metrics["test_acc"]), 6), "test_loss": round(float(metrics["test_loss"]), 6)}


def run_retrain(recipe: Recipe, arch: Any, options: RunOptions, *, data: RecipeData | None = None,
                held_out: float | None = None) -> dict[str, Any]:
    """Train the fixed net of ``arch`` from scratch with the recipe's retrain section, then test it.

    The run validates every epoch (:func:`~nni_darts_ext.pipeline.assemble.assemble_retrain`): with
    ``options.nni`` on a held-out part of the training split, else on the test set, which the logs and the
    summary say (``validation``, ``validation_note``). Writes ``DIR/model.pt`` (the net's state dict),
    ``arch.json``, ``config.yaml``, ``summary.json`` (with the per-epoch ``validation_curve``), checkpoints and
    TensorBoard logs (``DIR/tensorboard/retrain``). ``held_out``: validate on this fraction of the training split
    held out, and never build or test on the test split (the summary has no ``test_accuracy`` then).

    Example::

        summary = run_retrain(load_recipe("demo"), "runs/search/arch.json", RunOptions(out="runs/retrain"))
        summary["test_accuracy"]
    """
    built = assemble_retrain(recipe, arch, options, data=data, held_out=held_out)
    with holding_run_lock(built.out, options):
        return _retrain(built, built.recipe, options)


def _retrain(built: Any, recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    out, trainer, module, ckpt = built.out, built.trainer, built.module, built.resume_from
    r = recipe.retrain
    _logger.info("retrain: global batch %d = %d per device x %d process(es); learning rate %g for the global batch",
                 r.batch_size, built.train_loader.batch_size, built.world_size, r.learning_rate)
    _logger.info("retrain: validating every epoch on the %s", built.validation)

    if built.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, recipe, "retrain")
        write_dataset_info(out, built.info)
        save_arch(built.arch, out / ARCH_FILE)
    with quiet_nni(), allow_checkpoint_globals(), interruptible(trainer, "retrain", out), \
            explained_out_of_memory("retrain", "retrain", r.batch_size, out):
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=built.train_loader, val_dataloaders=built.val_loader,
                    ckpt_path=str(ckpt) if ckpt else None)
        check_interrupted(trainer, "retrain", out)
        seconds = time.perf_counter() - start
        if trainer.is_global_zero:
            atomic_torch_save(built.model.state_dict(), out / MODEL_FILE)
        tested = {} if built.test_loader is None else measure_test(trainer, module, built.test_loader)
        if options.nni and tested:
            report_final_result(tested["test_accuracy"])
    curve = built.epoch_log.curve
    summary = {
        "command": "retrain",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        **tested,
        # macs, params, latency_ms of the net as deployed (the auxiliary head only trains).
        **net_costs(build_model(built.arch, width=r.width, num_cells=r.cells, image_size=built.info.image_size,
                                num_classes=built.info.num_classes, in_channels=built.info.in_channels,
                                stem=built.stem),
                    built.info.image_size, batch_size=built.train_loader.batch_size,
                    device=timing_device(built.accelerator), in_channels=built.info.in_channels),
        "cost_note": COST_NOTE.format(batch=built.train_loader.batch_size),
        "trained_params": count_parameters(built.model),
        "retrain_seconds": round(seconds, 2),
        "epochs": trainer.current_epoch,
        "resumed_from": str(ckpt) if ckpt else None,
        "arch": ARCH_FILE,
        "arch_source": built.arch_name,
        "weights": MODEL_FILE,
        "nni_trial": options.nni,
        "world_size": trainer.world_size,
        "global_batch_size": r.batch_size,
        "per_device_batch_size": built.train_loader.batch_size,  # what the loaders really use
        "sync_batchnorm": options.sync_batchnorm,
        "validation": built.validation,
        "validation_note": TEST_VALIDATION_NOTE if built.validation == VALIDATION_ON_TEST else None,
        "final_val_accuracy": curve[-1].get("val_acc") if curve else None,
        "validation_curve": curve,
        "device": device_name(trainer),
        "precision": str(trainer.precision),
        **run_facts(recipe),
        "batch_size": r.batch_size,
        **(built.batch_facts or {}),
        "stem": built.stem,
        **built.info.summary(),
    }
    if trainer.is_global_zero:
        atomic_write_json(out / SUMMARY_FILE, summary)
    return summary
