"""Named DARTS strategy presets, built on NNI's one-shot machinery.

A preset is a small factory registered under a name (the timm ``@register_model`` pattern): it merges the
preset's defaults with the caller's overrides (caller wins, ``None`` values dropped) and returns a ready
``nni.nas.strategy`` object.

Example::

    from nni.nas.experiment import NasExperiment
    from nni_darts_ext import darts_strategy
    strategy = darts_strategy("first-order", arc_learning_rate=6e-4)
    NasExperiment(space, evaluator, strategy).run()
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict

from ._compat import import_nni_quietly
from .constants import ARC_LEARNING_RATE, GRADIENT_CLIP_VAL, PC_ARC_LEARNING_RATE, PC_PARTIAL_CHANNELS

with import_nni_quietly():
    from nni.nas.strategy import DARTS

from .second_order import SecondOrderDARTS

__all__ = ["darts_strategy", "list_strategies", "register_strategy", "FIRST_ORDER_DEFAULTS"]

_logger = logging.getLogger(__name__)

StrategyFactory = Callable[..., Any]
_PRESETS: Dict[str, StrategyFactory] = {}

# quark0/darts cnn/train_search.py: --grad_clip 5, --arch_learning_rate 3e-4 (first order: --unrolled off).
FIRST_ORDER_DEFAULTS: Dict[str, Any] = {
    "arc_learning_rate": ARC_LEARNING_RATE,
    "gradient_clip_val": GRADIENT_CLIP_VAL,
}


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Register ``factory(**overrides) -> Strategy`` under ``name``; warns when a name is overwritten.

    Example::

        @register_strategy("my-darts")
        def _my_darts(**overrides):
            return DARTS(**{"gradient_clip_val": 1.0, **overrides})
    """

    def decorator(factory: StrategyFactory) -> StrategyFactory:
        if name in _PRESETS:
            _logger.warning("Strategy preset %r is registered twice; the later definition wins.", name)
        _PRESETS[name] = factory
        return factory

    return decorator


def list_strategies() -> list[str]:
    """Names of the registered presets, sorted.

    Example::

        >>> "first-order" in list_strategies()
        True
    """
    return sorted(_PRESETS)


def darts_strategy(name: str = "first-order", **overrides: Any) -> Any:
    """Build the strategy preset ``name`` with ``overrides`` applied on top of its defaults.

    ``None`` overrides are ignored, so unset command-line options keep the preset's values.

    Raises:
        ValueError: unknown preset name (the message lists the known ones).

    Example::

        >>> s = darts_strategy("first-order")
        >>> s.gradient_clip_val
        5.0
    """
    try:
        factory = _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown DARTS strategy {name!r}; known: {', '.join(list_strategies())}") from None
    return factory(**{k: v for k, v in overrides.items() if v is not None})


def _merge(defaults: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    return {**defaults, **overrides}


@register_strategy("first-order")
def _first_order(**overrides: Any) -> DARTS:
    """First-order DARTS (the paper's DARTS (1st)): NNI's algorithm and export with gradient clipping 5.

    Runs as :class:`nni_darts_ext.partial_channel.LeanDARTS`, a ``nni.nas.strategy.DARTS`` subclass with the same
    updates and export but a leaner mixed cell, no discarded gradients and channels-last on CPU. Extra keyword
    arguments: ``channels_last`` (None: auto), ``skip_unused_gradients``; plus every ``DARTS`` argument.
    """
    from .partial_channel import LeanDARTS

    return LeanDARTS(**_merge(FIRST_ORDER_DEFAULTS, overrides))


# PC-DARTS (Xu et al., ICLR 2020; github:yuhuixu1993/PC-DARTS train_search.py): K = 4, edge normalisation,
# arch lr 6e-4, grad clip 5. The paper's 15 warm-up epochs depend on the epoch budget: pass warmup_epochs=.
PC_DARTS_DEFAULTS: Dict[str, Any] = {
    "partial_channels": PC_PARTIAL_CHANNELS,
    "edge_normalization": True,
    "arc_learning_rate": PC_ARC_LEARNING_RATE,
    "gradient_clip_val": GRADIENT_CLIP_VAL,
}


@register_strategy("pc-darts")
def _pc_darts(**overrides: Any) -> Any:
    """PC-DARTS: partial channel connections (1/K of the channels through the ops) and edge normalisation.

    Keyword arguments: ``partial_channels``, ``edge_normalization``, ``channels_last``, ``skip_unused_gradients``
    and every :class:`nni.nas.strategy.DARTS` argument (``arc_learning_rate``, ``gradient_clip_val``,
    ``warmup_epochs``, ``log_prob_every_n_step``, ``penalty``, ``mutation_hooks``).
    """
    from .partial_channel import PCDARTS

    return PCDARTS(**_merge(PC_DARTS_DEFAULTS, overrides))


@register_strategy("second-order")
def _second_order(**overrides: Any) -> SecondOrderDARTS:
    """Second-order (unrolled) DARTS, the paper's DARTS (2nd): same defaults as first-order, plus ``hessian_eps``.

    Keyword arguments: ``hessian_eps`` and every :class:`nni.nas.strategy.DARTS` argument (``arc_learning_rate``,
    ``gradient_clip_val``, ``warmup_epochs``, ``log_prob_every_n_step``, ``penalty``, ``mutation_hooks``).
    """
    return SecondOrderDARTS(**_merge(FIRST_ORDER_DEFAULTS, overrides))
