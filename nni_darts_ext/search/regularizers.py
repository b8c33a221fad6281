"""Loss terms on the architecture logits, added to the architecture-step loss.

An :class:`ArchRegularizer` is called with the list of logits tensors (one per choice, ops on the last
dimension), the :class:`~nni_darts_ext.search.mixing.Mixing` in use and the epoch; it returns a scalar already
weighted by its schedule. It is an :class:`~nni_darts_ext.search.parts.ArchLossTerm`: the search module calls
:meth:`ArchRegularizer.arch_loss`, which hands it the search's operation logits and mixing.

* :class:`DirichletPriorRegularizer` -- DrNAS: pulls the Dirichlet towards its prior ``Dirichlet(1)``; ``l2``
  (official default: an Adam weight decay of ``1e-3`` on alpha, written here as ``0.5 * 1e-3 * ||alpha||^2``,
  the same gradient) or ``kl`` (``1e-3 * sum KL(Dir(elu(alpha) + 1) || Dir(1))``) -- github:xiangning-chen/DrNAS
  ``architect.py``, ``DARTS-space/model_search.py`` ``_get_kl_reg``.
* :class:`BetaRegularizer` -- beta-DARTS: ``(50 * epoch / 100) * mean_edges logsumexp(alpha_edge)`` --
  github:Sunshine-Ye/Beta-DARTS ``optimizers/darts/architect.py`` (``mlc_loss``, ``_backward_step``).
* :class:`ZeroOneLoss` -- FairDARTS: ``10 * -mean((sigmoid(alpha) - 0.5)^2)`` over every op of every choice --
  github:xiaomi-automl/FairDARTS ``fairdarts/separate_loss.py`` ``ConvSeparateLoss``, ``train_search.py``.

Example::

    >>> import torch
    >>> from nni_darts_ext.search.mixing import SoftmaxMixing
    >>> BetaRegularizer()([torch.zeros(2)], SoftmaxMixing(), epoch=2, max_epochs=50)  # 1.0 * log(2)
    tensor(0.6931)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nni_darts_ext import constants as C
from nni_darts_ext.checks import check_choice, check_float, check_int, check_optional
from nni_darts_ext.errors import ArgumentTypeError, ArgumentValueError
from nni_darts_ext.search.mixing import DirichletMixing, Mixing
from nni_darts_ext.search.parts import SearchState
from nni_darts_ext.search.schedules import beta_darts_weight

__all__ = [
    "ArchRegularizer",
    "BetaRegularizer",
    "DirichletPriorRegularizer",
    "ZeroOneLoss",
]

_DRNAS_KINDS = ("l2", "kl")


def _check_alphas(alphas: Sequence[Tensor]) -> None:
    if isinstance(alphas, Tensor) or not isinstance(alphas, Sequence) or not alphas:
        raise ArgumentTypeError("alphas", "must be a non-empty sequence of tensors (one per choice)")
    for alpha in alphas:
        if not isinstance(alpha, Tensor):
            raise ArgumentTypeError("alphas", f"must hold torch.Tensor, got {type(alpha).__name__}")
        if alpha.dim() < 1 or alpha.shape[-1] < 1:
            raise ArgumentValueError("alphas", f"need the ops on a non-empty last dimension, got {tuple(alpha.shape)}")


class ArchRegularizer:
    """A scalar loss term on the architecture logits, weighted by its own schedule.

    Subclasses implement ``__call__(alphas, mixing, *, epoch, max_epochs)``; :meth:`arch_loss` (the
    :class:`~nni_darts_ext.search.parts.ArchLossTerm` interface) calls it with the search's operation logits.

    Example::

        >>> import torch
        >>> from nni_darts_ext.search.mixing import SigmoidMixing
        >>> ZeroOneLoss()([torch.zeros(3)], SigmoidMixing(), epoch=0, max_epochs=1)
        tensor(-0.)
    """

    def __call__(
        self, alphas: Sequence[Tensor], mixing: Mixing | None, *, epoch: int, max_epochs: int
    ) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define __call__(alphas, mixing, *, epoch, "
                                  "max_epochs)")

    def arch_loss(self, search: SearchState, *, epoch: int, max_epochs: int) -> Tensor:
        """The term on ``search.op_alphas()`` with ``search.mixing``."""
        return self(search.op_alphas(), search.mixing, epoch=epoch, max_epochs=max_epochs)


class DirichletPriorRegularizer(ArchRegularizer):
    """DrNAS regulariser towards the prior ``Dirichlet(1)`` (``alpha = 0``).

    Args:
        kind: ``"l2"`` -- ``0.5 * scale * sum ||alpha||^2`` (the gradient of the official Adam weight decay
            ``scale``; do not also give the architecture optimiser a weight decay) or ``"kl"`` --
            ``scale * sum_choices KL(Dir(elu(alpha) + 1) || Dir(1))``.
        scale: The official ``--reg_scale`` (1e-3).

    Example::

        >>> import torch
        >>> r = DirichletPriorRegularizer(kind="kl", scale=1.0)
        >>> round(float(r([torch.tensor([1.0, 0.0])], DirichletMixing(), epoch=0, max_epochs=1)), 5)  # log 2 - 1/2
        0.19315
    """

    def __init__(
        self, *, kind: str = C.DRNAS_REG_TYPE, scale: float = C.DRNAS_REG_SCALE
    ) -> None:
        self.kind = check_choice("kind", kind, _DRNAS_KINDS)
        self.scale = check_float("scale", scale, low=0.0)

    def __call__(
        self, alphas: Sequence[Tensor], mixing: Mixing | None, *, epoch: int, max_epochs: int
    ) -> Tensor:
        del mixing, epoch, max_epochs
        _check_alphas(alphas)
        if self.kind == "l2":
            return 0.5 * self.scale * sum(alpha.pow(2).sum() for alpha in alphas)
        total = alphas[0].new_zeros(())
        for alpha in alphas:
            posterior = torch.distributions.Dirichlet(
                DirichletMixing.concentration(alpha)
            )
            prior = torch.distributions.Dirichlet(
                torch.full_like(alpha, C.DRNAS_PRIOR_CONCENTRATION)
            )
            total = total + torch.distributions.kl_divergence(posterior, prior).sum()
        return self.scale * total


class BetaRegularizer(ArchRegularizer):
    """beta-DARTS Beta-Decay loss ``weight(epoch) * mean_choices logsumexp(alpha)``.

    ``weight(epoch) = weight_max * epoch / horizon`` (official 50 and 100). ``horizon=None`` scales to the run
    instead (``weight_max`` reached at ``max_epochs``); the official code does not.

    Example::

        >>> import torch
        >>> from nni_darts_ext.search.mixing import SoftmaxMixing
        >>> a = [torch.zeros(2), torch.log(torch.tensor([1.0, 3.0]))]  # logsumexp: log 2, log 4
        >>> round(float(BetaRegularizer()(a, SoftmaxMixing(), epoch=100, max_epochs=100)), 4)  # 50 * log(8) / 2
        51.986
    """

    def __init__(
        self,
        *,
        weight_max: float = C.BETA_DARTS_WEIGHT_MAX,
        horizon: int | None = C.BETA_DARTS_WEIGHT_HORIZON,
    ) -> None:
        self.weight_max = check_float("weight_max", weight_max, low=0.0)
        self.horizon = check_optional(check_int, "horizon", horizon, minimum=1)

    def weight(self, epoch: int, max_epochs: int) -> float:
        """The schedule's weight in ``epoch``."""
        horizon = max_epochs if self.horizon is None else self.horizon
        return beta_darts_weight(epoch, weight_max=self.weight_max, horizon=horizon)

    @staticmethod
    def loss(alphas: Sequence[Tensor]) -> Tensor:
        """Unweighted Beta-Decay loss: the mean over all choices of ``logsumexp`` over their ops."""
        _check_alphas(alphas)
        return torch.cat(
            [torch.logsumexp(alpha, dim=-1).reshape(-1) for alpha in alphas]
        ).mean()

    def __call__(
        self, alphas: Sequence[Tensor], mixing: Mixing | None, *, epoch: int, max_epochs: int
    ) -> Tensor:
        del mixing
        return self.weight(epoch, max_epochs) * self.loss(alphas)


class ZeroOneLoss(ArchRegularizer):
    """FairDARTS zero-one loss ``weight * -mean((sigmoid(alpha) - 0.5)^2)`` over every op of every choice.

    The official code takes ``sigmoid`` whatever the mixing (FairDARTS always mixes with sigmoid).

    Example::

        >>> import torch
        >>> from nni_darts_ext.search.mixing import SigmoidMixing
        >>> a = [torch.tensor([0.0, float("inf")])]  # sigmoid: 0.5, 1.0 -> -(0 + 0.25) / 2
        >>> ZeroOneLoss(weight=1.0)(a, SigmoidMixing(), epoch=0, max_epochs=1)
        tensor(-0.1250)
    """

    def __init__(self, *, weight: float = C.FAIR_DARTS_ZERO_ONE_WEIGHT) -> None:
        self.weight = check_float("weight", weight, low=0.0)

    def __call__(
        self, alphas: Sequence[Tensor], mixing: Mixing | None, *, epoch: int, max_epochs: int
    ) -> Tensor:
        del mixing, epoch, max_epochs
        _check_alphas(alphas)
        weights = torch.cat([torch.sigmoid(alpha).reshape(-1) for alpha in alphas])
        return -self.weight * (weights - C.FAIR_DARTS_ZERO_ONE_CENTER).pow(2).mean()
