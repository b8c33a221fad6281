"""Factories for NNI's traced Lightning ``Trainer`` and ``Lightning`` evaluator around our module.

They accept the NNI tutorial's ``gpus=N`` (mapped to ``accelerator``/``devices`` with a deprecation warning)
and split one flat keyword list between :class:`DartsClassificationModule` and the ``Trainer``, the way NNI's
``Classification`` evaluator does.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

from ._compat import import_nni_quietly, resolve_gpus
from .training_module import DartsClassificationModule

with import_nni_quietly():
    from nni.nas.evaluator.pytorch import Lightning, Trainer

__all__ = ["darts_trainer", "darts_evaluator"]

_MODULE_ARGUMENTS = frozenset(inspect.signature(DartsClassificationModule).parameters)


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
    fit_kwargs: Optional[dict] = None,
    **kwargs: Any,
) -> Lightning:
    """An NNI ``Lightning`` evaluator training with :class:`DartsClassificationModule`.

    Keyword arguments named like the module's (``learning_rate``, ``auxiliary_loss_weight``, ``max_epochs``,
    ...) configure the module; the rest go to the ``Trainer`` (``max_epochs`` goes to both, so the cosine schedule
    and the drop-path ramp span the whole run). Usable with any NNI strategy, one-shot or multi-trial, and
    serialisable with ``nni.dump``.

    Example::

        train_loader, val_loader = search_dataloaders(digits(train=True), batch_size=64)
        evaluator = darts_evaluator(train_loader, val_loader, max_epochs=50, learning_rate=0.025)
    """
    module_kwargs = {k: v for k, v in kwargs.items() if k in _MODULE_ARGUMENTS}
    trainer_kwargs = {k: v for k, v in kwargs.items() if k not in _MODULE_ARGUMENTS or k == "max_epochs"}
    module = DartsClassificationModule(**module_kwargs)
    return Lightning(
        module,
        darts_trainer(**trainer_kwargs),
        train_dataloaders=train_dataloaders,
        val_dataloaders=val_dataloaders,
        datamodule=datamodule,
        fit_kwargs=fit_kwargs,
    )
