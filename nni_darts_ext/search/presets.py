"""Named searches: each preset is a combination of the engine's parts (the timm ``@register_model`` habit).

Every preset is registered one way, :func:`register_strategy`: a small function returning the preset's defaults
(built fresh for every strategy: mixings and perturbations hold state), registered with the strategy class it
configures. ``darts_strategy(name, **overrides)`` merges the defaults with the caller's overrides (caller wins,
``None`` dropped, so unset command-line options keep the preset's values) and refuses, by name, an override the
strategy class does not take. Every preset takes every :class:`~.strategy.DartsSearch` argument, ``order`` and
``partial_channels`` included: ``darts_strategy("drnas", partial_channels=4, order=2)`` is DrNAS on partial
channels with the unrolled architecture gradient.

Example::

    from nni_darts_ext import darts_strategy
    strategy = darts_strategy("first-order", arc_learning_rate=6e-4)
    NasExperiment(space, evaluator, strategy).run()
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import Any

import nni

from .. import constants as C
from .._compat import import_nni_quietly
from ..constants import ARC_LEARNING_RATE, GRADIENT_CLIP_VAL, PC_ARC_LEARNING_RATE, PC_PARTIAL_CHANNELS
from ..errors import ArgumentTypeError, ArgumentValueError
from .mixing import DirichletMixing, GumbelHardMixing, SigmoidMixing
from .perturbation import PGDAlphaPerturbation, RandomAlphaPerturbation
from .progressive_search import ProgressiveDartsSearch
from .regularizers import BetaRegularizer, DirichletPriorRegularizer, ZeroOneLoss
from .schedules import DartsMinusSkipSchedule
from .strategy import DartsSearch

with import_nni_quietly():
    from nni.common.serializer import SerializableObject, Traceable
    from nni.nas.strategy import Strategy

__all__ = ["FIRST_ORDER_DEFAULTS", "Preset", "darts_strategy", "get_preset", "list_strategies", "register_strategy",
           "strategy_arguments", "traced_part"]

_logger = logging.getLogger(__name__)

Defaults = Callable[[], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Preset:
    """A registered search: its defaults and the strategy class they configure.

    Attributes:
        name: the preset's name (``search.strategy`` in a recipe).
        defaults: ``() -> {argument: value}``, called for every strategy built.
        strategy: the strategy class (:class:`~.strategy.DartsSearch` or a subclass).
        doc: one paragraph: the method, its paper and what the defaults are.
    """

    name: str
    defaults: Defaults
    strategy: type[DartsSearch]
    doc: str

    def argument_names(self) -> frozenset[str]:
        """The keyword arguments the preset's strategy class takes (its own and its bases', up to NNI's
        ``Strategy``)."""
        return strategy_arguments(self.strategy)

    def build(self, **overrides: Any) -> DartsSearch:
        """The strategy with ``overrides`` on top of the defaults (``None`` overrides dropped).

        Raises:
            ArgumentTypeError: an override the strategy class does not take (``argument`` is its name).
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        accepted = self.argument_names()
        for name in given:
            if name not in accepted:
                raise ArgumentTypeError(name, f"is not an argument of the {self.name!r} preset "
                                              f"({self.strategy.__name__} takes: {', '.join(sorted(accepted))})")
        return self.strategy(**{**self.defaults(), **given})


_PRESETS: dict[str, Preset] = {}


def strategy_arguments(strategy: type) -> frozenset[str]:
    """Keyword arguments of a strategy class: its ``__init__``'s and, through ``**kwargs``, its bases' up to NNI's
    ``Strategy`` (whose ``model_space``/``engine`` are not search options). ``nni.trace`` wrappers are skipped.

    Example::

        >>> "partial_channels" in strategy_arguments(DartsSearch)
        True
    """
    names: set[str] = set()
    for klass in strategy.__mro__:
        if klass is Strategy:
            break
        traced_wrapper = "__wrapped__" in klass.__dict__ or klass in (SerializableObject, Traceable)
        if traced_wrapper or "__init__" not in klass.__dict__:
            continue  # nni.trace's wrapper class and its bases: the traced class itself comes later
        parameters = inspect.signature(klass.__dict__["__init__"]).parameters.values()
        names.update(p.name for p in parameters
                     if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self")
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return frozenset(names)


def register_strategy(name: str, *, strategy: type[DartsSearch] = DartsSearch) -> Callable[[Defaults], Defaults]:
    """Register a preset: the decorated function returns its defaults, ``strategy`` is the class they configure.

    The function's docstring is the preset's description. Warns when a name is registered twice.

    Example::

        @register_strategy("my-darts")
        def _my_darts() -> dict:
            \"\"\"My DARTS (Me et al., 2030): my mixing, gradient clipping 5.\"\"\"
            return {"mixing": MyMixing(), "gradient_clip_val": GRADIENT_CLIP_VAL}
    """

    def decorator(defaults: Defaults) -> Defaults:
        if name in _PRESETS:
            _logger.warning("Strategy preset %r is registered twice; the later definition wins.", name)
        _PRESETS[name] = Preset(name, defaults, strategy, inspect.getdoc(defaults) or "")
        return defaults

    return decorator


def list_strategies() -> list[str]:
    """Names of the registered presets, sorted.

    Example::

        >>> "first-order" in list_strategies()
        True
    """
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    """The registered preset ``name``.

    Raises:
        ArgumentValueError: unknown name (``argument``: ``name``; the message lists the known ones).

    Example::

        >>> get_preset("p-darts").strategy.__name__
        'ProgressiveDartsSearch'
    """
    try:
        return _PRESETS[name]
    except KeyError:
        raise ArgumentValueError("name", f"{name!r} is not a DARTS strategy preset; known: "
                                         f"{', '.join(list_strategies())}") from None


def darts_strategy(name: str = "first-order", **overrides: Any) -> DartsSearch:
    """Build the strategy preset ``name`` with ``overrides`` applied on top of its defaults.

    Raises:
        ArgumentValueError: unknown preset name (``argument``: ``name``).
        ArgumentTypeError: an override the preset's strategy class does not take (``argument``: the override).
        ArgumentTypeError, ArgumentValueError: a bad override value (``argument``: the override).

    Example::

        >>> darts_strategy("first-order").gradient_clip_val
        5.0
    """
    return get_preset(name).build(**overrides)


def traced_part(cls: type, **kwargs: Any) -> Any:
    """A part built through ``nni.trace``, so that ``nni.dump`` of the strategy records how to rebuild it.

    Example::

        traced_part(BetaRegularizer, weight_max=50.0)
    """
    return nni.trace(cls)(**kwargs)


# quark0/darts cnn/train_search.py: --grad_clip 5, --arch_learning_rate 3e-4 (first order: --unrolled off).
FIRST_ORDER_DEFAULTS: dict[str, Any] = {"arc_learning_rate": ARC_LEARNING_RATE, "gradient_clip_val": GRADIENT_CLIP_VAL}


# Every number comes from nni_darts_ext.constants, where each one cites its official file.
@register_strategy("first-order")
def _first_order() -> dict[str, Any]:
    """DARTS (1st order; Liu et al., ICLR 2019): NNI's algorithm and export, gradient clipping 5."""
    return dict(FIRST_ORDER_DEFAULTS)


@register_strategy("second-order")
def _second_order() -> dict[str, Any]:
    """DARTS (2nd order): the unrolled architecture gradient (quark0/darts --unrolled; hessian eps 0.01 in
    architect.py), otherwise as first-order."""
    return dict(FIRST_ORDER_DEFAULTS, order=2)


@register_strategy("pc-darts")
def _pc_darts() -> dict[str, Any]:
    """PC-DARTS (Xu et al., ICLR 2020; github:yuhuixu1993/PC-DARTS train_search.py): K = 4, edge normalisation,
    arch lr 6e-4, grad clip 5. The paper's 15 warm-up epochs depend on the epoch budget: pass warmup_epochs=."""
    return dict(partial_channels=PC_PARTIAL_CHANNELS, edge_normalization=True, arc_learning_rate=PC_ARC_LEARNING_RATE,
                gradient_clip_val=GRADIENT_CLIP_VAL)


@register_strategy("drnas")
def _drnas() -> dict[str, Any]:
    """DrNAS (Chen et al., ICLR 2021): Dirichlet-sampled mixing weights, regulariser towards the prior, export by
    the Dirichlet mean. Add partial_channels=4 for the official large-scale setting."""
    return dict(
        mixing=traced_part(DirichletMixing),
        # The official l2 regulariser is Adam weight decay on alpha (architect.py); written as a loss term here, with
        # the optimizer's own weight decay off, so it is applied once and can be switched to kind="kl".
        regularizers=[traced_part(DirichletPriorRegularizer, kind=C.DRNAS_REG_TYPE, scale=C.DRNAS_REG_SCALE)],
        arc_weight_decay=0.0, arc_learning_rate=C.DRNAS_ARC_LEARNING_RATE, arc_betas=C.DRNAS_ARC_BETAS,
        gradient_clip_val=GRADIENT_CLIP_VAL,
    )


@register_strategy("beta-darts")
def _beta_darts() -> dict[str, Any]:
    """beta-DARTS (Ye et al., CVPR 2022): beta-regularisation (mean of per-edge logsumexp) with a rising weight."""
    return dict(regularizers=[traced_part(BetaRegularizer)], arc_learning_rate=C.BETA_DARTS_ARC_LEARNING_RATE,
                arc_weight_decay=C.BETA_DARTS_ARC_WEIGHT_DECAY, gradient_clip_val=GRADIENT_CLIP_VAL)


@register_strategy("darts-minus")
def _darts_minus() -> dict[str, Any]:
    """DARTS- (Chu et al., ICLR 2021): an auxiliary skip connection on every edge whose weight decays to 0."""
    return dict(auxiliary_skip=True, cell_schedule=traced_part(DartsMinusSkipSchedule), **FIRST_ORDER_DEFAULTS)


@register_strategy("sdarts-rs")
def _sdarts_rs() -> dict[str, Any]:
    """SDARTS-RS (Chen & Hsieh, ICML 2020): uniform noise on the architecture weights during the weight step."""
    return dict(perturbation=traced_part(RandomAlphaPerturbation), **FIRST_ORDER_DEFAULTS)


@register_strategy("sdarts-adv")
def _sdarts_adv() -> dict[str, Any]:
    """SDARTS-ADV (Chen & Hsieh, ICML 2020): a PGD attack on the architecture weights during the weight step."""
    return dict(perturbation=traced_part(PGDAlphaPerturbation, steps=C.SDARTS_PGD_STEPS), **FIRST_ORDER_DEFAULTS)


@register_strategy("fair-darts")
def _fair_darts() -> dict[str, Any]:
    """FairDARTS (Chu et al., ECCV 2020): sigmoid mixing, zero-one loss, export by threshold (0.85)."""
    return dict(mixing=traced_part(SigmoidMixing),
                regularizers=[traced_part(ZeroOneLoss, weight=C.FAIR_DARTS_ZERO_ONE_WEIGHT)],
                export_threshold=C.FAIR_DARTS_THRESHOLD, arc_learning_rate=C.FAIR_DARTS_ARC_LEARNING_RATE,
                arc_betas=C.FAIR_DARTS_ARC_BETAS, gradient_clip_val=GRADIENT_CLIP_VAL)


@register_strategy("gdas")
def _gdas() -> dict[str, Any]:
    """GDAS (Dong & Yang, CVPR 2019): hard Gumbel-softmax, one op computed per edge, temperature 10 -> 0.1."""
    return dict(mixing=traced_part(GumbelHardMixing, tau_max=C.GDAS_TAU_MAX, tau_min=C.GDAS_TAU_MIN),
                arc_learning_rate=C.GDAS_ARC_LEARNING_RATE, arc_weight_decay=C.GDAS_ARC_WEIGHT_DECAY,
                gradient_clip_val=GRADIENT_CLIP_VAL)


@register_strategy("p-darts", strategy=ProgressiveDartsSearch)
def _p_darts() -> dict[str, Any]:
    """P-DARTS (Chen et al., ICCV 2019): 3 stages of growing depth, op pruning, skip dropout, at most 2 skips."""
    return dict(max_skip_connects=C.PDARTS_MAX_SKIP_CONNECTS, arc_learning_rate=C.PDARTS_ARC_LEARNING_RATE,
                warmup_epochs=C.PDARTS_WARMUP_EPOCHS, gradient_clip_val=GRADIENT_CLIP_VAL)
