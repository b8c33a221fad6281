"""Cost of a net: multiply-adds of one forward pass and parameter count.

Multiply-adds are counted by ptflops (``pip install ptflops``, github:sovrasov/flops-counter.pytorch), a maintained
counter, with its ``pytorch`` backend: module hooks on every layer plus patched ``torch.nn.functional`` and tensor
operations. It counts one multiply-add per weight use in convolutions and linear layers (plus one per output for a
bias) and, like most MAC tables, also the element-wise work of BatchNorm, activations, pooling and additions.
NNI's own profiler (``nni.nas.profiler``) counts FLOPs of a model *space* through its shape inference and does not
take a fixed ``DARTS`` net directly, so it is not used here.

Against ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per multiply-add of ``aten.convolution``
and ``aten.mm/addmm`` only): ``count_macs(model, shape, weighted_layers_only=True)`` equals its FLOPs / 2 plus the
linear layers' bias additions (one per output feature); the default count adds BatchNorm, ReLU, pooling and
element-wise sums on top (``tests/test_profile.py`` checks both).

Example::

    >>> net = build_model("darts-v2", width=16, num_cells=8, image_size=32)  # doctest: +SKIP
    >>> count_macs(net, (1, 3, 32, 32)), count_params(net)                     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .checks import check_bool, check_int
from .errors import ArgumentTypeError, ArgumentValueError, ProfileError

__all__ = ["count_macs", "count_params"]

# Layers without weights that ptflops counts; left out with weighted_layers_only=True.
_UNWEIGHTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity,
)


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str):
        raise ArgumentTypeError("input_shape", f"must be a sequence (1, C, H, W), got {type(input_shape).__name__}")
    shape = tuple(check_int("input_shape", size, minimum=1) for size in input_shape)
    if len(shape) != 4 or shape[0] != 1:
        raise ArgumentValueError("input_shape", f"must be (1, C, H, W) (one image), got {shape}")
    return shape


def count_macs(model: nn.Module, input_shape: Sequence[int], *, weighted_layers_only: bool = False) -> int:
    """Multiply-adds of one forward pass of ``model`` in eval mode on one input of ``input_shape`` = (1, C, H, W).

    Counted by ptflops (``pytorch`` backend) on a copy of ``model``, so the model's mode, hooks and BatchNorm
    statistics are untouched. ``weighted_layers_only``: count only convolutions and linear layers (the convention
    of the DARTS papers' "multi-add" columns); by default BatchNorm, ReLU, pooling and element-wise sums count too.

    Raises:
        ArgumentTypeError / ArgumentValueError: ``input_shape`` not (1, C, H, W).
        ProfileError: the counter could not run the model on that input (the message names the cause).

    Example::

        macs = count_macs(build_model("darts-v2", width=4, num_cells=3, image_size=8), (1, 3, 8, 8))
    """
    from ptflops import get_model_complexity_info

    if not isinstance(model, nn.Module):
        raise ArgumentTypeError("model", f"must be a torch.nn.Module, got {type(model).__name__}")
    shape = _check_shape(input_shape)
    weighted_layers_only = check_bool("weighted_layers_only", weighted_layers_only)
    net = copy.deepcopy(model).eval()
    parameter = next(net.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    log = io.StringIO()  # ptflops reports a failure on stdout; keep it for the error message
    with torch.no_grad():
        macs, _ = get_model_complexity_info(
            net, shape[1:], as_strings=False, print_per_layer_stat=False, verbose=False, ost=log,
            input_constructor=lambda _: torch.zeros(shape, dtype=dtype, device=device),
            backend="pytorch",
            ignore_modules=list(_UNWEIGHTED_LAYERS) if weighted_layers_only else [],
            backend_specific_config={"count_functional": not weighted_layers_only},
        )
    if macs is None:
        reason = " ".join(log.getvalue().split())
        raise ProfileError(f"count_macs: ptflops could not run the model on {shape}: {reason}")
    return int(macs)


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not; an auxiliary head counts when the model has one).

    Example::

        >>> count_params(nn.Linear(3, 2))
        8
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError("model", f"must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())
