"""NNI trial integration for the retrain: hyperparameters in from NNI's tuner, accuracies out to NNI.

When ``nni-darts retrain`` runs as a trial of an nnictl experiment (or with ``--nni``), it

1. asks the tuner for one set of hyperparameters (:func:`trial_overrides`, which calls
   ``nni.get_next_parameter()`` once) and applies them to the recipe like ``--set`` overrides;
2. reports the validation accuracy after every validation epoch
   (:class:`~nni_darts_ext.callbacks.NniReportCallback`, rank 0 only);
3. reports the test accuracy once, as the trial's final result (:func:`report_final_result`).

NNI parameter names (the keys of ``search_space.json``) and the recipe keys they set:

================  ===========================  ===============================================
NNI parameter     recipe key                   accepted values
================  ===========================  ===============================================
learning_rate     retrain.learning_rate        float > 0 (initial SGD learning rate)
weight_decay      retrain.weight_decay         float >= 0
drop_path_prob    retrain.drop_path_prob       float in [0, 1) (final drop-path probability)
cutout            retrain.cutout               int >= 0 (Cutout side in pixels; 0 sets null: no Cutout)
auxiliary_weight  retrain.auxiliary_weight     float >= 0 (auxiliary-head loss weight)
epochs            retrain.epochs               int >= 1 (also the cosine / drop-path horizon)
================  ===========================  ===============================================

Integral floats (``16.0``, what ``quniform`` yields) are accepted for the int parameters.

NNI's ``SupervisedLearningModule`` (the base of :class:`~nni_darts_ext.training_module.DartsClassificationModule`)
already reports ``val_acc`` per epoch and once more at the end of ``fit`` whenever a trial parameter is set.
:class:`NniReportCallback` switches that off for the run it is attached to (``report_to_nni = False``), so NNI
receives exactly one intermediate result per epoch and exactly one final result: the test accuracy.

Example::

    overrides = trial_overrides()                       # {} when not running under NNI
    trainer = darts_trainer(max_epochs=..., callbacks=[NniReportCallback()])
    trainer.fit(module, train_loader, val_loader)
    [result] = trainer.test(module, test_loader)
    report_final_result(result["test_acc"])
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ._compat import import_nni_quietly

with import_nni_quietly():
    import nni

__all__ = [
    "NNI_PARAMETERS",
    "TRIAL_VALIDATION_FRACTION",
    "apply_trial_overrides",
    "is_nni_trial",
    "metric_value",
    "overrides_as_set_args",
    "report_final_result",
    "trial_overrides",
]

_logger = logging.getLogger(__name__)

#: Fraction of the training split a tuned retrain validates on (``recipe_dataloaders(recipe, validation=...)``), so
#: that the tuner never sees the test split. Our choice, not the paper's: the paper's retrain validates on the test set.
TRIAL_VALIDATION_FRACTION = 0.1

# Values of NNI_PLATFORM that do not mean "a training service started this process" (nni/runtime/
# trial_command_channel/__init__.py: unset or "unittest" selects the standalone channel).
_STANDALONE_PLATFORMS = ("", "unittest")


def _positive_float(name: str, value: Any) -> float:
    value = _float(name, value)
    if not value > 0:
        raise ValueError(f"NNI parameter {name!r} must be > 0, got {value!r}")
    return value


def _non_negative_float(name: str, value: Any) -> float:
    value = _float(name, value)
    if not value >= 0:
        raise ValueError(f"NNI parameter {name!r} must be >= 0, got {value!r}")
    return value


def _probability(name: str, value: Any) -> float:
    value = _float(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"NNI parameter {name!r} must be in [0, 1), got {value!r}")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"NNI parameter {name!r} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"NNI parameter {name!r} must be finite, got {value!r}")
    return value


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"NNI parameter {name!r} must be an integer, got {type(value).__name__} ({value!r})")
    if isinstance(value, numbers.Integral):
        value = int(value)
    elif math.isfinite(float(value)) and float(value).is_integer():  # quniform/randint may hand over 16.0
        value = int(value)
    else:
        raise TypeError(f"NNI parameter {name!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"NNI parameter {name!r} must be >= {minimum}, got {value}")
    return value


#: NNI parameter name -> (recipe dotted key, validator). See the module docstring for the table.
NNI_PARAMETERS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "learning_rate": ("retrain.learning_rate", _positive_float),
    "weight_decay": ("retrain.weight_decay", _non_negative_float),
    "drop_path_prob": ("retrain.drop_path_prob", _probability),
    "cutout": ("retrain.cutout", lambda name, value: _int(name, value, 0) or None),  # 0: no Cutout (null)
    "auxiliary_weight": ("retrain.auxiliary_weight", _non_negative_float),
    "epochs": ("retrain.epochs", lambda name, value: _int(name, value, 1)),
}


def is_nni_trial() -> bool:
    """True in an HPO trial: a training service set ``NNI_PLATFORM``, or hyperparameters were received.

    "Received" means ``nni.get_next_parameter()`` returned a dict in this process (also NNI's standalone ``{}``,
    so that ``--nni`` outside NNI logs what it would report). A multi-trial NAS run in this process leaves its
    last model as NNI's current parameter (the sequential engine does not reset it): that is not a dict and
    does not count.

    Example::

        if args.nni or is_nni_trial():
            overrides = trial_overrides()
    """
    platform = os.environ.get("NNI_PLATFORM")
    if platform is not None and platform not in _STANDALONE_PLATFORMS:
        return True
    return isinstance(nni.get_current_parameter(), Mapping)


def trial_overrides(parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The tuner's hyperparameters as validated recipe overrides ``{"retrain.learning_rate": 0.01, ...}``.

    Without ``parameters``, asks NNI: ``nni.get_next_parameter()`` once per process (a second call returns the
    parameters already received, via ``nni.get_current_parameter()``). Outside NNI that is NNI's standalone
    mode (an empty dict and a warning from NNI), which gives no overrides.

    Raises:
        TypeError: the parameters are not a dict, or a value has the wrong type (names the NNI parameter).
        ValueError: an unknown parameter name (lists the known ones), or a value out of range.

    Example::

        >>> trial_overrides({"learning_rate": 0.05, "epochs": 20.0})
        {'retrain.learning_rate': 0.05, 'retrain.epochs': 20}
    """
    if parameters is None:
        parameters = nni.get_current_parameter()
        if parameters is None:
            parameters = nni.get_next_parameter()
        if parameters is None:  # NNI has no more parameters for this trial (the experiment is ending)
            _logger.warning("NNI sent no hyperparameters; training with the recipe as it is")
            return {}
    if not isinstance(parameters, Mapping):
        raise TypeError(f"NNI parameters must be a dict, got {type(parameters).__name__}")
    unknown = sorted(set(parameters) - set(NNI_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown NNI parameter(s) {', '.join(map(repr, unknown))} in the search space; "
            f"known: {', '.join(NNI_PARAMETERS)}"
        )
    overrides = {}
    for name, value in parameters.items():
        key, check = NNI_PARAMETERS[name]
        overrides[key] = check(name, value)
    if overrides:
        _logger.info("NNI hyperparameters: %s", ", ".join(f"{k}={v}" for k, v in overrides.items()))
    return overrides


def apply_trial_overrides(recipe: Any, parameters: Mapping[str, Any] | None = None) -> Any:
    """``recipe`` with the tuner's hyperparameters (:func:`trial_overrides`) applied and validated.

    The overrides go through :func:`~nni_darts_ext.recipes.apply_overrides`, the path of the CLI's ``--set``, so
    the recipe's own checks apply too (e.g. a Cutout longer than the images).

    Raises:
        RecipeError: a bad NNI parameter (unknown name, wrong type, out of range) or an invalid overridden recipe;
            one line naming the NNI parameter and the recipe key (the CLI prints it and exits with code 2).

    Example::

        recipe = apply_trial_overrides(load_recipe("paper"))
    """
    from .recipes import RecipeError, apply_overrides

    try:
        overrides = trial_overrides(parameters)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"NNI parameters: {exc}") from None
    if not overrides:
        return recipe
    try:
        return apply_overrides(recipe, overrides)
    except RecipeError as exc:
        names = {key: name for name, (key, _) in NNI_PARAMETERS.items()}
        at_fault = exc.key or ""
        culprits = [f"{names[key]} -> {key}" for key in overrides
                    if at_fault == key or at_fault.startswith((f"{key}.", f"{key}["))]
        hint = f" (NNI parameter {', '.join(culprits)})" if culprits else " (from NNI's parameters)"
        raise RecipeError(f"{exc}{hint}") from None


def overrides_as_set_args(overrides: Mapping[str, Any]) -> list[str]:
    """``{"retrain.epochs": 20}`` -> ``["retrain.epochs=20"]``, the form of the CLI's ``--set KEY=VALUE``.

    Example::

        >>> overrides_as_set_args({"retrain.learning_rate": 0.05, "retrain.epochs": 20})
        ['retrain.learning_rate=0.05', 'retrain.epochs=20']
    """
    return [f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}" for key, value in overrides.items()]


def metric_value(metrics: Any, key: str) -> float:
    """``metrics[key]`` (or ``metrics`` itself, a number or a one-value tensor) as a finite float.

    Raises:
        TypeError / ValueError: not a number, or not finite; names ``key``.

    Example::

        >>> metric_value({"val_acc": 0.5}, "val_acc")
        0.5
    """
    value = metrics[key] if isinstance(metrics, Mapping) else metrics
    if hasattr(value, "item"):  # a tensor from trainer.callback_metrics
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value):
        raise ValueError(f"metric {key!r} must be finite, got {value!r}")
    return float(value)


def report_final_result(result: Any, key: str = "test_acc") -> bool:
    """Report the trial's final result to NNI (rank 0 only): a number, or ``result[key]`` of a metrics dict.

    Call it once per trial, with the test accuracy (``trainer.test(...)[0]``). Does nothing and returns False
    outside an NNI trial (see :func:`is_nni_trial`) and on ranks other than 0.

    Raises:
        KeyError: ``result`` is a dict without ``key``.
        TypeError / ValueError: the value is not a finite number.

    Example::

        [metrics] = trainer.test(module, test_loader)
        report_final_result(metrics)              # reports metrics["test_acc"]
    """
    value = metric_value(result, key)
    if rank_zero_only.rank != 0 or not is_nni_trial():
        return False
    nni.report_final_result(value)
    _logger.info("Reported the final result to NNI: %s = %.6f", key, value)
    return True

