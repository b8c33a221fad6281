"""Search under a budget: per-op cost tables, the supernet's expected cost, its penalty and the export limit rule.

**Cost table** (:class:`CostTable`, :func:`build_cost_table`): the cost of the *retrain* network (NNI's fixed
``DARTS`` net at the recipe's retrain width, cells and image size, auxiliary head left out: it does not run at
inference) split into a fixed part (stem, cell preprocessors, classifier, node sums) and, per cell type (``normal``,
``reduce``), node and input state, the cost of each candidate op summed over the cells of that type. Each op is
built on its own at its edge's real shape (channels and size of the edge's input, from one forward pass of a
full-channel supernet of the retrain size; stride 2 on a reduction cell's input edges), as NNI's ``DARTS`` builds it
and the fixed part is what a whole net measures above its ops, so that
``table.cost_of(arch)`` is the cost of ``build_model(arch, ...)``. Metrics:

* ``macs``: multiply-adds of one image (:func:`nni_darts_ext.profile.count_macs`, ptflops);
* ``params``: parameters (:func:`nni_darts_ext.profile.count_params`);
* ``latency``: milliseconds of one forward pass of a batch, per op measured on the run's device at the run's batch
  size (median of a few timed repeats); the pipeline caches the table in the run folder (``latency_table.json``),
  so a resumed run reads the same one.

Counting is deterministic (macs, params): every process of a DDP run builds the same table.

**Expected cost** (:class:`ExpectedCost`, an :class:`~.parts.ArchLossTerm`): per edge, the sum of each op's cost
times its weight under the current mixing; edges of a node summed with weight ``k / n`` (the exported cell keeps
``k`` of the node's ``n`` inputs); cells of a type summed through the table; plus the fixed part. The weights are
the mixing's deterministic ones (``MixedCell.mixing_weights(pos, deterministic=True)``: softmax, Dirichlet mean,
Gumbel softmax, FairDARTS' sigmoid), pruned ops (P-DARTS) at 0, normalised per edge to sum 1 (sigmoid weights do
not): a smooth function of the alphas that draws no random numbers, so resume and DDP see the same value.

**Penalty**: ``weight * max(0, E / target - 1)``, NNI's ``ExpectationProfilerPenalty`` with ``nonlinear='positive'``
and ``aggregate='add'`` (``nni/nas/oneshot/pytorch/profiler.py``). A hinge rather than NNI's default ``linear`` (or a
log ratio): below the target the cost exerts no pull, so a cell that already fits is searched for accuracy alone;
the ratio makes ``weight`` independent of the metric's unit.

**Export limit** (:func:`fit_to_limit`): start from the exported cell; while it costs more than the limit, apply the
one-edge change (another op on the same input, or another input not yet used by the node, with any op) that loses
the least architecture weight per unit of cost saved. The cost of a cell is a sum over nodes, so this reaches the
cheapest cell if needed: a limit below :meth:`CostTable.cheapest` is refused (:class:`~nni_darts_ext.errors.
BudgetError`, naming the cheapest value).

Example::

    table = build_cost_table("macs", width=16, num_cells=8, image_size=32)
    strategy = darts_strategy("first-order", regularizers=[ExpectedCost(table, target=2e8, weight=1.0)])
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._compat import import_nni_quietly
from ..checks import check_choice, check_float, check_int, check_positive
from ..constants import FIRST_NODE, INPUTS_PER_NODE, NUM_CLASSES
from ..errors import ArgumentValueError, BudgetError
from .cells import MixedCell
from .parts import SearchState

__all__ = ["COST_METRICS", "CostTable", "ExpectedCost", "LATENCY_REPEATS", "build_cost_table", "cell_weights",
           "fit_to_limit", "measure_net"]

_logger = logging.getLogger(__name__)

#: The metrics of ``search.cost`` and the export limits.
COST_METRICS: tuple[str, ...] = ("macs", "params", "latency")
#: Timed repeats per op of a latency table (the median is kept); one untimed warm-up run before them.
LATENCY_REPEATS = 5

# node position -> input index -> op name -> cost (summed over the cells of one type)
NodeCosts = list[list[dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class CostTable:
    """Cost of the retrain network as ``fixed + sum of its ops' costs`` (see the module docstring).

    Attributes:
        metric: ``macs``, ``params`` or ``latency`` (milliseconds).
        fixed: the cost of everything but the cells' candidate ops.
        ops: ``{cell type: [node position][input index]{op name: cost}}``, summed over the cells of that type.
        key: what the table was measured for (width, cells, image size; batch size and device for latency).
    """

    metric: str
    fixed: float
    ops: dict[str, NodeCosts]
    key: dict[str, Any]

    def cost_of(self, arch: Mapping[str, Any]) -> float:
        """The cost of the retrain network of ``arch`` (an NNI arch dict).

        Example::

            table.cost_of(load_arch("runs/s/arch.json"))
        """
        total = self.fixed
        for label, nodes in self.ops.items():
            for pos, inputs in enumerate(nodes):
                i = FIRST_NODE + pos
                for n in range(INPUTS_PER_NODE):
                    j = _input_index(arch[f"{label}/input_{i}_{n}"])
                    total += inputs[j][arch[f"{label}/op_{i}_{n}"]]
        return total

    def cheapest(self) -> tuple[float, dict[str, Any]]:
        """The lowest cost any cell of the space reaches, and that cell (``k`` cheapest edges of every node)."""
        arch: dict[str, Any] = {}
        for label, nodes in self.ops.items():
            for pos, inputs in enumerate(nodes):
                i = FIRST_NODE + pos
                best = sorted((min(costs.values()), j, min(costs, key=costs.__getitem__))
                              for j, costs in enumerate(inputs))
                for n, (_, j, op) in enumerate(best[:INPUTS_PER_NODE]):
                    arch[f"{label}/op_{i}_{n}"] = op
                    arch[f"{label}/input_{i}_{n}"] = [j]
        return self.cost_of(arch), arch

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "fixed": self.fixed, "ops": self.ops, "key": self.key}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CostTable:
        return cls(str(data["metric"]), float(data["fixed"]), dict(data["ops"]), dict(data["key"]))


def _input_index(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


# ------------------------------------------------------------------------------------------------------ measuring
def _time_ms(module: nn.Module, x: Tensor, repeats: int) -> float:
    """Median milliseconds of ``module(x)`` (no grad, synchronised on CUDA)."""
    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    times = []
    with torch.no_grad():
        module(x)  # warm-up
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            module(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _op_cost(metric: str, op: nn.Module, shape: tuple[int, ...], *, batch_size: int, device: torch.device,
             repeats: int) -> float:
    from ..profile import count_macs, count_params

    if metric == "macs":
        return float(count_macs(op, (1, *shape[1:])))
    if metric == "params":
        return float(count_params(op))
    x = torch.rand((batch_size, *shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
    return _time_ms(copy.deepcopy(op).to(device).eval(), x, repeats)


def measure_net(metric: str, model: nn.Module, image_size: int, *, batch_size: int = 1,
                device: str | torch.device = "cpu", repeats: int = LATENCY_REPEATS, in_channels: int = 3) -> float:
    """The ``metric`` of a whole net (``macs`` of one image, ``params``, ``latency`` ms of a batch) taking
    ``in_channels``-channel ``image_size`` px images.

    Example::

        measure_net("params", build_model("darts-v2", width=4, num_cells=3), 8)
    """
    check_choice("metric", metric, COST_METRICS)
    with torch.random.fork_rng(devices=[]):
        return _op_cost(metric, model, (1, in_channels, image_size, image_size), batch_size=batch_size,
                        device=torch.device(device), repeats=repeats)


def build_cost_table(metric: str, *, width: int, num_cells: int, image_size: int, batch_size: int = 1,
                     device: str | torch.device = "cpu", repeats: int = LATENCY_REPEATS,
                     num_classes: int = NUM_CLASSES, in_channels: int = 3, stem: str | None = None) -> CostTable:
    """Measure every candidate op of the retrain network (``width``, ``num_cells``, ``image_size``, for
    ``num_classes`` classes of ``in_channels``-channel images, ``stem`` as :func:`~nni_darts_ext.space.darts_space`)
    once.

    ``batch_size``, ``device`` and ``repeats`` matter for ``latency`` only; ``macs`` and ``params`` tables are
    counted once per process and size (kept in memory).

    Raises:
        ArgumentTypeError, ArgumentValueError: a bad argument (``argument`` names it).

    Example::

        table = build_cost_table("params", width=4, num_cells=3, image_size=8)
        table.cost_of(arch) == count_params(build_model(arch, width=4, num_cells=3, image_size=8))
    """
    check_choice("metric", metric, COST_METRICS)
    if metric != "latency":
        return _counted_table(metric, check_int("width", width, minimum=1),
                              check_int("num_cells", num_cells, minimum=3),
                              check_int("image_size", image_size, minimum=1),
                              check_int("num_classes", num_classes, minimum=2),
                              check_int("in_channels", in_channels, minimum=1), stem)
    return _measure_table(metric, width=width, num_cells=num_cells, image_size=image_size, batch_size=batch_size,
                          device=device, repeats=repeats, num_classes=num_classes, in_channels=in_channels,
                          stem=stem)


@functools.lru_cache(maxsize=16)
def _counted_table(metric: str, width: int, num_cells: int, image_size: int, num_classes: int, in_channels: int,
                   stem: str | None) -> CostTable:
    return _measure_table(metric, width=width, num_cells=num_cells, image_size=image_size, num_classes=num_classes,
                          in_channels=in_channels, stem=stem)


def _measure_table(metric: str, **kwargs: Any) -> CostTable:
    """The table, built without touching the caller's random stream (building ops draws initial weights: a run
    with a cost must start from the same random state as one without, and as its own resume)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _build_table(metric, **kwargs)


def _build_table(metric: str, *, width: int, num_cells: int, image_size: int, batch_size: int = 1,
                 device: str | torch.device = "cpu", repeats: int = LATENCY_REPEATS, num_classes: int = NUM_CLASSES,
                 in_channels: int = 3, stem: str | None = None) -> CostTable:
    from ..arch import build_model  # the fixed net (arch imports nothing of the engine)
    from ..space import darts_space
    from .strategy import DartsSearch

    width = check_int("width", width, minimum=1)
    num_cells = check_int("num_cells", num_cells, minimum=3)
    image_size = check_int("image_size", image_size, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    repeats = check_int("repeats", repeats, minimum=1)
    device = torch.device(device)
    with import_nni_quietly():
        from nni.nas.hub.pytorch.nasnet import OPS
        from nni.nas.space import model_context

    # A full-channel supernet of the retrain size gives each cell's state shapes and its candidates' names.
    space = darts_space(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width,
                        num_cells=num_cells, stem=stem)
    supernet = DartsSearch().mutate_model(space).eval()
    cells = [m for m in supernet.modules() if isinstance(m, MixedCell)]
    shapes: dict[int, list[tuple[int, ...]]] = {}
    hooks = [cell.preprocessor.register_forward_hook(
        lambda _m, _i, out, k=k: shapes.__setitem__(k, [tuple(t.shape) for t in out]))
        for k, cell in enumerate(cells)]
    with torch.no_grad():
        supernet(torch.zeros(1, in_channels, image_size, image_size))
    for hook in hooks:
        hook.remove()

    ops: dict[str, NodeCosts] = {}
    for k, cell in enumerate(cells):
        states = list(shapes[k])
        with torch.no_grad():  # a node's output shape: any candidate of its first edge on state 0
            node_shape = tuple(next(iter(cell.edge_candidates(0, 0).values()))(torch.zeros(states[0])).shape)
        nodes = ops.setdefault(cell.label, [])
        for pos in range(len(cell.node_indices)):
            if len(nodes) <= pos:
                nodes.append([{} for _ in range(FIRST_NODE + pos)])
            for j in range(FIRST_NODE + pos):
                shape = states[j] if j < FIRST_NODE else node_shape
                stride = 2 if cell.label == "reduce" and j < FIRST_NODE else 1
                for name in cell.edge_candidates(pos, j):
                    with model_context({}):  # plain torch layers, as in the fixed net (counters know them)
                        op = OPS[name](shape[1], stride, True)
                    cost = _op_cost(metric, op, shape, batch_size=batch_size, device=device, repeats=repeats)
                    nodes[pos][j][name] = nodes[pos][j].get(name, 0.0) + cost
    key = {"width": width, "num_cells": num_cells, "image_size": image_size, "num_classes": num_classes,
           "in_channels": in_channels, "stem": stem}
    if metric == "latency":
        key |= {"batch_size": batch_size, "device": str(device)}
    partial = CostTable(metric, 0.0, ops, key)
    reference = partial.cheapest()[1]
    net = build_model(reference, width=width, num_cells=num_cells, image_size=image_size, num_classes=num_classes,
                      in_channels=in_channels, stem=stem)
    whole = measure_net(metric, net, image_size, batch_size=batch_size, device=device, repeats=repeats,
                        in_channels=in_channels)
    # Latency is not exactly additive: the fixed part is clamped at 0 (a net never runs faster than its ops).
    fixed = max(0.0, whole - partial.cost_of(reference)) if metric == "latency" else whole - partial.cost_of(reference)
    return CostTable(metric, fixed, ops, key)


# ---------------------------------------------------------------------------------------------- expected cost
class ExpectedCost:
    """The supernet's expected cost and its hinge penalty: an :class:`~.parts.ArchLossTerm`.

    Args:
        table: the :class:`CostTable` of the retrain network.
        target: the cost above which the penalty starts (the table's unit).
        weight: the penalty's scale.

    Example::

        term = ExpectedCost(table, target=2e6, weight=1.0)
        term.arch_loss(search_module, epoch=0, max_epochs=50)     # weight * max(0, E / target - 1)
    """

    def __init__(self, table: CostTable, *, target: float, weight: float = 1.0):
        if not isinstance(table, CostTable):
            raise ArgumentValueError("table", f"must be a CostTable, got {type(table).__name__}")
        self.table = table
        self.target = check_positive("target", target)
        self.weight = check_float("weight", weight, low=0.0)
        self.last: float | None = None  # the expected cost of the latest architecture step (reports read it)

    @property
    def metric(self) -> str:
        return self.table.metric

    def expected(self, search: SearchState) -> Tensor:
        """Differentiable expected cost of the exported net under the current mixing weights."""
        seen: dict[str, MixedCell] = {}
        for cell in search.mixed_cells():
            seen.setdefault(cell.label, cell)  # cells of a type share their alphas
        total: Tensor | None = None
        for label, cell in seen.items():
            nodes = self.table.ops[label]
            for pos in range(len(cell.node_indices)):
                weights = cell.mixing_weights(pos, deterministic=True)
                weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
                costs = torch.tensor([[inputs[name] for name in cell.op_names] for inputs in nodes[pos]],
                                     dtype=weights.dtype, device=weights.device)
                n_inputs = costs.shape[0]
                node = (weights * costs).sum() * (min(cell.num_ops_per_node, n_inputs) / n_inputs)
                total = node if total is None else total + node
        if total is None:
            raise ArgumentValueError("search", "has no DARTS-style cells: a search cost needs them")
        return total + self.table.fixed

    def arch_loss(self, search: SearchState, *, epoch: int, max_epochs: int) -> Tensor:
        del epoch, max_epochs
        expected = self.expected(search)
        self.last = float(expected.detach())
        return self.weight * torch.relu(expected / self.target - 1.0)

    def state(self, search: SearchState) -> dict[str, float]:
        """``{"metric", "expected", "target"}`` now (no gradient), for reports."""
        with torch.no_grad():
            value = float(self.expected(search))
        return {"metric": self.metric, "expected": value, "target": self.target}


# ---------------------------------------------------------------------------------------------- export limit
def fit_to_limit(arch: Mapping[str, Any], weights: Mapping[str, list[Tensor]], table: CostTable, limit: float, *,
                 key: str) -> dict[str, Any]:
    """``arch`` changed edge by edge until its cost is at most ``limit`` (the rule of the module docstring).

    Args:
        arch: the exported cell (NNI arch dict).
        weights: ``{cell type: [node position] (num_inputs, num_ops) weights}`` with op columns in the table's op
            order (``MixedCell.edge_weights``), used to rank the changes.
        key: the recipe key of the limit, for the refusal.

    Raises:
        BudgetError: ``limit`` is below the cheapest cell's cost (the message names that value).

    Example::

        fit_to_limit(arch, {"normal": [...], "reduce": [...]}, table, 5e6, key="export.max_macs")
    """
    cheapest, _ = table.cheapest()
    if cheapest > limit:
        raise BudgetError(key, f"{limit:g} is below the cheapest possible cell ({_format(table.metric, cheapest)})",
                          cheapest)
    arch = dict(arch)
    cost = table.cost_of(arch)
    while cost > limit:
        best: tuple[float, str, int, int, int, str] | None = None
        for label, nodes in table.ops.items():
            for pos, inputs in enumerate(nodes):
                i = FIRST_NODE + pos
                w = weights[label][pos]
                names = list(inputs[0])
                used = [_input_index(arch[f"{label}/input_{i}_{n}"]) for n in range(INPUTS_PER_NODE)]
                for n in range(INPUTS_PER_NODE):
                    j, op = used[n], arch[f"{label}/op_{i}_{n}"]
                    now_cost, now_weight = inputs[j][op], float(w[j][names.index(op)])
                    for j2 in range(len(inputs)):
                        if j2 != j and j2 in used:
                            continue
                        for op2, c in inputs[j2].items():
                            saved = now_cost - c
                            if saved <= 0:
                                continue
                            ratio = (now_weight - float(w[j2][names.index(op2)])) / saved
                            if best is None or ratio < best[0]:
                                best = (ratio, label, i, n, j2, op2)
        assert best is not None, "a cell above the cheapest one always has a cheaper edge"
        _, label, i, n, j2, op2 = best
        arch[f"{label}/op_{i}_{n}"] = op2
        arch[f"{label}/input_{i}_{n}"] = [j2]
        cost = table.cost_of(arch)
    return arch


def _format(metric: str, value: float) -> str:
    return f"{value:.3f} ms" if metric == "latency" else f"{int(round(value))} {metric}"


def cell_weights(cells: list[MixedCell]) -> dict[str, list[Tensor]]:
    """``{cell type: [node position] deterministic edge weights}`` of a supernet's cells (first cell of a type)."""
    result: dict[str, list[Tensor]] = {}
    for cell in cells:
        if cell.label not in result:
            with torch.no_grad():
                result[cell.label] = [cell.edge_weights(pos).float().cpu() for pos in range(len(cell.node_indices))]
    return result

