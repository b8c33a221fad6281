"""P-DARTS pure parts: stages, op pruning between stages, and the skip-connect limit at export.

P-DARTS (Chen et al., ICCV 2019; official code github:chenxin061/pdarts ``train_search.py``) searches in three
stages of growing depth (5 -> 11 -> 17 cells) and, after every stage, drops the weakest ops of every edge
(8 -> 5 -> 3 -> 1 with ``'none'``). The exported normal cell keeps at most ``M = 2`` skip connections.

* :data:`PDARTS_CIFAR10_STAGES` -- the official CIFAR-10 schedule as :class:`Stage` s.
* :func:`prune_ops` -- which ops of every edge survive a stage (``get_min_k`` / ``get_min_k_no_zero``).
* :func:`limit_skip_connects` -- the official loop that removes the weakest selected skip connection and
  re-selects until the normal cell has at most ``k`` (``check_sk_number``, ``delete_min_sk_prob``,
  ``keep_1_on``, ``keep_2_branches``); generic, so any preset's export can apply it.

Example::

    >>> [stage.num_cells for stage in PDARTS_CIFAR10_STAGES]
    [5, 11, 17]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from nni_darts_ext import constants as C
from nni_darts_ext.checks import check_float, check_int
from nni_darts_ext.errors import ArgumentTypeError, ArgumentValueError
from nni_darts_ext.search.selection import (
    Selection,
    edge_slices,
    select_by_threshold,
    select_top_inputs,
)

__all__ = ["PDARTS_CIFAR10_STAGES", "Stage", "limit_skip_connects", "prune_ops"]

_ZERO_OP = "none"
_SKIP_OP = "skip_connect"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One P-DARTS search stage.

    Attributes:
        num_cells: Cells of the supernet in this stage.
        ops_kept: Ops every edge keeps after this stage's pruning (1 after the last stage).
        skip_dropout: Initial dropout rate after every skip connection in this stage.
        epochs: Epochs of the stage.
        warmup_epochs: First epochs of the stage without an architecture step.
        width_increase: Channels added to the supernet's initial width in this stage.
    """

    num_cells: int
    ops_kept: int
    skip_dropout: float
    epochs: int = C.PDARTS_STAGE_EPOCHS
    warmup_epochs: int = C.PDARTS_WARMUP_EPOCHS
    width_increase: int = 0

    def __post_init__(self) -> None:
        check_int("num_cells", self.num_cells, minimum=1)
        check_int("ops_kept", self.ops_kept, minimum=1)
        check_int("epochs", self.epochs, minimum=1)
        check_int("warmup_epochs", self.warmup_epochs, minimum=0, maximum=self.epochs)
        check_float("skip_dropout", self.skip_dropout, low=0.0, high=1.0, high_open=True)
        check_int("width_increase", self.width_increase, minimum=0)


PDARTS_CIFAR10_STAGES: tuple[Stage, ...] = tuple(
    Stage(num_cells=cells, ops_kept=kept, skip_dropout=rate, width_increase=width)
    for cells, kept, rate, width in zip(
        C.PDARTS_STAGE_CELLS,
        C.PDARTS_STAGE_OPS_KEPT,
        C.PDARTS_SKIP_DROPOUT,
        C.PDARTS_STAGE_WIDTH_INCREASE, strict=False,
    )
)


def prune_ops(
    weights: Tensor,
    keep: int,
    current_mask: Tensor,
    *,
    op_names: Sequence[str] | None = None,
    drop_zero: bool = False,
) -> Tensor:
    """The ops of every edge that survive pruning: the ``keep`` largest weights among the active ones.

    ``weights`` are any per-op scores with the same order as the official softmax over the active ops (the
    softmax, or the logits themselves). The smallest active weights are dropped one at a time, ties dropping the
    lower op index first (``np.argmin``). With ``drop_zero`` (the official last stage) an active ``'none'`` op is
    dropped first whatever its weight; an op set without ``'none'`` (NNI's DARTS space) just keeps the top ops.

    Args:
        weights: ``(n_edges, n_ops)`` scores.
        keep: Ops to keep per edge (at most the active count).
        current_mask: ``(n_edges, n_ops)`` bool, True for ops still in the search.
        op_names: Op names of the columns (needed to find ``'none'`` with ``drop_zero``).
        drop_zero: Drop ``'none'`` first (``get_min_k_no_zero``).

    Returns:
        The new ``(n_edges, n_ops)`` bool mask (a subset of ``current_mask``).

    Example::

        >>> import torch
        >>> w = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
        >>> prune_ops(w, 2, torch.ones(1, 4, dtype=torch.bool)).tolist()
        [[True, False, True, False]]
    """
    if not isinstance(weights, Tensor) or weights.dim() != 2:
        raise ArgumentTypeError("weights", "must be a 2-D torch.Tensor (edges x ops)")
    if (
        not isinstance(current_mask, Tensor)
        or current_mask.dtype != torch.bool
        or current_mask.shape != weights.shape
    ):
        raise ArgumentValueError("current_mask", f"must be a bool tensor of shape {tuple(weights.shape)}")
    check_int("keep", keep, minimum=1)
    zero_index = None
    if drop_zero:
        if op_names is None or len(op_names) != weights.shape[1]:
            raise ArgumentValueError("op_names", "must name every op column when drop_zero is set")
        zero_index = list(op_names).index(_ZERO_OP) if _ZERO_OP in op_names else None
    scores = weights.detach().cpu().double().tolist()
    mask = current_mask.detach().cpu().clone()
    for edge, row in enumerate(scores):
        active = [op for op in range(len(row)) if mask[edge, op]]
        if keep > len(active):
            raise ArgumentValueError("keep", f"({keep}): edge {edge} has {len(active)} active ops, cannot keep {keep}")
        drop = len(active) - keep
        if drop and zero_index is not None and zero_index in active:
            active.remove(zero_index)
            mask[edge, zero_index] = False
            drop -= 1
        for _ in range(drop):
            weakest = min(active, key=lambda op: (row[op], op))
            active.remove(weakest)
            mask[edge, weakest] = False
    return mask.to(current_mask.device)


def _count_skips(selection: Selection, skip_name: str) -> list[tuple[int, int]]:
    return [
        (node, j)
        for node, inputs in enumerate(selection)
        for j, op in inputs
        if op == skip_name
    ]


def limit_skip_connects(
    edge_weights: Tensor,
    op_names: Sequence[str],
    *,
    k: int = C.PDARTS_MAX_SKIP_CONNECTS,
    num_inputs: int = C.INPUTS_PER_NODE,
    mask: Tensor | None = None,
    skip_name: str = _SKIP_OP,
    exclude: Sequence[str] = (_ZERO_OP,),
    threshold: float | None = None,
) -> Selection:
    """Select a normal cell's inputs and ops with at most ``k`` skip connections (the P-DARTS rule).

    Select with the DARTS rule (:func:`~nni_darts_ext.search.selection.select_top_inputs`); while more than
    ``k`` selected edges are skip connections, take the selected skip edge with the smallest skip weight, forbid
    skip on that edge (the official code sets its probability to 0) and select again -- that edge falls back to
    its next best op and the node may switch to another input.

    Args:
        edge_weights: ``(n_edges, n_ops)`` weights of one normal cell, DARTS edge order.
        op_names: Op name of every column.
        k: Largest number of skip connections allowed (P-DARTS: 2).
        num_inputs: Inputs per node (2).
        mask: Optional bool ``(n_edges, n_ops)``, False for pruned ops.
        skip_name: Name of the skip op.
        exclude: Op names never selected (``'none'``).
        threshold: Select with FairDARTS's threshold rule
            (:func:`~nni_darts_ext.search.selection.select_by_threshold`) instead of the DARTS rule.

    Returns:
        Per intermediate node, a list of ``(input_index, op_name)``.

    Example::

        >>> import torch
        >>> w = torch.tensor([[.9, .1], [.8, .2], [.7, .6], [.1, .2], [.0, .3], [.6, .1], [.1, .5], [.2, .1],
        ...                   [.3, .4]])
        >>> limit_skip_connects(w, ["skip_connect", "conv"], k=1)  # 4 skips selected: the 3 weakest go
        [[(0, 'skip_connect'), (1, 'conv')], [(0, 'conv'), (2, 'conv')], [(1, 'conv'), (3, 'conv')]]
    """
    check_int("k", k, minimum=0)

    def select(allowed: Tensor | None) -> Selection:
        if threshold is None:
            return select_top_inputs(
                edge_weights,
                op_names,
                num_inputs=num_inputs,
                mask=allowed,
                exclude=exclude,
            )
        return select_by_threshold(
            edge_weights,
            op_names,
            threshold=threshold,
            num_inputs=num_inputs,
            mask=allowed,
            exclude=exclude,
        )

    if skip_name not in op_names:
        return select(mask)
    skip = list(op_names).index(skip_name)
    allowed = (
        torch.ones(edge_weights.shape, dtype=torch.bool)
        if mask is None
        else mask.detach().cpu().clone()
    )
    starts = [rows.start for rows in edge_slices(edge_weights.shape[0])]
    while True:
        selection = select(allowed)
        skips = _count_skips(selection, skip_name)
        if len(skips) <= k:
            return selection
        rows = [starts[node] + j for node, j in skips]
        weakest = min(rows, key=lambda row: (float(edge_weights[row, skip]), row))
        allowed[weakest, skip] = False
