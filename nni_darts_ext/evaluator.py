"""Factories for NNI's traced Lightning ``Trainer`` and ``Lightning`` evaluator around our module.

They accept the NNI tutorial's ``gpus=N`` (mapped to ``accelerator``/``devices`` with a deprecation warning)
and split one flat keyword list between :class:`DartsClassificationModule` and the ``Trainer``, the way NNI's
``Classification`` evaluator does.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

from ._compat import import_nni_quietly, resolve_gpus
from .training_module import DartsClassificationModule

with import_nni_quietly():
    import nni
    from nni.nas.evaluator.pytorch import Lightning, Trainer

__all__ = ["DartsLightning", "darts_trainer", "darts_evaluator", "recipe_dataloaders"]

_MODULE_ARGUMENTS = frozenset(inspect.signature(DartsClassificationModule).parameters)


@nni.trace
class DartsLightning(Lightning):
    """NNI's ``Lightning`` evaluator that can evaluate several models in one process.

    NNI's sequential execution engine (multi-trial NAS with ``execution_engine='sequential'``) calls
    ``evaluate`` of one evaluator object for every trial, but a Lightning ``Trainer`` fits only once: a second
    ``fit`` stops at once with "max_epochs reached" (Lightning-AI/pytorch-lightning#12789), and NNI then fails
    reading a metric that was never logged. From the second ``evaluate`` on, the trainer and the module are
    rebuilt from their ``nni.trace`` records, so each trial trains from scratch, as in its own process.
    One-shot strategies use ``trainer`` and ``module`` directly and are unaffected.

    Example::

        evaluator = DartsLightning(DartsClassificationModule(max_epochs=1), darts_trainer(max_epochs=1),
                                   train_dataloaders=train_loader, val_dataloaders=val_loader)
    """

    def evaluate(self, model: Any) -> Any:
        if getattr(self, "_evaluated", False):
            self.trainer = self.trainer.trace_copy().get()
            self.module = self.module.trace_copy().get()
        self._evaluated = True
        return super().evaluate(model)


def darts_trainer(**trainer_kwargs: Any) -> Trainer:
    """NNI's ``nni.trace``d Lightning ``Trainer``; ``gpus=N`` is mapped to ``accelerator``/``devices``.

    Example::

        trainer = darts_trainer(max_epochs=600, gpus=1, gradient_clip_val=5.0)
    """
    return Trainer(**resolve_gpus(trainer_kwargs))


def darts_evaluator(
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    *,
    datamodule: Any = None,
    fit_kwargs: dict | None = None,
    validation: str | float = "test",
    **kwargs: Any,
) -> Lightning:
    """An NNI ``Lightning`` evaluator training with :class:`DartsClassificationModule`.

    Keyword arguments named like the module's (``learning_rate``, ``auxiliary_loss_weight``, ``max_epochs``,
    ...) configure the module; the rest go to the ``Trainer`` (``max_epochs`` goes to both, so the cosine schedule
    and the drop-path ramp span the whole run). Usable with any NNI strategy, one-shot or multi-trial, and
    serialisable with ``nni.dump``.

    **From a recipe**: the first argument may instead be a :class:`~nni_darts_ext.recipes.Recipe` or a recipe
    name / YAML path (loaded with :func:`~nni_darts_ext.recipes.load_recipe`). Its ``retrain`` section sets the
    module (``learning_rate``, ``momentum``, ``weight_decay``, ``eta_min``, ``auxiliary_weight``,
    ``drop_path_prob``, ``epochs``) and the trainer (``max_epochs=epochs``, ``gradient_clip_val=gradient_clip``),
    and its ``dataset`` section the loaders (:func:`recipe_dataloaders`: NNI's traced ``DataLoader`` over
    :func:`~nni_darts_ext.data.get_dataset`, training split with ``retrain.cutout``, batches of
    ``retrain.batch_size``, ``dataset.num_workers`` workers). ``validation`` picks the validation loader:
    ``"test"`` (default) is the test split, as the paper's retrain (quark0/darts ``cnn/train.py``) and NNI's
    tutorial do; a float in (0, 1) holds that fraction of the training split out instead (split with
    ``recipe.seed``, no Cutout on it), for tuning without looking at the test set. Keyword arguments still
    apply on top (``limit_train_batches=2``, ``accelerator="cpu"``, even ``learning_rate=...``).

    Raises:
        RecipeError: an unknown recipe name or a bad recipe file.
        TypeError: a recipe together with ``val_dataloaders`` or ``datamodule``; ``validation`` without a recipe.
        ValueError: ``validation`` neither ``"test"`` nor a fraction in (0, 1).

    Example::

        train_loader, val_loader = search_dataloaders(digits(train=True), batch_size=64)
        evaluator = darts_evaluator(train_loader, val_loader, max_epochs=50, learning_rate=0.025)
        evaluator = darts_evaluator("paper", accelerator="gpu", devices=1)  # CIFAR-10 in ./data, 600 epochs
        evaluator = darts_evaluator(load_recipe("demo"), validation=0.1)
    """
    recipe = _as_recipe(train_dataloaders)
    if recipe is not None:
        if val_dataloaders is not None or datamodule is not None:
            raise TypeError("darts_evaluator(recipe): the recipe builds the loaders; "
                            "do not pass val_dataloaders or datamodule")
        train_dataloaders, val_dataloaders, _ = recipe_dataloaders(recipe, validation)
        kwargs = {**_recipe_arguments(recipe), **kwargs}
    elif not (isinstance(validation, str) and validation == "test"):
        raise TypeError("darts_evaluator: `validation` applies to a recipe only; pass your own val_dataloaders")
    module_kwargs = {k: v for k, v in kwargs.items() if k in _MODULE_ARGUMENTS}
    trainer_kwargs = {k: v for k, v in kwargs.items() if k not in _MODULE_ARGUMENTS or k == "max_epochs"}
    module = DartsClassificationModule(**module_kwargs)
    return DartsLightning(
        module,
        darts_trainer(**trainer_kwargs),
        train_dataloaders=train_dataloaders,
        val_dataloaders=val_dataloaders,
        datamodule=datamodule,
        fit_kwargs=fit_kwargs,
    )


# ------------------------------------------------------------------------------------------- from a recipe


def _as_recipe(first: Any) -> Any:
    """The recipe the first argument of darts_evaluator names or is, or None for a loader (or nothing)."""
    if isinstance(first, (str, os.PathLike)):
        from .recipes import load_recipe

        return load_recipe(first)
    # A Recipe instance means nni_darts_ext.recipes is already imported: no import (and no cycle) needed here.
    recipes = sys.modules.get(f"{__package__}.recipes")
    if recipes is not None and isinstance(first, recipes.Recipe):
        return first
    return None


def _recipe_arguments(recipe: Any) -> dict[str, Any]:
    """Module and trainer keywords of the recipe's retrain section."""
    r = recipe.retrain
    return {
        "learning_rate": r.learning_rate,
        "momentum": r.momentum,
        "weight_decay": r.weight_decay,
        "eta_min": r.eta_min,
        "auxiliary_loss_weight": r.auxiliary_weight,
        "drop_path_prob": r.drop_path_prob,
        "max_epochs": r.epochs,
        "gradient_clip_val": r.gradient_clip,
    }


def recipe_dataloaders(recipe: Any, validation: str | float = "test") -> tuple[Any, Any, Any]:
    """``(train, val, test)`` loaders of a recipe's retrain, as :func:`darts_evaluator` builds them from a recipe.

    NNI's traced ``DataLoader`` over :func:`~nni_darts_ext.data.get_dataset`: the training split with
    ``retrain.cutout`` (shuffled), the test split, and for validation the test split (``validation="test"``) or
    a held-out ``validation`` fraction of the training split (seeded by ``recipe.seed``, without Cutout).
    ``dataset.max_samples``, when set, keeps a seeded random subset of each split first. Built by
    :func:`~nni_darts_ext.recipe_data.retrain_loaders`, as the ``nni-darts retrain`` command builds its loaders
    (which, under DDP, load the per-device share of ``retrain.batch_size``).

    Raises:
        ValueError: ``validation`` neither ``"test"`` nor a fraction in (0, 1).

    Example::

        train_loader, val_loader, test_loader = recipe_dataloaders(load_recipe("demo"), validation=0.1)
    """
    from .recipe_data import RecipeData, retrain_loaders

    return retrain_loaders(RecipeData(recipe), batch_size=recipe.retrain.batch_size, validation=validation)
