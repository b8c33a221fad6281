#!/usr/bin/env python
"""The retrain trial of this folder's nnictl experiments, written against nni_darts_ext's Python API.

``nni-darts retrain --nni`` does the same from the command line; this file shows the parts, for trials of
your own:

1. ``apply_trial_overrides``: the tuner's hyperparameters (``nni.get_next_parameter()``) onto the recipe,
   checked like ``--set`` (NNI names ``learning_rate``, ``weight_decay``, ``drop_path_prob``, ``cutout``,
   ``auxiliary_weight``, ``epochs``);
2. ``darts_evaluator(recipe, validation=0.1, callbacks=[NniReportCallback()])``: the recipe's retrain, validating
   on a held-out 10% of the training split (not on the test set: the tuner must not see it) and reporting the
   validation accuracy to NNI after every epoch;
3. ``report_final_result``: the test accuracy, once, as the trial's final result.

Usage (in an nnictl config, with the virtual environment active)::

    trialCommand: python trial_api.py --recipe demo --arch darts-v2 --set retrain.epochs=2
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="demo", help="recipe name or YAML file (default: %(default)s)")
    parser.add_argument("--arch", default="darts-v2", help="arch file or named arch (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import pytorch_lightning as pl

    from nni_darts_ext import build_model, darts_evaluator, load_recipe
    from nni_darts_ext.arch import NAMED_ARCHS, load_arch
    from nni_darts_ext.callbacks import NniReportCallback
    from nni_darts_ext.evaluator import recipe_dataloaders
    from nni_darts_ext.nni_trial import TRIAL_VALIDATION_FRACTION, apply_trial_overrides, report_final_result
    from nni_darts_ext.recipes import RecipeError

    try:
        recipe = apply_trial_overrides(load_recipe(args.recipe, args.overrides))
    except (RecipeError, TypeError, ValueError) as exc:
        print(f"trial_api.py: {exc}", file=sys.stderr)
        return 2
    pl.seed_everything(recipe.seed, workers=True)
    r = recipe.retrain
    arch = NAMED_ARCHS[args.arch] if args.arch in NAMED_ARCHS else load_arch(args.arch)
    model = build_model(arch, width=r.width, num_cells=r.cells, auxiliary_loss=r.auxiliary_weight > 0,
                        drop_path_prob=r.drop_path_prob, image_size=recipe.image_size)
    evaluator = darts_evaluator(recipe, validation=TRIAL_VALIDATION_FRACTION, callbacks=[NniReportCallback()],
                                accelerator=args.accelerator, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    evaluator.evaluate(model)
    *_, test_loader = recipe_dataloaders(recipe, validation=TRIAL_VALIDATION_FRACTION)
    [metrics] = evaluator.trainer.test(evaluator.module, test_loader, verbose=False)
    report_final_result(metrics["test_acc"])
    print(f"test accuracy {metrics['test_acc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
