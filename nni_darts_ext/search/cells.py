"""The supernet's mixed cell: every DARTS cell variant the presets need, built from small replaceable pieces.

One :class:`MixedCell` replaces each NNI ``Cell`` of a DARTS-style space (``nni.nas.hub.pytorch.DARTS``). Each
concern is one piece, chosen once when the cell is built (interfaces in :mod:`.parts`):

* **mixing** (DARTS): every candidate op of every edge, weighted by the strategy's :class:`~.mixing.Mixing`
  (:meth:`Mixing.node_weights`). With softmax mixing and nothing else switched on, forward and export equal NNI's
  ``DifferentiableMixedCell``.
* **channels** (:class:`FullChannels`; PC-DARTS :class:`PartialChannels`, ``partial_channels=K``): ops see the
  first ``C/K`` channels of each input, the rest bypass them (max-pooled 2x2 on stride-2 edges) and are
  channel-shuffled back in.
* **edge normalisation** (PC-DARTS): a learned ``beta`` per incoming edge of each node, softmaxed per node
  (:meth:`MixedCell.beta_weights`).
* **which ops run** (:class:`AllOps`; GDAS :class:`OneSampledOp` for a hard mixing): with one-hot weights only the
  chosen op of each edge runs; the other ops add their (zero-valued) weight, so the straight-through gradient still
  reaches every alpha.
* **after each edge** (:class:`EdgeHook` s; DARTS- :class:`AuxiliarySkip`): ``auxiliary_skip_weight * skip(x)``
  added on every edge, outside the mixing.
* **op masks** (P-DARTS): pruned candidates of an edge are not computed and get no weight.
* **skip dropout** (P-DARTS): dropout on the parameter-free skip connections during search.

One edge's ops are one :class:`EdgeOps` call, a function of tensors only (the running node sum, the edge input and
its weights), so it can be wrapped in ``torch.utils.checkpoint`` without touching the rest. The run-time setting
``checkpointing`` (``"none"``, ``"cells"``, ``"edges"``; :mod:`nni_darts_ext.activation_checkpointing`) does so for
each cell or each edge; the mixing weights (maybe sampled) and GDAS' choice of op are drawn before any checkpointed
region and handed in, so a recomputation never draws again.

Where the time goes (identical math to NNI's cell): NNI stacks the op outputs of every edge with a zeros tensor
and multiplies the whole stack; here every node is one running ``addcmul`` over its (edge, op) pairs, the
sep/dil convolutions share one ReLU per edge, and concatenation/shuffle happen once per node. Which ops an edge
keeps is planned once per mask change, so a forward pass reads no mask on the host.

Export: NNI's rule (raw alpha ranking) for plain softmax cells (:attr:`Mixing.nni_export`); otherwise each node
keeps its ``num_ops_per_node`` best edges by the best op's deterministic weight (``Mixing.probs``, times beta), as
the original DARTS ``genotype()`` does. ``max_skip_connects`` caps skip connections in normal cells (P-DARTS).

Example::

    hook = functools.partial(MixedCell.mutate, partial_channels=4, edge_normalization=True)
    nni.nas.strategy.DARTS(mutation_hooks=[hook])
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._compat import import_nni_quietly
from ..activation_checkpointing import SEARCH_CHECKPOINTING, check_checkpointing, checkpointed, region_modules
from ..checks import check_bool, check_int
from ..constants import ARC_INIT_SCALE, PC_BYPASS_POOL_SIZE
from ..errors import ArgumentValueError
from .layers import narrow_op_factory, shuffled_concat
from .mixing import Mixing, as_mixing
from .parts import ChannelSplit, EdgeHook, OpSelection
from .progressive import limit_skip_connects
from .selection import select_by_threshold, select_top_inputs

with import_nni_quietly():
    from nni.nas.nn.pytorch import Cell
    from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell

__all__ = ["AllOps", "AuxiliarySkip", "EdgeOps", "FullChannels", "MixedCell", "NodePlan", "OneSampledOp",
           "PartialChannels", "SKIP_CONNECT"]

_logger = logging.getLogger(__name__)

SKIP_CONNECT = "skip_connect"  # the parameter-free candidate of the DARTS op set (nni/nas/hub/pytorch/nasnet.py)


# ------------------------------------------------------------------------------------------------ one edge's ops
class PlannedOp(NamedTuple):
    """One kept candidate op of an edge, as :class:`EdgeOps` runs it."""

    index: int  # position among the cell's op names (and in the edge's weights)
    op: nn.Module
    tail: list[nn.Module] | None  # the op after its leading ReLU (shared by the edge's conv ops), or None
    skip: bool  # the parameter-free skip connection (identity): P-DARTS' skip dropout applies to it


def _after_leading_relu(op: nn.Module) -> list[nn.Module] | None:
    """The modules after the leading ``ReLU(inplace=False)`` of a plain ``nn.Sequential`` op, else ``None``.

    The conv candidates (sep_conv_*, dil_conv_*) all start with this ReLU on the same input: the edge applies it
    once and runs the rest of each op on the shared result.
    """
    if (isinstance(op, nn.Sequential) and type(op).forward is nn.Sequential.forward and len(op) > 1
            and type(op[0]) is nn.ReLU and not op[0].inplace and not op._forward_hooks and not op._forward_pre_hooks):
        return list(op)[1:]
    return None


class EdgeOps:
    """The kept candidate ops of one edge as one weighted sum: ``total + sum_t w_t op_t(x)``.

    A function of tensors only (it holds references to the cell's op modules, no state of its own), so that one
    edge can run under ``torch.utils.checkpoint.checkpoint(edge, total, x, weights, chosen, p, use_reentrant=False)``.

    Example::

        total = edge(None, x, weights[j])          # the first edge of a node
        total = edge(total, x2, weights[j + 1])    # the next one adds to the same sum
    """

    __slots__ = ("ops", "_modules")

    def __init__(self, ops: Sequence[PlannedOp]):
        self.ops = list(ops)
        self._modules: list[nn.Module] | None = None

    def modules(self) -> list[nn.Module]:
        """Every module the kept ops run (what a checkpointed recomputation replays)."""
        if self._modules is None:
            self._modules = region_modules(planned.op for planned in self.ops)
        return self._modules

    @property
    def op_indices(self) -> list[int]:
        """Indices (among the cell's op names) of the kept ops."""
        return [planned.index for planned in self.ops]

    def __call__(self, total: torch.Tensor | None, x: torch.Tensor, weights: torch.Tensor, chosen: int | None = None,
                 skip_dropout: float = 0.0) -> torch.Tensor:
        """``total`` plus this edge's weighted op outputs; only op ``chosen`` runs when it is given.

        Args:
            total: the node's running sum (``None`` before its first edge).
            x: the edge's input (the channels that go through the ops).
            weights: ``(num_ops,)`` weights of this edge.
            chosen: the one op to run (hard mixing), or ``None`` for every kept op.
            skip_dropout: dropout probability on the skip connection's output (0: none).
        """
        relu_x: torch.Tensor | None = None
        w = weights.unbind(0)
        for t, op, tail, skip in self.ops:
            if chosen is not None and t != chosen:
                continue
            if tail is None:
                y = op(x)
            else:
                if relu_x is None:
                    relu_x = F.relu(x)
                y = relu_x
                for module in tail:
                    y = module(y)
            if skip and skip_dropout:
                y = F.dropout(y, skip_dropout)
            total = y * w[t] if total is None else torch.addcmul(total, y, w[t])
        if total is None:
            raise RuntimeError("an edge ran no op: every edge keeps at least one, and a chosen op is a kept one")
        return total


class _NodeInputs(NamedTuple):
    """What a node's forward takes from the architecture: drawn before any checkpointed region runs."""

    weights: torch.Tensor  # (num_inputs, num_ops), beta included
    beta: torch.Tensor | None  # (num_inputs,) with edge normalisation
    chosen: list[int] | None  # per edge the one op to run (hard mixing)


class NodePlan(NamedTuple):
    """One node's edges (each an :class:`EdgeOps` of its kept ops) and whether any op of the node is pruned."""

    edges: list[EdgeOps]
    pruned: bool


# ----------------------------------------------------------------------------------------------------- channels
class FullChannels:
    """Every channel of an edge's input goes through its ops (DARTS)."""

    groups = 1

    def narrow(self, op_factory: Any) -> Any:
        return op_factory

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return x, None

    def add_bypass(self, total: torch.Tensor | None, bypass: torch.Tensor, ops_out: torch.Tensor,
                   beta: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError("FullChannels bypasses nothing")

    def merge(self, ops_sum: torch.Tensor, bypass_sum: torch.Tensor | None) -> torch.Tensor:
        return ops_sum


class PartialChannels:
    """PC-DARTS: the first ``C/K`` channels of an edge's input go through its ops, the rest bypass them.

    Bypassed channels are max-pooled 2x2 on stride-2 edges, weighted by the edge's ``beta`` when there is one, and
    channel-shuffled back in with the ops' output once per node (PC-DARTS ``model_search.py`` ``MixedOp``).

    Example::

        PartialChannels(4).split(x)   # (x[:, :C // 4], x[:, C // 4:])
    """

    def __init__(self, groups: int):
        self.groups = check_int("partial_channels", groups, minimum=2)

    def narrow(self, op_factory: Any) -> Any:
        return narrow_op_factory(op_factory, self.groups)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        cp = x.shape[1] // self.groups
        return x[:, :cp], x[:, cp:]

    def add_bypass(self, total: torch.Tensor | None, bypass: torch.Tensor, ops_out: torch.Tensor,
                   beta: torch.Tensor | None) -> torch.Tensor:
        if bypass.shape[-1] != ops_out.shape[-1]:  # stride-2 edge of a reduction cell
            bypass = F.max_pool2d(bypass, PC_BYPASS_POOL_SIZE, PC_BYPASS_POOL_SIZE)
        if beta is None:
            return bypass if total is None else total + bypass
        return bypass * beta if total is None else torch.addcmul(total, bypass, beta)

    def merge(self, ops_sum: torch.Tensor, bypass_sum: torch.Tensor | None) -> torch.Tensor:
        if bypass_sum is None:
            raise RuntimeError("PartialChannels.merge needs the bypassed channels of the node")
        return shuffled_concat(ops_sum, bypass_sum, self.groups)


def channel_split(partial_channels: int) -> ChannelSplit:
    """:class:`FullChannels` for 1, :class:`PartialChannels` for ``K > 1``."""
    return FullChannels() if check_int("partial_channels", partial_channels, minimum=1) == 1 \
        else PartialChannels(partial_channels)


# ------------------------------------------------------------------------------------------------ which ops run
class AllOps:
    """Every kept op of every edge runs (soft mixings)."""

    def choose(self, weights: torch.Tensor) -> list[int] | None:
        return None

    def straight_through(self, total: torch.Tensor, weights: torch.Tensor, node: NodePlan,
                         chosen: list[int] | None) -> torch.Tensor:
        return total


class OneSampledOp:
    """Hard mixing (GDAS): the op with the one-hot weight is the only one of its edge that runs.

    The ops not run add their weight (value 0, gradient 1): the straight-through path to their alphas.
    """

    def choose(self, weights: torch.Tensor) -> list[int] | None:
        return weights.argmax(-1).tolist()  # one host sync per node

    def straight_through(self, total: torch.Tensor, weights: torch.Tensor, node: NodePlan,
                         chosen: list[int] | None) -> torch.Tensor:
        if chosen is None:
            return total
        unused: list[torch.Tensor] = []
        for j, edge in enumerate(node.edges):
            w = weights[j].unbind(0)
            unused += [w[t] for t in edge.op_indices if t != chosen[j]]
        return total + torch.stack(unused).sum() if unused else total


# ------------------------------------------------------------------------------------------------- after an edge
class AuxiliarySkip:
    """DARTS-: ``cell.auxiliary_skip_weight * skip(x)`` added after every edge, outside the mixing.

    The skip op is a fresh copy of the edge's own ``skip_connect`` (identity, or FactorizedReduce on stride-2 edges),
    held by the cell in ``auxiliary_skip_ops`` (DARTS- ``src/search/model_search.py`` ``MixedOp``); with edge
    normalisation it is weighted by the edge's ``beta`` too.
    """

    def __call__(self, cell: MixedCell, pos: int, edge: int, x: torch.Tensor, total: torch.Tensor,
                 beta: torch.Tensor | None) -> torch.Tensor:
        weight = cell.auxiliary_skip_weight
        if not weight:
            return total
        skip = cell.auxiliary_skip_ops[pos][edge](x)
        return total + skip * (weight if beta is None else beta * weight)


# ---------------------------------------------------------------------------------------------------- the cell
class MixedCell(DifferentiableMixedCell):
    """A DARTS supernet cell with optional partial channels, edge normalisation, op masks and auxiliary skips.

    Args:
        partial_channels: K; ops see the first ``C/K`` channels of each input, the rest bypass them.
        edge_normalization: learn a ``beta`` per incoming edge of each node (PC-DARTS).
        auxiliary_skip: add an auxiliary skip connection on every edge, weighted by
            :attr:`auxiliary_skip_weight` (DARTS-; the module sets the weight every epoch).

    Other arguments are those of NNI's ``DifferentiableMixedCell``; use :meth:`mutate` as a mutation hook. The
    run-time settings (:attr:`SETTINGS`) are plain attributes set by the search module; op masks change with
    :meth:`set_op_mask` and are saved in checkpoints (buffers ``_op_mask_<node>``). A variant replaces one piece:
    :attr:`channels` (:class:`~.parts.ChannelSplit`), :attr:`op_selection` (:class:`~.parts.OpSelection`),
    :attr:`edge_hooks` (:class:`~.parts.EdgeHook` s).

    Raises:
        ArgumentTypeError, ArgumentValueError: a bad option, or one this cell cannot take (``argument`` names it:
            ``partial_channels``, ``edge_normalization``, ``auxiliary_skip``, ``mixing``).

    Example::

        cell = MixedCell.mutate(space.cells[0], "cells.0", memo, {"softmax": SoftmaxMixing()}, partial_channels=4)
    """

    _arch_parameter_names: list[str] = ["_arch_alpha", "_arch_beta"]

    #: Run-time settings a cell schedule or the search module may set (plain attributes).
    SETTINGS: tuple[str, ...] = ("auxiliary_skip_weight", "skip_dropout", "max_skip_connects", "export_threshold",
                                 "checkpointing")

    def __init__(self, op_factory: Any, num_nodes: int, num_ops_per_node: int, num_predecessors: int,
                 preprocessor: Any, postprocessor: Any, concat_dim: int, memo: dict[str, Any],
                 mutate_kwargs: dict[str, Any], label: str, *, partial_channels: int = 1,
                 edge_normalization: bool = False, auxiliary_skip: bool = False):
        _check_options(concat_dim, op_factory, partial_channels=partial_channels,
                       edge_normalization=edge_normalization, auxiliary_skip=auxiliary_skip)
        channels = channel_split(partial_channels)
        super().__init__(channels.narrow(op_factory), num_nodes, num_ops_per_node,
                         num_predecessors, preprocessor, postprocessor, concat_dim, memo, mutate_kwargs, label)
        self._softmax: Mixing = as_mixing(self._softmax)  # NNI's own strategies hand in nn.Softmax(-1)
        if auxiliary_skip:
            _check_auxiliary_skip(self.op_names)
        self.partial_channels = partial_channels
        self.edge_normalization = edge_normalization
        self.auxiliary_skip = auxiliary_skip
        self.channels: ChannelSplit = channels
        self.op_selection: OpSelection = OneSampledOp() if self.mixing.hard else AllOps()
        self.edge_hooks: list[EdgeHook] = [AuxiliarySkip()] if auxiliary_skip else []
        self.auxiliary_skip_weight = 0.0
        self.skip_dropout = 0.0
        self.max_skip_connects: int | None = None
        self.export_threshold: float | None = None
        self.checkpointing = "none"  # activation checkpointing: "none", "cells" or "edges"
        self._node_indices = list(range(self.num_predecessors, self.num_nodes + self.num_predecessors))
        self._edge_labels = [[f"{self.label}/{i}_{j}" for j in range(i)] for i in self._node_indices]
        self._skip_index = self.op_names.index(SKIP_CONNECT) if SKIP_CONNECT in self.op_names else None
        self._plan: list[NodePlan] | None = None
        self._region: list[nn.Module] | None = None
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
            for node_ops in self._node_ops():
                # A fresh copy of each edge's own skip op: identity, or FactorizedReduce on stride-2 edges.
                self.auxiliary_skip_ops.append(nn.ModuleList(copy.deepcopy(edge[SKIP_CONNECT]) for edge in node_ops))

    # --------------------------------------------------------------------------------------------- building
    @classmethod
    def replaces(cls, module: nn.Module) -> bool:
        """True for a plain NNI ``Cell`` this class replaces (``merge_op='all'``, built from op factories)."""
        if type(module) is not Cell:
            return False
        cell = cast(Any, module)
        return cell.op_candidates_factory is not None and cell.merge_op == "all"

    @classmethod
    def check_options(cls, module: nn.Module, *, partial_channels: int = 1, edge_normalization: bool = False,
                      auxiliary_skip: bool = False) -> None:
        """Raise what building this cell from ``module`` (a plain NNI ``Cell``) with these options would raise.

        Builds nothing: cheap enough to refuse a combination before anything is trained or written.

        Raises:
            ArgumentTypeError, ArgumentValueError: ``argument`` is the option at fault.

        Example::

            MixedCell.check_options(space.cells[0], partial_channels=3)   # ArgumentValueError: partial_channels
        """
        cell = cast(Any, module)
        _check_options(cell.concat_dim, cell.op_candidates_factory, partial_channels=partial_channels,
                       edge_normalization=edge_normalization, auxiliary_skip=auxiliary_skip)

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any],
               **options: Any) -> MixedCell | None:
        """Mutation hook: replace a plain NNI ``Cell`` (``merge_op='all'``, op factories) by this cell."""
        if not cls.replaces(module):
            return None  # loose-end cells are left to NNI's hooks (and its errors)
        cell = cast(Any, module)
        return cls(cell.op_candidates_factory, cell.num_nodes, cell.num_ops_per_node, cell.num_predecessors,
                   cell.preprocessor, cell.postprocessor, cell.concat_dim, memo, mutate_kwargs, cell.label,
                   **options)

    def _node_ops(self) -> Sequence[Sequence[dict[str, nn.Module]]]:
        return cast(Sequence[Sequence[dict[str, nn.Module]]], self.ops)

    def edge_candidates(self, pos: int, edge: int) -> Mapping[str, nn.Module]:
        """The candidate op modules ``{op name: module}`` of edge ``edge`` (input index) of node position ``pos``
        (what a cost table measures)."""
        return self._node_ops()[pos][edge]

    # ---------------------------------------------------------------------------------------- settings
    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], argument: str) -> None:
        """Refuse names that are not run-time settings of the cell (``argument``: where they came from)."""
        unknown = sorted(set(settings) - set(cls.SETTINGS))
        if unknown:
            raise ArgumentValueError(argument, f"names {', '.join(map(repr, unknown))}, not a MixedCell setting "
                                               f"(known: {', '.join(cls.SETTINGS)})")

    def apply_settings(self, settings: Mapping[str, Any]) -> None:
        """Set run-time settings (:attr:`SETTINGS`), e.g. ``{"skip_dropout": 0.3}``."""
        self.check_settings(settings, "settings")
        if "checkpointing" in settings:
            check_checkpointing(settings["checkpointing"], SEARCH_CHECKPOINTING)
        for name, value in settings.items():
            setattr(self, name, value)

    # ----------------------------------------------------------------------------------------------- masks
    @property
    def node_indices(self) -> list[int]:
        """Indices of the intermediate nodes (from ``num_predecessors``); node position ``pos`` is index
        ``node_indices[pos]``."""
        return list(self._node_indices)

    def op_mask(self, node: int) -> torch.Tensor:
        """The ``(num_inputs, num_ops)`` bool mask of node ``node`` (node index, from ``num_predecessors``)."""
        return cast(torch.Tensor, self._buffers[f"_op_mask_{node}"])

    def set_op_mask(self, node: int, mask: torch.Tensor) -> None:
        """Keep only the ops where ``mask`` is True (``(num_inputs, num_ops)``); pruned ops are not computed.

        Raises:
            ArgumentValueError: wrong shape, or an edge with no op left (``argument``: ``mask``).
        """
        current = self.op_mask(node)
        mask = torch.as_tensor(mask, dtype=torch.bool, device=current.device)
        if mask.shape != current.shape:
            raise ArgumentValueError("mask", f"of node {node} must have shape {tuple(current.shape)}, "
                                             f"got {tuple(mask.shape)}")
        if not bool(mask.any(-1).all()):
            raise ArgumentValueError("mask", f"of node {node} leaves an edge with no candidate op")
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
        return any(node.pruned for node in self._node_plans())

    # --------------------------------------------------------------------------------------------- weights
    @property
    def mixing(self) -> Mixing:
        """The mixing of this cell's alphas (the strategy's, shared by its cells)."""
        return self._softmax

    def mixing_weights(self, pos: int, *, deterministic: bool = False) -> torch.Tensor:
        """The mixing's weights ``(num_inputs, num_ops)`` of node position ``pos``; pruned ops get weight 0.

        Search-time weights (differentiable, maybe sampled), or ``Mixing.probs`` with ``deterministic``; ``beta``
        not included (:meth:`edge_weights` has it). NNI's trailing ``none`` entry never gets a weight that is used.
        """
        node = self._node_plans()[pos]
        mask = self.op_mask(self._node_indices[pos]) if node.pruned else None
        alphas = [self._arch_alpha[label] for label in self._edge_labels[pos]]
        return self.mixing.node_weights(alphas, len(self.op_names), mask, deterministic=deterministic)

    def beta_weights(self, pos: int) -> torch.Tensor | None:
        """``softmax(beta)`` over the incoming edges of node position ``pos``; ``None`` without edge normalisation."""
        if not self.edge_normalization:
            return None
        return torch.softmax(self._arch_beta[f"{self.label}/{self._node_indices[pos]}"], -1)

    def edge_weights(self, pos: int) -> torch.Tensor:
        """Deterministic combined weights ``(num_inputs, num_ops)`` of node position ``pos``: mixing x beta."""
        weights = self.mixing_weights(pos, deterministic=True)
        beta = self.beta_weights(pos)
        return weights if beta is None else weights * beta.unsqueeze(-1)

    # --------------------------------------------------------------------------------------------- forward
    def _node_plans(self) -> list[NodePlan]:
        """Per node, per edge: the kept ops (planned once per mask change: the forward reads no mask)."""
        if self._plan is None:
            plan = []
            for pos, node_ops in enumerate(self._node_ops()):
                keep = self.op_mask(self._node_indices[pos]).tolist()
                edges = [EdgeOps([PlannedOp(t, op, _after_leading_relu(op),
                                            t == self._skip_index and isinstance(op, nn.Identity))
                                  for t, op in enumerate(edge_ops.values()) if keep[j][t]])
                         for j, edge_ops in enumerate(node_ops)]
                plan.append(NodePlan(edges, pruned=not all(all(row) for row in keep)))
            self._plan = plan
        return self._plan

    def forward(self, *inputs: Any) -> Any:
        # The mixing weights (maybe sampled, shared between cells by Mixing.sample_once) and the hard choice of op
        # are drawn here, outside any checkpointed region, and handed in: a recomputation cannot draw again.
        node_inputs = [self._node_inputs(pos) for pos in range(len(self._node_indices))]
        if self.checkpointing == "cells":
            return checkpointed(self._cell_forward, node_inputs, *inputs, modules=self._region_modules())
        return self._cell_forward(node_inputs, *inputs)

    def _cell_forward(self, node_inputs: Sequence[_NodeInputs], *inputs: Any) -> Any:
        processed_inputs: list[torch.Tensor] = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states: list[torch.Tensor] = self.preprocessor(processed_inputs)
        for pos in range(len(self._node_indices)):
            states.append(self._node_forward(pos, states, node_inputs[pos]))
        this_cell = torch.cat(states[self.num_predecessors:], self.concat_dim)
        return self.postprocessor(this_cell, processed_inputs)

    def _region_modules(self) -> list[nn.Module]:
        if self._region is None:
            self._region = region_modules([self])
        return self._region

    def _node_inputs(self, pos: int) -> _NodeInputs:
        """The weights of node position ``pos`` (beta included), its edges' betas and the chosen ops."""
        weights = self.mixing_weights(pos)
        chosen = self.op_selection.choose(weights)
        beta = self.beta_weights(pos)
        if beta is not None:
            weights = weights * beta.unsqueeze(-1)
        return _NodeInputs(weights, beta, chosen)

    def node_forward(self, pos: int, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """The output of node position ``pos`` from the states before it (cell inputs, earlier nodes)."""
        return self._node_forward(pos, states, self._node_inputs(pos))

    def _node_forward(self, pos: int, states: Sequence[torch.Tensor], node_inputs: _NodeInputs) -> torch.Tensor:
        node = self._node_plans()[pos]
        weights, beta, chosen = node_inputs
        betas: Sequence[torch.Tensor | None] = beta.unbind(0) if beta is not None else [None] * len(node.edges)
        skip_dropout = self.skip_dropout if self.training else 0.0
        per_edge = self.checkpointing == "edges"
        ops_sum: torch.Tensor | None = None
        bypass_sum: torch.Tensor | None = None
        for j, edge in enumerate(node.edges):
            x_ops, x_bypass = self.channels.split(states[j])
            choice = None if chosen is None else chosen[j]
            if per_edge:
                ops_sum = checkpointed(edge, ops_sum, x_ops, weights[j], choice, skip_dropout,
                                       modules=edge.modules())
            else:
                ops_sum = edge(ops_sum, x_ops, weights[j], choice, skip_dropout)
            for hook in self.edge_hooks:
                ops_sum = hook(self, pos, j, x_ops, ops_sum, betas[j])
            if x_bypass is not None:
                bypass_sum = self.channels.add_bypass(bypass_sum, x_bypass, ops_sum, betas[j])
        assert ops_sum is not None, "every node has an edge"
        ops_sum = self.op_selection.straight_through(ops_sum, weights, node, chosen)
        return self.channels.merge(ops_sum, bypass_sum)

    # ---------------------------------------------------------------------------------------------- export
    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        """Deterministic mixing weights of every edge (``Mixing.probs``), keyed like NNI's."""
        result: dict[str, Any] = {}
        with torch.no_grad():
            for pos in range(len(self._node_indices)):
                weights = self.mixing_weights(pos, deterministic=True).cpu().tolist()
                for label, row in zip(self._edge_labels[pos], weights, strict=True):
                    if label not in memo:
                        result[label] = dict(zip(self.op_names, row, strict=True))
        return result

    def _uses_nni_export(self) -> bool:
        plain_cell = not self.edge_normalization and not self.pruned and self.max_skip_connects is None
        return self.mixing.nni_export and plain_cell

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


def _op_names(op_factory: Any) -> list[str] | None:
    """Candidate names of a Cell's op factories (NNI names list candidates by their index); ``None`` for a single
    callable, whose names are known once it is called."""
    if isinstance(op_factory, dict):
        return list(op_factory)
    return [str(i) for i in range(len(op_factory))] if isinstance(op_factory, list) else None


def _check_options(concat_dim: int, op_factory: Any, *, partial_channels: Any, edge_normalization: Any,
                   auxiliary_skip: Any) -> None:
    """The cell's option checks, shared by :class:`MixedCell` and :meth:`MixedCell.check_options`."""
    check_int("partial_channels", partial_channels, minimum=1)
    check_bool("edge_normalization", edge_normalization)
    check_bool("auxiliary_skip", auxiliary_skip)
    if partial_channels > 1:
        if concat_dim != 1:
            raise ArgumentValueError("partial_channels", f"splits dim 1 (channels); this cell concatenates on dim "
                                                         f"{concat_dim}")
        narrow_op_factory(op_factory, partial_channels)  # the channel count of every candidate
    if auxiliary_skip:
        _check_auxiliary_skip(_op_names(op_factory))


def _check_auxiliary_skip(op_names: list[str] | None) -> None:
    if op_names is not None and SKIP_CONNECT not in op_names:
        raise ArgumentValueError("auxiliary_skip", f"needs a {SKIP_CONNECT!r} candidate; this cell has {op_names}")
