"""PC-DARTS (partial channel connections + edge normalisation) and a lean first-order DARTS, inside NNI's one-shot machinery.

PC-DARTS: Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search", ICLR 2020
(https://arxiv.org/abs/1907.05737); reference code github:yuhuixu1993/PC-DARTS ``model_search.py`` (``MixedOp``,
``channel_shuffle``, ``Network.genotype``).

Two ideas on top of DARTS:

* **Partial channel connections.** On every edge only the first ``1/K`` of the input channels go through the
  candidate operations (built at width ``C/K``); the remaining channels bypass them (max-pooled 2x2 on the stride-2
  edges of a reduction cell), the two parts are concatenated and channel-shuffled with ``K`` groups.
* **Edge normalisation.** A learnable ``beta`` per incoming edge of every node, softmaxed over the node's edges,
  scales the edge's output. Export ranks a node's edges by ``max_op softmax(alpha) x softmax(beta)`` (``none``
  excluded), keeps the top two and the best operation on each.

Everything is a mutation hook plus a strategy subclass of :class:`nni.nas.strategy.DARTS`, so
``NasExperiment(DartsSpace(...), evaluator, darts_strategy("pc-darts"))`` runs it. ``alpha`` and ``beta`` are
ordinary ``nn.Parameter`` s of the supernet: they are found by ``arch_parameters()`` (architecture optimizer),
removed from the weight optimizer, saved in checkpoints and all-reduced by DDP like any parameter.

Where the time goes, and what :class:`LeanMixedCell` does about it (identical math to NNI's
``DifferentiableMixedCell`` when ``partial_channels=1`` and no edge normalisation):

* NNI stacks the 7 op outputs of every edge, concatenates a zeros tensor for ``none`` and multiplies the whole
  stack (3 full copies per edge, and the 8x stack is kept for backward). Here every node is one running
  ``addcmul`` over its (edge, op) pairs with the combined weights, nothing stacked.
* Concatenation and channel shuffle are linear, so they are done once per node (not per edge) by writing the
  operations' part and the bypass part straight into the shuffled layout of one output buffer.
* :class:`LeanDartsLightningModule` skips gradients that NNI computes and then throws away: weight gradients in the
  architecture step (NNI zeroes them before the weight step) and ``alpha``/``beta`` gradients in the weight step
  (zeroed before the next architecture step). Same updates, less backward work and memory. Off under DDP.

Example::

    from nni.nas.experiment import NasExperiment
    from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni_darts_ext import darts_strategy
    strategy = darts_strategy("pc-darts", partial_channels=4)
    NasExperiment(DartsSpace(width=16, num_cells=8), evaluator, strategy).run()
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Dict, List, Optional, Sequence, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._compat import import_nni_quietly
from .distributed import DistributedArchSync
from .constants import (
    PC_ARC_LEARNING_RATE,
    PC_BYPASS_POOL_SIZE,
    PC_PARTIAL_CHANNELS,
    ARC_INIT_SCALE,
    GRADIENT_CLIP_VAL,
)

with import_nni_quietly():
    import nni
    from nni.nas.hub.pytorch.nasnet import FactorizedReduce
    from nni.nas.nn.pytorch import Cell
    from nni.nas.nn.pytorch.cell import preprocess_cell_inputs
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell
    from nni.nas.strategy import DARTS

__all__ = [
    "channel_shuffle",
    "narrow_op_factory",
    "LeanMixedCell",
    "PartialChannelMixedCell",
    "LeanDartsLightningModule",
    "ChannelsFirstFactorizedReduce",
    "LeanDARTS",
    "PCDARTS",
]

_logger = logging.getLogger(__name__)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: ``(N, g*c, H, W)`` viewed as ``(N, g, c, H, W)``, transposed to ``(N, c, g, H, W)``.

    Output channel ``i * groups + g`` is input channel ``g * c + i`` (PC-DARTS ``model_search.py channel_shuffle``).

    Example::

        >>> channel_shuffle(torch.arange(8.).view(1, 8, 1, 1), 4).flatten().tolist()
        [0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]
    """
    if x.dim() != 4:
        raise ValueError(f"channel_shuffle expects a 4-d (N, C, H, W) tensor, got {x.dim()} dimensions")
    n, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"groups must be a positive divisor of the channel count {c}, got {groups}")
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _shuffled_concat(ops_part: torch.Tensor, bypass: torch.Tensor, groups: int) -> torch.Tensor:
    """``channel_shuffle(cat([ops_part, bypass], 1), groups)`` with one write per element and no temporaries.

    Keeps the memory format (channels-last stays channels-last).
    """
    n, cp, h, w = ops_part.shape
    fmt = torch.channels_last if _is_channels_last(ops_part) else torch.contiguous_format
    out = torch.empty((n, cp * groups, h, w), dtype=ops_part.dtype, device=ops_part.device, memory_format=fmt)
    grid = out.view(n, cp, groups, h, w)  # shuffled channel i * groups + g  <->  grid[:, i, g]
    grid[:, :, 0].copy_(ops_part)
    grid[:, :, 1:].copy_(bypass.unflatten(1, (groups - 1, cp)).transpose(1, 2))
    return out


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def narrow_op_factory(op_factory: Any, partial_channels: int) -> Any:
    """Rebuild a Cell's op factories at ``channels // partial_channels``.

    NNI's DARTS space (``nasnet.py CellBuilder.__call__``) passes ``functools.partial(op_factory, op=...,
    channels=C, is_reduction_cell=...)`` per candidate; the same partials are returned with ``channels=C // K``.

    Raises:
        TypeError: a factory is not a ``functools.partial`` with an int ``channels=`` keyword.
        ValueError: ``channels`` is not divisible by ``partial_channels``.

    Example::

        narrow_op_factory(cell.op_candidates_factory, 4)
    """
    if partial_channels == 1:
        return op_factory

    def narrow(name: Any, factory: Any) -> Any:
        channels = factory.keywords.get("channels") if isinstance(factory, functools.partial) else None
        if not isinstance(channels, int):
            raise TypeError(
                f"partial channels need op factories that are functools.partial objects with an int `channels=` "
                f"keyword (as NNI's DARTS space builds them); candidate {name!r} is {factory!r}"
            )
        if channels % partial_channels:
            raise ValueError(
                f"partial_channels={partial_channels} must divide every cell's channel count, but candidate "
                f"{name!r} has channels={channels}; choose a width divisible by {partial_channels}"
            )
        return functools.partial(factory.func, *factory.args, **{**factory.keywords, "channels": channels // partial_channels})

    if isinstance(op_factory, dict):
        return {name: narrow(name, f) for name, f in op_factory.items()}
    if isinstance(op_factory, list):
        return [narrow(i, f) for i, f in enumerate(op_factory)]
    raise TypeError(f"op factories must be a dict or list, got {type(op_factory).__name__}")


class LeanMixedCell(DifferentiableMixedCell):
    """NNI's ``DifferentiableMixedCell`` with a leaner forward, optional partial channels and edge normalisation.

    With ``partial_channels=1`` and ``edge_normalization=False`` the forward equals NNI's (same alphas, same
    modules, same export) without stacking every op output and a zeros tensor per edge.

    Args:
        partial_channels: K; operations see the first ``C/K`` channels of each input, the rest bypass them.
        edge_normalization: learn a ``beta`` per incoming edge of each node (PC-DARTS edge normalisation).

    Other arguments are those of NNI's ``DifferentiableMixedCell``; use :meth:`mutate` as a mutation hook.

    Example::

        hook = functools.partial(LeanMixedCell.mutate, partial_channels=4, edge_normalization=True)
        DARTS(mutation_hooks=[hook])
    """

    _arch_parameter_names: List[str] = ["_arch_alpha", "_arch_beta"]

    def __init__(
        self,
        op_factory: Any,
        num_nodes: int,
        num_ops_per_node: int,
        num_predecessors: int,
        preprocessor: Any,
        postprocessor: Any,
        concat_dim: int,
        memo: Dict[str, Any],
        mutate_kwargs: Dict[str, Any],
        label: str,
        *,
        partial_channels: int = 1,
        edge_normalization: bool = False,
    ):
        _check_partial_channels(partial_channels)
        if partial_channels > 1 and concat_dim != 1:
            raise ValueError(f"partial channels split dim 1 (channels); this cell concatenates on dim {concat_dim}")
        super().__init__(
            narrow_op_factory(op_factory, partial_channels),
            num_nodes, num_ops_per_node, num_predecessors, preprocessor, postprocessor, concat_dim,
            memo, mutate_kwargs, label,
        )
        self.partial_channels = partial_channels
        self.edge_normalization = bool(edge_normalization)
        self._node_indices = list(range(self.num_predecessors, self.num_nodes + self.num_predecessors))
        # Alpha of edge j -> node i, as a per-node list (avoids string formatting in forward).
        self._edge_labels = [[f"{self.label}/{i}_{j}" for j in range(i)] for i in self._node_indices]
        self._plan: Optional[List[List[List[Any]]]] = None
        self._arch_beta = nn.ParameterDict()
        if self.edge_normalization:
            for i in self._node_indices:
                node_label = f"{self.label}/{i}"
                memo_label = node_label + "/beta"  # shared by every cell with this label, like alpha
                if memo_label not in memo:
                    # PC-DARTS model_search.py _initialize_alphas: 1e-3 * randn.
                    memo[memo_label] = nn.Parameter(torch.randn(i) * ARC_INIT_SCALE)
                self._arch_beta[node_label] = memo[memo_label]

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: Dict[str, Any], mutate_kwargs: Dict[str, Any],
               *, partial_channels: int = 1, edge_normalization: bool = False) -> Optional["LeanMixedCell"]:
        """Mutation hook: replace a plain NNI ``Cell`` (``merge_op='all'``, op factories) by this cell."""
        if type(module) is not Cell:
            return None
        cell = cast(Any, module)
        if cell.op_candidates_factory is None or cell.merge_op != "all":
            return None  # loose-end cells are left to NNI's hooks (and its errors)
        return cls(
            cell.op_candidates_factory, cell.num_nodes, cell.num_ops_per_node, cell.num_predecessors,
            cell.preprocessor, cell.postprocessor, cell.concat_dim, memo, mutate_kwargs, cell.label,
            partial_channels=partial_channels, edge_normalization=edge_normalization,
        )

    # ----------------------------------------------------------------------------------------------------- weights
    def edge_weights(self, node_position: int) -> torch.Tensor:
        """Combined weights ``(num_inputs, num_ops)`` of one node: softmax(alpha) (``none`` dropped) x softmax(beta).

        ``node_position`` counts from 0 (node index ``num_predecessors + node_position``).
        """
        labels = self._edge_labels[node_position]
        alphas = torch.stack([self._arch_alpha[lb] for lb in labels])
        weights = self._softmax(alphas)[:, : len(self.op_names)]  # the appended last entry is `none` (zeros)
        if self.edge_normalization:
            beta = self._arch_beta[f"{self.label}/{self._node_indices[node_position]}"]
            weights = weights * torch.softmax(beta, -1).unsqueeze(-1)
        return weights

    def _beta_weights(self, node_position: int) -> Optional[torch.Tensor]:
        if not self.edge_normalization:
            return None
        return torch.softmax(self._arch_beta[f"{self.label}/{self._node_indices[node_position]}"], -1)

    # ----------------------------------------------------------------------------------------------------- forward
    def _edge_plan(self) -> List[List[List[Any]]]:
        """Per node, per edge: ``(op, tail)`` pairs; ``tail`` is the op's modules after a leading ReLU, else None.

        The conv candidates (sep_conv_*, dil_conv_*) all start with ``ReLU(inplace=False)`` on the same input:
        the cell applies it once per edge and runs the rest of each op on the shared result (same values,
        one ReLU and one saved activation instead of four). Built at the first forward, after every mutation
        hook has run.
        """
        if self._plan is None:
            plan = []
            for node_ops in cast(Sequence[Sequence[Dict[str, nn.Module]]], self.ops):
                node_plan = []
                for edge_ops in node_ops:
                    edge_plan = []
                    for op in edge_ops.values():
                        tail = None
                        if (isinstance(op, nn.Sequential) and type(op).forward is nn.Sequential.forward
                                and len(op) > 1 and type(op[0]) is nn.ReLU and not op[0].inplace
                                and not op._forward_hooks and not op._forward_pre_hooks):
                            tail = list(op)[1:]
                        edge_plan.append((op, tail))
                    node_plan.append(edge_plan)
                plan.append(node_plan)
            self._plan = plan
        return self._plan

    def forward(self, *inputs: Any) -> Any:
        processed_inputs: List[torch.Tensor] = preprocess_cell_inputs(self.num_predecessors, *inputs)
        states: List[torch.Tensor] = self.preprocessor(processed_inputs)
        k = self.partial_channels
        for pos, node_plan in enumerate(self._edge_plan()):
            weights = self.edge_weights(pos).unbind(0)
            beta = self._beta_weights(pos)
            beta_w = beta.unbind(0) if beta is not None else None
            ops_sum: Optional[torch.Tensor] = None
            bypass_sum: Optional[torch.Tensor] = None
            for j, edge_plan in enumerate(node_plan):
                x = states[j]
                if k > 1:
                    cp = x.shape[1] // k
                    x_ops, x_bypass = x[:, :cp], x[:, cp:]
                else:
                    x_ops, x_bypass = x, None
                relu_x: Optional[torch.Tensor] = None
                for w, (op, tail) in zip(weights[j].unbind(0), edge_plan):
                    if tail is None:
                        y = op(x_ops)
                    else:
                        if relu_x is None:
                            relu_x = F.relu(x_ops)
                        y = relu_x
                        for module in tail:
                            y = module(y)
                    ops_sum = y * w if ops_sum is None else torch.addcmul(ops_sum, y, w)
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
            states.append(ops_sum if bypass_sum is None else _shuffled_concat(ops_sum, bypass_sum, k))
        this_cell = torch.cat(states[self.num_predecessors:], self.concat_dim)
        return self.postprocessor(this_cell, processed_inputs)

    # ------------------------------------------------------------------------------------------------------ export
    def export(self, memo: Dict[str, Any]) -> Dict[str, Any]:
        """NNI's export without edge normalisation; with it, PC-DARTS ``Network.genotype`` ranking.

        Edges of a node are ranked by ``max_op softmax(alpha)[op] * softmax(beta)[edge]`` (``none`` excluded),
        the top ``num_ops_per_node`` are kept (best first) with their best operation.
        """
        if not self.edge_normalization:
            return super().export(memo)
        exported: Dict[str, Any] = {}
        with torch.no_grad():
            for pos, i in enumerate(self._node_indices):
                keys = [(f"{self.label}/op_{i}_{n}", f"{self.label}/input_{i}_{n}") for n in range(self.num_ops_per_node)]
                if all(op_key in memo and in_key in memo for op_key, in_key in keys):
                    continue
                alphas = torch.stack([self._arch_alpha[lb] for lb in self._edge_labels[pos]]).detach().float().cpu()
                beta = self._arch_beta[f"{self.label}/{i}"].detach().float().cpu()
                weights = torch.softmax(alphas, -1)[:, : len(self.op_names)] * torch.softmax(beta, -1).unsqueeze(-1)
                best_w, best_op = weights.max(-1)
                # Stable sort: ties keep the lower input index first, as Python's sorted() in the reference.
                ranked = sorted(range(i), key=lambda j: -float(best_w[j]))
                _logger.debug("PC-DARTS export (%s cell, node %d): edge scores %s", self.label, i, best_w.tolist())
                for n, (op_key, in_key) in enumerate(keys):
                    j = ranked[n % len(ranked)]
                    exported[op_key] = self.op_names[int(best_op[j])]
                    exported[in_key] = [j]
        return exported


class PartialChannelMixedCell(LeanMixedCell):
    """The PC-DARTS supernet cell: :class:`LeanMixedCell` with ``partial_channels=K`` and edge normalisation on.

    Example::

        hook = functools.partial(PartialChannelMixedCell.mutate, partial_channels=4)
    """

    @classmethod
    def mutate(cls, module: nn.Module, name: str, memo: Dict[str, Any], mutate_kwargs: Dict[str, Any],
               *, partial_channels: int = PC_PARTIAL_CHANNELS, edge_normalization: bool = True) -> Optional["LeanMixedCell"]:
        return super().mutate(module, name, memo, mutate_kwargs,
                              partial_channels=partial_channels, edge_normalization=edge_normalization)


def _check_partial_channels(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"partial_channels must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"partial_channels must be >= 1, got {value}")


class ChannelsFirstFactorizedReduce(FactorizedReduce):
    """NNI's ``FactorizedReduce`` (same parameters, same math) computed in channels-first memory format.

    Works around a PyTorch CPU (oneDNN) bug seen with torch 2.14: the weight gradient of a 1x1 stride-2
    convolution in channels-last format with few input channels (1-4, e.g. the skip_connect of a PC-DARTS
    reduction edge at width 8) corrupts the heap ("double free or corruption"). :class:`LeanDartsLightningModule`
    swaps it in, with channels-first weights, only when it runs channels-last; the output goes back to
    channels-last.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = _channels_last_like(x)
        x = self.relu(x).contiguous()
        y = self.pad(x)
        out = self.bn(torch.cat([self.conv_1(x), self.conv_2(y[:, :, 1:, 1:])], dim=1))
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def _channels_last_like(x: torch.Tensor) -> bool:
    """Channels-last strides (channel stride 1), including channel slices of a channels-last tensor."""
    return x.dim() == 4 and x.size(1) > 1 and x.stride(1) == 1 and x.size(2) * x.size(3) > 1


class LeanDartsLightningModule(DistributedArchSync, DartsLightningModule):
    """NNI's ``DartsLightningModule`` step with the discarded gradients skipped and optional channels-last.

    Per batch, exactly as NNI: an architecture step on ``batch['val']`` (after ``warmup_epochs``), then a weight step
    on ``batch['train']`` with gradient clipping, then the LR schedulers. Differences, none of which changes an
    update:

    * ``skip_unused_gradients``: weights do not require grad during the architecture step and ``alpha``/``beta``
      do not during the weight step (NNI computes both and zeroes them before they are used). Disabled when the
      trainer runs more than one process (DDP expects every parameter's gradient on every step).
    * ``channels_last``: the supernet's 4-d parameters are converted to channels-last at fit start, so every
      activation follows (2-4x faster depthwise convolutions with CPU oneDNN). ``None``: on for CPU only.

    Example::

        LeanDartsLightningModule(training_module, gradient_clip_val=5.0, channels_last=True)
    """

    def __init__(self, training_module: Any, *, skip_unused_gradients: bool = True,
                 channels_last: Optional[bool] = None, **kwargs: Any):
        super().__init__(training_module, **kwargs)
        self.skip_unused_gradients = bool(skip_unused_gradients)
        self.channels_last = channels_last
        self._arch_params: List[nn.Parameter] = []
        self._weight_params: List[nn.Parameter] = []
        self._supernet: List[Any] = []
        self._skip = False

    def on_fit_start(self) -> Any:
        self._supernet = list(self.supernet_modules())
        self._arch_params = self.arch_parameters()
        arch_ids = {id(p) for p in self._arch_params}
        self._weight_params = [p for p in self.parameters() if p.requires_grad and id(p) not in arch_ids]
        world_size = getattr(self.trainer, "world_size", 1)
        self._skip = self.skip_unused_gradients and world_size == 1
        if self.skip_unused_gradients and not self._skip:
            _logger.info("skip_unused_gradients is off with %d processes (DDP needs every gradient).", world_size)
        if _use_channels_last(self.channels_last, self.device, world_size):
            self.training_module.to(memory_format=torch.channels_last)
            for module in self.training_module.modules():
                if type(module) is FactorizedReduce:
                    module.__class__ = ChannelsFirstFactorizedReduce
                    module.to(memory_format=torch.contiguous_format)
        return super().on_fit_start()

    def resample(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        for module in self._supernet or self.supernet_modules():
            result.update(module.resample(memo=result))
        return result

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        arc_optim = self.architecture_optimizers()
        if not isinstance(arc_optim, torch.optim.Optimizer):
            raise TypeError(f"Expect arc_optim to be a single Optimizer, but found: {arc_optim}")
        trn_batch, val_batch = batch["train"], batch["val"]

        # Phase 1: architecture step (NNI differentiable.py DartsLightningModule.training_step).
        if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
            with _frozen(self._weight_params if self._skip else ()):
                self.resample()
                arc_optim.zero_grad()
                arc_step_loss = self.training_module.training_step(val_batch, 2 * batch_idx)
                if isinstance(arc_step_loss, dict):
                    arc_step_loss = arc_step_loss["loss"]
                if self.penalty is not None:
                    arc_step_loss, details = self.penalty(arc_step_loss, self.export_probs())
                    self.log_dict({f"penalty/{k}": v for k, v in details.items()})
                self.manual_backward(arc_step_loss)
                arc_optim.step()

        # Phase 2: weight step.
        with _frozen(self._arch_params if self._skip else ()):
            self.resample()
            loss_and_metrics = self.training_module.training_step(trn_batch, 2 * batch_idx + 1)
            w_step_loss = loss_and_metrics["loss"] if isinstance(loss_and_metrics, dict) else loss_and_metrics
            self.advance_optimization(w_step_loss, batch_idx, self.gradient_clip_val)

        self.advance_lr_schedulers(batch_idx)
        if batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs(self.export_probs())
        return loss_and_metrics


class _frozen:
    """Context manager: ``requires_grad_(False)`` on the given parameters, restoring each one's flag on exit."""

    def __init__(self, params: Sequence[nn.Parameter]):
        self.params = params
        self.flags: List[bool] = []

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in zip(self.params, self.flags):
            p.requires_grad_(flag)


@nni.trace
class LeanDARTS(DARTS):
    """First-order DARTS, the same algorithm and export as :class:`nni.nas.strategy.DARTS`, with less waste.

    Cells become :class:`LeanMixedCell` (identical forward and export) and the one-shot module is
    :class:`LeanDartsLightningModule`.

    Args:
        skip_unused_gradients: do not compute gradients NNI discards (see :class:`LeanDartsLightningModule`).
        channels_last: run the supernet in channels-last memory format; ``None`` (default): on CPU only.
        **kwargs: :class:`nni.nas.strategy.DARTS` arguments (``arc_learning_rate``, ``gradient_clip_val``,
            ``log_prob_every_n_step``, ``warmup_epochs``, ``penalty``, ``mutation_hooks``).

    Example::

        strategy = LeanDARTS(gradient_clip_val=5.0)
    """

    def __init__(self, *, skip_unused_gradients: bool = True, channels_last: Optional[bool] = None, **kwargs: Any):
        _check_bool("skip_unused_gradients", skip_unused_gradients)
        if channels_last is not None:
            _check_bool("channels_last", channels_last)
        super().__init__(**kwargs)
        self.skip_unused_gradients = skip_unused_gradients
        self.channels_last = channels_last

    def _cell_hook(self) -> Any:
        return functools.partial(LeanMixedCell.mutate, partial_channels=1, edge_normalization=False)

    def default_mutation_hooks(self) -> List[Any]:
        return [self._cell_hook()] + super().default_mutation_hooks()

    def configure_oneshot_module(self, training_module: Any) -> LeanDartsLightningModule:
        return LeanDartsLightningModule(
            training_module,
            skip_unused_gradients=self.skip_unused_gradients,
            channels_last=self.channels_last,
            arc_learning_rate=self.arc_learning_rate,
            gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step,
            warmup_epochs=self.warmup_epochs,
            penalty=self.penalty,
        )


@nni.trace
class PCDARTS(LeanDARTS):
    """PC-DARTS search strategy (Xu et al., ICLR 2020) on NNI's one-shot DARTS machinery.

    Args:
        partial_channels: K, the inverse fraction of channels sent through the candidate ops (paper: 4).
        edge_normalization: learn and use the per-edge ``beta`` (paper: on).
        arc_learning_rate: architecture Adam learning rate (PC-DARTS ``train_search.py``: 6e-4).
        gradient_clip_val: weight-gradient clipping norm (5).
        **kwargs: other :class:`LeanDARTS` / :class:`nni.nas.strategy.DARTS` arguments, e.g. ``warmup_epochs``
            (the paper freezes the architecture for the first 15 epochs).

    Raises:
        TypeError / ValueError: bad ``partial_channels`` (at construction) or a width not divisible by it
            (when the space is mutated).

    Example::

        strategy = PCDARTS(partial_channels=4, warmup_epochs=15)
    """

    def __init__(self, *, partial_channels: int = PC_PARTIAL_CHANNELS, edge_normalization: bool = True,
                 arc_learning_rate: float = PC_ARC_LEARNING_RATE, gradient_clip_val: Optional[float] = GRADIENT_CLIP_VAL,
                 **kwargs: Any):
        _check_partial_channels(partial_channels)
        _check_bool("edge_normalization", edge_normalization)
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val, **kwargs)
        self.partial_channels = partial_channels
        self.edge_normalization = edge_normalization

    def _cell_hook(self) -> Any:
        return functools.partial(PartialChannelMixedCell.mutate, partial_channels=self.partial_channels,
                                 edge_normalization=self.edge_normalization)


def _use_channels_last(setting: Optional[bool], device: torch.device, world_size: int = 1) -> bool:
    """Resolve ``channels_last=None``: on for single-process CPU runs (oneDNN depthwise convolutions), off elsewhere.

    Off under CPU DDP: channels-last supernets crashed gloo DDP processes here (heap corruption, torch 2.14).
    """
    if setting is None:
        return device.type == "cpu" and world_size == 1
    return setting


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
