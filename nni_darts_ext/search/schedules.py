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

from nni_darts_ext import constants as C

__all__ = [
    "beta_darts_weight",
    "darts_minus_skip_weight",
    "gdas_tau",
    "pdarts_skip_dropout",
    "sdarts_epsilon",
]

_DECAYS = ("linear", "cosine")


def _check_epoch(epoch: int, max_epochs: int | None = None) -> None:
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    if max_epochs is not None and (
        not isinstance(max_epochs, int)
        or isinstance(max_epochs, bool)
        or max_epochs < 1
    ):
        raise ValueError(f"max_epochs must be an int >= 1, got {max_epochs!r}")


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
    if decay not in _DECAYS:
        raise ValueError(f"decay must be one of {_DECAYS}, got {decay!r}")
    if not 0 <= start_epoch < max_epochs:
        raise ValueError(f"start_epoch must be in [0, max_epochs), got {start_epoch!r}")
    stop = max_epochs if stop_epoch is None else stop_epoch
    if stop < start_epoch:
        raise ValueError(f"stop_epoch must be >= start_epoch, got {stop_epoch!r}")
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
    if not 0 < tau_min <= tau_max:
        raise ValueError(
            f"need 0 < tau_min <= tau_max, got tau_min={tau_min!r}, tau_max={tau_max!r}"
        )
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
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    if weight_max < 0:
        raise ValueError(f"weight_max must be >= 0, got {weight_max!r}")
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
    if not 0 <= epsilon_min <= epsilon_max:
        raise ValueError(
            f"need 0 <= epsilon_min <= epsilon_max, got {epsilon_min!r}, {epsilon_max!r}"
        )
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
    if not 0.0 <= stage_rate < 1.0:
        raise ValueError(f"stage_rate must be in [0, 1), got {stage_rate!r}")
    if not 0 <= warmup_epochs <= stage_epochs:
        raise ValueError(
            f"warmup_epochs must be in [0, stage_epochs], got {warmup_epochs!r}"
        )
    if epoch < warmup_epochs:
        return float(stage_rate) * (stage_epochs - epoch - 1) / stage_epochs
    return float(stage_rate) * math.exp(-(epoch - warmup_epochs) * decay)


class DartsMinusSkipSchedule:
    """Cell schedule of DARTS-: the auxiliary skip weight of every edge for an epoch (:func:`darts_minus_skip_weight`).

    Example::

        >>> DartsMinusSkipSchedule()(25, 50)
        {'auxiliary_skip_weight': 0.5}
    """

    def __init__(self, *, initial: float = C.DARTS_MINUS_SKIP_BETA, decay: str = C.DARTS_MINUS_DECAY):
        self.initial = initial
        self.decay = decay

    def __call__(self, epoch: int, max_epochs: int) -> dict[str, float]:
        weight = darts_minus_skip_weight(epoch, max_epochs=max_epochs, initial=self.initial, decay=self.decay)
        return {"auxiliary_skip_weight": weight}
