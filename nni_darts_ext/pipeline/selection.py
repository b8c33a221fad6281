"""Reading the cell off a trained supernet, as the recipe's ``export.selection`` says; ``nni-darts select``.

* ``magnitude`` (default, DARTS): the largest architecture weights (the search module's ``export``).
* ``perturbation`` (DARTS-PT): :func:`~nni_darts_ext.search.perturbation_selection.perturbation_select`, on the
  search's own loaders (the two halves of the training split; the test split is never read), its state saved in
  the run folder after every decision (``selection_state.pt``) so that a rerun continues.

``nni-darts search --set export.selection=perturbation`` selects right after the search; ``nni-darts select
SEARCH_DIR --selection perturbation --out DIR`` selects again from a finished search's last checkpoint, without
searching again, and writes ``arch.json``, ``genotype.txt``, ``cells.png`` and ``selection.json`` (and the
run's ``dataset.json``) to ``DIR``.

Example::

    summary = run_select(Path("runs/s"), "perturbation", RunOptions(out="runs/s-pt"))
    summary["selection"]   # 'selection.json'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..arch import format_genotype, save_arch, to_genotype
from ..checkpoint import allow_checkpoint_globals, read_checkpoint, state_dict_mismatch
from ..constants import PT_TUNE_EPOCHS
from ..errors import RecipeError, SelectionUnsupportedError, UsageError
from ..io import atomic_write_json, atomic_write_text
from ..plotting import plot_cells
from ..recipes import EXPORT_SELECTIONS, Recipe, load_recipe
from ..search.module import DartsSearchModule
from ..search.perturbation_selection import perturbation_select
from .options import RunOptions
from .run_folder import ARCH_FILE, CELLS_PLOT, CHECKPOINT_DIR, CONFIG_FILE, GENOTYPE_FILE, LAST_CHECKPOINT
from .runtime import holding_run_lock

__all__ = ["SELECTION_FILE", "SELECTION_STATE", "check_selection", "run_select", "select_cell", "write_selection"]

_logger = logging.getLogger("nni_darts_ext.pipeline")

SELECTION_FILE = "selection.json"
#: The perturbation selection's state, saved after every decision (removed once the selection is written).
SELECTION_STATE = "selection_state.pt"


def check_selection(recipe: Recipe, strategy: Any, selection: str | None = None) -> str:
    """The selection to use (``selection`` or the recipe's), refused before anything runs when the preset's
    supernet cannot lose an op (a hard mixing, GDAS): RecipeError naming ``export.selection``.

    Example::

        check_selection(load_recipe("gdas", ["export.selection=perturbation"]), strategy)   # RecipeError
    """
    selection = recipe.export.selection if selection is None else selection
    if selection not in EXPORT_SELECTIONS:
        raise UsageError(f"--selection {selection}: expected one of {', '.join(EXPORT_SELECTIONS)}")
    if selection == "perturbation" and strategy.mixing.hard:
        exc = SelectionUnsupportedError(recipe.search.strategy, "its mixing is hard (one sampled op per edge runs), "
                                                                "so removing an op does not change the supernet")
        raise RecipeError(f"export.selection: {exc}")
    return selection


def select_cell(recipe: Recipe, search: DartsSearchModule, train_loader: Any, val_loader: Any, out: Path,
                selection: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(arch, record)`` of the trained supernet ``search`` by ``selection``; the record is ``selection.json``.

    Example::

        arch, record = select_cell(recipe, oneshot, built.train_loader, built.val_loader, out, "perturbation")
    """
    if selection == "magnitude":
        arch = search.export()
        return arch, {"selection": "magnitude", "rule": "largest architecture weights (DARTS genotype)",
                      "edge_weights": search.export_probs()}
    s = recipe.search
    tune_epochs = PT_TUNE_EPOCHS if recipe.export.tune_epochs is None else recipe.export.tune_epochs
    try:
        result = perturbation_select(
            search, train_loader, val_loader, preset=s.strategy, seed=recipe.seed, learning_rate=s.learning_rate,
            eta_min=s.eta_min, momentum=s.momentum, weight_decay=s.weight_decay, gradient_clip=s.gradient_clip,
            tune_epochs=tune_epochs, state_path=out / SELECTION_STATE)
    except SelectionUnsupportedError as exc:
        raise RecipeError(f"export.selection: {exc}") from None
    return result.arch, result.record


def write_selection(out: Path, arch: dict[str, Any], record: dict[str, Any]) -> str:
    """Write ``genotype.txt``, ``cells.png``, ``selection.json`` and, last, ``arch.json`` to ``out``; returns the
    genotype. ``arch.json`` marks a finished run folder, so a failure before it leaves a folder that a rerun of
    ``select`` continues from its selection state (``selection_state.pt``, removed once everything is written)."""
    genotype = format_genotype(to_genotype(arch))
    atomic_write_text(out / GENOTYPE_FILE, genotype + "\n")
    plot_cells(arch, out / CELLS_PLOT)
    atomic_write_json(out / SELECTION_FILE, record)
    save_arch(arch, out / ARCH_FILE)
    (out / SELECTION_STATE).unlink(missing_ok=True)
    return genotype


def _search_folder(search_dir: Path, overrides: Sequence[str]) -> tuple[Recipe, Path]:
    config, checkpoint = search_dir / CONFIG_FILE, search_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not search_dir.is_dir():
        raise UsageError(f"select {search_dir}: no such folder (give a finished search's --out)")
    for path in (config, checkpoint):
        if not path.is_file():
            raise UsageError(f"select {search_dir}: {path.relative_to(search_dir)} is missing (not a search folder)")
    return load_recipe(config, overrides), checkpoint


def run_select(search_dir: Path, selection: str | None, options: RunOptions,
               overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Select again from the finished search in ``search_dir`` (its ``config.yaml`` and last checkpoint) into
    ``options.out``, without searching again. Rerun with the same ``--out`` to continue an interrupted selection.
    ``selection``: ``None`` for the recipe's ``export.selection``; ``overrides``: ``--set`` values for the
    search's recipe (``export.tune_epochs=1``).

    Raises:
        UsageError, RecipeError: not a search folder, a checkpoint of another net, a preset the selection cannot
            run after, an ``--out`` that is the search folder; one line, nothing written.
    """
    from .assemble import assemble_search, write_dataset_info  # imports NNI's experiment machinery

    search_dir = Path(search_dir)
    recipe, checkpoint_path = _search_folder(search_dir, overrides)
    if options.out is None:
        raise UsageError("select: give --out DIR (the search folder itself is not overwritten)")
    out = Path(options.out)
    if out.resolve() == search_dir.resolve():
        raise UsageError(f"--out {out}: is the search folder; select writes to another folder")
    built = assemble_search(recipe, options)
    strategy = built.strategy
    selection = check_selection(recipe, strategy, selection)
    with allow_checkpoint_globals():
        checkpoint = read_checkpoint(checkpoint_path)
    supernet = strategy.mutate_model(built.space)
    evaluator = strategy.mutate_evaluator(built.evaluator)
    if strategy.num_stages() > 1:  # P-DARTS: the supernet of the stage the checkpoint belongs to
        stage = strategy.resume_stage(checkpoint)
        if stage:
            model, evaluator = strategy.build_stage(stage)
            supernet = strategy.mutate_model(model)
            evaluator = strategy.mutate_evaluator(evaluator)
    search: DartsSearchModule = evaluator.module
    search.set_model(supernet)
    problem = state_dict_mismatch(search.state_dict(), checkpoint["state_dict"])
    if problem is not None:
        raise UsageError(f"select {search_dir}: {checkpoint_path.name} does not fit the recipe's net ({problem})")
    search.load_state_dict(checkpoint["state_dict"])
    epochs = recipe.search.epochs
    search.set_progress(epochs - 1, epochs)  # the last epoch's schedules (temperature, DARTS- skip weight)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with holding_run_lock(out, options):
        arch, record = select_cell(recipe, search, built.train_loader, built.val_loader, out, selection)
        record["from"] = {"search": str(search_dir), "checkpoint": str(checkpoint_path)}
        genotype = write_selection(out, arch, record)
        write_dataset_info(out, built.info)
    seconds = round(time.perf_counter() - start, 2)
    _logger.info("select: %s selection of %s in %.1f s -> %s", selection, search_dir, seconds, out / ARCH_FILE)
    return {"command": "select", "selection": SELECTION_FILE, "selection_kind": selection, "arch": ARCH_FILE,
            "genotype": genotype, "selection_seconds": seconds}
