"""Epoch schedules of the robust DARTS variants, as small pure functions.

Every function maps a 0-based epoch to the value the official code uses during that epoch:

* :func:`darts_minus_skip_weight` -- DARTS-'s auxiliary skip weight, decaying linearly towards 0
  (github:Meituan-AutoML/DARTS- ``src/utils.py`` ``DecayScheduler``).
* :func:`gdas_tau` -- GDAS's Gumbel-softmax temperature, linear from 10 to 0.1
  (github:D-X-Y/AutoDL-Projects ``exps/NAS-Bench-201-algos/GDAS.py``).
* :func:`beta_darts_weight` -- beta-DARTS's regulariser weight ``50 * epoch / 100``
  (github:Sunshine-Ye/Beta-DARTS ``optimizers/darts/architect.py``).
* :func:`sdarts_epsilon` -- SDARTS's perturbation radius, linear from 0.03 to 0.3
  (github:xiangning-chen/SmoothDARTS ``sota/cnn/train_search.py``).
* :func:`pdarts_skip_dropout` -- P-DARTS's skip-connect dropout inside a stage (github:chenxin061/pdarts
  ``train_search.py``).

Example::

    >>> gdas_tau(0, max_epochs=250), round(gdas_tau(249, max_epochs=250), 6)
    (10.0, 0.1)
"""

from __future__ import annotations

import math
from typing import Any

from nni_darts_ext import constants as C
from nni_darts_ext.checks import check_choice, check_float, check_int, check_positive
from nni_darts_ext.errors import ArgumentValueError

__all__ = [
    "beta_darts_weight",
    "darts_minus_skip_weight",
    "gdas_tau",
    "pdarts_skip_dropout",
    "sdarts_epsilon",
]

_DECAYS = ("linear", "cosine")


def _check_epoch(epoch: Any, max_epochs: Any = None) -> None:
    check_int("epoch", epoch, minimum=0)
    if max_epochs is not None:
        check_int("max_epochs", max_epochs, minimum=1)


def _check_interval(low_name: str, low: Any, high_name: str, high: Any, *, positive: bool = False) -> None:
    """``0 <= low <= high`` (``0 < low`` with ``positive``), each named in the error."""
    low_value = check_positive(low_name, low) if positive else check_float(low_name, low, low=0.0)
    if low_value > check_float(high_name, high, low=0.0):
        raise ArgumentValueError(low_name, f"must be <= {high_name}, got {low!r} > {high!r}")


def darts_minus_skip_weight(
    epoch: int,
    *,
    max_epochs: int,
    initial: float = C.DARTS_MINUS_SKIP_BETA,
    start_epoch: int = C.DARTS_MINUS_DECAY_START_EPOCH,
    stop_epoch: int | None = None,
    decay: str = C.DARTS_MINUS_DECAY,
) -> float:
    """Weight of DARTS-'s auxiliary skip connection in ``epoch``.

    ``initial`` before ``start_epoch``; then ``initial * (T - epoch) / (T - start_epoch)`` (linear) or
    ``initial * (1 + cos(pi * epoch / (T - start_epoch))) / 2`` (cosine), ``T = max_epochs``, frozen at its
    ``stop_epoch`` value afterwards (``stop_epoch`` defaults to ``max_epochs``, as in the official scripts).
    It reaches 0 at ``epoch == max_epochs``: the last search epoch (``max_epochs - 1``) still uses
    ``initial / max_epochs``, exactly as the official code.

    Example::

        >>> darts_minus_skip_weight(0, max_epochs=50), darts_minus_skip_weight(49, max_epochs=50)
        (1.0, 0.02)
    """
    _check_epoch(epoch, max_epochs)
    check_choice("decay", decay, _DECAYS)
    check_int("start_epoch", start_epoch, minimum=0, maximum=max_epochs - 1)
    stop = max_epochs if stop_epoch is None else check_int("stop_epoch", stop_epoch, minimum=start_epoch)
    if epoch < start_epoch:
        return float(initial)
    at = min(epoch, stop)
    span = max_epochs - start_epoch
    if decay == "linear":
        return float(initial) * (max_epochs - at) / span
    return float(initial) * (1.0 + math.cos(math.pi * at / span)) / 2.0


def gdas_tau(
    epoch: int,
    *,
    max_epochs: int,
    tau_max: float = C.GDAS_TAU_MAX,
    tau_min: float = C.GDAS_TAU_MIN,
) -> float:
    """GDAS temperature ``tau_max - (tau_max - tau_min) * epoch / (max_epochs - 1)`` (``tau_max`` if one epoch).

    Example::

        >>> gdas_tau(1, max_epochs=3, tau_max=10.0, tau_min=2.0)
        6.0
    """
    _check_epoch(epoch, max_epochs)
    _check_interval("tau_min", tau_min, "tau_max", tau_max, positive=True)
    if max_epochs == 1:
        return float(tau_max)
    at = min(epoch, max_epochs - 1)
    return float(tau_max) - (float(tau_max) - float(tau_min)) * at / (max_epochs - 1)


def beta_darts_weight(
    epoch: int,
    *,
    weight_max: float = C.BETA_DARTS_WEIGHT_MAX,
    horizon: int = C.BETA_DARTS_WEIGHT_HORIZON,
) -> float:
    """beta-DARTS regulariser weight ``weight_max * epoch / horizon`` (official: ``50 * epoch / 100``).

    The official ``horizon`` is the constant 100, whatever the number of search epochs.

    Example::

        >>> beta_darts_weight(10)
        5.0
    """
    _check_epoch(epoch)
    check_int("horizon", horizon, minimum=1)
    check_float("weight_max", weight_max, low=0.0)
    return float(weight_max) * epoch / horizon


def sdarts_epsilon(
    epoch: int,
    *,
    max_epochs: int,
    epsilon_max: float = C.SDARTS_EPSILON_MAX,
    epsilon_min: float = C.SDARTS_EPSILON_MIN,
) -> float:
    """SDARTS perturbation radius ``epsilon_min + (epsilon_max - epsilon_min) * epoch / max_epochs``.

    Example::

        >>> round(sdarts_epsilon(25, max_epochs=50), 6)
        0.165
    """
    _check_epoch(epoch, max_epochs)
    _check_interval("epsilon_min", epsilon_min, "epsilon_max", epsilon_max)
    return (
        float(epsilon_min)
        + (float(epsilon_max) - float(epsilon_min)) * epoch / max_epochs
    )


def pdarts_skip_dropout(
    epoch: int,
    *,
    stage_rate: float,
    stage_epochs: int = C.PDARTS_STAGE_EPOCHS,
    warmup_epochs: int = C.PDARTS_WARMUP_EPOCHS,
    decay: float = C.PDARTS_DROPOUT_DECAY,
) -> float:
    """P-DARTS skip-connect dropout probability in ``epoch`` (counted from the start of the stage).

    During the stage's warm-up (no architecture step): ``rate * (stage_epochs - epoch - 1) / stage_epochs``; after:
    ``rate * exp(-(epoch - warmup_epochs) * decay)``. The official schedule jumps back to ``rate`` when the
    architecture step starts; this is kept as is.

    Example::

        >>> pdarts_skip_dropout(0, stage_rate=0.5, stage_epochs=25), pdarts_skip_dropout(10, stage_rate=0.5)
        (0.48, 0.5)
    """
    _check_epoch(epoch, stage_epochs)
    check_float("stage_rate", stage_rate, low=0.0, high=1.0, high_open=True)
    check_int("warmup_epochs", warmup_epochs, minimum=0, maximum=stage_epochs)
    if epoch < warmup_epochs:
        return float(stage_rate) * (stage_epochs - epoch - 1) / stage_epochs
    return float(stage_rate) * math.exp(-(epoch - warmup_epochs) * decay)


class DartsMinusSkipSchedule:
    """Cell schedule of DARTS-: the auxiliary skip weight of every edge for an epoch (:func:`darts_minus_skip_weight`).

    A :class:`~nni_darts_ext.search.parts.CellSchedule`.

    Example::

        >>> DartsMinusSkipSchedule()(25, 50)
        {'auxiliary_skip_weight': 0.5}
    """

    def __init__(self, *, initial: float = C.DARTS_MINUS_SKIP_BETA, decay: str = C.DARTS_MINUS_DECAY):
        self.initial = check_float("initial", initial, low=0.0)
        self.decay = check_choice("decay", decay, _DECAYS)

    def __call__(self, epoch: int, max_epochs: int) -> dict[str, float]:
        weight = darts_minus_skip_weight(epoch, max_epochs=max_epochs, initial=self.initial, decay=self.decay)
        return {"auxiliary_skip_weight": weight}
