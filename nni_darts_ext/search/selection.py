"""Cell selection rules on plain tensors: which inputs and ops every node of a DARTS cell keeps.

A cell's weights are one ``(n_edges, n_ops)`` tensor, rows in DARTS order: node 2's edges (from inputs 0, 1)
first, then node 3's (from 0, 1, 2), and so on; a node ``i`` (counting the two cell inputs as 0 and 1) has
``i`` incoming edges. A selection is a list, one entry per intermediate node, of ``(input_index, op_name)``.

* :func:`select_top_inputs` -- the DARTS rule (quark0/darts ``model_search.py`` ``genotype``): every node keeps
  the ``num_inputs`` edges with the largest best-op weight, and the best op on each.
* :func:`select_by_threshold` -- FairDARTS ``threshold_sparse`` (github:xiaomi-automl/FairDARTS
  ``fairdarts/utils.py`` ``parse``): the same two edges, each kept only if its best op's weight reaches the
  threshold (0.85), so a node may keep 0, 1 or 2 inputs.

Ops named in ``exclude`` (``'none'``) and ops masked out are never selected; an edge with no selectable op is
never selected.

Example::

    >>> import torch
    >>> w = torch.tensor([[0.1, 0.9], [0.8, 0.2]])  # one node, two edges, two ops
    >>> select_top_inputs(w, ["skip_connect", "sep_conv_3x3"])
    [[(0, 'sep_conv_3x3'), (1, 'skip_connect')]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nni_darts_ext import constants as C
from nni_darts_ext.checks import check_float
from nni_darts_ext.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["Selection", "edge_slices", "select_by_threshold", "select_top_inputs"]

Selection = list[list[tuple[int, str]]]

_ZERO_OP = "none"


def edge_slices(n_edges: int) -> list[slice]:
    """Row slices of every intermediate node's incoming edges, for a cell with ``n_edges`` edges.

    Example::

        >>> edge_slices(5)
        [slice(0, 2, None), slice(2, 5, None)]
    """
    slices, start, fan_in = [], 0, 2
    while start < n_edges:
        slices.append(slice(start, start + fan_in))
        start += fan_in
        fan_in += 1
    if start != n_edges:
        raise ArgumentValueError("n_edges", f"({n_edges}) is not a DARTS cell's edge count (2 + 3 + 4 + ... edges)")
    return slices


def _allowed_weights(
    edge_weights: Tensor,
    op_names: Sequence[str],
    mask: Tensor | None,
    exclude: Sequence[str],
) -> Tensor:
    if not isinstance(edge_weights, Tensor) or edge_weights.dim() != 2:
        raise ArgumentTypeError("edge_weights", "must be a 2-D torch.Tensor (edges x ops)")
    if len(op_names) != edge_weights.shape[1]:
        raise ArgumentValueError("op_names", f"has {len(op_names)} names for {edge_weights.shape[1]} op columns")
    allowed = torch.tensor(
        [name not in exclude for name in op_names], dtype=torch.bool
    ).expand_as(edge_weights)
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != edge_weights.shape:
            raise ArgumentValueError("mask", f"must be a bool tensor of shape {tuple(edge_weights.shape)}")
        allowed = allowed & mask.cpu()
    weights = edge_weights.detach().cpu().double()
    return torch.where(allowed, weights, torch.full_like(weights, float("-inf")))


def _best_ops(weights: Tensor) -> tuple[list[float], list[int]]:
    best, index = weights.max(dim=1)
    return best.tolist(), index.tolist()


def select_top_inputs(
    edge_weights: Tensor,
    op_names: Sequence[str],
    *,
    num_inputs: int = C.INPUTS_PER_NODE,
    mask: Tensor | None = None,
    exclude: Sequence[str] = (_ZERO_OP,),
) -> Selection:
    """DARTS rule: per node the ``num_inputs`` edges with the largest best-op weight, with their best op.

    Ties go to the lower edge / op index (stable sort, first maximum), as the official ``sorted`` does.

    Example::

        >>> import torch
        >>> w = torch.tensor([[.5, .1], [.2, .3], [.9, .0], [.1, .2], [.3, .6]])
        >>> select_top_inputs(w, ["a", "b"])
        [[(0, 'a'), (1, 'b')], [(0, 'a'), (2, 'b')]]
    """
    weights = _allowed_weights(edge_weights, op_names, mask, exclude)
    best, index = _best_ops(weights)
    selection: Selection = []
    for rows in edge_slices(weights.shape[0]):
        edges = list(range(rows.stop - rows.start))
        edges = [
            j for j in edges if best[rows.start + j] != float("-inf")
        ]  # an edge with no selectable op
        ranked = sorted(edges, key=lambda j: -best[rows.start + j])[:num_inputs]
        selection.append([(j, op_names[index[rows.start + j]]) for j in ranked])
    return selection


def select_by_threshold(
    edge_weights: Tensor,
    op_names: Sequence[str],
    *,
    threshold: float = C.FAIR_DARTS_THRESHOLD,
    num_inputs: int = C.INPUTS_PER_NODE,
    mask: Tensor | None = None,
    exclude: Sequence[str] = (_ZERO_OP,),
) -> Selection:
    """FairDARTS ``threshold_sparse``: the DARTS top edges, each kept only if its best weight >= ``threshold``.

    Example::

        >>> import torch
        >>> w = torch.tensor([[.95, .1], [.2, .86], [.5, .4], [.1, .2], [.3, .6]])
        >>> select_by_threshold(w, ["a", "b"])
        [[(0, 'a'), (1, 'b')], []]
    """
    check_float("threshold", threshold, low=0.0, high=1.0)
    weights = _allowed_weights(edge_weights, op_names, mask, exclude)
    best, _ = _best_ops(weights)
    starts = [rows.start for rows in edge_slices(weights.shape[0])]
    top = select_top_inputs(
        edge_weights, op_names, num_inputs=num_inputs, mask=mask, exclude=exclude
    )
    return [
        [(j, op) for j, op in node if best[start + j] >= threshold]
        for node, start in zip(top, starts, strict=False)
    ]
