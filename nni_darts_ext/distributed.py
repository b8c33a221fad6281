"""DARTS search on several processes (Lightning's DDP) with one architecture on every rank.

NNI's one-shot DARTS runs, inside one outer ``training_step``, an architecture backward (``batch['val']``) and a
weight backward (``batch['train']``) with manual optimization, calling the evaluator module's ``training_step``
directly. Under Lightning 2.6's ``DDPStrategy`` the outer ``training_step`` goes through the DDP wrapper once and
``DDPStrategy.pre_backward`` calls ``prepare_for_backward`` before *each* ``manual_backward``, so DDP's reducer
all-reduces both backwards, alphas included (they are registered ``nn.Parameter``s of the supernet, so DDP also
broadcasts them from rank 0 when it wraps the model). That holds only for gradients that go through
``manual_backward``: gradients made with ``torch.autograd.grad`` (the second-order step's unrolled gradient) or
written into ``.grad`` by hand never reach the reducer, and older Lightning versions (NNI #5013, #4105, #1962)
did not prepare the reducer for manual backwards at all, so each rank stepped its alphas with its own gradient.

This module does not rely on the reducer for the architecture: :class:`DistributedArchSync` registers a step
pre-hook on the architecture optimizer that all-reduces (averages) the gradients of every architecture parameter
(``alpha``; ``beta`` for PC-DARTS) right before each step, whoever formed them; it broadcasts the architecture
parameters from rank 0 at fit start; and at the end of training it all-gathers the architecture (and weight)
parameters and records the largest difference across ranks in :attr:`DistributedArchSync.distributed_report`.
With one process every function here is a no-op, so single-process updates and export are NNI's, bit for bit.

Example::

    trainer = Trainer(strategy="ddp", accelerator="gpu", devices=4)  # via darts_evaluator(...)
    strategy = darts_strategy("first-order")        # its one-shot module mixes in DistributedArchSync
    NasExperiment(space, evaluator, strategy).run()
    strategy.oneshot_module.distributed_report    # {'world_size': 4, 'alpha_max_abs_diff_across_ranks': 0.0, ...}
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "world_size",
    "global_rank",
    "is_rank_zero",
    "launched_rank",
    "all_reduce_gradients",
    "broadcast_tensors",
    "all_gather_max_abs_diff",
    "DistributedArchSync",
    "arch_gradient_sync_hook",
]

_logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialized with more than one process.

    Example::

        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes of the default group (1 when ``torch.distributed`` is not initialized).

    Example::

        >>> world_size()
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_rank() -> int:
    """This process's rank in the default group (0 when ``torch.distributed`` is not initialized).

    Example::

        >>> global_rank()
        0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# Rank variables set by the launchers before torch.distributed starts: torchrun (RANK, GROUP_RANK), Lightning's
# own launcher (LOCAL_RANK, NODE_RANK for the processes it starts) and SLURM (SLURM_PROCID).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def launched_rank() -> int:
    """0 in the process that will be global rank 0, else a positive number, known before the Trainer starts.

    Lightning re-runs the whole script for ranks 1..N-1, so code before ``fit`` (checking and creating the output
    folder) must know it is not rank 0. Uses :func:`global_rank` once ``torch.distributed`` is initialized.

    Example::

        if launched_rank() == 0:
            out.mkdir()
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    if os.environ.get("SLURM_NTASKS", "1") == "1":  # not a multi-task SLURM job: SLURM_PROCID means nothing
        variables = [v for v in _RANK_VARIABLES if v != "SLURM_PROCID"]
    else:
        variables = list(_RANK_VARIABLES)
    for name in variables:
        try:
            if int(os.environ.get(name, "0")) != 0:
                return int(os.environ[name])
        except ValueError:
            continue
    return 0


def _check_tensors(name: str, tensors: Any) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        raise TypeError(f"{name} must be an iterable of tensors, not a single tensor")
    tensors = list(tensors)
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must hold tensors, got {type(t).__name__}")
    return tensors


def all_reduce_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average ``p.grad`` over all processes, in place, for every parameter in ``params``.

    One ``all_reduce`` per (device, dtype). A gradient that is ``None`` on some ranks counts as zero there; it
    stays ``None`` only where it is ``None`` on every rank (so Adam skips it exactly as it would with one process).
    Every rank must call it with the same parameters in the same order. No-op unless :func:`is_distributed`.

    Example::

        loss.backward()
        all_reduce_gradients(module.arch_parameters())
        arch_optimizer.step()
    """
    params = _check_tensors("params", params)
    if not is_distributed() or not params:
        return
    groups: dict[Any, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        groups[(p.device, p.dtype)].append(p)
    n = dist.get_world_size()
    for (device, dtype), group in groups.items():
        # The flat buffer ends with one "has a gradient" flag per parameter, reduced in the same call.
        flags = torch.tensor([0.0 if p.grad is None else 1.0 for p in group], device=device, dtype=dtype)
        grads = [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in group]
        flat = torch.cat(grads + [flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(n)
        present = flat[flat.numel() - len(group):].tolist()  # one host sync per group
        offset = 0
        for i, p in enumerate(group):
            size = p.numel()
            chunk = flat[offset: offset + size].view_as(p)
            offset += size
            if present[i] == 0:  # no rank had a gradient
                continue
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``tensors`` (e.g. parameters) to every rank, in place. No-op with one process.

    Example::

        broadcast_tensors(module.arch_parameters())  # same starting alphas on every rank
    """
    tensors = _check_tensors("tensors", tensors)
    if not is_distributed():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def all_gather_max_abs_diff(tensors: Iterable[torch.Tensor]) -> float:
    """The largest absolute difference, over all elements of ``tensors``, between any two ranks' values.

    All ranks must call it with tensors of the same shapes, in the same order. Returns 0.0 with one process or
    no tensors. Compared in float64 after gathering.

    Example::

        diff = all_gather_max_abs_diff(module.arch_parameters())  # 0.0 when all ranks agree
    """
    tensors = _check_tensors("tensors", tensors)
    if not is_distributed() or not tensors:
        return 0.0
    device = tensors[0].device
    flat = torch.cat([t.detach().to(device=device, dtype=torch.float64).reshape(-1) for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    stacked = torch.stack(gathered)
    return float((stacked.amax(dim=0) - stacked.amin(dim=0)).max().item())


class DistributedArchSync:
    """Mixin for NNI's DARTS one-shot modules: one architecture on every DDP rank.

    * fit start: the architecture parameters are broadcast from rank 0 (DDP does so too when it wraps the model;
      this also covers strategies that do not wrap, and makes the rule explicit);
    * before every architecture optimizer step: their gradients are averaged over ranks
      (:func:`all_reduce_gradients`, an optimizer step pre-hook), so any way of forming them (first-order
      backward, the second-order unrolled gradient, PC-DARTS' ``beta``) is synced, as DDP syncs weight gradients;
    * train end: :attr:`distributed_report` gets ``world_size``, ``alpha_max_abs_diff_across_ranks`` and
      ``weight_max_abs_diff_across_ranks`` (all-gathered; 0.0 with one process).

    Put it first in the bases: ``class M(DistributedArchSync, DartsLightningModule)``. With one process nothing
    changes.

    Example::

        class MyModule(DistributedArchSync, DartsLightningModule):
            pass
    """

    distributed_report: dict[str, Any]

    def configure_architecture_optimizers(self) -> Any:
        optimizer = super().configure_architecture_optimizers()  # type: ignore[misc]
        optimizers = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
        key = _param_order(self)
        for opt in optimizers:
            if isinstance(opt, torch.optim.Optimizer):
                # NNI's arch_parameters() goes through a set (id order, different on every rank): all-reduce in
                # the module's parameter order, the same on every rank.
                params = sorted((p for group in opt.param_groups for p in group["params"]), key=key)
                opt.register_step_pre_hook(arch_gradient_sync_hook(params))
        return optimizer

    def on_fit_start(self) -> Any:
        self.distributed_report = {"world_size": world_size()}
        if is_distributed():
            # In the module's parameter order: arch_parameters() comes from a set, in another order on each rank.
            broadcast_tensors(sorted(self.arch_parameters(), key=_param_order(self)))  # type: ignore[attr-defined]
            _logger.info("DARTS search on %d processes: architecture gradients are averaged before each step.",
                         world_size())
        return super().on_fit_start()  # type: ignore[misc]

    def on_train_end(self) -> Any:
        self.distributed_report = self.consistency_report()
        if is_distributed() and global_rank() == 0:
            _logger.info("Architecture across %d ranks: max |difference| %.3g (weights %.3g).",
                         self.distributed_report["world_size"],
                         self.distributed_report["alpha_max_abs_diff_across_ranks"],
                         self.distributed_report["weight_max_abs_diff_across_ranks"])
        return super().on_train_end()  # type: ignore[misc]

    def consistency_report(self) -> dict[str, Any]:
        """All-gather the architecture and weight parameters; a collective: call it on every rank.

        Example::

            module.consistency_report()  # {'world_size': 2, 'alpha_max_abs_diff_across_ranks': 0.0, ...}
        """
        arch = self.arch_parameters()  # type: ignore[attr-defined]
        arch_ids = {id(p) for p in arch}
        arch = sorted(arch, key=_param_order(self))
        weights = [p for p in self.parameters() if id(p) not in arch_ids]  # type: ignore[attr-defined]
        return {
            "world_size": world_size(),
            "alpha_max_abs_diff_across_ranks": all_gather_max_abs_diff(arch),
            "weight_max_abs_diff_across_ranks": all_gather_max_abs_diff(weights),
        }


def _param_order(module: Any) -> Any:
    """Sort key: the parameter's position in ``module.parameters()`` (``arch_parameters`` goes through a set)."""
    order = {id(p): i for i, p in enumerate(module.parameters())}
    return lambda p: order.get(id(p), len(order))


def arch_gradient_sync_hook(params: list[torch.Tensor]) -> Any:
    """An optimizer step pre-hook that averages ``params``' gradients over ranks (a no-op with one process).

    Example::

        optimizer.register_step_pre_hook(arch_gradient_sync_hook(params))
    """

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if is_distributed():
            all_reduce_gradients(params)

    return hook


def is_rank_zero() -> bool:
    """True on global rank 0 (or with one process): the only rank that writes files.

    Example::

        if is_rank_zero():
            atomic_write_json(path, summary)
    """
    return global_rank() == 0
