"""Mixing: how a choice's operation weights come from its architecture logits ``alpha``.

A :class:`Mixing` is called like ``nn.Softmax(-1)``: ``mixing(alpha)`` on an ``alpha`` of any shape with the
operations on the last dimension, returning search-time weights (differentiable w.r.t. ``alpha``).
``mixing.probs(alpha)`` gives the deterministic weights used for export and logging.

* :class:`SoftmaxMixing` -- DARTS (Liu et al., ICLR 2019): ``softmax(alpha)``.
* :class:`DirichletMixing` -- DrNAS (github:xiangning-chen/DrNAS ``utils.py`` ``process_step_vector``): a
  reparameterised sample of ``Dirichlet(elu(alpha) + 1)``; ``probs`` is the Dirichlet mean.
* :class:`GumbelHardMixing` -- GDAS (github:D-X-Y/AutoDL-Projects ``search_model_gdas_nasnet.py``): a hard
  one-hot Gumbel-softmax sample with a straight-through gradient; only the op with a nonzero weight needs computing.
* :class:`SigmoidMixing` -- FairDARTS (github:xiaomi-automl/FairDARTS ``fairdarts/model_search.py``):
  independent ``sigmoid(alpha)`` per op.

What a supernet cell asks of a mixing is declared on :class:`Mixing`: :meth:`Mixing.node_weights` (the weights
of one node's edges, pruned ops dropped by the mixing's own rule), :attr:`Mixing.hard` (only the sampled op of an
edge needs computing), :attr:`Mixing.share_per_pass` and :attr:`Mixing.nni_export`. NNI hands its plain
``nn.Softmax(-1)`` to cells built under its own strategies; :func:`as_mixing` turns it into a
:class:`SoftmaxMixing`, in one place.

:meth:`Mixing.passthrough` makes ``forward`` return ``alpha`` unchanged: SDARTS perturbs the *normalised* weights
in place of the logits during the weight step (see :mod:`nni_darts_ext.search.perturbation`).
:meth:`Mixing.sample_once` shares one sample per ``alpha`` over a forward pass (DrNAS and GDAS sample once per
pass for all cells of a type); :meth:`Mixing.deterministic` makes ``forward`` return ``probs`` (export).

Example::

    >>> import torch
    >>> SoftmaxMixing()(torch.zeros(4))
    tensor([0.2500, 0.2500, 0.2500, 0.2500])
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nni_darts_ext import constants as C
from nni_darts_ext.checks import check_positive
from nni_darts_ext.errors import ArgumentTypeError, ArgumentValueError
from nni_darts_ext.search.schedules import gdas_tau

__all__ = [
    "DirichletMixing",
    "GumbelHardMixing",
    "Mixing",
    "SigmoidMixing",
    "SoftmaxMixing",
    "apply_op_mask",
    "as_mixing",
]

_log = logging.getLogger(__name__)


def _check_alpha(alpha: Tensor) -> None:
    if not isinstance(alpha, Tensor):
        raise ArgumentTypeError("alpha", f"must be a torch.Tensor, got {type(alpha).__name__}")
    if alpha.dim() < 1 or alpha.shape[-1] < 1:
        raise ArgumentValueError(
            "alpha", f"must have the operations on a non-empty last dimension, got shape {tuple(alpha.shape)}"
        )


class Mixing(nn.Module, metaclass=abc.ABCMeta):
    """Maps architecture logits ``alpha`` (..., n_ops) to mixing weights over the last dimension.

    Subclasses implement :meth:`mix` (search-time weights, may sample) and :meth:`probs` (deterministic); a
    mixing with its own rule for pruned ops or for a node's edges overrides :meth:`node_weights` or
    :meth:`drop_pruned`.

    Attributes:
        hard: ``True`` when ``forward`` returns one-hot straight-through weights: only ops whose weight is
            nonzero need computing (GDAS). A cell reads it once, when it is built.
        normalized: ``False`` when the weights do not sum to 1 (sigmoid): export ranks/thresholds them
            independently, and pruning does not renormalise them.
        share_per_pass: the search module opens :meth:`sample_once` around every forward pass of the supernet,
            so all cells of a type use one weight per ``alpha`` (as the official DrNAS, GDAS and FairDARTS
            compute them once per pass).
        nni_export: a plain cell (no edge normalisation, no pruning, no skip limit) exports with NNI's rule
            (edges ranked by raw ``alpha``), bit for bit NNI's DARTS export.

    Example::

        >>> import torch
        >>> m = SoftmaxMixing()
        >>> with m.passthrough():
        ...     m(torch.tensor([0.3, 0.7]))
        tensor([0.3000, 0.7000])
    """

    hard: bool = False
    normalized: bool = True
    share_per_pass: bool = True
    nni_export: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._passthrough = False
        self._samples: dict[int, tuple[Tensor, Tensor]] | None = None
        self._deterministic = False

    def forward(self, alpha: Tensor) -> Tensor:
        """Search-time weights of ``alpha`` (``alpha`` itself inside :meth:`passthrough`)."""
        _check_alpha(alpha)
        if self._passthrough:
            return alpha
        if self._deterministic:
            return self.probs(alpha)
        if self._samples is None:
            return self.mix(alpha)
        cached = self._samples.get(id(alpha))
        # A sample drawn while alpha was frozen has no graph: it is not reused once alpha needs a gradient.
        if cached is not None and cached[0] is alpha and (cached[1].requires_grad or not alpha.requires_grad):
            return cached[1]
        weights = self.mix(alpha)
        self._samples[id(alpha)] = (alpha, weights)
        return weights

    @abc.abstractmethod
    def mix(self, alpha: Tensor) -> Tensor:
        """Search-time weights (may sample; differentiable w.r.t. ``alpha``)."""

    @abc.abstractmethod
    def probs(self, alpha: Tensor) -> Tensor:
        """Deterministic weights for export and logging."""

    def node_weights(self, alphas: Sequence[Tensor], n_ops: int, mask: Tensor | None = None, *,
                     deterministic: bool = False) -> Tensor:
        """The ``(len(alphas), n_ops)`` weights of one node's edges (one ``alpha`` per edge).

        ``alpha`` may have entries after the ``n_ops`` real ops (NNI's trailing ``none``): they take part in the
        mixing, their weights are dropped. The mixing is called on each edge's ``alpha`` parameter itself, so that
        :meth:`sample_once` shares one sample between the cells of a type. ``mask`` (``(len(alphas), n_ops)``
        bool, ``None`` when nothing is pruned) drops pruned ops by :meth:`drop_pruned`.

        Example::

            >>> import torch
            >>> SigmoidMixing().node_weights([torch.zeros(3), torch.zeros(3)], 2)
            tensor([[0.5000, 0.5000],
                    [0.5000, 0.5000]])
        """
        mix = self.probs if deterministic else self
        weights = torch.stack([mix(alpha) for alpha in alphas])[:, :n_ops]
        return weights if mask is None else self.drop_pruned(weights, mask)

    def drop_pruned(self, weights: Tensor, mask: Tensor) -> Tensor:
        """Weights with the pruned ops (``mask`` False) zeroed; renormalised when :attr:`normalized` (DrNAS'
        rule, :func:`apply_op_mask`, without its checks: a cell's masks always keep an op per edge)."""
        kept = weights * mask
        return kept / kept.sum(dim=-1, keepdim=True) if self.normalized else kept

    def set_progress(self, epoch: int, max_epochs: int) -> None:
        """Update epoch schedules (e.g. a temperature); no-op by default."""
        del epoch, max_epochs

    @contextlib.contextmanager
    def passthrough(self) -> Iterator[None]:
        """Within the block ``forward(alpha)`` returns ``alpha``: the logits already hold the mixing weights."""
        previous, self._passthrough = self._passthrough, True
        try:
            yield
        finally:
            self._passthrough = previous

    @contextlib.contextmanager
    def deterministic(self) -> Iterator[None]:
        """Within the block ``forward(alpha)`` returns :meth:`probs` (for code that calls the mixing to export,
        such as NNI's ``export_probs``, which would otherwise get a random sample)."""
        previous, self._deterministic = self._deterministic, True
        try:
            yield
        finally:
            self._deterministic = previous

    @contextlib.contextmanager
    def sample_once(self) -> Iterator[None]:
        """Within the block every call on the same ``alpha`` object returns the same weights.

        The official DrNAS and GDAS draw one sample per forward pass and share it between all cells of a type;
        NNI calls the mixing once per cell with the shared ``alpha``. Wrap one forward pass (not an in-place
        change of the alphas) in this block to get the official behaviour.
        """
        previous, self._samples = self._samples, {}
        try:
            yield
        finally:
            self._samples = previous

    def extra_repr(self) -> str:
        return f"hard={self.hard}, normalized={self.normalized}"


class SoftmaxMixing(Mixing):
    """DARTS: ``softmax(alpha)`` over the last dimension, at search and export time.

    Example::

        >>> import torch
        >>> SoftmaxMixing().probs(torch.tensor([0.0, 0.0]))
        tensor([0.5000, 0.5000])
    """

    share_per_pass = False  # nothing to share: a node's alphas are mixed at once
    nni_export = True

    def mix(self, alpha: Tensor) -> Tensor:
        return F.softmax(alpha, dim=-1)

    def probs(self, alpha: Tensor) -> Tensor:
        _check_alpha(alpha)
        return F.softmax(alpha, dim=-1)

    def node_weights(self, alphas: Sequence[Tensor], n_ops: int, mask: Tensor | None = None, *,
                     deterministic: bool = False) -> Tensor:
        """The stacked alphas of the node mixed at once; pruned entries at ``-inf`` (the softmax of the kept ops)."""
        stacked = torch.stack(list(alphas))
        if mask is not None:
            keep = torch.cat([mask, torch.ones_like(mask[:, : stacked.shape[1] - n_ops])], 1)
            stacked = stacked.masked_fill(~keep, float("-inf"))
        # Through the module, not torch.softmax: SDARTS' passthrough hands perturbed weights straight in.
        return (self.probs(stacked) if deterministic else self(stacked))[:, :n_ops]


class DirichletMixing(Mixing):
    """DrNAS: weights sampled from ``Dirichlet(elu(alpha) + 1)`` with ``rsample`` (pathwise gradient).

    ``probs`` is the Dirichlet mean ``beta / sum(beta)``, ``beta = elu(alpha) + 1``.

    Example::

        >>> import torch
        >>> DirichletMixing().probs(torch.tensor([1.0, 0.0]))  # concentration (2, 1)
        tensor([0.6667, 0.3333])
    """

    @staticmethod
    def concentration(alpha: Tensor) -> Tensor:
        """``elu(alpha) + 1`` (> 0 for every finite alpha)."""
        return F.elu(alpha) + C.DRNAS_CONCENTRATION_SHIFT

    def mix(self, alpha: Tensor) -> Tensor:
        return torch.distributions.Dirichlet(self.concentration(alpha)).rsample()

    def probs(self, alpha: Tensor) -> Tensor:
        _check_alpha(alpha)
        beta = self.concentration(alpha)
        return beta / beta.sum(dim=-1, keepdim=True)


class GumbelHardMixing(Mixing):
    """GDAS: hard one-hot Gumbel-softmax sample, straight-through gradient.

    ``soft = softmax((log_softmax(alpha) + g) / tau)`` with Gumbel noise ``g``; ``forward`` returns
    ``one_hot(argmax soft) - soft.detach() + soft``: value one-hot, gradient that of ``soft`` (so every alpha of
    the choice gets a gradient even though only the selected op is computed). A sample with inf/nan is redrawn,
    as the official code does. ``tau`` follows :func:`~nni_darts_ext.search.schedules.gdas_tau` through
    :meth:`set_progress`. ``probs`` is ``softmax(alpha)`` (GDAS ``genotype``).

    Args:
        tau_max: Temperature at the first epoch.
        tau_min: Temperature at the last epoch.
        generator: Optional random generator for the Gumbel noise (reproducible tests).

    Example::

        >>> import torch
        >>> w = GumbelHardMixing()(torch.zeros(3, requires_grad=True))
        >>> sorted(w.detach().tolist())
        [0.0, 0.0, 1.0]
    """

    hard = True

    def __init__(
        self,
        *,
        tau_max: float = C.GDAS_TAU_MAX,
        tau_min: float = C.GDAS_TAU_MIN,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        tau_min = check_positive("tau_min", tau_min)
        tau_max = check_positive("tau_max", tau_max)
        if tau_min > tau_max:
            raise ArgumentValueError("tau_min", f"must be <= tau_max, got tau_min={tau_min!r}, tau_max={tau_max!r}")
        self.tau_max = tau_max
        self.tau_min = tau_min
        self.tau = float(tau_max)
        self.generator = generator

    def set_progress(self, epoch: int, max_epochs: int) -> None:
        self.tau = gdas_tau(
            epoch, max_epochs=max_epochs, tau_max=self.tau_max, tau_min=self.tau_min
        )

    def mix(self, alpha: Tensor) -> Tensor:
        log_p = F.log_softmax(alpha, dim=-1)
        for _ in range(C.GDAS_MAX_RESAMPLES):
            uniform = torch.rand(
                alpha.shape, generator=self.generator, dtype=alpha.dtype, device="cpu"
            ).to(alpha.device)
            gumbels = -torch.log(
                -torch.log(uniform)
            )  # Gumbel(0, 1) = -log(Exponential(1))
            soft = F.softmax((log_p + gumbels) / self.tau, dim=-1)
            if torch.isfinite(gumbels).all() and torch.isfinite(soft).all():
                index = soft.argmax(dim=-1, keepdim=True)
                one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
                return one_hot - soft.detach() + soft
            _log.debug("GDAS: Gumbel sample had inf/nan, redrawing")
        raise FloatingPointError(
            f"GDAS: no finite Gumbel-softmax sample in {C.GDAS_MAX_RESAMPLES} draws (alpha={alpha})"
        )

    def probs(self, alpha: Tensor) -> Tensor:
        _check_alpha(alpha)
        return F.softmax(alpha, dim=-1)

    def node_weights(self, alphas: Sequence[Tensor], n_ops: int, mask: Tensor | None = None, *,
                     deterministic: bool = False) -> Tensor:
        """With pruned ops, a hard sample must land on a kept op: sampled over the kept entries only (per cell,
        not shared)."""
        if mask is None or deterministic:
            return super().node_weights(alphas, n_ops, mask, deterministic=deterministic)
        return self(torch.stack([alpha[:n_ops] for alpha in alphas]).masked_fill(~mask, float("-inf")))

    def drop_pruned(self, weights: Tensor, mask: Tensor) -> Tensor:
        """The pruned ops' deterministic weights zeroed, the others kept as they are (not renormalised)."""
        return weights * mask

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.tau:g}"


class SigmoidMixing(Mixing):
    """FairDARTS: ``sigmoid(alpha)``, one independent weight per op (not normalised).

    Example::

        >>> import torch
        >>> SigmoidMixing()(torch.zeros(2))
        tensor([0.5000, 0.5000])
    """

    normalized = False

    def mix(self, alpha: Tensor) -> Tensor:
        return torch.sigmoid(alpha)

    def probs(self, alpha: Tensor) -> Tensor:
        _check_alpha(alpha)
        return torch.sigmoid(alpha)


def apply_op_mask(weights: Tensor, mask: Tensor) -> Tensor:
    """Zero the weights of pruned ops (``mask`` False) and renormalise to sum 1 over the last dimension.

    DrNAS's rule for a pruned edge (``utils.py`` ``process_step_vector``): sample over all ops, keep the
    surviving ones, divide by their sum. Gradients flow through the kept weights.

    Example::

        >>> import torch
        >>> apply_op_mask(torch.tensor([0.2, 0.3, 0.5]), torch.tensor([True, False, True]))
        tensor([0.2857, 0.0000, 0.7143])
    """
    if not isinstance(weights, Tensor):
        raise ArgumentTypeError("weights", f"must be a torch.Tensor, got {type(weights).__name__}")
    if not isinstance(mask, Tensor):
        raise ArgumentTypeError("mask", f"must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool or mask.shape != weights.shape:
        raise ArgumentValueError(
            "mask", f"must be a bool tensor of shape {tuple(weights.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    if not mask.any(dim=-1).all():
        raise ArgumentValueError("mask", "must keep at least one op per choice")
    kept = weights * mask
    return kept / kept.sum(dim=-1, keepdim=True)


def as_mixing(module: nn.Module) -> Mixing:
    """``module`` as a :class:`Mixing`: NNI's plain ``nn.Softmax(-1)`` (what NNI's strategies hand to the cells)
    becomes a :class:`SoftmaxMixing`; a :class:`Mixing` is returned as it is.

    Raises:
        ArgumentTypeError: any other module (``argument``: ``mixing``), e.g. NNI's ``GumbelSoftmax``.

    Example::

        >>> as_mixing(nn.Softmax(-1))
        SoftmaxMixing(hard=False, normalized=True)
    """
    if isinstance(module, Mixing):
        return module
    if type(module) is nn.Softmax and module.dim == -1:
        return SoftmaxMixing()
    raise ArgumentTypeError("mixing", f"must be a Mixing (or NNI's nn.Softmax(-1)), got {module!r}")
