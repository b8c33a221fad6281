"""The architecture gradient (the search engine's second axis): first order, or second order (unrolled).

DARTS (Liu, Simonyan & Yang, ICLR 2019, https://arxiv.org/abs/1806.09055) approximates the bilevel problem
``min_alpha L_val(w*(alpha), alpha)`` either with ``grad_alpha L_val(w, alpha)`` (first order) or with one unrolled
weight step, eqs. 7-8 of the paper (second order; quark0/darts ``cnn/architect.py``). NNI 3.0 ships only the first.

Second order, per architecture step, with ``xi`` the weight optimizer's current learning rate:

1. virtual step ``w' = w - xi * (mu * momentum_buffer + grad_w L_train(w, alpha) + lambda * w)``;
2. on the validation batch ``g = grad_alpha L_val(w', alpha)`` and ``v = grad_w' L_val(w', alpha)``;
3. ``eps = hessian_eps / ||v||``, ``h = (grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / (2 eps)``;
4. architecture gradient ``g - xi * h``.

The network is never copied: the weights are overwritten in place and copied back bit-exactly; the extra passes
are shielded (:mod:`.shielding`) and compute no weight gradient they do not need. Loss terms on the architecture
parameters alone (the variants' regularisers) add their plain gradient in both orders.

Example::

    gradient = architecture_gradient(order=2, hessian_eps=0.01)
    gradient.backward(module, trn_batch, val_batch, batch_idx)   # fills alpha.grad
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.plugins.precision import MixedPrecision

from ..checks import check_int, check_positive
from ..constants import HESSIAN_EPS
from ..errors import ArgumentValueError
from .parts import ArchitectureGradient
from .shielding import detached_copies, frozen_parameters, grads_of, loss_of, shielded_passes

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from .module import DartsSearchModule

__all__ = ["FirstOrderGradient", "UnrolledGradient", "architecture_gradient"]

_logger = logging.getLogger(__name__)


class FirstOrderGradient:
    """``grad_alpha [L_val(w, alpha) + loss terms]`` through ``manual_backward`` (DDP's reducer sees it).

    An :class:`~.parts.ArchitectureGradient`.

    Example::

        FirstOrderGradient().backward(module, trn_batch, val_batch, 0)
    """

    order = 1
    needs_weight_gradients = False  # the architecture step may freeze the weights

    def check_trainer(self, trainer: pl.Trainer) -> None:
        """First order works with every Lightning precision."""

    def backward(self, search: DartsSearchModule, trn_batch: Any, val_batch: Any, batch_idx: int) -> torch.Tensor:
        """Fill ``.grad`` of the architecture parameters; returns the validation loss."""
        loss = search.validation_objective(val_batch, batch_idx)
        terms = search.architecture_loss_terms()
        search.manual_backward(loss if terms is None else loss + terms)
        return loss.detach()

    def on_epoch_end(self, search: DartsSearchModule) -> None:
        """Nothing is pending in first order."""


class _WeightGroup:
    """The weights of one param group of the weight optimizer, with its SGD hyper-parameters."""

    __slots__ = ("params", "lr", "momentum", "weight_decay", "buffers")

    def __init__(self, params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float,
                 buffers: list[torch.Tensor | None]):
        self.params = params
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.buffers = buffers


class UnrolledGradient:
    """Second-order DARTS: the unrolled architecture gradient ``g - xi * h`` (see the module docstring).

    An :class:`~.parts.ArchitectureGradient`.

    Args:
        hessian_eps: ``eps * ||v||``, the length of the finite-difference perturbation (0.01 in the paper).

    Attributes:
        skipped_corrections: steps that used the first-order gradient because ``||v||`` was 0 or not finite.
        last_info: ``{'v_norm', 'eps', 'xi', 'skipped'}`` of the latest step (floats on CPU; 0-dim device
            tensors on CUDA, so that reading them is the caller's synchronisation, not ours).

    .. note:: The virtual step is a plain SGD step with the weight optimizer's ``lr``, ``momentum`` and
       ``weight_decay`` (as in the paper); other optimizers get the same SGD step, with a warning. A GradScaler
       (``precision='16-mixed'``) is refused: the unrolled step computes unscaled gradients.

    Example::

        UnrolledGradient(hessian_eps=0.01).backward(module, trn_batch, val_batch, 0)
    """

    order = 2
    needs_weight_gradients = True  # the virtual step and v need weight gradients

    def __init__(self, hessian_eps: float = HESSIAN_EPS):
        self.hessian_eps = check_positive("hessian_eps", hessian_eps)
        self.skipped_corrections = 0
        self.last_info: dict[str, Any] = {}
        self._warned_optimizer = False
        self._pending: list[tuple[torch.Tensor, Any, int, int]] = []

    # ------------------------------------------------------------------------------------------------ public
    def check_trainer(self, trainer: pl.Trainer) -> None:
        """Refuse a GradScaler (``precision='16-mixed'``) before training starts.

        Raises:
            ArgumentValueError: ``argument`` is ``precision`` (the trainer's).
        """
        plugin = trainer.precision_plugin
        if isinstance(plugin, MixedPrecision) and plugin.scaler is not None:
            raise ArgumentValueError(
                "precision", f"{trainer.precision!r} is not supported by second-order DARTS: its GradScaler expects "
                "scaled gradients, the unrolled step computes unscaled ones; use precision '32-true' or 'bf16-mixed'"
            )

    def backward(self, search: DartsSearchModule, trn_batch: Any, val_batch: Any, batch_idx: int) -> torch.Tensor:
        """Set ``.grad`` of every architecture parameter to its unrolled gradient; returns ``L_val(w', alpha)``."""
        alphas = search.arch_parameters()
        grads, val_loss = self.gradients(search, trn_batch, val_batch, batch_idx, alphas)
        terms = search.architecture_loss_terms()
        if terms is not None:
            grads = [g + t for g, t in zip(grads, grads_of(terms, alphas), strict=False)]
        for alpha, grad in zip(alphas, grads, strict=False):
            alpha.grad = grad if alpha.grad is None else alpha.grad.copy_(grad)
        return val_loss

    def gradients(self, module: DartsSearchModule, trn_batch: Any, val_batch: Any, batch_idx: int,
                  alphas: Sequence[nn.Parameter]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(g - xi * h per alpha, L_val(w', alpha))``; weights, buffers, metrics and ``.grad`` are left as they were.
        """
        self.poll(wait=False)
        groups = self._weight_groups(module, {id(a) for a in alphas})
        weights = [p for group in groups for p in group.params]
        # The paper's single xi. A group with another learning rate scales its part of v by lr / xi, which keeps
        # g - xi * h the exact unrolled gradient when param groups have different learning rates.
        xi = max((group.lr for group in groups), default=0.0)
        info: dict[str, Any] = {"xi": xi, "v_norm": None, "eps": None, "skipped": False}
        self.last_info = info
        with shielded_passes(module):
            saved = detached_copies(weights)
            try:
                self._virtual_step(module, groups, trn_batch, batch_idx, alphas)
                val_loss = module.validation_objective(val_batch, batch_idx)
                grads = grads_of(val_loss, list(alphas) + weights)
                g_alpha, v = grads[: len(alphas)], grads[len(alphas):]
                val_loss = val_loss.detach()
                if xi == 0 or not weights:  # w' = w: the unrolled gradient is the first-order one
                    return g_alpha, val_loss
                self._scale_by_learning_rate(groups, v, xi)
                with torch.no_grad():
                    torch._foreach_copy_(weights, saved)
                v_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))
                eps = self.hessian_eps / v_norm
                usable = torch.isfinite(v_norm) & (v_norm > 0) & torch.isfinite(eps)
                eps = torch.where(usable, eps, torch.zeros_like(eps))
                info.update(v_norm=v_norm, eps=eps)
                skipped = self._note_skip(usable, module, batch_idx)
                if skipped:
                    info.update(skipped=True, v_norm=float(v_norm), eps=float(eps))
                    return g_alpha, val_loss
                if skipped is False:
                    info.update(v_norm=float(v_norm), eps=float(eps))
                else:  # decided on the device; the warning follows once the flag reaches the host
                    info["skipped"] = ~usable
                torch._foreach_mul_(v, eps)  # v is now eps * v
                grad_plus = self._train_arch_gradients_at(module, alphas, weights, saved, v, 1, trn_batch, batch_idx)
                grad_minus = self._train_arch_gradients_at(module, alphas, weights, saved, v, -1, trn_batch, batch_idx)
                scale = torch.where(usable, xi / (2.0 * eps), torch.zeros_like(eps))
                return [g - torch.where(usable, (gp - gm) * scale, torch.zeros_like(g))
                        for g, gp, gm in zip(g_alpha, grad_plus, grad_minus, strict=False)], val_loss
            finally:
                if weights:
                    with torch.no_grad():
                        torch._foreach_copy_(weights, saved)

    def on_epoch_end(self, search: DartsSearchModule) -> None:
        """Report device-side skip flags that are still pending."""
        self.poll(wait=True)

    # --------------------------------------------------------------------------------------------- internals
    def _virtual_step(self, module: DartsSearchModule, groups: list[_WeightGroup], trn_batch: Any, batch_idx: int,
                      alphas: Sequence[nn.Parameter]) -> None:
        weights = [p for group in groups for p in group.params]
        with frozen_parameters(alphas):  # no alpha gradient is needed here: autograd saves less
            loss = loss_of(module.training_module.training_step(trn_batch, 2 * batch_idx + 1))
            grads = grads_of(loss, weights)
            del loss
        offset = 0
        with torch.no_grad():
            for group in groups:
                steps = grads[offset: offset + len(group.params)]
                offset += len(group.params)
                if group.weight_decay:
                    torch._foreach_add_(steps, group.params, alpha=group.weight_decay)
                if group.momentum:
                    with_buffer = [(s, b) for s, b in zip(steps, group.buffers, strict=False) if b is not None]
                    if with_buffer:
                        torch._foreach_add_([s for s, _ in with_buffer], [b for _, b in with_buffer],
                                            alpha=group.momentum)
                torch._foreach_add_(group.params, steps, alpha=-group.lr)

    @staticmethod
    def _scale_by_learning_rate(groups: list[_WeightGroup], v: list[torch.Tensor], xi: float) -> None:
        offset = 0
        for group in groups:
            if group.lr != xi:
                torch._foreach_mul_(v[offset: offset + len(group.params)], group.lr / xi)
            offset += len(group.params)

    @staticmethod
    def _train_arch_gradients_at(module: DartsSearchModule, alphas: Sequence[nn.Parameter], weights: list[nn.Parameter],
                                 saved: list[torch.Tensor], step: list[torch.Tensor], sign: int,
                                 trn_batch: Any, batch_idx: int) -> list[torch.Tensor]:
        """``grad_alpha L_train(w + sign * step, alpha)``; no weight gradient is computed."""
        with torch.no_grad():
            torch._foreach_copy_(weights, saved)
            torch._foreach_add_(weights, step, alpha=sign)
        with frozen_parameters(weights):
            loss = loss_of(module.training_module.training_step(trn_batch, 2 * batch_idx + 1))
            return grads_of(loss, alphas)

    def _weight_groups(self, module: DartsSearchModule, arch_ids: set) -> list[_WeightGroup]:
        optimizers = module.optimizers()
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        arch_optimizer = module.architecture_optimizers()
        weight_optimizers = [opt for opt in optimizers if opt is not arch_optimizer]
        if len(weight_optimizers) != 1:
            raise ValueError(
                "second-order DARTS needs exactly one weight optimizer from the evaluator, got "
                f"{len(weight_optimizers)}"
            )
        optimizer = weight_optimizers[0]
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        groups = []
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.requires_grad and id(p) not in arch_ids]
            if not params:
                continue
            momentum = float(group.get("momentum", 0.0) or 0.0)
            if not self._warned_optimizer and (group.get("nesterov") or group.get("dampening")
                                               or "momentum" not in group):
                self._warned_optimizer = True
                _logger.warning("second-order DARTS: the virtual step is a plain SGD step (lr, momentum, "
                                "weight_decay); "
                                "the weight optimizer %s (nesterov/dampening or no momentum) steps differently",
                                type(optimizer).__name__)
            buffers = [optimizer.state.get(p, {}).get("momentum_buffer") if momentum else None for p in params]
            groups.append(_WeightGroup(params, float(group["lr"]), momentum,
                                       float(group.get("weight_decay", 0.0) or 0.0), buffers))
        return groups

    def _note_skip(self, usable: torch.Tensor, module: DartsSearchModule, batch_idx: int) -> bool | None:
        """Whether the correction is skipped: a bool on CPU; on CUDA ``None``, the flag is read without a sync."""
        epoch = module.trainer.current_epoch
        if usable.device.type != "cuda":
            skipped = not bool(usable)
            if skipped:
                self._report_skip(epoch, batch_idx)
            return skipped
        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        flag.copy_(~usable, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((flag, event, epoch, batch_idx))
        return None

    def poll(self, wait: bool) -> None:
        """Count and warn about device-side skip flags that have reached the host."""
        pending = []
        for flag, event, epoch, batch_idx in self._pending:
            if wait:
                event.synchronize()
            elif not event.query():
                pending.append((flag, event, epoch, batch_idx))
                continue
            if bool(flag):
                self._report_skip(epoch, batch_idx)
        self._pending = pending

    def _report_skip(self, epoch: int, batch_idx: int) -> None:
        self.skipped_corrections += 1
        _logger.warning("second-order DARTS: ||v|| = 0 (or not finite) at epoch %d, batch %d; used the first-order "
                        "architecture gradient for this step (%d skipped so far)", epoch, batch_idx,
                        self.skipped_corrections)


def architecture_gradient(order: int = 1, *, hessian_eps: float = HESSIAN_EPS) -> ArchitectureGradient:
    """The gradient part for ``order`` 1 (first order) or 2 (second order, unrolled).

    Raises:
        ArgumentTypeError, ArgumentValueError: ``argument`` is ``order`` or ``hessian_eps``.

    Example::

        >>> architecture_gradient(2).order
        2
    """
    check_int("order", order, minimum=1, maximum=2)
    return FirstOrderGradient() if order == 1 else UnrolledGradient(hessian_eps)
