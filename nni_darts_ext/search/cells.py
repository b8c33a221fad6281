"""The supernet's mixed cell: every DARTS cell variant the presets need, in one module (the engine's first axis).

One :class:`MixedCell` replaces each NNI ``Cell`` of a DARTS-style space (``nni.nas.hub.pytorch.DARTS``):

* **full** (DARTS): every candidate op of every edge, mixed with the strategy's :class:`~.mixing.Mixing` weights.
  With softmax mixing and nothing else switched on, forward and export equal NNI's ``DifferentiableMixedCell``.
* **partial channels** (PC-DARTS, ``partial_channels=K``): ops see the first ``C/K`` channels of each input,
  the rest bypass them (max-pooled 2x2 on stride-2 edges) and are channel-shuffled back in.
* **edge normalisation** (PC-DARTS): a learned ``beta`` per incoming edge of each node, softmaxed per node.
* **op masks** (P-DARTS): pruned candidates of an edge are not computed and get no weight.
* **auxiliary skip** (DARTS-): ``auxiliary_skip_weight * skip(x)`` added on every edge, outside the mixing.
* **hard mixing** (GDAS): with one-hot weights only the chosen op of each edge runs; the other ops add their
  (zero-valued) weight, so the straight-through gradient still reaches every alpha.
* **skip dropout** (P-DARTS): dropout on the parameter-free skip connections during search.

Where the time goes (identical math to NNI's cell): NNI stacks the op outputs of every edge with a zeros tensor
and multiplies the whole stack; here every node is one running ``addcmul`` over its (edge, op) pairs, the
sep/dil convolutions share one ReLU per edge, and concatenation/shuffle happen once per node.

Export: NNI's rule (raw alpha ranking) for plain softmax cells; otherwise each node keeps its
``num_ops_per_node`` best edges by the best op's deterministic weight (``Mixing.probs``, times beta), as the
original DARTS ``genotype()`` does. ``max_skip_connects`` caps skip connections in normal cells (P-DARTS).

Example::

    hook = functools.partial(MixedCell.mutate, partial_channels=4, edge_normalization=True)
    nni.nas.strategy.DARTS(mutation_hooks=[hook])
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._compat import import_nni_quietly
from ..constants import ARC_INIT_SCALE, PC_BYPASS_POOL_SIZE
from .layers import narrow_op_factory, shuffled_concat
from .mixing import SoftmaxMixing
from .progressive import limit_skip_connects
from .selection import select_by_threshold, select_top_inputs

with import_nni_quietly():
    from nni.nas.nn.pytorch import Cell
    from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell

__all__ = ["MixedCell", "SKIP_CONNECT"]

_logger = logging.getLogger(__name__)

SKIP_CONNECT = "skip_connect"  # the parameter-free candidate of the DARTS op set (nni/nas/hub/pytorch/nasnet.py)


class MixedCell(DifferentiableMixedCell):
    """A DARTS supernet cell with optional partial channels, edge normalisation, op masks and auxiliary skips.

    Args:
        partial_channels: K; ops see the first ``C/K`` channels of each input, the rest bypass them.
        edge_normalization: learn a ``beta`` per incoming edge of each node (PC-DARTS).
        auxiliary_skip: add an auxiliary skip connection on every edge, weighted by
            :attr:`auxiliary_skip_weight` (DARTS-; the module sets the weight every epoch).

    Other arguments are those of NNI's ``DifferentiableMixedCell``; use :meth:`mutate` as a mutation hook. The
    run-time settings :attr:`auxiliary_skip_weight`, :attr:`skip_dropout`, :attr:`max_skip_connects` and
    :attr:`export_threshold` are plain attributes set by the search module; op masks change with
    :meth:`set_op_mask` and are saved in checkpoints (buffers ``_op_mask_<node>``).

    Example::

        cell = MixedCell.mutate(space.cells[0], "cells.0", memo, {"softmax": SoftmaxMixing()}, partial_channels=4)
    """

    _arch_parameter_names: list[str] = ["_arch_alpha", "_arch_beta"]

    def __init__(self, op_factory: Any, num_nodes: int, num_ops_per_node: int, num_predecessors: int,
                 preprocessor: Any, postprocessor: Any, concat_dim: int, memo: dict[str, Any],
                 mutate_kwargs: dict[str, Any], label: str, *, partial_channels: int = 1,
                 edge_normalization: bool = False, auxiliary_skip: bool = False):
        _check_partial_channels(partial_channels)
        if partial_channels > 1 and concat_dim != 1:
            raise ValueError(f"partial channels split dim 1 (channels); this cell concatenates on dim {concat_dim}")
        super().__init__(narrow_op_factory(op_factory, partial_channels), num_nodes, num_ops_per_node,
                         num_predecessors, preprocessor, postprocessor, concat_dim, memo, mutate_kwargs, label)
        self.partial_channels = partial_channels
        self.edge_normalization = bool(edge_normalization)
        self.auxiliary_skip = bool(auxiliary_skip)
        self.auxiliary_skip_weight = 0.0
        self.skip_dropout = 0.0
        self.max_skip_connects: int | None = None
        self.export_threshold: float | None = None
        self._node_indices = list(range(self.num_predecessors, self.num_nodes + self.num_predecessors))
        self._edge_labels = [[f"{self.label}/{i}_{j}" for j in range(i)] for i in self._node_indices]
        self._skip_index = self.op_names.index(SKIP_CONNECT) if SKIP_CONNECT in self.op_names else None
        self._plan: list[list[list[tuple[int, nn.Module, list[nn.Module] | None]]]] | None = None
        self._arch_beta = nn.ParameterDict()
        if self.edge_normalization:
            for i in self._node_indices:
                node_label = f"{self.label}/{i}"
                memo_label = node_label + "/beta"  # shared by every cell with this label, like alpha
                if memo_label not in memo:
                    # PC-DARTS model_search.py _initialize_alphas: 1e-3 * randn.
                    memo[memo_label] = nn.Parameter(torch.randn(i) * ARC_INIT_SCALE)
                self._arch_beta[node_label] = memo[memo_label]
        for i in self._node_indices:
            # Not persistent: saved (by _save_to_state_dict) only once something is pruned, so unpruned supernets
            # keep NNI's state-dict keys.
            self.register_buffer(f"_op_mask_{i}", torch.ones(i, len(self.op_names), dtype=torch.bool),
                                 persistent=False)
        self.auxiliary_skip_ops = nn.ModuleList()
        if self.auxiliary_skip:
            if self._skip_index is None:
                raise ValueError(f"auxiliary_skip needs a {SKIP_CONNECT!r} candidate; cell {label!r} has "
                                 f"{self.op_names}")
            for node_ops in cast(Sequence[Sequence[dict[str, nn.Module]]], self.ops):
                # A fresh copy of each edge's own skip op: identity, or FactorizedReduce on stride-2 edges.
                self.auxiliary_skip_ops.append(nn.ModuleList(copy.deepcopy(edge[SKIP_CONNECT]) for edge in node_ops))

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any],
               **options: Any) -> MixedCell | None:
        """Mutation hook: replace a plain NNI ``Cell`` (``merge_op='all'``, op factories) by this cell."""
        if type(module) is not Cell:
            return None
        cell = cast(Any, module)
        if cell.op_candidates_factory is None or cell.merge_op != "all":
            return None  # loose-end cells are left to NNI's hooks (and its errors)
        return cls(cell.op_candidates_factory, cell.num_nodes, cell.num_ops_per_node, cell.num_predecessors,
                   cell.preprocessor, cell.postprocessor, cell.concat_dim, memo, mutate_kwargs, cell.label,
                   **options)

    # ----------------------------------------------------------------------------------------------- masks
    def op_mask(self, node: int) -> torch.Tensor:
        """The ``(num_inputs, num_ops)`` bool mask of node ``node`` (node index, from ``num_predecessors``)."""
        return cast(torch.Tensor, getattr(self, f"_op_mask_{node}"))

    def set_op_mask(self, node: int, mask: torch.Tensor) -> None:
        """Keep only the ops where ``mask`` is True (``(num_inputs, num_ops)``); pruned ops are not computed.

        Raises:
            ValueError: wrong shape, or an edge with no op left.
        """
        current = self.op_mask(node)
        mask = torch.as_tensor(mask, dtype=torch.bool, device=current.device)
        if mask.shape != current.shape:
            raise ValueError(f"op mask of node {node} must have shape {tuple(current.shape)}, got {tuple(mask.shape)}")
        if not bool(mask.any(-1).all()):
            raise ValueError(f"op mask of node {node} leaves an edge with no candidate op")
        current.copy_(mask)
        self._plan = None

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.pruned:
            for i in self._node_indices:
                mask = self.op_mask(i)
                destination[f"{prefix}_op_mask_{i}"] = mask if keep_vars else mask.detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for i in self._node_indices:
            mask = state_dict.pop(f"{prefix}_op_mask_{i}", None)
            if mask is not None:
                self.op_mask(i).copy_(mask)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._plan = None  # masks may have changed

    @property
    def pruned(self) -> bool:
        """True when some op of some edge is masked out."""
        return not all(bool(self.op_mask(i).all()) for i in self._node_indices)

    # --------------------------------------------------------------------------------------------- weights
    @property
    def mixing(self) -> Any:
        return self._softmax

    def _edge_weights(self, pos: int, deterministic: bool = False) -> torch.Tensor:
        """Mixing weights ``(num_inputs, num_ops)`` of one node; masked (pruned) ops get weight 0.

        Softmax mixes the stacked alphas of the node at once (pruned entries at ``-inf``). Other mixings are
        called on each edge's alpha parameter itself, so that :meth:`Mixing.sample_once` shares one sample between
        the cells of a type (DrNAS, GDAS), and pruned ops are dropped afterwards (DrNAS' rule: the kept weights
        are renormalised; sigmoid weights are not). NNI's trailing ``none`` entry never gets a weight that is used.
        """
        labels = self._edge_labels[pos]
        n_ops = len(self.op_names)
        mask = self.op_mask(self._node_indices[pos])
        pruned = not bool(mask.all())
        mixing = self.mixing
        if _is_softmax(mixing):
            alphas = torch.stack([self._arch_alpha[lb] for lb in labels])
            if pruned:
                keep = torch.cat([mask, torch.ones_like(mask[:, : alphas.shape[1] - n_ops])], 1)
                alphas = alphas.masked_fill(~keep, float("-inf"))
            # Through the module, not torch.softmax: SDARTS' passthrough hands perturbed weights straight in.
            return (mixing.probs(alphas) if deterministic and hasattr(mixing, "probs") else mixing(alphas))[:, :n_ops]
        mix = mixing.probs if deterministic else mixing
        if getattr(mixing, "hard", False) and pruned and not deterministic:
            # A hard sample must land on a kept op: sample over the kept entries only (per cell, not shared).
            alphas = torch.stack([self._arch_alpha[lb][:n_ops] for lb in labels]).masked_fill(~mask, float("-inf"))
            return mix(alphas)
        weights = torch.stack([mix(self._arch_alpha[lb]) for lb in labels])[:, :n_ops]
        if pruned:
            weights = weights * mask
            if getattr(mixing, "normalized", True) and not getattr(mixing, "hard", False):
                weights = weights / weights.sum(-1, keepdim=True)
        return weights

    def _beta_weights(self, pos: int) -> torch.Tensor | None:
        if not self.edge_normalization:
            return None
        return torch.softmax(self._arch_beta[f"{self.label}/{self._node_indices[pos]}"], -1)

    def edge_weights(self, pos: int) -> torch.Tensor:
        """Deterministic combined weights ``(num_inputs, num_ops)`` of node position ``pos``: mixing x beta."""
        weights = self._edge_weights(pos, deterministic=True)
        beta = self._beta_weights(pos)
        return weights if beta is None else weights * beta.unsqueeze(-1)

    # --------------------------------------------------------------------------------------------- forward
    def _edge_plan(self) -> list[list[list[tuple[int, nn.Module, list[nn.Module] | None]]]]:
        """Per node, per edge: ``(op index, op, tail)`` of the kept ops; ``tail``: the op after a leading ReLU.

        The conv candidates (sep_conv_*, dil_conv_*) all start with ``ReLU(inplace=False)`` on the same input:
        the cell applies it once per edge and runs the rest of each op on the shared result.
        """
        if self._plan is None:
            plan = []
            for pos, node_ops in enumerate(cast(Sequence[Sequence[dict[str, nn.Module]]], self.ops)):
                mask = self.op_mask(self._node_indices[pos]).tolist()
                node_plan = []
                for j, edge_ops in enumerate(node_ops):
                    edge_plan = []
                    for t, op in enumerate(edge_ops.values()):
                        if not mask[j][t]:
                            continue
                        tail = None
                        if (isinstance(op, nn.Sequential) and type(op).forward is nn.Sequential.forward
                                and len(op) > 1 and type(op[0]) is nn.ReLU and not op[0].inplace
                                and not op._forward_hooks and not op._forward_pre_hooks):
                            tail = list(op)[1:]
                        edge_plan.append((t, op, tail))
                    node_plan.append(edge_plan)
                plan.append(node_plan)
            self._plan = plan
        return self._plan

    def forward(self, *inputs: Any) -> Any:
        processed_inputs: list[torch.Tensor] = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states: list[torch.Tensor] = self.preprocessor(processed_inputs)
        k = self.partial_channels
        hard = getattr(self.mixing, "hard", False)
        for pos, node_plan in enumerate(self._edge_plan()):
            weights = self._edge_weights(pos)
            chosen = weights.argmax(-1).tolist() if hard else None  # one host sync per node (GDAS)
            beta = self._beta_weights(pos)
            if beta is not None:
                weights = weights * beta.unsqueeze(-1)
            beta_w = beta.unbind(0) if beta is not None else None
            ops_sum: torch.Tensor | None = None
            bypass_sum: torch.Tensor | None = None
            unused: list[torch.Tensor] = []
            for j, edge_plan in enumerate(node_plan):
                x = states[j]
                if k > 1:
                    cp = x.shape[1] // k
                    x_ops, x_bypass = x[:, :cp], x[:, cp:]
                else:
                    x_ops, x_bypass = x, None
                ops_sum = self._add_edge(ops_sum, x_ops, weights[j], edge_plan, chosen[j] if chosen else None, unused)
                if self.auxiliary_skip and self.auxiliary_skip_weight:
                    skip = self.auxiliary_skip_ops[pos][j](x_ops)
                    aux_w = self.auxiliary_skip_weight if beta_w is None else beta_w[j] * self.auxiliary_skip_weight
                    ops_sum = ops_sum + skip * aux_w
                if x_bypass is not None:
                    assert ops_sum is not None
                    if x_bypass.shape[-1] != ops_sum.shape[-1]:  # stride-2 edge of a reduction cell
                        x_bypass = F.max_pool2d(x_bypass, PC_BYPASS_POOL_SIZE, PC_BYPASS_POOL_SIZE)
                    if beta_w is None:
                        bypass_sum = x_bypass if bypass_sum is None else bypass_sum + x_bypass
                    else:
                        bypass_sum = (x_bypass * beta_w[j] if bypass_sum is None
                                      else torch.addcmul(bypass_sum, x_bypass, beta_w[j]))
            assert ops_sum is not None
            if unused:  # value 0, gradient 1: the straight-through path to the alphas of the ops not run
                ops_sum = ops_sum + torch.stack(unused).sum()
            states.append(ops_sum if bypass_sum is None else shuffled_concat(ops_sum, bypass_sum, k))
        this_cell = torch.cat(states[self.num_predecessors:], self.concat_dim)
        return self.postprocessor(this_cell, processed_inputs)

    def _add_edge(self, total: torch.Tensor | None, x: torch.Tensor, weights: torch.Tensor,
                  edge_plan: list[tuple[int, nn.Module, list[nn.Module] | None]], chosen: int | None,
                  unused: list[torch.Tensor]) -> torch.Tensor:
        """``total + sum_t w_t op_t(x)`` over the edge's kept ops; with a hard choice only op ``chosen`` runs."""
        relu_x: torch.Tensor | None = None
        w = weights.unbind(0)
        for t, op, tail in edge_plan:
            if chosen is not None and t != chosen:
                unused.append(w[t])
                continue
            if tail is None:
                y = op(x)
            else:
                if relu_x is None:
                    relu_x = F.relu(x)
                y = relu_x
                for module in tail:
                    y = module(y)
            if self.skip_dropout and t == self._skip_index and self.training and isinstance(op, nn.Identity):
                y = F.dropout(y, self.skip_dropout)
            total = y * w[t] if total is None else torch.addcmul(total, y, w[t])
        assert total is not None, "every edge keeps at least one op"
        return total

    # ---------------------------------------------------------------------------------------------- export
    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Deterministic mixing weights of every edge (``Mixing.probs``), keyed like NNI's."""
        result: dict[str, Any] = {}
        with torch.no_grad():
            for pos in range(len(self._node_indices)):
                weights = self._edge_weights(pos, deterministic=True).cpu().tolist()
                for label, row in zip(self._edge_labels[pos], weights, strict=False):
                    if label not in memo:
                        result[label] = dict(zip(self.op_names, row, strict=False))
        return result

    def _uses_nni_export(self) -> bool:
        plain_cell = not self.edge_normalization and not self.pruned and self.max_skip_connects is None
        return _is_softmax(self.mixing) and plain_cell

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        """The arch dict entries of this cell (see the module docstring for the rule)."""
        if self._uses_nni_export() or self.num_predecessors != 2:
            return super().export(memo)
        with torch.no_grad():
            weights = torch.cat([self.edge_weights(pos) for pos in range(len(self._node_indices))]).float().cpu()
        mask = torch.cat([self.op_mask(i) for i in self._node_indices]).cpu()
        ranked = select_top_inputs(weights, self.op_names, num_inputs=self.num_ops_per_node, mask=mask)
        if self.max_skip_connects is not None and self.label != "reduce":
            selection = limit_skip_connects(weights, self.op_names, k=self.max_skip_connects, mask=mask,
                                            num_inputs=self.num_ops_per_node, threshold=self.export_threshold)
        elif self.export_threshold is not None:
            selection = select_by_threshold(weights, self.op_names, threshold=self.export_threshold,
                                            num_inputs=self.num_ops_per_node, mask=mask)
        else:
            selection = ranked
        exported: dict[str, Any] = {}
        for pos, i in enumerate(self._node_indices):
            keys = [(f"{self.label}/op_{i}_{n}", f"{self.label}/input_{i}_{n}") for n in range(self.num_ops_per_node)]
            if all(op_key in memo and in_key in memo for op_key, in_key in keys):
                continue
            picks = list(selection[pos])
            if len(picks) < self.num_ops_per_node:
                # The threshold rule kept fewer inputs; NNI's DARTS space needs num_ops_per_node of them.
                _logger.info("%s cell, node %d: %d input(s) reach the export threshold %s; the DARTS space needs %d, "
                             "the best-ranked others fill in", self.label, i, len(picks), self.export_threshold,
                             self.num_ops_per_node)
                picks += [pick for pick in ranked[pos] if pick[0] not in {j for j, _ in picks}]
            for (op_key, in_key), (j, op_name) in zip(keys, picks, strict=False):
                exported[op_key] = op_name
                exported[in_key] = [j]
        return exported


def _is_softmax(mixing: Any) -> bool:
    """Plain softmax mixing: NNI's ``nn.Softmax(-1)`` or our :class:`~.mixing.SoftmaxMixing`."""
    return isinstance(mixing, (nn.Softmax, SoftmaxMixing))


def _check_partial_channels(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"partial_channels must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"partial_channels must be >= 1, got {value}")
