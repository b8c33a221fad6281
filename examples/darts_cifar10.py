#!/usr/bin/env python
"""NNI's DARTS tutorial ("Searching in DARTS search space"), written with nni_darts_ext.

The tutorial's flow, step by step, with this package's tested parts in place of its inline code:

1. data: the search splits the training set in two halves (weights / architecture), ``search_dataloaders``;
2. search: NNI's DARTS space + ``darts_evaluator`` (SGD + cosine) + ``darts_strategy`` (first-order DARTS,
   gradient clipping 5) run by ``NasExperiment``;
3. export the best architecture (``normalize_arch``, ``save_arch``) and plot its cells (``plot_cells``);
4. retrain it from scratch with the paper's tricks: auxiliary head (weight 0.4), linear drop-path ramp (0.2),
   Cutout (16), gradient clipping (5), cosine learning rate (``build_model`` + ``darts_evaluator(recipe)``);
5. test it.

Every number comes from a recipe (``nni-darts`` recipes: ``paper`` for CIFAR-10, ``demo`` for digits), changed
with ``--set KEY=VALUE``. Outputs go to ``--out``: ``arch.json``, ``cells.png``, ``result.json``, NNI's
experiment folder and Lightning's logs.

Usage::

    python examples/darts_cifar10.py --data-dir data                   # the paper on CIFAR-10: GPU days
    python examples/darts_cifar10.py --dataset digits                  # offline, minutes on a CPU
    python examples/darts_cifar10.py --dataset digits --fast-dev-run   # one batch per stage, a smoke test
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

_DEFAULT_RECIPES = {"cifar10": "paper", "digits": "demo"}

_logger = logging.getLogger("darts_cifar10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(_DEFAULT_RECIPES), default="cifar10",
                        help="cifar10 (needs --data-dir, or --download) or digits (offline)")
    parser.add_argument("--recipe", default=None,
                        help="recipe name or YAML path (default: paper for cifar10, demo for digits)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, as nni-darts: --set retrain.epochs=10 seed=1")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py")
    parser.add_argument("--out", default="runs/darts_cifar10", help="output folder (default: %(default)s)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    parser.add_argument("--devices", default="auto", help="Lightning devices (default: %(default)s)")
    parser.add_argument("--fast-dev-run", action="store_true",
                        help="one batch of every stage (search, retrain, test): checks the wiring in seconds")
    return parser.parse_args(argv)


def _seeded_subset(dataset, size: int, seed: int):
    """``size`` images drawn with ``seed``, in order (as ``dataset.max_samples`` does for nni-darts)."""
    import nni
    import torch
    from torch.utils.data import Subset

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return nni.trace(Subset)(dataset=dataset, indices=sorted(order[:size].tolist()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import pytorch_lightning as pl

    from nni_darts_ext import (
        build_model,
        darts_evaluator,
        darts_strategy,
        get_dataset,
        normalize_arch,
        plot_cells,
        save_arch,
        search_dataloaders,
    )
    from nni_darts_ext._compat import import_nni_quietly
    from nni_darts_ext.io import atomic_write_json
    from nni_darts_ext.recipes import RecipeError, load_recipe

    with import_nni_quietly():
        from nni.nas.experiment import NasExperiment
        from nni.nas.hub.pytorch import DARTS as DartsSpace

    overrides = [f"dataset.name={args.dataset}", *args.overrides]
    if args.data_dir is not None:
        overrides.append(f"dataset.data_dir={args.data_dir}")
    try:
        recipe = load_recipe(args.recipe or _DEFAULT_RECIPES[args.dataset], overrides)
    except RecipeError as exc:
        print(f"darts_cifar10.py: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    d, s, r = recipe.dataset, recipe.search, recipe.retrain
    hardware = {"accelerator": args.accelerator, "devices": args.devices, "fast_dev_run": args.fast_dev_run}
    started = time.monotonic()
    pl.seed_everything(recipe.seed, workers=True)

    # 1. Data: two halves of the training split, one for the weights and one for the architecture (no Cutout).
    search_set = get_dataset(d.name, train=True, root=d.data_dir, image_size=d.image_size)
    if d.max_samples is not None and len(search_set) > d.max_samples:  # the recipe's seeded subset, for smoke runs
        search_set = _seeded_subset(search_set, d.max_samples, recipe.seed)
    search_train, search_val = search_dataloaders(
        search_set, batch_size=s.batch_size, train_fraction=s.train_fraction, seed=recipe.seed,
        num_workers=d.num_workers,
    )

    # 2. Search: the DARTS space, our evaluator (SGD + cosine over the search epochs) and first-order DARTS.
    space = DartsSpace(width=s.width, num_cells=s.cells, dataset="cifar")
    search_evaluator = darts_evaluator(
        search_train, search_val, max_epochs=s.epochs, learning_rate=s.learning_rate, momentum=s.momentum,
        weight_decay=s.weight_decay, eta_min=s.eta_min, default_root_dir=str(out / "search"), **hardware,
    )
    # A recipe value that is null leaves the preset's own (darts_strategy drops None); any value given wins.
    strategy = darts_strategy(
        s.strategy, arc_learning_rate=s.arc_learning_rate, arc_weight_decay=s.arc_weight_decay,
        arc_betas=None if s.arc_betas is None else tuple(s.arc_betas), gradient_clip_val=s.gradient_clip,
        warmup_epochs=s.warmup_epochs, partial_channels=s.partial_channels, order=s.order,
        max_skip_connects=recipe.export.max_skip_connects, **s.strategy_options,
    )
    experiment = NasExperiment(space, search_evaluator, strategy)
    experiment.config.experiment_working_directory = str((out / "nni-experiments").resolve())
    try:
        experiment.run()
    finally:
        experiment.stop()  # saves NNI's checkpoint and marks the experiment stopped in NNI's manifest

    # 3. Export and plot the searched cells.
    arch = normalize_arch(experiment.export_top_models(formatter="dict")[0])
    save_arch(arch, out / "arch.json")
    plot_cells(arch, out / "cells.png")
    _logger.info("searched architecture saved to %s, cells drawn in %s", out / "arch.json", out / "cells.png")

    # 4. Retrain from scratch with the paper's tricks; the recipe's retrain section sets module, trainer, loaders.
    model = build_model(arch, width=r.width, num_cells=r.cells, auxiliary_loss=r.auxiliary_weight > 0,
                        drop_path_prob=r.drop_path_prob, image_size=recipe.image_size)
    retrain = darts_evaluator(recipe, default_root_dir=str(out / "retrain"), **hardware)
    # Not an NNI trial: the search left its model as NNI's current trial parameter (NNI's sequential engine does
    # not reset it), which would make the module log NNI "results" for this retrain.
    retrain.module.report_to_nni = False
    retrain.evaluate(model)

    # 5. Test.
    test_loader = retrain.val_dataloaders  # the test split, as in the paper's retrain
    [metrics] = retrain.trainer.test(retrain.module, test_loader, verbose=False)
    result = {
        "recipe": recipe.name, "dataset": d.name, "fast_dev_run": args.fast_dev_run,
        "test_acc": float(metrics["test_acc"]), "seconds": round(time.monotonic() - started, 1),
        "arch": str(out / "arch.json"),
    }
    atomic_write_json(out / "result.json", result)
    print(f"test accuracy {result['test_acc']:.4f} ({d.name}, recipe {recipe.name}); results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
