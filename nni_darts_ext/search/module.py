"""The one two-phase search module every preset runs on.

Per batch (NNI's ``DartsLightningModule`` order): after ``warmup_epochs``, an architecture step on
``batch['val']`` with the strategy's :mod:`.gradients` part (first or second order) plus the variants' loss terms
on the architecture parameters; then a weight step on ``batch['train']`` (architecture parameters perturbed by
SDARTS while it runs), gradient clipping, the LR schedulers, and NNI's probability logging.

What is written once here, for every preset:

* one stable order of architecture parameters (the supernet's ``named_parameters`` order) for the optimizer's
  param group, checkpoints, DDP broadcast/sync and export: NNI's ``arch_parameters()`` goes through a set;
* the architecture optimizer (Adam with the recipe's betas and weight decay);
* per-epoch schedules (mixing temperature, the DARTS- skip weight, P-DARTS skip dropout) from the epoch number
  alone, so a resumed run continues with the same values;
* gradients nobody reads are not computed (weights frozen in the architecture step, alphas in the weight step;
  off under DDP, which expects every gradient), and channels-last on CPU;
* DDP: architecture gradients averaged over ranks before every architecture step (:class:`DistributedArchSync`);
* checkpoints carry the strategy's own entries (``checkpoint_extras``: P-DARTS' stage and op masks).

Every part is typed by its interface in :mod:`.parts` and checked against it when the module is built; the module
calls nothing else on a part.

Example::

    module = DartsSearchModule(evaluator.module, gradient=UnrolledGradient(0.01), gradient_clip_val=5.0)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from .._compat import import_nni_quietly
from ..checks import check_bool, check_float, check_optional
from ..constants import ARC_BETAS, ARC_WEIGHT_DECAY
from ..distributed import DistributedArchSync, arch_gradient_sync_hook
from ..errors import ArgumentTypeError
from .cells import MixedCell
from .cost import ExpectedCost
from .gradients import FirstOrderGradient
from .layers import ChannelsFirstFactorizedReduce
from .mixing import Mixing, as_mixing
from .parts import ArchitectureGradient, ArchLossTerm, CellSchedule, Perturbation, check_parts
from .shielding import frozen_parameters, loss_of, shielded_passes

with import_nni_quietly():
    from nni.nas.hub.pytorch.nasnet import FactorizedReduce
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule

__all__ = ["DartsSearchModule", "check_arc_betas", "check_arc_weight_decay"]

_logger = logging.getLogger(__name__)


class DartsSearchModule(DistributedArchSync, DartsLightningModule):
    """Two-phase one-shot module: architecture step, then weight step (see the module docstring).

    Args:
        training_module: the evaluator's LightningModule (its ``training_step`` gives the losses).
        gradient: an :class:`~.parts.ArchitectureGradient` (default :class:`.gradients.FirstOrderGradient`).
        mixing: the strategy's :class:`.mixing.Mixing` (loss terms read it); the supernet modules hold it too.
        regularizers: :class:`~.parts.ArchLossTerm` s added to the architecture loss (regularisers, a cost).
        cost: the search cost among ``regularizers`` (:class:`~.cost.ExpectedCost`), kept for reports (the
            health records read its expected cost); ``None`` without one.
        perturbation: a :class:`~.parts.Perturbation` of the architecture around the weight step (SDARTS).
        cell_schedule: a :class:`~.parts.CellSchedule` (``(epoch, max_epochs) -> {MixedCell setting: value}``),
            applied at every epoch start.
        cell_settings: fixed ``MixedCell`` settings (``max_skip_connects``, ``export_threshold``).
        arc_betas, arc_weight_decay: the architecture Adam's betas and weight decay.
        skip_unused_gradients: do not compute gradients that are zeroed before use (single process only).
        channels_last: run the supernet channels-last; ``None``: on for single-process CPU runs.
        checkpoint_extras: ``() -> {key: value}`` added to every checkpoint this module saves (the strategy's
            :meth:`~.strategy.DartsSearch.checkpoint_extras`).
        **kwargs: NNI's ``DartsLightningModule`` arguments (``arc_learning_rate``, ``gradient_clip_val``,
            ``log_prob_every_n_step``, ``warmup_epochs``, ``penalty``).

    Raises:
        ArgumentTypeError, ArgumentValueError: a part that does not implement its interface, or a bad value
            (``argument`` names the keyword).

    Example::

        DartsSearchModule(module, gradient=FirstOrderGradient(), gradient_clip_val=5.0)
    """

    def __init__(self, training_module: Any, *, gradient: ArchitectureGradient | None = None,
                 mixing: Mixing | None = None, regularizers: Sequence[ArchLossTerm] = (),
                 cost: ExpectedCost | None = None,
                 perturbation: Perturbation | None = None, cell_schedule: CellSchedule | None = None,
                 cell_settings: Mapping[str, Any] | None = None, arc_betas: tuple[float, float] = ARC_BETAS,
                 arc_weight_decay: float = ARC_WEIGHT_DECAY, skip_unused_gradients: bool = True,
                 channels_last: bool | None = None,
                 checkpoint_extras: Callable[[], Mapping[str, Any]] | None = None, **kwargs: Any):
        super().__init__(training_module, **kwargs)
        self.gradient: ArchitectureGradient = gradient if gradient is not None else FirstOrderGradient()
        self.regularizers: list[ArchLossTerm] = check_parts(regularizers=regularizers, perturbation=perturbation,
                                                            cell_schedule=cell_schedule, gradient=self.gradient)
        if cost is not None and not isinstance(cost, ExpectedCost):
            raise ArgumentTypeError("cost", f"must be an ExpectedCost, got {type(cost).__name__}")
        self.cost = cost
        self.mixing: Mixing | None = None if mixing is None else as_mixing(mixing)
        self.perturbation = perturbation
        self.cell_schedule = cell_schedule
        self.cell_settings = dict(cell_settings or {})
        MixedCell.check_settings(self.cell_settings, "cell_settings")
        self.arc_betas = check_arc_betas(arc_betas)
        self.arc_weight_decay = check_arc_weight_decay(arc_weight_decay)
        self.skip_unused_gradients = check_bool("skip_unused_gradients", skip_unused_gradients)
        self.channels_last = check_optional(check_bool, "channels_last", channels_last)
        if checkpoint_extras is not None and not callable(checkpoint_extras):
            raise ArgumentTypeError("checkpoint_extras", f"must be callable, got {type(checkpoint_extras).__name__}")
        self.checkpoint_extras = checkpoint_extras
        self._named_arch: list[tuple[str, nn.Parameter]] | None = None
        self._mixing_modules: list[Mixing] | None = None
        self._cells: list[MixedCell] | None = None
        self._pass_hooks: list[Any] = []
        self._weight_params: list[nn.Parameter] = []
        self._skip = False

    # -------------------------------------------------------------------------------- architecture parameters
    def named_arch_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every architecture parameter, in the supernet's ``named_parameters`` order.

        The same order in every process and every run of the same space: the architecture optimizer's param
        group, checkpoints, DDP collectives and exports all use it.
        """
        if self._named_arch is None:
            ids = {id(p) for p in super().arch_parameters()}
            self._named_arch = [(n, p) for n, p in self.named_parameters() if id(p) in ids]
        return self._named_arch

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters in a stable, name-keyed order (NNI's comes from a set)."""
        return [p for _, p in self.named_arch_parameters()]

    def op_alphas(self) -> list[nn.Parameter]:
        """The operation logits alone (PC-DARTS' edge-normalisation ``beta`` excluded): what regularisers see."""
        return [p for n, p in self.named_arch_parameters() if "_arch_beta" not in n]

    def mixed_cells(self) -> list[MixedCell]:
        """The supernet's :class:`~.cells.MixedCell` s, in module order (empty on spaces without DARTS cells)."""
        if self._cells is None:
            self._cells = [m for m in self.modules() if isinstance(m, MixedCell)]
        return self._cells

    def configure_architecture_optimizers(self) -> Any:
        params = self.arch_parameters()
        if not params:
            raise ValueError("No architecture parameters found. Nothing to search.")
        optimizer = torch.optim.Adam(params, self.arc_learning_rate, betas=self.arc_betas,
                                     weight_decay=self.arc_weight_decay)
        # Under DDP, every rank averages the architecture gradients right before each step (however formed).
        optimizer.register_step_pre_hook(arch_gradient_sync_hook(params))
        return optimizer

    # ---------------------------------------------------------------------------------------------- hooks
    def on_fit_start(self) -> Any:
        self.gradient.check_trainer(self.trainer)
        self._named_arch = None
        self._mixing_modules = None
        self._cells = None
        arch_ids = {id(p) for p in self.arch_parameters()}
        self._weight_params = [p for p in self.parameters() if p.requires_grad and id(p) not in arch_ids]
        world_size = self.trainer.world_size
        self._skip = self.skip_unused_gradients and world_size == 1
        if self.skip_unused_gradients and not self._skip:
            _logger.info("skip_unused_gradients is off with %d processes (DDP needs every gradient).", world_size)
        if _use_channels_last(self.channels_last, self.device, world_size):
            self.training_module.to(memory_format=torch.channels_last)
            for module in self.training_module.modules():
                if type(module) is FactorizedReduce:
                    module.__class__ = ChannelsFirstFactorizedReduce
                    module.to(memory_format=torch.contiguous_format)
        self.apply_cell_settings()
        if not self._pass_hooks and any(m.share_per_pass for m in self._mixings()):
            self._sample_once_per_forward()
        return super().on_fit_start()

    def on_fit_end(self) -> Any:
        for hook in self._pass_hooks:
            hook.remove()
        self._pass_hooks = []
        return super().on_fit_end()

    def on_train_start(self) -> Any:
        # Lightning skips on_train_epoch_start when it resumes inside an epoch: apply the epoch's schedules here too.
        self.set_progress(self.trainer.current_epoch, self.trainer.max_epochs or 1)
        return super().on_train_start()

    def on_train_epoch_start(self) -> Any:
        self.set_progress(self.trainer.current_epoch, self.trainer.max_epochs or 1)
        return super().on_train_epoch_start()

    def on_train_epoch_end(self) -> Any:
        self.gradient.on_epoch_end(self)
        return super().on_train_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the strategy's :attr:`checkpoint_extras` entries (P-DARTS: its stage and op masks)."""
        if self.checkpoint_extras is not None:
            checkpoint.update(self.checkpoint_extras())
        super().on_save_checkpoint(checkpoint)

    def set_progress(self, epoch: int, max_epochs: int) -> None:
        """Apply every epoch schedule (mixing temperature, cell settings) for ``epoch`` of ``max_epochs``."""
        for mixing in self._mixings():
            mixing.set_progress(epoch, max_epochs)
        if self.cell_schedule is not None:
            settings = self.cell_schedule(epoch, max_epochs)
            MixedCell.check_settings(settings, "cell_schedule")
            self.apply_cell_settings(settings)

    def apply_cell_settings(self, settings: Mapping[str, Any] | None = None) -> None:
        """Set ``MixedCell`` run-time settings (the fixed ``cell_settings``, then ``settings``)."""
        values = {**self.cell_settings, **(settings or {})}
        for cell in self.mixed_cells():
            cell.apply_settings(values)

    # ------------------------------------------------------------------------------------------ objectives
    def validation_objective(self, val_batch: Any, batch_idx: int) -> torch.Tensor:
        """The architecture step's loss on a validation batch (with NNI's penalty, if set)."""
        loss = loss_of(self.training_module.training_step(val_batch, 2 * batch_idx))
        if self.penalty is not None:
            loss, details = self.penalty(loss, self.export_probs())
            self.log_dict({f"penalty/{k}": v for k, v in details.items()})
        return loss

    def architecture_loss_terms(self) -> torch.Tensor | None:
        """Sum of the loss terms (:class:`~.parts.ArchLossTerm`) for the current epoch; ``None`` without any."""
        if not self.regularizers:
            return None
        epoch, max_epochs = self.trainer.current_epoch, self.trainer.max_epochs or 1
        total = None
        for regularizer in self.regularizers:
            term = regularizer.arch_loss(self, epoch=epoch, max_epochs=max_epochs)
            total = term if total is None else total + term
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        """The training module's validation step on the supernet, for ``trainer.validate(module, loader)``.

        NNI's DARTS runs no validation loop during the search; the pipeline validates once at its end.
        """
        return self.training_module.validation_step(batch, batch_idx)

    # ---------------------------------------------------------------------------------------------- step
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        arc_optim = self.architecture_optimizers()
        if not isinstance(arc_optim, torch.optim.Optimizer):
            raise TypeError(f"Expect arc_optim to be a single Optimizer, but found: {arc_optim}")
        trn_batch, val_batch = batch["train"], batch["val"]

        if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
            frozen = self._weight_params if self._skip and not self.gradient.needs_weight_gradients else ()
            with frozen_parameters(frozen):
                self.resample()
                arc_optim.zero_grad()
                self.gradient.backward(self, trn_batch, val_batch, batch_idx)
                arc_optim.step()

        self.resample()
        alphas = self.op_alphas()
        perturbation = self.perturbation
        held = perturbation is not None and perturbation.replaces_logits_with_weights
        if perturbation is not None:
            perturbation.perturb(alphas, self._training_loss_fn(trn_batch, batch_idx, held),
                                 epoch=self.trainer.current_epoch, max_epochs=self.trainer.max_epochs or 1)
        try:
            with frozen_parameters(self.arch_parameters() if self._skip else ()), self._weights_held(held):
                loss_and_metrics = self.training_module.training_step(trn_batch, 2 * batch_idx + 1)
                self.advance_optimization(loss_of(loss_and_metrics), batch_idx, self.gradient_clip_val)
        finally:
            if perturbation is not None:
                perturbation.restore(alphas)

        self.advance_lr_schedulers(batch_idx)
        if batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs(self.export_probs())
        return loss_and_metrics

    def _training_loss_fn(self, trn_batch: Any, batch_idx: int, held: bool) -> Callable[[], torch.Tensor]:
        """The weight-step loss as a function of the (perturbed) architecture weights, for SDARTS' attack.

        Evaluated in eval mode (BatchNorm on running statistics), as SmoothDARTS' ``Linf_PGD_alpha`` does, and
        shielded: no buffer, metric or log changes.
        """

        def loss_fn() -> torch.Tensor:
            was_training = self.training_module.training
            self.training_module.eval()
            try:
                with shielded_passes(self, buffers=False), self._weights_held(held):
                    return loss_of(self.training_module.training_step(trn_batch, 2 * batch_idx + 1))
            finally:
                self.training_module.train(was_training)

        return loss_fn

    def _mixings(self) -> list[Mixing]:
        if self._mixing_modules is None:
            self._mixing_modules = [m for m in self.modules() if isinstance(m, Mixing)]
        return self._mixing_modules

    def _sample_once_per_forward(self) -> None:
        """One mixing sample per architecture parameter per forward pass of the supernet, shared by all its cells.

        DrNAS and GDAS draw once per pass (NNI calls the mixing once per cell); forward hooks on the supernet open
        and close :meth:`Mixing.sample_once` around every pass, whichever code path runs it.
        """
        model = self.training_module.model
        stack = contextlib.ExitStack()

        def open_pass(module: nn.Module, args: Any) -> None:
            stack.close()  # a pass that raised never reached close_pass
            for mixing in self._mixings():
                stack.enter_context(mixing.sample_once())

        def close_pass(module: nn.Module, args: Any, output: Any) -> None:
            stack.close()

        self._pass_hooks = [model.register_forward_pre_hook(open_pass), model.register_forward_hook(close_pass)]

    @contextlib.contextmanager
    def _weights_held(self, active: bool) -> Iterator[None]:
        """While a perturbation holds weights in the alphas (SDARTS), the mixings pass them through."""
        with contextlib.ExitStack() as stack:
            if active:
                for mixing in self._mixings():
                    stack.enter_context(mixing.passthrough())
            yield

    # --------------------------------------------------------------------------------------------- export
    def export(self) -> dict[str, Any]:
        self.apply_cell_settings()
        return super().export()

    def export_probs(self) -> dict[str, Any]:
        self.apply_cell_settings()
        with contextlib.ExitStack() as stack:
            for mixing in self._mixings():  # deterministic weights, never a random sample
                stack.enter_context(mixing.deterministic())
            return super().export_probs()


def _use_channels_last(setting: bool | None, device: torch.device, world_size: int = 1) -> bool:
    """Resolve ``channels_last=None``: on for single-process CPU runs (oneDNN depthwise convolutions), off elsewhere.

    Off under CPU DDP: channels-last supernets crashed gloo DDP processes (heap corruption, torch 2.14).
    """
    if setting is None:
        return device.type == "cpu" and world_size == 1
    return setting


def check_arc_betas(value: Any) -> tuple[float, float]:
    """The architecture Adam's ``betas``: two numbers in ``[0, 1)`` (``argument``: ``arc_betas``).

    Example::

        >>> check_arc_betas([0.5, 0.999])
        (0.5, 0.999)
    """
    betas = tuple(value) if isinstance(value, Iterable) and not isinstance(value, (str, bytes)) else ()
    if len(betas) != 2:
        raise ArgumentTypeError("arc_betas", f"must be two numbers, got {value!r}")
    low, high = (check_float("arc_betas", beta, low=0.0, high=1.0, high_open=True) for beta in betas)
    return low, high


def check_arc_weight_decay(value: Any) -> float:
    """The architecture Adam's weight decay: a number >= 0 (``argument``: ``arc_weight_decay``)."""
    return check_float("arc_weight_decay", value, low=0.0)
