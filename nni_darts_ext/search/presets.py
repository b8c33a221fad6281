"""Named searches: each preset is a combination of the engine's parts (the timm ``@register_model`` habit).

``darts_strategy(name, **overrides)`` merges the preset's defaults with the caller's overrides (caller wins,
``None`` dropped, so unset command-line options keep the preset's values). Every preset takes every
:class:`~.strategy.DartsSearch` argument, ``order`` included: ``darts_strategy("pc-darts", order=2)`` is PC-DARTS
with the unrolled architecture gradient.

Example::

    from nni_darts_ext import darts_strategy
    strategy = darts_strategy("first-order", arc_learning_rate=6e-4)
    NasExperiment(space, evaluator, strategy).run()
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict

from ..constants import ARC_LEARNING_RATE, GRADIENT_CLIP_VAL, PC_ARC_LEARNING_RATE, PC_PARTIAL_CHANNELS
from .strategy import DartsSearch

__all__ = ["darts_strategy", "list_strategies", "register_strategy", "FIRST_ORDER_DEFAULTS"]

_logger = logging.getLogger(__name__)

StrategyFactory = Callable[..., Any]
_PRESETS: Dict[str, StrategyFactory] = {}

# quark0/darts cnn/train_search.py: --grad_clip 5, --arch_learning_rate 3e-4 (first order: --unrolled off).
FIRST_ORDER_DEFAULTS: Dict[str, Any] = {"arc_learning_rate": ARC_LEARNING_RATE, "gradient_clip_val": GRADIENT_CLIP_VAL}


def register_strategy(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Register ``factory(**overrides) -> Strategy`` under ``name``; warns when a name is overwritten.

    Example::

        @register_strategy("my-darts")
        def _my_darts(**overrides):
            return DartsSearch(**{"gradient_clip_val": 1.0, **overrides})
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

    Raises:
        ValueError: unknown preset name (the message lists the known ones).
        TypeError: an override the preset does not take.

    Example::

        >>> darts_strategy("first-order").gradient_clip_val
        5.0
    """
    try:
        factory = _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown DARTS strategy {name!r}; known: {', '.join(list_strategies())}") from None
    return factory(**{k: v for k, v in overrides.items() if v is not None})


def preset(name: str, **defaults: Any) -> StrategyFactory:
    """Register a preset that is ``DartsSearch(**defaults)`` with the caller's overrides on top."""

    def factory(**overrides: Any) -> DartsSearch:
        return DartsSearch(**{**defaults, **overrides})

    factory.__name__ = f"_{name.replace('-', '_')}"
    factory.__doc__ = f"The {name!r} preset: DartsSearch({', '.join(f'{k}={v!r}' for k, v in defaults.items())})."
    return register_strategy(name)(factory)


# DARTS (1st), Liu et al. ICLR 2019: NNI's algorithm and export, gradient clipping 5.
preset("first-order", **FIRST_ORDER_DEFAULTS)
# DARTS (2nd): the same with the unrolled gradient (quark0/darts --unrolled, hessian eps 0.01 in architect.py).
preset("second-order", **FIRST_ORDER_DEFAULTS, order=2)
# PC-DARTS (Xu et al., ICLR 2020; github:yuhuixu1993/PC-DARTS train_search.py): K = 4, edge normalisation,
# arch lr 6e-4, grad clip 5. The paper's 15 warm-up epochs depend on the epoch budget: pass warmup_epochs=.
preset("pc-darts", partial_channels=PC_PARTIAL_CHANNELS, edge_normalization=True,
       arc_learning_rate=PC_ARC_LEARNING_RATE, gradient_clip_val=GRADIENT_CLIP_VAL)
