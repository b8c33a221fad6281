"""Second-order (unrolled) DARTS inside NNI 3.0's one-shot machinery.

DARTS (Liu, Simonyan & Yang, ICLR 2019, https://arxiv.org/abs/1806.09055) approximates the bilevel problem
``min_alpha L_val(w*(alpha), alpha)`` by one unrolled weight step, eqs. 7-8 of the paper. NNI 3.0 ships only the
first-order variant (its ``DARTS`` docstring: "Second order ... is not supported yet"); this module adds the
second-order one. The algorithm follows the paper and quark0/darts ``cnn/architect.py`` (credit: Hanxiao Liu);
NNI 2.10's ``DartsTrainer._unrolled_backward`` was read for comparison (its virtual step rebinds a local name
and never changes the weights). Per batch, before the usual weight step, with ``xi`` the weight optimizer's
current learning rate:

1. virtual step ``w' = w - xi * (mu * momentum_buffer + grad_w L_train(w, alpha) + lambda * w)`` with the weight
   optimizer's momentum ``mu`` and weight decay ``lambda`` (zero momentum where no buffer exists yet);
2. on the validation batch ``g = grad_alpha L_val(w', alpha)`` and ``v = grad_w' L_val(w', alpha)``;
3. the finite-difference Hessian-vector product, ``eps = hessian_eps / ||v||``:
   ``h = (grad_alpha L_train(w + eps v, alpha) - grad_alpha L_train(w - eps v, alpha)) / (2 eps)``;
4. architecture gradient ``g - xi * h``, then the architecture optimizer's (Adam) step.

The network is never copied: the weights are overwritten in place for ``w'``, ``w + eps v`` and ``w - eps v``
and the saved values are copied back afterwards (bit-exact). Buffers (BatchNorm running statistics),
torchmetrics accumulators and the evaluator module's ``self.log`` are shielded from these extra passes.

Example::

    from nni.nas.experiment import NasExperiment
    from nni_darts_ext import darts_strategy
    NasExperiment(space, evaluator, darts_strategy("second-order")).run()
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import nni
import torch
import torch.nn as nn

from ._compat import import_nni_quietly
from .constants import ARC_LEARNING_RATE, HESSIAN_EPS
from .distributed import DistributedArchSync

with import_nni_quietly():
    from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
    from nni.nas.strategy import DARTS

try:  # torchmetrics comes with NNI's evaluators; without it there are no metric accumulators to protect.
    from torchmetrics import Metric as _Metric
except ImportError:  # pragma: no cover - torchmetrics is a dependency of NNI's evaluator
    _Metric = None

__all__ = ["SecondOrderDARTS", "SecondOrderDartsLightningModule"]

_logger = logging.getLogger(__name__)


def _no_log(*args: Any, **kwargs: Any) -> None:
    """Stand-in for ``LightningModule.log``/``log_dict`` during the virtual passes."""


def _loss_of(output: Any) -> torch.Tensor:
    """The loss of a ``training_step`` output (a tensor, or a dict with ``'loss'``, as NNI accepts)."""
    loss = output["loss"] if isinstance(output, dict) else output
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"training_step must return a loss tensor or a dict with 'loss', got {type(output).__name__}")
    return loss


def _check_positive_number(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 and finite, got {value}")


def _copies(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Detached copies (``torch._foreach_copy_``: one fused launch per device and dtype, not one per tensor)."""
    copies = [torch.empty_like(t) for t in tensors]
    with torch.no_grad():
        torch._foreach_copy_(copies, list(tensors))  # pylint: disable=protected-access
    return copies


def _grads(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``d loss / d inputs`` without touching ``.grad``; unused inputs get zeros."""
    grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
    # contiguous(): a gradient may come back as an expanded view, which in-place updates cannot write to.
    return [torch.zeros_like(x) if g is None else g.contiguous() for x, g in zip(inputs, grads)]


class _WeightGroup:
    """The weights of one param group of the weight optimizer, with its SGD hyper-parameters."""

    __slots__ = ("params", "lr", "momentum", "weight_decay", "buffers")

    def __init__(self, params: List[nn.Parameter], lr: float, momentum: float, weight_decay: float,
                 buffers: List[Optional[torch.Tensor]]):
        self.params = params
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.buffers = buffers


# DistributedArchSync (distributed.py): under DDP, architecture gradients are averaged across ranks right before
# each architecture optimizer step; with one process it changes nothing.
class SecondOrderDartsLightningModule(DistributedArchSync, DartsLightningModule):
    """NNI's ``DartsLightningModule`` whose architecture step uses the unrolled (second-order) gradient.

    Built by :class:`SecondOrderDARTS`; see the module docstring for the algorithm. The weight step, learning
    rate schedulers, warm-up, penalty and probability logging are NNI's.

    Args:
        training_module: the evaluator's LightningModule (any; its ``training_step`` gives the losses).
        hessian_eps: ``eps * ||v||``, the length of the finite-difference perturbation (0.01 in the paper).
        **kwargs: ``arc_learning_rate``, ``gradient_clip_val``, ``log_prob_every_n_step``, ``warmup_epochs`` and
            ``penalty``, as for ``DartsLightningModule``.

    Attributes:
        skipped_corrections: architecture steps that used the first-order gradient because ``||v||`` was 0
            (or not finite).
        last_arch_gradient_info: ``{'v_norm', 'eps', 'xi', 'skipped'}`` of the latest architecture step (floats on
            CPU; on CUDA 0-dim device tensors, so that reading them is the caller's synchronisation, not ours).

    On CUDA the ``||v|| = 0`` decision stays on the device (no host synchronisation per step): an unusable ``v``
    gets ``eps = 0``, both Hessian passes then run at ``w`` and the correction is exactly 0; the warning and the
    ``skipped_corrections`` count follow as soon as the flag has reached the host (at the latest at epoch end).

    Example::

        module = SecondOrderDartsLightningModule(evaluator.module, hessian_eps=0.01, gradient_clip_val=5.0)
    """

    def __init__(self, training_module: Any, *, hessian_eps: float = HESSIAN_EPS, **kwargs: Any):
        _check_positive_number("hessian_eps", hessian_eps)
        super().__init__(training_module, **kwargs)
        self.hessian_eps = float(hessian_eps)
        self.skipped_corrections = 0
        self.last_arch_gradient_info: Dict[str, Any] = {}
        self._warned_optimizer_options = False
        self._pending_skip_flags: List[Tuple[torch.Tensor, Any, int, int]] = []

    # ------------------------------------------------------------------------------------------- lightning
    def on_fit_start(self) -> Any:
        scaler = getattr(getattr(self.trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None:
            raise ValueError(
                f"second-order DARTS does not support precision={self.trainer.precision!r}: its GradScaler expects "
                "scaled gradients, the unrolled step computes unscaled ones; use precision '32-true' or 'bf16-mixed'"
            )
        return super().on_fit_start()

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        """Unrolled architecture step on ``batch['val']`` (after warm-up), then NNI's weight step on ``batch['train']``."""
        trn_batch = batch["train"]
        val_batch = batch["val"]

        # Phase 1: architecture step, only after warm-up (same condition as NNI's DartsLightningModule).
        if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
            self.resample()
            self.unrolled_architecture_step(trn_batch, val_batch, batch_idx)

        # Phase 2: the weight step, exactly as NNI's first-order module does it.
        self.resample()
        loss_and_metrics = self.training_module.training_step(trn_batch, 2 * batch_idx + 1)
        self.advance_optimization(_loss_of(loss_and_metrics), batch_idx, self.gradient_clip_val)
        self.advance_lr_schedulers(batch_idx)

        if batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs(self.export_probs())
        return loss_and_metrics

    def on_train_epoch_end(self) -> Any:
        self._poll_skip_flags(wait=True)
        return super().on_train_epoch_end()

    def on_fit_end(self) -> Any:
        self._poll_skip_flags(wait=True)
        return super().on_fit_end()

    # ------------------------------------------------------------------------------------ architecture step
    def unrolled_architecture_step(self, trn_batch: Any, val_batch: Any, batch_idx: int) -> None:
        """Set every architecture parameter's ``.grad`` to its unrolled gradient and step the Adam optimizer."""
        arc_optim = self.architecture_optimizers()
        if not isinstance(arc_optim, torch.optim.Optimizer):
            raise TypeError(f"Expect arc_optim to be a single Optimizer, but found: {arc_optim}")
        alphas = self.arch_parameters()
        grads = self.architecture_gradients(trn_batch, val_batch, batch_idx, alphas)
        arc_optim.zero_grad()
        for alpha, grad in zip(alphas, grads):
            alpha.grad = grad
        arc_optim.step()

    def architecture_gradients(self, trn_batch: Any, val_batch: Any, batch_idx: int,
                               alphas: Optional[List[nn.Parameter]] = None) -> List[torch.Tensor]:
        """The unrolled gradient ``g - xi * h`` of every architecture parameter (order of ``alphas``).

        Leaves the weights (bit-exact), all buffers, metric states and the weights' ``.grad`` as they were.
        """
        if alphas is None:
            alphas = self.arch_parameters()
        self._poll_skip_flags(wait=False)
        groups = self._weight_groups(set(alphas))
        weights = [p for group in groups for p in group.params]
        # The paper's single xi. A group with another learning rate scales its part of v by lr / xi, which keeps
        # g - xi * h the exact unrolled gradient when param groups have different learning rates.
        xi = max((group.lr for group in groups), default=0.0)
        info: Dict[str, Any] = {"xi": xi, "v_norm": None, "eps": None, "skipped": False}
        self.last_arch_gradient_info = info

        with self._shielded_passes():
            saved = _copies(weights)
            try:
                self._virtual_step(groups, trn_batch, batch_idx)
                g_alpha, v = self._unrolled_validation_gradients(alphas, weights, val_batch, batch_idx)
                if xi == 0 or not weights:  # w' = w: the unrolled gradient is the first-order one
                    return g_alpha
                v = self._scale_by_learning_rate(groups, v, xi)
                with torch.no_grad():
                    torch._foreach_copy_(weights, saved)  # pylint: disable=protected-access
                # eps = hessian_eps / ||v||, kept on the device: no host synchronisation on accelerators.
                v_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))  # pylint: disable=protected-access
                eps = self.hessian_eps / v_norm
                usable = torch.isfinite(v_norm) & (v_norm > 0) & torch.isfinite(eps)
                eps = torch.where(usable, eps, torch.zeros_like(eps))
                info.update(v_norm=v_norm, eps=eps)
                skipped = self._note_skip(usable, batch_idx)
                if skipped:  # known on the host (CPU): the correction is skipped, with a warning
                    info.update(skipped=True, v_norm=float(v_norm), eps=float(eps))
                    return g_alpha
                if skipped is False:
                    info.update(v_norm=float(v_norm), eps=float(eps))
                else:  # decided on the device; the warning follows once the flag reaches the host
                    info["skipped"] = ~usable
                # On the device path an unusable v gives eps = 0, so both passes run at w and the correction is 0.
                torch._foreach_mul_(v, eps)  # pylint: disable=protected-access
                step = v  # eps * v
                grad_plus = self._train_arch_gradients_at(alphas, weights, saved, step, 1, trn_batch, batch_idx)
                grad_minus = self._train_arch_gradients_at(alphas, weights, saved, step, -1, trn_batch, batch_idx)
                # g - xi * h, h = (grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / (2 eps).
                scale = torch.where(usable, xi / (2.0 * eps), torch.zeros_like(eps))
                return [g - torch.where(usable, (gp - gm) * scale, torch.zeros_like(g))
                        for g, gp, gm in zip(g_alpha, grad_plus, grad_minus)]
            finally:
                with torch.no_grad():
                    torch._foreach_copy_(weights, saved)  # pylint: disable=protected-access

    def _virtual_step(self, groups: List["_WeightGroup"], trn_batch: Any, batch_idx: int) -> None:
        """Overwrite the weights with w' = w - lr * (mu * buf + grad_w L_train(w, alpha) + lambda * w)."""
        weights = [p for group in groups for p in group.params]
        loss = _loss_of(self.training_module.training_step(trn_batch, 2 * batch_idx + 1))
        grads = _grads(loss, weights)
        del loss
        offset = 0
        with torch.no_grad():
            for group in groups:
                steps = grads[offset: offset + len(group.params)]
                offset += len(group.params)
                if group.weight_decay:
                    torch._foreach_add_(steps, group.params, alpha=group.weight_decay)  # pylint: disable=protected-access
                if group.momentum:
                    with_buffer = [(s, b) for s, b in zip(steps, group.buffers) if b is not None]
                    if with_buffer:
                        torch._foreach_add_([s for s, _ in with_buffer], [b for _, b in with_buffer],  # pylint: disable=protected-access
                                            alpha=group.momentum)
                torch._foreach_add_(group.params, steps, alpha=-group.lr)  # pylint: disable=protected-access

    def _unrolled_validation_gradients(self, alphas: List[nn.Parameter], weights: List[nn.Parameter],
                                       val_batch: Any, batch_idx: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """``(grad_alpha L_val(w', alpha), grad_w' L_val(w', alpha))``, with NNI's penalty on the loss if set."""
        loss = _loss_of(self.training_module.training_step(val_batch, 2 * batch_idx))
        if self.penalty is not None:
            loss, details = self.penalty(loss, self.export_probs())
            self.log_dict({f"penalty/{k}": v for k, v in details.items()})
        grads = _grads(loss, list(alphas) + list(weights))
        return grads[: len(alphas)], grads[len(alphas):]

    @staticmethod
    def _scale_by_learning_rate(groups: List["_WeightGroup"], v: List[torch.Tensor], xi: float) -> List[torch.Tensor]:
        offset = 0
        for group in groups:
            if group.lr != xi:
                torch._foreach_mul_(v[offset: offset + len(group.params)], group.lr / xi)  # pylint: disable=protected-access
            offset += len(group.params)
        return v

    def _train_arch_gradients_at(self, alphas: List[nn.Parameter], weights: List[nn.Parameter],
                                 saved: List[torch.Tensor], step: List[torch.Tensor], sign: int,
                                 trn_batch: Any, batch_idx: int) -> List[torch.Tensor]:
        """``grad_alpha L_train(w + sign * step, alpha)`` (the weights are left at ``w + sign * step``)."""
        with torch.no_grad():
            torch._foreach_copy_(weights, saved)  # pylint: disable=protected-access
            torch._foreach_add_(weights, step, alpha=sign)  # pylint: disable=protected-access
        loss = _loss_of(self.training_module.training_step(trn_batch, 2 * batch_idx + 1))
        return _grads(loss, alphas)

    # --------------------------------------------------------------------------------------- ||v|| = 0 guard
    def _note_skip(self, usable: torch.Tensor, batch_idx: int) -> Optional[bool]:
        """Whether the correction is skipped: a bool on CPU; on CUDA ``None``, the flag is read without a sync."""
        epoch = self.trainer.current_epoch
        if usable.device.type != "cuda":
            skipped = not bool(usable)
            if skipped:
                self._report_skip(epoch, batch_idx)
            return skipped
        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        flag.copy_(~usable, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending_skip_flags.append((flag, event, epoch, batch_idx))
        return None

    def _poll_skip_flags(self, wait: bool) -> None:
        pending = []
        for flag, event, epoch, batch_idx in getattr(self, "_pending_skip_flags", []):
            if wait:
                event.synchronize()
            elif not event.query():
                pending.append((flag, event, epoch, batch_idx))
                continue
            if bool(flag):
                self._report_skip(epoch, batch_idx)
        self._pending_skip_flags = pending

    def _report_skip(self, epoch: int, batch_idx: int) -> None:
        self.skipped_corrections += 1
        _logger.warning(
            "second-order DARTS: ||v|| = 0 (or not finite) at epoch %d, batch %d; used the first-order architecture "
            "gradient for this step (%d skipped so far)", epoch, batch_idx, self.skipped_corrections,
        )

    # ------------------------------------------------------------------------------------------- internals
    def _weight_optimizer(self) -> torch.optim.Optimizer:
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        weight_optimizers = [opt for opt in optimizers if not getattr(opt, "is_arch_optimizer", False)]
        if len(weight_optimizers) != 1:
            raise ValueError(
                f"second-order DARTS needs exactly one weight optimizer from the evaluator, got {len(weight_optimizers)}"
            )
        optimizer = weight_optimizers[0]
        return getattr(optimizer, "optimizer", optimizer)  # unwrap Lightning's LightningOptimizer

    def _weight_groups(self, arch_params: set) -> List[_WeightGroup]:
        optimizer = self._weight_optimizer()
        groups = []
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.requires_grad and p not in arch_params]
            if not params:
                continue
            momentum = float(group.get("momentum", 0.0) or 0.0)
            if not self._warned_optimizer_options and (
                group.get("nesterov") or group.get("dampening") or "momentum" not in group
            ):
                self._warned_optimizer_options = True
                _logger.warning(
                    "second-order DARTS: the virtual step is a plain SGD step (lr, momentum, weight_decay); "
                    "the weight optimizer %s (nesterov/dampening or no momentum) steps differently",
                    type(optimizer).__name__,
                )
            buffers = [optimizer.state.get(p, {}).get("momentum_buffer") if momentum else None for p in params]
            groups.append(_WeightGroup(params, float(group["lr"]), momentum,
                                       float(group.get("weight_decay", 0.0) or 0.0), buffers))
        return groups

    @contextlib.contextmanager
    def _shielded_passes(self) -> Iterator[None]:
        """Silence the evaluator's ``log``/``log_dict`` and restore all buffers and metric states afterwards."""
        module = self.training_module
        missing = object()
        saved_attrs = {name: module.__dict__.get(name, missing) for name in ("log", "log_dict")}
        owners: List[Tuple[nn.Module, str, torch.Tensor]] = []
        metrics: List[Tuple[Any, Dict[str, Any]]] = []
        for owner in self.modules():
            owners += [(owner, name, buf) for name, buf in owner._buffers.items()  # pylint: disable=protected-access
                       if buf is not None]
            if _Metric is not None and isinstance(owner, _Metric):
                metrics.append((owner, _metric_snapshot(owner)))
        originals = [buf for _, _, buf in owners]
        saved = _copies(originals)
        module.log = _no_log
        module.log_dict = _no_log
        try:
            yield
        finally:
            for name, value in saved_attrs.items():
                if value is missing:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value
            for owner, name, buf in owners:
                owner._buffers[name] = buf  # pylint: disable=protected-access (a pass may have rebound it)
            if originals:
                with torch.no_grad():
                    torch._foreach_copy_(originals, saved)  # pylint: disable=protected-access
            for metric, snapshot in metrics:
                _metric_restore(metric, snapshot)


_METRIC_BOOKKEEPING = ("_update_count", "_computed", "_forward_cache")


def _clone_state(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return [_clone_state(v) for v in value]
    return value


def _metric_snapshot(metric: Any) -> Dict[str, Any]:
    """Copies of a torchmetrics ``Metric``'s accumulated states and update bookkeeping."""
    names = list(getattr(metric, "_defaults", {})) + [n for n in _METRIC_BOOKKEEPING if hasattr(metric, n)]
    return {name: _clone_state(getattr(metric, name)) for name in names}


def _metric_restore(metric: Any, snapshot: Dict[str, Any]) -> None:
    for name, value in snapshot.items():
        setattr(metric, name, value)


@nni.trace
class SecondOrderDARTS(DARTS):
    """Second-order (unrolled) DARTS: NNI's ``DARTS`` strategy with the paper's eq. 7-8 architecture gradient.

    Works with every model space and Lightning evaluator that NNI's ``DARTS`` accepts. Each architecture step
    costs four forward/backward passes instead of one (the two Hessian-vector passes skip weight gradients). On
    the same supernet a search step took 2.3-2.4x NNI's first-order step on CPU and 1.9-3.1x on an H200 (where
    NNI's supernet is bound by Python and kernel launches); extra memory is a few copies of the weights (peak
    1.0-1.05x, benchmarks/search_step.py).

    .. note:: The virtual step is a plain SGD step with the weight optimizer's ``lr``, ``momentum`` and
       ``weight_decay`` (as in the paper); other optimizers (e.g. NNI's default Adam) get the same SGD step with
       their learning rate, and a warning. Mixed precision with a GradScaler (``precision='16-mixed'``) is refused.
       The architecture step's extra passes do not update BatchNorm statistics, so unlike first-order NNI the
       validation batch never feeds them.

    Args:
        arc_learning_rate: Adam learning rate of the architecture parameters.
        gradient_clip_val: clip norm of the weight gradients (``None`` disables clipping).
        log_prob_every_n_step: log the choice probabilities every so many steps.
        warmup_epochs: epochs without architecture steps at the start.
        penalty: NNI's ``ExpectationProfilerPenalty`` (or its keyword dict), applied to the validation loss.
        hessian_eps: perturbation length ``eps * ||v||`` of the finite-difference Hessian-vector product.
        **kwargs: passed to NNI's ``DARTS`` (e.g. ``mutation_hooks``).

    Raises:
        TypeError, ValueError: for arguments of the wrong type or range (the message names the argument).

    Example::

        strategy = SecondOrderDARTS(gradient_clip_val=5.0)
        NasExperiment(space, evaluator, strategy).run()
    """

    def __init__(self, *, arc_learning_rate: float = ARC_LEARNING_RATE, gradient_clip_val: Optional[float] = None,
                 log_prob_every_n_step: int = 10, warmup_epochs: int = 0, penalty: Any = None,
                 hessian_eps: float = HESSIAN_EPS, **kwargs: Any):
        _check_positive_number("arc_learning_rate", arc_learning_rate)
        _check_positive_number("gradient_clip_val", gradient_clip_val, allow_none=True)
        _check_positive_number("hessian_eps", hessian_eps)
        for name, value, low in (("log_prob_every_n_step", log_prob_every_n_step, 1),
                                 ("warmup_epochs", warmup_epochs, 0)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs,
                         penalty=penalty, **kwargs)
        self.hessian_eps = float(hessian_eps)

    def configure_oneshot_module(self, training_module: Any) -> BaseOneShotLightningModule:
        return SecondOrderDartsLightningModule(
            training_module,
            hessian_eps=self.hessian_eps,
            arc_learning_rate=self.arc_learning_rate,
            gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step,
            warmup_epochs=self.warmup_epochs,
            penalty=self.penalty,
        )
