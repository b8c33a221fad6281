"""Activation checkpointing: keep a region's inputs, recompute its activations in the backward pass.

A region (one supernet cell, one mixed edge, one cell of the fixed net) runs under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False, preserve_rng_state=True)``: its intermediate
activations are freed after the forward pass and computed again when the backward pass needs them. The math is
unchanged:

* random draws inside the region (dropout, drop path, P-DARTS' skip dropout) replay identically: the torch random
  state at the region's start is restored for the recomputation (``preserve_rng_state``); the supernet's mixing
  samples (DrNAS' Dirichlet, GDAS' Gumbel) and GDAS' choice of op are drawn *outside* the region and handed in;
* the recomputation runs the region's modules in the train/eval modes of the first forward, and BatchNorm
  running statistics are updated once, by the first forward only (the recomputation updates throw-away copies);
* autocast (bf16) is recorded and replayed by ``torch.utils.checkpoint``.

Outside autograd (``torch.no_grad``, inference) a region just runs.

Example::

    out = checkpointed(cell_body, x, weights, modules=region_modules([cell]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.utils.checkpoint

from .checks import check_choice

__all__ = ["RETRAIN_CHECKPOINTING", "SEARCH_CHECKPOINTING", "check_checkpointing", "checkpointed",
           "checkpoint_cells", "region_modules"]

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


def region_modules(roots: Iterable[nn.Module]) -> list[nn.Module]:
    """Every module of a region: ``roots`` and their submodules, each once (what :func:`checkpointed` replays)."""
    found: dict[int, nn.Module] = {}
    for root in roots:
        for module in root.modules():
            found.setdefault(id(module), module)
    return list(found.values())


_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def _as_in_forward(modules: Sequence[nn.Module], modes: Sequence[bool]) -> Iterator[None]:
    """The region's modules in the train/eval modes of its first forward; BatchNorm layers in training mode update
    throw-away copies of their running statistics. Everything is put back on exit.

    A pass may run in eval mode and be differentiated after the mode is back to training (SDARTS' attack); the
    recomputation must see the first forward's modes and save the same tensors (``torch.utils.checkpoint`` checks).
    """
    current = [module.training for module in modules]
    saved: list[tuple[nn.Module, str, torch.Tensor]] = []
    for module, mode in zip(modules, modes, strict=True):
        module.training = mode
        if mode and isinstance(module, nn.modules.batchnorm._BatchNorm):
            for name in _RUNNING_STATS:
                buffer = module._buffers.get(name)
                if buffer is not None:
                    saved.append((module, name, buffer))
                    module._buffers[name] = buffer.clone()
    try:
        yield
    finally:
        for module, name, buffer in saved:
            module._buffers[name] = buffer
        for module, mode in zip(modules, current, strict=True):
            module.training = mode


def checkpointed(fn: Callable[..., Any], *args: Any, modules: Sequence[nn.Module] = ()) -> Any:
    """``fn(*args)`` with its activations recomputed in the backward pass (see the module docstring).

    Args:
        fn: the region, a function of ``args`` (tensors and plain values; nested lists of tensors are fine).
        modules: every module the region runs (:func:`region_modules`): the recomputation runs them in the modes
            of the first forward, and does not update their BatchNorm statistics again.

    Example::

        total = checkpointed(edge, total, x, weights, None, 0.0, modules=region_modules(edge_ops))
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    modes = [module.training for module in modules]
    first = True

    def region(*inner: Any) -> Any:
        nonlocal first
        if first:
            first = False
            return fn(*inner)
        with _as_in_forward(modules, modes):  # the recomputation
            return fn(*inner)

    return torch.utils.checkpoint.checkpoint(region, *args, use_reentrant=False, preserve_rng_state=True)


# --------------------------------------------------------------------------------------------- the fixed net
_CHECKPOINTED_CLASSES: dict[type, type] = {}


def _checkpointed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` with its ``forward`` run by :func:`checkpointed` (one subclass per class, made once)."""
    if cls not in _CHECKPOINTED_CLASSES:
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            modules = self.__dict__.get("_checkpoint_region")
            if modules is None:
                modules = self.__dict__["_checkpoint_region"] = region_modules([self])
            return checkpointed(lambda *a: cls.forward(self, *a, **kwargs), *args, modules=modules)

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
