"""SDARTS perturbations of the architecture during the weight step (Chen & Hsieh, ICML 2020).

Official code: github:xiangning-chen/SmoothDARTS ``sota/cnn/train_search.py`` (``train``) and
``attacker/perturb.py`` (``Random_alpha``, ``Linf_PGD_alpha``). The official weight step does, for every batch:

1. replace every alpha by its *softmax* (``model.softmax_arch_parameters``), saving the logits;
2. perturb these normalised weights: uniform noise in ``[-eps, eps]`` (RS) or a 7-step L-inf PGD attack that
   raises the training loss (ADV); after each change, ``clip`` every row to ``[0, 1]`` and renormalise it to sum 1
   (a row clipped to all zeros gets a 1 on its largest entry first);
3. run the forward/backward of the weight step *using the perturbed weights directly* (``updateType='weight'``:
   no softmax) and step the weights;
4. restore the saved logits.

So the perturbation acts on the mixing weights, not on the logits. With this module:

``perturb(alphas, loss_fn, ...)`` does steps 1-2 in place (``alphas`` then hold weights), ``restore(alphas)``
does step 4 bit-exactly. Between the two calls the engine must bypass the mixing -- run the weight step's forward
(and ``loss_fn``) inside ``mixing.passthrough()`` -- because the alphas already are the weights
(:attr:`AlphaPerturbation.replaces_logits_with_weights` is ``True``). ``eps`` follows
:func:`~nni_darts_ext.search.schedules.sdarts_epsilon` (0.03 -> 0.3).

Example::

    >>> import torch
    >>> from torch import nn
    >>> alpha = nn.Parameter(torch.zeros(2, 3))
    >>> rs = RandomAlphaPerturbation()
    >>> rs.perturb([alpha], lambda: alpha.sum(), epoch=0, max_epochs=50)
    >>> bool(torch.allclose(alpha.sum(-1), torch.ones(2)))  # rows are normalised weights now
    True
    >>> rs.restore([alpha]); bool((alpha == 0).all())
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nni_darts_ext import constants as C
from nni_darts_ext.checks import check_bool, check_float, check_int, check_positive
from nni_darts_ext.errors import ArgumentTypeError, ArgumentValueError
from nni_darts_ext.search.schedules import sdarts_epsilon

__all__ = [
    "AlphaPerturbation",
    "PGDAlphaPerturbation",
    "RandomAlphaPerturbation",
    "clip_to_simplex",
]

_log = logging.getLogger(__name__)


def clip_to_simplex(weights: Tensor) -> None:
    """SDARTS ``clip`` in place: clamp to ``[0, 1]``, then renormalise every row (last dim) to sum 1.

    A row whose entries all clamp to 0 gets a 1 at its (pre-clamp) largest entry, as the official code does.

    Example::

        >>> import torch
        >>> w = torch.tensor([[0.6, 0.6, -0.2], [-0.1, -0.3, -0.2]])
        >>> clip_to_simplex(w); w
        tensor([[0.5000, 0.5000, 0.0000],
                [1.0000, 0.0000, 0.0000]])
    """
    with torch.no_grad():
        top = weights.argmax(dim=-1, keepdim=True)
        weights.clamp_(0.0, 1.0)
        empty = weights.sum(dim=-1, keepdim=True) == 0
        weights.scatter_(
            -1,
            top,
            torch.where(
                empty,
                torch.ones_like(top, dtype=weights.dtype),
                weights.gather(-1, top),
            ),
        )
        weights.div_(weights.sum(dim=-1, keepdim=True))


class AlphaPerturbation:
    """Perturbs the (softmax-normalised) architecture weights for one weight step; :meth:`restore` undoes it.

    A :class:`~nni_darts_ext.search.parts.Perturbation`; subclasses implement ``_attack``.

    Args:
        epsilon_max: Radius at the end of the search (official ``--epsilon_alpha`` 0.3).
        epsilon_min: Radius at epoch 0 (0.03).
        generator: Optional random generator (reproducible tests).
    """

    #: After :meth:`perturb` the alphas hold mixing weights: run the forward inside ``mixing.passthrough()``.
    replaces_logits_with_weights: bool = True

    def __init__(
        self,
        *,
        epsilon_max: float = C.SDARTS_EPSILON_MAX,
        epsilon_min: float = C.SDARTS_EPSILON_MIN,
        generator: torch.Generator | None = None,
    ) -> None:
        self.epsilon_min = check_float("epsilon_min", epsilon_min, low=0.0)
        self.epsilon_max = check_float("epsilon_max", epsilon_max, low=0.0)
        if self.epsilon_min > self.epsilon_max:
            raise ArgumentValueError("epsilon_min", f"must be <= epsilon_max, got {epsilon_min!r} > {epsilon_max!r}")
        self.generator = generator
        self._saved: list[Tensor] | None = None

    def epsilon(self, epoch: int, max_epochs: int) -> float:
        """Perturbation radius in ``epoch``."""
        return sdarts_epsilon(
            epoch,
            max_epochs=max_epochs,
            epsilon_max=self.epsilon_max,
            epsilon_min=self.epsilon_min,
        )

    def perturb(
        self,
        alphas: Sequence[nn.Parameter],
        loss_fn: Callable[[], Tensor],
        *,
        epoch: int,
        max_epochs: int,
    ) -> None:
        """Save the logits, replace them by their softmax and perturb those weights in place."""
        if isinstance(alphas, Tensor) or not isinstance(alphas, Sequence) or not alphas:
            raise ArgumentTypeError("alphas", "must be a non-empty sequence of tensors (one per choice)")
        if self._saved is not None:
            raise RuntimeError("perturb called twice without restore")
        eps = self.epsilon(epoch, max_epochs)
        with torch.no_grad():
            self._saved = [alpha.detach().clone() for alpha in alphas]
            for alpha in alphas:
                alpha.copy_(F.softmax(alpha, dim=-1))
        self._attack(alphas, loss_fn, eps)

    def restore(self, alphas: Sequence[nn.Parameter]) -> None:
        """Put back the logits saved by :meth:`perturb` (bit-exact copies)."""
        if self._saved is None:
            raise RuntimeError("restore called without perturb")
        if len(alphas) != len(self._saved):
            raise ArgumentValueError("alphas", f"has {len(alphas)} tensors, perturb saved {len(self._saved)}")
        with torch.no_grad():
            for alpha, saved in zip(alphas, self._saved, strict=False):
                alpha.copy_(saved)
        self._saved = None

    def _uniform_(self, alphas: Sequence[Tensor], eps: float) -> None:
        with torch.no_grad():
            for alpha in alphas:
                noise = torch.rand(
                    alpha.shape,
                    generator=self.generator,
                    dtype=alpha.dtype,
                    device="cpu",
                )
                alpha.add_(noise.to(alpha.device).mul_(2 * eps).sub_(eps))
                clip_to_simplex(alpha)

    def _attack(
        self, alphas: Sequence[nn.Parameter], loss_fn: Callable[[], Tensor], eps: float
    ) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define _attack(alphas, loss_fn, eps)")


class RandomAlphaPerturbation(AlphaPerturbation):
    """SDARTS-RS: ``w <- clip(softmax(alpha) + U[-eps, eps])`` (``attacker/perturb.py`` ``Random_alpha``).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> a = nn.Parameter(torch.zeros(4)); p = RandomAlphaPerturbation()
        >>> p.perturb([a], lambda: a.sum(), epoch=0, max_epochs=1); bool(((a - 0.25).abs() <= 0.1).all())
        True
    """

    def _attack(
        self, alphas: Sequence[nn.Parameter], loss_fn: Callable[[], Tensor], eps: float
    ) -> None:
        del loss_fn
        self._uniform_(alphas, eps)


class PGDAlphaPerturbation(AlphaPerturbation):
    """SDARTS-ADV: L-inf PGD on the normalised weights that raises the weight-step loss.

    Random uniform start, then ``steps`` times: ``w <- w + step * sign(grad loss)``, project onto the
    ``eps``-ball around the unperturbed weights, ``clip_to_simplex``; step ``= 2 * eps / steps``. If the attack
    ended with a lower loss than the unperturbed weights, the unperturbed weights are used (official
    ``Linf_PGD_alpha``). ``loss_fn()`` must compute the loss from the alphas *as weights* (inside
    ``mixing.passthrough()``); the official code evaluates it with the network in ``eval()`` mode.

    Args:
        steps: PGD steps (official 7).
        step_scale: Step size is ``step_scale * eps / steps`` (official 2).
        random_start: Start from a uniform point of the ball (official True).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> a = nn.Parameter(torch.zeros(2)); target = torch.tensor([1.0, 0.0])
        >>> pgd = PGDAlphaPerturbation(epsilon_min=0.2, epsilon_max=0.2)
        >>> pgd.perturb([a], lambda: ((a - target) ** 2).sum(), epoch=0, max_epochs=1)
        >>> [round(v, 4) for v in a.tolist()]  # moved away from the target by eps
        [0.3, 0.7]
    """

    def __init__(
        self,
        *,
        steps: int = C.SDARTS_PGD_STEPS,
        step_scale: float = C.SDARTS_PGD_STEP_SCALE,
        random_start: bool = True,
        epsilon_max: float = C.SDARTS_EPSILON_MAX,
        epsilon_min: float = C.SDARTS_EPSILON_MIN,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            epsilon_max=epsilon_max, epsilon_min=epsilon_min, generator=generator
        )
        self.steps = check_int("steps", steps, minimum=1)
        self.step_scale = check_positive("step_scale", step_scale)
        self.random_start = check_bool("random_start", random_start)
        self.last_losses: tuple[float, float] | None = (
            None  # (unperturbed, attacked) of the last perturb
        )

    def _attack(
        self, alphas: Sequence[nn.Parameter], loss_fn: Callable[[], Tensor], eps: float
    ) -> None:
        centre = [alpha.detach().clone() for alpha in alphas]
        with torch.no_grad():
            loss_before = float(loss_fn())
        if self.random_start:
            self._uniform_(alphas, eps)
        step = self.step_scale * eps / self.steps
        for _ in range(self.steps):
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_fn(), list(alphas), allow_unused=True)
            with torch.no_grad():
                for alpha, grad, c in zip(alphas, grads, centre, strict=False):
                    if grad is not None:
                        alpha.add_(step * torch.sign(grad))
                    alpha.copy_(c + (alpha - c).clamp_(-eps, eps))
                    clip_to_simplex(alpha)
        with torch.no_grad():
            loss_after = float(loss_fn())
            if loss_before > loss_after:
                _log.debug(
                    "SDARTS-ADV: attack lowered the loss (%.4g -> %.4g), using the unperturbed weights",
                    loss_before,
                    loss_after,
                )
                for alpha, c in zip(alphas, centre, strict=False):
                    alpha.copy_(c)
        self.last_losses = (loss_before, loss_after)
