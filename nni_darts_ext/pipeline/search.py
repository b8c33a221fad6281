"""``nni-darts search``: run the assembled DARTS search with NNI's ``NasExperiment`` and write what it found.

Example::

    summary = run_search(load_recipe("demo"), RunOptions(out="runs/search"))
    summary["arch"]   # 'arch.json'
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
import warnings
from typing import Any

from .._compat import import_nni_quietly
from ..arch import (
    build_model,
    format_genotype,
    save_arch,
    to_genotype,
)
from ..checkpoint import allow_checkpoint_globals
from ..distributed import DistributedArchSync, all_gather_max_abs_diff
from ..errors import RunInterrupted
from ..health import HEALTH_FILE, HEALTH_PLOT
from ..io import atomic_write_json, atomic_write_text
from ..plotting import plot_alpha_history, plot_cells
from ..recipe_data import RecipeData
from ..recipes import Recipe
from ..search.mixing import Mixing
from ..space import default_stem
from .assemble import assemble_search, write_dataset_info
from .budget import COST_NOTE, net_costs, timing_device
from .options import RunOptions
from .run_folder import (
    ALPHAS_FILE,
    ALPHAS_PLOT,
    ARCH_FILE,
    CELLS_PLOT,
    GENOTYPE_FILE,
    SUMMARY_FILE,
    write_config,
)
from .runtime import (
    check_interrupted,
    device_name,
    explained_out_of_memory,
    holding_run_lock,
    interruptible,
    quiet_nni,
    run_facts,
)
from .selection import SELECTION_FILE, check_selection, select_cell, write_selection

with import_nni_quietly():
    from nni.nas.experiment import NasExperiment

__all__ = ["FINAL_VAL_NOTE", "run_search"]

_logger = logging.getLogger("nni_darts_ext.pipeline")

# Lightning's note when a module with a validation_step is fit without validation data (configuration_validator.py).
_NO_VALIDATION_LOOP = r".*You defined a `validation_step` but have no `val_dataloader`"
#: What the search summary's ``final_val_accuracy`` is.
FINAL_VAL_NOTE = ("accuracy of the supernet (mixed operations, deterministic weights) on the search's validation "
                  "half after the last epoch, as quark0/darts train_search.py reports valid_acc; not the accuracy of "
                  "the exported cell")


def _supernet_val_accuracy(trainer: Any, oneshot: Any, loader: Any) -> float | None:
    """The supernet's accuracy on the architecture (validation) half once the search is over.

    quark0/darts ``cnn/train_search.py`` ends every epoch with ``infer(valid_queue, model, criterion)``: the
    supernet in eval mode over the whole validation queue. NNI's DARTS runs no validation loop, so this runs one
    ``trainer.validate`` of the search module (the training module's ``validation_step`` logs ``val_acc``), with
    every mixing in its deterministic form (a sampling mixing such as GDAS' would otherwise score a random draw). Under
    DDP every rank runs it on its shard and the metric is reduced across ranks.
    """
    with contextlib.ExitStack() as stack:
        for module in oneshot.modules():
            if isinstance(module, Mixing):
                stack.enter_context(module.deterministic())
        results = trainer.validate(oneshot, dataloaders=loader, verbose=False)
    value = results[0].get("val_acc") if results else None
    return None if value is None else round(float(value), 6)


def run_search(recipe: Recipe, options: RunOptions, *, data: RecipeData | None = None) -> dict[str, Any]:
    """Search the recipe's DARTS space with NNI's ``NasExperiment``; write arch, genotype, plots and summary.

    Writes ``DIR/arch.json`` (NNI form), ``genotype.txt``, ``cells.png``, ``alphas.png`` (+ ``alphas.json``),
    ``config.yaml``, ``summary.json``, TensorBoard logs under ``DIR/tensorboard/search`` and checkpoints under
    ``DIR/checkpoints``; NNI's experiment folder (its log and state) is ``DIR/<experiment id>/``. ``data``: the
    recipe's datasets when another stage already built them.

    Example::

        summary = run_search(load_recipe("demo"), RunOptions(out="runs/search"))
        summary["arch"]   # 'arch.json'
    """
    built = assemble_search(recipe, options, data=data)
    check_selection(recipe, built.strategy)  # a preset perturbation selection cannot run after: before searching
    with holding_run_lock(built.out, options):
        return _search(built, built.recipe, options)


def _search(built: Any, recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    out, trainer, strategy = built.out, built.trainer, built.strategy

    # Everything checked: from here on files are written (by rank 0 only; the other ranks' NNI experiment
    # folders go to a temporary folder, removed at the end).
    rank_zero = built.rank == 0
    if rank_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, recipe, "search")
        if built.budget is not None:
            built.budget.save(out)  # the latency table, before training: a resumed run reads this one back
    experiment = NasExperiment(built.space, built.evaluator, strategy)
    scratch = None if rank_zero else tempfile.TemporaryDirectory(prefix="nni-darts-rank")
    experiment.config.experiment_working_directory = str(out.resolve()) if rank_zero else scratch.name
    start = time.perf_counter()
    with quiet_nni(), allow_checkpoint_globals():
        completed = None
        try:
            with interruptible(trainer, "search", out), warnings.catch_warnings(), \
                    explained_out_of_memory("search step", "search", recipe.search.batch_size, out):
                # The search module validates once, after the search (_supernet_val_accuracy), never during it: that
                # Lightning skips the validation loop of the fit is expected.
                warnings.filterwarnings("ignore", message=_NO_VALIDATION_LOOP)
                completed = experiment.run()
        finally:
            # NNI's run() stops the experiment itself only on KeyboardInterrupt (then it returns None); otherwise
            # stop it here (updates NNI's manifest, closes its log file, unregisters its atexit hook).
            if completed is not None or sys.exc_info()[0] is not None:
                experiment.stop()
        check_interrupted(trainer, "search", out)
        if not completed:
            raise RunInterrupted(f"search stopped early; continue it with --resume --out {out}")
        seconds = time.perf_counter() - start
        arch = experiment.export_top_models(formatter="dict")[0]
        final_val_accuracy = _supernet_val_accuracy(trainer, strategy.oneshot_module, built.val_loader)
    health = built.health
    if health is not None and health.stopped_early:  # DARTS-ES: the architecture of the epoch it goes back to
        arch = health.go_back_arch
        _logger.info("search stopped early at epoch %d (dominant Hessian eigenvalue grew); architecture of epoch %d",
                     health.stop_epoch, health.go_back_epoch)

    oneshot = strategy.oneshot_module  # a property
    selection = recipe.export.selection
    selection_record = None
    if selection != "magnitude":  # every rank selects (the decisions are collective); rank 0 writes
        select_start = time.perf_counter()
        arch, selection_record = select_cell(recipe, oneshot, built.train_loader, built.val_loader, out, selection)
        selection_record["search_seconds"] = round(seconds, 2)
        _logger.info("%s selection took %.1f s (the search %.1f s)", selection,
                     time.perf_counter() - select_start, seconds)
    if isinstance(oneshot, DistributedArchSync):
        ranks = oneshot.distributed_report
    else:  # a preset without DistributedArchSync: measure here (a collective, on every rank)
        arch_params = oneshot.arch_parameters()
        order = {id(p): i for i, p in enumerate(oneshot.parameters())}
        ranks = {"world_size": trainer.world_size,
                 "alpha_max_abs_diff_across_ranks": all_gather_max_abs_diff(
                     sorted(arch_params, key=lambda p: order[id(p)]))}
    if scratch is not None:
        scratch.cleanup()
    if not rank_zero:
        return {"command": "search", "rank": trainer.global_rank, **ranks}
    if ranks["world_size"] > 1:
        _logger.info("search on %d processes: alpha max |difference| across ranks %.3g",
                     ranks["world_size"], ranks["alpha_max_abs_diff_across_ranks"])

    budget = built.budget
    if budget is not None:
        arch = budget.fit(arch, oneshot.mixed_cells())  # export limits: the best cell that fits
    if selection_record is not None:
        genotype = write_selection(out, arch, selection_record)
    else:
        save_arch(arch, out / ARCH_FILE)
        genotype = format_genotype(to_genotype(arch))
        atomic_write_text(out / GENOTYPE_FILE, genotype + "\n")
        plot_cells(arch, out / CELLS_PLOT)
    history = built.alpha_history.history
    if history:
        atomic_write_json(out / ALPHAS_FILE, history)
        plot_alpha_history(history, out / ALPHAS_PLOT)
    r = recipe.retrain
    info = built.info
    write_dataset_info(out, info)
    net = build_model(arch, width=r.width, num_cells=r.cells, auxiliary_loss=False, image_size=info.image_size,
                      num_classes=info.num_classes, in_channels=info.in_channels,
                      stem=r.stem or default_stem(info.image_size))
    summary = {
        "command": "search",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        "strategy": recipe.search.strategy,
        **net_costs(net, info.image_size, batch_size=recipe.search.batch_size,
                    device=timing_device(built.accelerator), in_channels=info.in_channels),
        "params_note": f"the searched cell in the retrain net ({r.cells} cells, width {r.width}, no auxiliary head)",
        "cost_note": COST_NOTE.format(batch=recipe.search.batch_size),
        "budget": budget.report(arch) if budget is not None else {},
        "search_seconds": round(seconds, 2),
        "epochs": trainer.current_epoch,
        "resumed_from": str(built.resume_from) if built.resume_from else None,
        "arch": ARCH_FILE,
        "genotype": genotype,
        "selection": selection,
        "selection_record": SELECTION_FILE if selection_record is not None else None,
        "selection_seconds": selection_record.get("selection_seconds") if selection_record is not None else None,
        "device": device_name(trainer),
        "precision": str(trainer.precision),
        **run_facts(recipe),
        "nni_experiment": experiment.id,
        "world_size": ranks["world_size"],
        "alpha_max_abs_diff_across_ranks": ranks["alpha_max_abs_diff_across_ranks"],
        "final_val_accuracy": final_val_accuracy,
        "final_val_note": FINAL_VAL_NOTE,
        "health": HEALTH_FILE,
        "health_plot": HEALTH_PLOT,
        "early_stop": health.early_stop_summary() if health is not None else None,
        "batch_size": recipe.search.batch_size,
        **(built.batch_facts or {}),
        "stem": built.stem,
        **info.summary(),
    }
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary
