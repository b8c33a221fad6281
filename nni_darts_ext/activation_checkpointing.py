"""Activation checkpointing: keep a region's inputs, recompute its activations in the backward pass.

A region (one supernet cell, one mixed edge, one cell of the fixed net) runs under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False, preserve_rng_state=True)``: its intermediate
activations are freed after the forward pass and computed again when the backward pass needs them. The math is
unchanged:

* random draws inside the region (dropout, drop path, P-DARTS' skip dropout) replay identically: the torch random
  state at the region's start is restored for the recomputation (``preserve_rng_state``); the supernet's mixing
  samples (DrNAS' Dirichlet, GDAS' Gumbel) and GDAS' choice of op are drawn *outside* the region and handed in;
* BatchNorm running statistics are updated once, by the first forward only: the recomputation of the region's
  BatchNorm layers updates throw-away copies of them;
* autocast (bf16) is recorded and replayed by ``torch.utils.checkpoint``.

Outside autograd (``torch.no_grad``, inference) a region just runs.

Example::

    out = checkpointed(cell_body, x, weights, batch_norms=batch_norm_layers([cell]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint

from .checks import check_choice

__all__ = ["RETRAIN_CHECKPOINTING", "SEARCH_CHECKPOINTING", "batch_norm_layers", "check_checkpointing", "checkpointed",
           "checkpoint_cells"]

#: ``search.checkpointing``: nothing, each supernet cell, or each mixed edge of every cell.
SEARCH_CHECKPOINTING: tuple[str, ...] = ("none", "cells", "edges")
#: ``retrain.checkpointing``: nothing, or each cell of the fixed net.
RETRAIN_CHECKPOINTING: tuple[str, ...] = ("none", "cells")


def check_checkpointing(value: Any, choices: Sequence[str] = SEARCH_CHECKPOINTING) -> str:
    """``value`` if it is one of ``choices`` (``argument``: ``checkpointing``).

    Example::

        >>> check_checkpointing("cells")
        'cells'
    """
    return check_choice("checkpointing", value, tuple(choices))


def batch_norm_layers(modules: Iterable[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers in ``modules`` and their submodules (each once)."""
    found: dict[int, nn.modules.batchnorm._BatchNorm] = {}
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                found[id(sub)] = sub
    return list(found.values())


_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def _no_running_stat_updates(layers: Sequence[nn.Module]) -> Iterator[None]:
    """BatchNorm layers in training mode update throw-away copies of their running statistics.

    The layers run exactly as in the first forward (same saved tensors, as ``torch.utils.checkpoint`` checks); the
    module's own buffers are put back untouched on exit.
    """
    saved: list[tuple[nn.Module, str, torch.Tensor]] = []
    for layer in layers:
        if layer.training:
            for name in _RUNNING_STATS:
                buffer = layer._buffers.get(name)
                if buffer is not None:
                    saved.append((layer, name, buffer))
                    layer._buffers[name] = buffer.clone()
    try:
        yield
    finally:
        for layer, name, buffer in saved:
            layer._buffers[name] = buffer


def checkpointed(fn: Callable[..., Any], *args: Any, batch_norms: Sequence[nn.Module] = ()) -> Any:
    """``fn(*args)`` with its activations recomputed in the backward pass (see the module docstring).

    Args:
        fn: the region, a function of ``args`` (tensors and plain values; nested lists of tensors are fine).
        batch_norms: the region's BatchNorm layers (:func:`batch_norm_layers`): not updated again by the recomputation.

    Example::

        total = checkpointed(edge, total, x, weights, None, 0.0, batch_norms=bn)
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    calls = 0

    def region(*inner: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return fn(*inner)
        with _no_running_stat_updates(batch_norms):  # the recomputation
            return fn(*inner)

    return torch.utils.checkpoint.checkpoint(region, *args, use_reentrant=False, preserve_rng_state=True)


# --------------------------------------------------------------------------------------------- the fixed net
_CHECKPOINTED_CLASSES: dict[type, type] = {}


def _checkpointed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` with its ``forward`` run by :func:`checkpointed` (one subclass per class, made once)."""
    if cls not in _CHECKPOINTED_CLASSES:
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            layers = self.__dict__.get("_checkpoint_batch_norms")
            if layers is None:
                layers = self.__dict__["_checkpoint_batch_norms"] = batch_norm_layers([self])
            return checkpointed(lambda *a: cls.forward(self, *a, **kwargs), *args, batch_norms=layers)

        _CHECKPOINTED_CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (cls,), {
            "forward": forward, "__doc__": f"{cls.__name__} under activation checkpointing.",
            "__module__": __name__})
    return _CHECKPOINTED_CLASSES[cls]


def checkpoint_cells(model: nn.Module, cell_type: type[nn.Module]) -> int:
    """Run every ``cell_type`` module of ``model`` under activation checkpointing; returns how many.

    The modules keep their parameters, buffers and state-dict keys: only their class becomes a subclass whose
    ``forward`` is checkpointed (as ``module.__class__`` is swapped for channels-last elsewhere).

    Example::

        checkpoint_cells(build_model("darts-v2", width=16, num_cells=8), Cell)   # 8
    """
    count = 0
    for module in model.modules():
        if isinstance(module, cell_type) and type(module) not in _CHECKPOINTED_CLASSES.values():
            module.__class__ = _checkpointed_class(type(module))
            count += 1
    return count
