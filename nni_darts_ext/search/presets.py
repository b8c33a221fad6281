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
from collections.abc import Callable
from typing import Any

import nni

from .. import constants as C
from ..constants import ARC_LEARNING_RATE, GRADIENT_CLIP_VAL, PC_ARC_LEARNING_RATE, PC_PARTIAL_CHANNELS
from .mixing import DirichletMixing, GumbelHardMixing, SigmoidMixing
from .perturbation import PGDAlphaPerturbation, RandomAlphaPerturbation
from .regularizers import BetaRegularizer, DirichletPriorRegularizer, ZeroOneLoss
from .schedules import DartsMinusSkipSchedule
from .strategy import DartsSearch

__all__ = ["darts_strategy", "list_strategies", "register_strategy", "FIRST_ORDER_DEFAULTS"]

_logger = logging.getLogger(__name__)

StrategyFactory = Callable[..., Any]
_PRESETS: dict[str, StrategyFactory] = {}

# quark0/darts cnn/train_search.py: --grad_clip 5, --arch_learning_rate 3e-4 (first order: --unrolled off).
FIRST_ORDER_DEFAULTS: dict[str, Any] = {"arc_learning_rate": ARC_LEARNING_RATE, "gradient_clip_val": GRADIENT_CLIP_VAL}


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


# ---------------------------------------------------------------------------------------- the robust variants
# Every number comes from nni_darts_ext.constants, where each one cites its official file.
def _part(cls: type, **kwargs: Any) -> Any:
    """A part built through ``nni.trace``, so that ``nni.dump`` of the strategy records how to rebuild it."""
    return nni.trace(cls)(**kwargs)


def _variant(name: str, build: Callable[[], dict[str, Any]], doc: str) -> None:
    """Register a preset whose parts are built fresh for every strategy (perturbations and mixings hold state)."""

    def factory(**overrides: Any) -> DartsSearch:
        return DartsSearch(**{**build(), **overrides})

    factory.__name__ = f"_{name.replace('-', '_')}"
    factory.__doc__ = doc
    register_strategy(name)(factory)


_variant("drnas", lambda: dict(
    mixing=_part(DirichletMixing),
    # The official l2 regulariser is Adam weight decay on alpha (architect.py); written as a loss term here, with
    # the optimizer's own weight decay off, so it is applied once and can be switched to kind="kl".
    regularizers=[_part(DirichletPriorRegularizer, kind=C.DRNAS_REG_TYPE, scale=C.DRNAS_REG_SCALE)],
    arc_weight_decay=0.0, arc_learning_rate=C.DRNAS_ARC_LEARNING_RATE, arc_betas=C.DRNAS_ARC_BETAS,
    gradient_clip_val=GRADIENT_CLIP_VAL,
), "DrNAS (Chen et al., ICLR 2021): Dirichlet-sampled mixing weights, regulariser towards the prior, export by "
   "the Dirichlet mean. Add partial_channels=4 for the official large-scale setting.")
_variant("beta-darts", lambda: dict(
    regularizers=[_part(BetaRegularizer)], arc_learning_rate=C.BETA_DARTS_ARC_LEARNING_RATE,
    arc_weight_decay=C.BETA_DARTS_ARC_WEIGHT_DECAY, gradient_clip_val=GRADIENT_CLIP_VAL,
), "beta-DARTS (Ye et al., CVPR 2022): beta-regularisation (mean of per-edge logsumexp) with a rising weight.")
_variant("darts-minus", lambda: dict(
    auxiliary_skip=True, cell_schedule=_part(DartsMinusSkipSchedule), **FIRST_ORDER_DEFAULTS,
), "DARTS- (Chu et al., ICLR 2021): an auxiliary skip connection on every edge whose weight decays to 0.")
_variant("sdarts-rs", lambda: dict(
    perturbation=_part(RandomAlphaPerturbation), **FIRST_ORDER_DEFAULTS,
), "SDARTS-RS (Chen & Hsieh, ICML 2020): uniform noise on the architecture weights during the weight step.")
_variant("sdarts-adv", lambda: dict(
    perturbation=_part(PGDAlphaPerturbation, steps=C.SDARTS_PGD_STEPS), **FIRST_ORDER_DEFAULTS,
), "SDARTS-ADV (Chen & Hsieh, ICML 2020): a PGD attack on the architecture weights during the weight step.")
_variant("fair-darts", lambda: dict(
    mixing=_part(SigmoidMixing), regularizers=[_part(ZeroOneLoss, weight=C.FAIR_DARTS_ZERO_ONE_WEIGHT)],
    export_threshold=C.FAIR_DARTS_THRESHOLD, arc_learning_rate=C.FAIR_DARTS_ARC_LEARNING_RATE,
    arc_betas=C.FAIR_DARTS_ARC_BETAS, gradient_clip_val=GRADIENT_CLIP_VAL,
), "FairDARTS (Chu et al., ECCV 2020): sigmoid mixing, zero-one loss, export by threshold (0.85).")
_variant("gdas", lambda: dict(
    mixing=_part(GumbelHardMixing, tau_max=C.GDAS_TAU_MAX, tau_min=C.GDAS_TAU_MIN),
    arc_learning_rate=C.GDAS_ARC_LEARNING_RATE, arc_weight_decay=C.GDAS_ARC_WEIGHT_DECAY,
    gradient_clip_val=GRADIENT_CLIP_VAL,
), "GDAS (Dong & Yang, CVPR 2019): hard Gumbel-softmax, one op computed per edge, temperature 10 -> 0.1.")


def _p_darts(**overrides: Any) -> Any:
    """P-DARTS (Chen et al., ICCV 2019): 3 stages of growing depth, op pruning, skip dropout, at most 2 skips."""
    from .progressive_search import ProgressiveDartsSearch

    defaults = dict(max_skip_connects=C.PDARTS_MAX_SKIP_CONNECTS, arc_learning_rate=C.PDARTS_ARC_LEARNING_RATE,
                    warmup_epochs=C.PDARTS_WARMUP_EPOCHS, gradient_clip_val=GRADIENT_CLIP_VAL)
    return ProgressiveDartsSearch(**{**defaults, **overrides})


register_strategy("p-darts")(_p_darts)
