"""Building blocks of the supernet cell: channel shuffle, narrowed op factories, a channels-first reduce.

PC-DARTS (Xu et al., ICLR 2020, https://arxiv.org/abs/1907.05737; github:yuhuixu1993/PC-DARTS
``model_search.py``: ``channel_shuffle``, ``MixedOp``) sends ``1/K`` of each edge's channels through the candidate
operations and shuffles the result with the bypassed rest. These helpers do the tensor plumbing.

Example::

    >>> channel_shuffle(torch.arange(8.).view(1, 8, 1, 1), 4).flatten().tolist()
    [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .._compat import import_nni_quietly
from ..errors import ArgumentTypeError, ArgumentValueError

with import_nni_quietly():
    from nni.nas.hub.pytorch.nasnet import FactorizedReduce

__all__ = ["ChannelsFirstFactorizedReduce", "channel_shuffle", "is_channels_last", "narrow_op_factory",
           "shuffled_concat"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: ``(N, g*c, H, W)`` viewed as ``(N, g, c, H, W)``, transposed to ``(N, c, g, H, W)``.

    Output channel ``i * groups + g`` is input channel ``g * c + i`` (PC-DARTS ``model_search.py channel_shuffle``).

    Example::

        >>> channel_shuffle(torch.arange(4.).view(1, 4, 1, 1), 2).flatten().tolist()
        [0.0, 2.0, 1.0, 3.0]
    """
    if x.dim() != 4:
        raise ValueError(f"channel_shuffle expects a 4-d (N, C, H, W) tensor, got {x.dim()} dimensions")
    n, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"groups must be a positive divisor of the channel count {c}, got {groups}")
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffled_concat(ops_part: torch.Tensor, bypass: torch.Tensor, groups: int) -> torch.Tensor:
    """``channel_shuffle(cat([ops_part, bypass], 1), groups)`` with one write per element and no temporaries.

    Keeps the memory format (channels-last stays channels-last).

    Example::

        out = shuffled_concat(ops_sum, bypass_sum, 4)
    """
    n, cp, h, w = ops_part.shape
    fmt = torch.channels_last if is_channels_last(ops_part) else torch.contiguous_format
    out = torch.empty((n, cp * groups, h, w), dtype=ops_part.dtype, device=ops_part.device, memory_format=fmt)
    grid = out.view(n, cp, groups, h, w)  # shuffled channel i * groups + g  <->  grid[:, i, g]
    grid[:, :, 0].copy_(ops_part)
    grid[:, :, 1:].copy_(bypass.unflatten(1, (groups - 1, cp)).transpose(1, 2))
    return out


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-d tensor stored channels-last (and not also plain contiguous)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def narrow_op_factory(op_factory: Any, partial_channels: int) -> Any:
    """Rebuild a Cell's op factories at ``channels // partial_channels``.

    NNI's DARTS space (``nasnet.py CellBuilder.__call__``) passes ``functools.partial(op_factory, op=...,
    channels=C, is_reduction_cell=...)`` per candidate; the same partials are returned with ``channels=C // K``.

    Raises:
        ArgumentTypeError: a factory is not a ``functools.partial`` with an int ``channels=`` keyword
            (``argument``: ``partial_channels``, the option that needs it).
        ArgumentValueError: ``channels`` is not divisible by ``partial_channels`` (``argument``: ``partial_channels``).

    Example::

        narrow_op_factory(cell.op_candidates_factory, 4)
    """
    if partial_channels == 1:
        return op_factory

    def narrow(name: Any, factory: Any) -> Any:
        channels = factory.keywords.get("channels") if isinstance(factory, functools.partial) else None
        if not isinstance(channels, int):
            raise ArgumentTypeError(
                "partial_channels", f"needs DARTS-style cells whose op factories are functools.partial objects with "
                f"an int `channels=` keyword (as NNI's DARTS space builds them); candidate {name!r} is {factory!r}"
            )
        if channels % partial_channels:
            raise ArgumentValueError(
                "partial_channels", f"({partial_channels}) must divide every cell's channel count, but candidate "
                f"{name!r} has channels={channels}; choose a width divisible by {partial_channels}"
            )
        keywords = {**factory.keywords, "channels": channels // partial_channels}
        return functools.partial(factory.func, *factory.args, **keywords)

    if isinstance(op_factory, dict):
        return {name: narrow(name, f) for name, f in op_factory.items()}
    if isinstance(op_factory, list):
        return [narrow(i, f) for i, f in enumerate(op_factory)]
    raise ArgumentTypeError("partial_channels", f"needs op factories in a dict or list, got "
                                                f"{type(op_factory).__name__}")


class ChannelsFirstFactorizedReduce(FactorizedReduce):
    """NNI's ``FactorizedReduce`` (same parameters, same math) computed in channels-first memory format.

    Works around a PyTorch CPU (oneDNN) bug seen with torch 2.14: the weight gradient of a 1x1 stride-2
    convolution in channels-last format with few input channels (1-4, e.g. the skip_connect of a PC-DARTS
    reduction edge at width 8) corrupts the heap ("double free or corruption"). The search module swaps it in,
    with channels-first weights, only when it runs channels-last; the output goes back to channels-last.

    Example::

        module.__class__ = ChannelsFirstFactorizedReduce
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.dim() == 4 and x.size(1) > 1 and x.stride(1) == 1 and x.size(2) * x.size(3) > 1
        x = self.relu(x).contiguous()
        y = self.pad(x)
        out = self.bn(torch.cat([self.conv_1(x), self.conv_2(y[:, :, 1:, 1:])], dim=1))
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out
