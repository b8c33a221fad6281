"""Extra forward/backward passes that leave no trace: buffers, metric states and logs are shielded.

Second-order DARTS, SDARTS-ADV's attack and the Hessian health check run the evaluator module's
``training_step`` several times per step; none of those passes may update BatchNorm statistics, torchmetrics
accumulators or the logged values. :func:`shielded_passes` restores all of them afterwards, and
:func:`frozen_parameters` keeps a pass from computing gradients nobody reads.

Example::

    with shielded_passes(oneshot_module):
        loss = loss_of(oneshot_module.training_module.training_step(batch, 0))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from .._compat import import_nni_quietly

with import_nni_quietly():
    from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule

try:  # torchmetrics comes with NNI's evaluators; without it there are no metric accumulators to protect.
    from torchmetrics import Metric as _Metric
except ImportError:  # pragma: no cover - torchmetrics is a dependency of NNI's evaluator
    _Metric = None

__all__ = ["shielded_passes", "loss_of", "detached_copies", "frozen_parameters", "grads_of"]


def loss_of(output: Any) -> torch.Tensor:
    """The loss of a ``training_step`` output (a tensor, or a dict with ``'loss'``, as NNI accepts).

    Example::

        >>> loss_of({"loss": torch.tensor(1.0)}).item()
        1.0
    """
    loss = output["loss"] if isinstance(output, dict) else output
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"training_step must return a loss tensor or a dict with 'loss', got {type(output).__name__}")
    return loss


def detached_copies(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies (one fused ``_foreach_copy_`` per device and dtype); ``[]`` for no tensors."""
    if not tensors:
        return []
    copies = [torch.empty_like(t) for t in tensors]
    with torch.no_grad():
        torch._foreach_copy_(copies, list(tensors))
    return copies


def grads_of(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``d loss / d inputs`` without touching ``.grad``; unused inputs get zeros."""
    if not inputs:
        return []
    grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
    # contiguous(): a gradient may come back as an expanded view, which in-place updates cannot write to.
    return [torch.zeros_like(x) if g is None else g.contiguous() for x, g in zip(inputs, grads, strict=False)]


@contextlib.contextmanager
def frozen_parameters(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """``requires_grad_(False)`` on ``params`` inside the block; each one's own flag comes back on exit.

    Example::

        >>> w = nn.Parameter(torch.ones(1))
        >>> with frozen_parameters([w]):
        ...     w.requires_grad
        False
        >>> w.requires_grad
        True
    """
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _no_log(*args: Any, **kwargs: Any) -> None:
    """Stand-in for ``LightningModule.log``/``log_dict`` during shielded passes."""


_METRIC_BOOKKEEPING = ("_update_count", "_computed", "_forward_cache")


def _clone_state(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return [_clone_state(v) for v in value]
    return value


def _metric_snapshot(metric: Any) -> dict[str, Any]:
    # torchmetrics' states are named in Metric._defaults; the bookkeeping attributes vary between its versions.
    names = list(metric._defaults) + [n for n in _METRIC_BOOKKEEPING if hasattr(metric, n)]
    return {name: _clone_state(getattr(metric, name)) for name in names}


@contextlib.contextmanager
def shielded_passes(module: nn.Module, *, buffers: bool = True) -> Iterator[None]:
    """Silence ``module.training_module``'s ``log``/``log_dict``; restore every buffer and metric state on exit.

    ``module`` is a one-shot module (NNI's ``BaseOneShotLightningModule``: its ``training_module`` logs) or any
    ``nn.Module``. ``buffers=False`` leaves
    buffers alone: for passes in eval mode, which change none, and whose backward still reads them (BatchNorm's
    running statistics), so they must not be written before it runs.

    Example::

        with shielded_passes(oneshot_module):
            extra_loss = loss_of(oneshot_module.training_module.training_step(batch, 0))
    """
    inner = module.training_module if isinstance(module, BaseOneShotLightningModule) else module
    missing = object()
    saved_attrs = {name: inner.__dict__.get(name, missing) for name in ("log", "log_dict")}
    owners: list[tuple[nn.Module, str, torch.Tensor]] = []
    metrics: list[tuple[Any, dict[str, Any]]] = []
    for owner in module.modules():
        if buffers:
            owners += [(owner, name, buf) for name, buf in owner._buffers.items() if buf is not None]
        if _Metric is not None and isinstance(owner, _Metric):
            metrics.append((owner, _metric_snapshot(owner)))
    originals = [buf for _, _, buf in owners]
    saved = detached_copies(originals)
    inner.log = _no_log
    inner.log_dict = _no_log
    try:
        yield
    finally:
        for name, value in saved_attrs.items():
            if value is missing:
                inner.__dict__.pop(name, None)
            else:
                inner.__dict__[name] = value
        for owner, name, buf in owners:
            owner._buffers[name] = buf  # a pass may have rebound it
        if originals:
            with torch.no_grad():
                torch._foreach_copy_(originals, saved)
        for metric, snapshot in metrics:
            for name, value in snapshot.items():
                setattr(metric, name, value)
