"""Perturbation-based architecture selection (DARTS-PT): keep the op whose removal hurts the supernet most.

Wang et al., "Rethinking Architecture Selection in Differentiable NAS" (ICLR 2021, Sec. 3.2, Alg. 1), official
code github:ruocwang/darts-pt ``sota/cnn/projection.py``. On a trained supernet, instead of reading the cell off
the size of the architecture weights (magnitude, :mod:`.selection`):

1. **Operations.** Edges are visited in a seeded random order (``--edge_decision random``), one edge of every
   cell type per step (normal, then reduce, as ``pt_project`` does). On the edge, each kept candidate op is
   removed in turn (an op mask of the engine, :meth:`~.cells.MixedCell.set_op_mask`) and the supernet's
   validation accuracy without it is measured; the edge keeps the op whose removal gives the lowest accuracy
   (the first such op on a tie, ``project_op``'s strict ``<``). The edge then runs that op alone (its mask keeps
   one op: weight 1 for a normalised mixing, the official one-hot ``proj_weights``).
2. **Node inputs.** Then, in a seeded random order, every node with more than two inputs drops, one at a time,
   the input whose removal gives the highest accuracy (the last such input on a tie, ``project_edge``'s
   ``not <``), until two remain; the inputs dropped in one round still run while the next round is measured, as
   in ``project_edge``. A dropped input adds nothing to its node (:class:`DroppedInputs`, an edge hook).
3. **Fine-tuning** between two steps (``tune_epochs`` epochs, :data:`~nni_darts_ext.constants.PT_TUNE_EPOCHS`):
   an architecture step (first order, on a validation batch) then a weight step (on a training batch) per
   batch, as ``pt_project``'s tuning loop does; the weights get a fresh SGD at the search's learning rate / 10,
   cosine-annealed to the search's minimum over the whole selection.

Accuracy is measured as ``infer(..., _eval=False)`` does: the supernet in training mode (BatchNorm on batch
statistics, without changing the running statistics), deterministic mixing weights, no skip dropout. Under DDP
the correct counts are summed over the processes, so every process sees the same accuracy and makes the same
decision; gradients of the fine-tuning are averaged as in the search.

Differences from the official code, stated: removing an op masks it, and a normalised mixing renormalises the
other ops of the edge (the official code zeroes the op's weight without renormalising); the architecture
optimiser of the fine-tuning is a fresh Adam with the search's settings (the official code continues the
search's); PC-DARTS' bypassed channels of a dropped input still reach the node.

**Resume.** After every decision the state (decisions so far, the supernet with its masks and alphas, both
optimisers, the schedule and the random state) is written atomically to ``state_path``; a selection started
again with the same ``state_path`` continues after the last decision saved and ends as an uninterrupted one.

Example::

    result = perturbation_select(search_module, train_loader, val_loader, preset="first-order", seed=0,
                                 learning_rate=0.025, eta_min=0.001, tune_epochs=5, state_path=out / "state.pt")
    result.arch      # NNI's arch dict, as search writes it to arch.json
    result.record    # selection.json: per edge and node the accuracy without each candidate, the choice, the order
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .. import constants as C
from ..checks import check_float, check_int, check_optional, check_positive
from ..distributed import all_reduce_gradients, is_distributed, is_rank_zero
from ..errors import CheckpointError, SelectionUnsupportedError
from ..io import atomic_torch_save
from .cells import MixedCell
from .module import DartsSearchModule
from .shielding import loss_of, shielded_passes

__all__ = ["DroppedInputs", "SelectionResult", "check_perturbation_selection", "perturbation_select"]

_logger = logging.getLogger(__name__)

#: ``selection.json``'s format version.
RECORD_VERSION = 1


@dataclass(frozen=True)
class SelectionResult:
    """What a selection produced: ``arch`` (NNI's arch dict) and ``record`` (``selection.json``)."""

    arch: dict[str, Any]
    record: dict[str, Any]


class DroppedInputs:
    """An :class:`~.parts.EdgeHook`: the node inputs in :attr:`dropped` add nothing to their node.

    ``dropped`` holds ``(cell label, node position, input)``; the hook must run last on the cell (it puts back the
    node's sum as it was before the dropped input's ops). Example::

        hook = DroppedInputs()
        cell.edge_hooks.append(hook)
        hook.dropped.add(("normal", 1, 0))   # node 3 of normal cells ignores input 0
    """

    def __init__(self) -> None:
        self.dropped: set[tuple[str, int, int]] = set()
        self._before: Tensor | None = None

    def __call__(self, cell: MixedCell, pos: int, edge: int, x: Tensor, total: Tensor,
                 beta: Tensor | None) -> Tensor:
        if edge == 0:
            self._before = None
        if (cell.label, pos, edge) in self.dropped:
            total = torch.zeros_like(total) if self._before is None else self._before
        self._before = total
        return total


def check_perturbation_selection(search: DartsSearchModule, preset: str) -> list[MixedCell]:
    """The supernet's cells, or :class:`~nni_darts_ext.errors.SelectionUnsupportedError` naming ``preset``.

    A selection removes ops through the cells' op masks: it needs DARTS-style :class:`~.cells.MixedCell` s with
    two cell inputs, and a soft mixing (a hard one, GDAS, runs only the sampled op of an edge, so removing any
    other op changes nothing).

    Example::

        cells = check_perturbation_selection(search_module, "first-order")
    """
    cells = search.mixed_cells()
    if not cells:
        raise SelectionUnsupportedError(preset, "its supernet has no DARTS-style cells with op masks")
    if any(cell.mixing.hard for cell in cells):
        raise SelectionUnsupportedError(preset, "its mixing is hard (one sampled op per edge runs), so removing "
                                                "an op does not change the supernet's output")
    if any(cell.num_predecessors != 2 for cell in cells):
        raise SelectionUnsupportedError(preset, "its cells do not have two inputs (the DARTS cell)")
    return cells


# ------------------------------------------------------------------------------------------------ the supernet
class _Supernet:
    """The search module's cells grouped by label (cells of a label share alphas), with masks and measurements."""

    def __init__(self, search: DartsSearchModule, cells: Sequence[MixedCell], val_loader: Iterable[Any]):
        self.search = search
        self.val_loader = val_loader
        self.by_label: dict[str, list[MixedCell]] = {}
        for cell in cells:
            self.by_label.setdefault(cell.label, []).append(cell)
        # "normal" before "reduce", as pt_project decides them (NNI's label objects; records hold plain strings).
        self.labels = sorted(self.by_label)
        self.hook = DroppedInputs()

    def cell(self, label: str) -> MixedCell:
        return self.by_label[label][0]

    def edges(self, label: str) -> list[tuple[int, int]]:
        """``(node position, input)`` of every edge of cells ``label``, in DARTS order."""
        cell = self.cell(label)
        return [(pos, j) for pos, i in enumerate(cell.node_indices) for j in range(i)]

    def kept_ops(self, label: str, pos: int, j: int) -> list[int]:
        cell = self.cell(label)
        return [t for t, keep in enumerate(cell.op_mask(cell.node_indices[pos])[j].tolist()) if keep]

    def set_edge_ops(self, label: str, pos: int, j: int, ops: Sequence[int]) -> None:
        for cell in self.by_label[label]:
            node = cell.node_indices[pos]
            mask = cell.op_mask(node).clone()
            mask[j] = False
            mask[j, list(ops)] = True
            cell.set_op_mask(node, mask)

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        for cells in self.by_label.values():
            for cell in cells:
                cell.edge_hooks.append(self.hook)
        try:
            yield
        finally:
            for cells in self.by_label.values():
                for cell in cells:
                    cell.edge_hooks.remove(self.hook)

    def accuracy(self) -> float:
        """Validation accuracy of the supernet as it is now (summed over the processes under DDP)."""
        search = self.search
        module = search.training_module
        device = search.device
        correct = torch.zeros((), dtype=torch.float64, device=device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        was_training = module.training
        module.train()
        cells = self.cell_list()
        skip_dropout = [cell.skip_dropout for cell in cells]
        mixings = {id(cell.mixing): cell.mixing for cell in cells}
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(shielded_passes(search))  # BatchNorm's running statistics stay as they are
            for mixing in mixings.values():
                stack.enter_context(mixing.deterministic())
            for cell in cells:
                cell.apply_settings({"skip_dropout": 0.0})
            try:
                for x, y in self.val_loader:
                    x, y = x.to(device), y.to(device)
                    logits = module(x)
                    correct += (logits.argmax(-1) == y).sum()
                    total += y.numel()
            finally:
                for cell, p in zip(cells, skip_dropout, strict=True):
                    cell.apply_settings({"skip_dropout": p})
                module.train(was_training)
        if is_distributed():
            both = torch.stack([correct, total])
            dist.all_reduce(both, op=dist.ReduceOp.SUM)
            correct, total = both[0], both[1]
        return float(correct / total.clamp(min=1))

    def cell_list(self) -> list[MixedCell]:
        return [cell for cells in self.by_label.values() for cell in cells]


# --------------------------------------------------------------------------------------------------- the plan
def _plan(net: _Supernet, seed: int) -> list[list[tuple[str, str, int, int]]]:
    """The steps: each a list of ``(label, kind, pos, input)`` decisions (kind ``op``: an edge; ``input``: a node).

    Seeded random orders, one per cell label and kind (``np.random.choice`` over the remaining edges in the
    official code); step ``k`` decides the ``k``-th edge (then node) of every label.
    """
    rng = random.Random(seed)
    op_orders, node_orders = {}, {}
    for label in net.labels:
        edges = net.edges(label)
        rng.shuffle(edges)
        op_orders[label] = edges
        cell = net.cell(label)
        nodes = [pos for pos, i in enumerate(cell.node_indices) if i > cell.num_ops_per_node]
        rng.shuffle(nodes)
        node_orders[label] = nodes
    steps: list[list[tuple[str, str, int, int]]] = []
    for kind, orders in (("op", op_orders), ("input", node_orders)):
        for k in range(max((len(order) for order in orders.values()), default=0)):
            step = []
            for label in net.labels:
                if k < len(orders[label]):
                    item = orders[label][k]
                    pos, j = item if kind == "op" else (item, -1)
                    step.append((label, kind, pos, j))
            steps.append(step)
    return steps


# -------------------------------------------------------------------------------------------------- decisions
def _decide_op(net: _Supernet, label: str, pos: int, j: int) -> dict[str, Any]:
    cell = net.cell(label)
    kept = net.kept_ops(label, pos, j)
    accuracy_without: dict[str, float] = {}
    choice = kept[0]
    if len(kept) > 1:
        worst = None
        for t in kept:
            net.set_edge_ops(label, pos, j, [o for o in kept if o != t])
            accuracy = net.accuracy()
            accuracy_without[str(cell.op_names[t])] = accuracy
            if worst is None or accuracy < worst:  # project_op, proj_crit acc: the removal that hurts most
                worst, choice = accuracy, t
        net.set_edge_ops(label, pos, j, kept)
    net.set_edge_ops(label, pos, j, [choice])
    node = cell.node_indices[pos]
    _logger.info("selection: %s cell, node %d, input %d: keeps %s (accuracy without each op: %s)", label, node, j,
                 cell.op_names[choice], ", ".join(f"{k} {v:.4f}" for k, v in accuracy_without.items()) or "one op")
    return {"kind": "op", "cell": str(label), "node": node, "input": j, "accuracy_without": accuracy_without,
            "choice": str(cell.op_names[choice])}


def _decide_inputs(net: _Supernet, label: str, pos: int) -> dict[str, Any]:
    cell = net.cell(label)
    node = cell.node_indices[pos]
    inputs = list(range(node))
    rounds = []
    while len(inputs) > cell.num_ops_per_node:
        accuracy_without: dict[str, float] = {}
        best, drop = None, inputs[0]
        for j in inputs:
            net.hook.dropped.add((label, pos, j))
            try:
                accuracy = net.accuracy()
            finally:
                net.hook.dropped.discard((label, pos, j))
            accuracy_without[str(j)] = accuracy
            if best is None or not accuracy < best:  # project_edge: the input whose removal hurts least
                best, drop = accuracy, j
        inputs.remove(drop)
        rounds.append({"accuracy_without": accuracy_without, "removed": drop})
    for j in range(node):
        if j not in inputs:
            net.hook.dropped.add((label, pos, j))
    _logger.info("selection: %s cell, node %d keeps inputs %s (%s)", label, node, inputs,
                 "; ".join(f"without {r['accuracy_without']}, drops {r['removed']}" for r in rounds))
    return {"kind": "input", "cell": str(label), "node": node, "rounds": rounds, "choice": inputs}


# ------------------------------------------------------------------------------------------------ fine-tuning
class _Tuner:
    """``pt_project``'s tuning loop: per batch an architecture step (validation batch) then a weight step."""

    def __init__(self, search: DartsSearchModule, train_loader: Iterable[Any], val_loader: Iterable[Any], *,
                 learning_rate: float, momentum: float, weight_decay: float, eta_min: float, total_epochs: int,
                 gradient_clip: float | None):
        self.search = search
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.gradient_clip = gradient_clip
        arch_ids = {id(p) for p in search.arch_parameters()}
        self.weights = [p for p in search.parameters() if p.requires_grad and id(p) not in arch_ids]
        self.weight_optimizer = torch.optim.SGD(self.weights, learning_rate / C.PT_TUNE_LR_DIVISOR,
                                                momentum=momentum, weight_decay=weight_decay)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.weight_optimizer, max(total_epochs, 1),
                                                                   eta_min=eta_min)
        self.arch_optimizer = torch.optim.Adam(search.arch_parameters(), search.arc_learning_rate,
                                               betas=search.arc_betas, weight_decay=search.arc_weight_decay)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weight_optimizer.state_dict(), "arch": self.arch_optimizer.state_dict(),
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight_optimizer.load_state_dict(state["weights"])
        self.arch_optimizer.load_state_dict(state["arch"])
        self.schedule.load_state_dict(state["schedule"])

    def _loss(self, batch: Any, index: int) -> Tensor:
        module = self.search.training_module
        x, y = batch
        device = self.search.device
        return loss_of(module.training_step((x.to(device), y.to(device)), index))

    def epoch(self) -> None:
        search = self.search
        search.training_module.train()
        arch = search.arch_parameters()
        val_batches = iter(self.val_loader)
        with shielded_passes(search, buffers=False):  # no logging outside a trainer; metrics kept
            for index, batch in enumerate(self.train_loader):
                val_batch = next(val_batches, None)
                if val_batch is None:
                    val_batches = iter(self.val_loader)
                    val_batch = next(val_batches)
                self.arch_optimizer.zero_grad(set_to_none=True)
                self.weight_optimizer.zero_grad(set_to_none=True)
                self._loss(val_batch, 2 * index).backward()
                all_reduce_gradients(arch)
                self.arch_optimizer.step()
                self.arch_optimizer.zero_grad(set_to_none=True)
                self.weight_optimizer.zero_grad(set_to_none=True)
                self._loss(batch, 2 * index + 1).backward()
                for p in arch:
                    p.grad = None
                all_reduce_gradients(self.weights)
                if self.gradient_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.weights, self.gradient_clip)
                self.weight_optimizer.step()
        self.schedule.step()


# ------------------------------------------------------------------------------------------------- selection
def perturbation_select(
    search: DartsSearchModule,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    *,
    preset: str,
    seed: int,
    learning_rate: float,
    eta_min: float,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    gradient_clip: float | None = None,
    tune_epochs: int = C.PT_TUNE_EPOCHS,
    state_path: Path | None = None,
) -> SelectionResult:
    """Select the cell of a trained supernet by DARTS-PT (module docstring); the supernet is changed in place.

    Args:
        search: the trained search module (its supernet attached).
        train_loader, val_loader: the search's two halves of the training split, ``(x, y)`` batches; decisions
            read ``val_loader`` only, fine-tuning both (as the search did).
        preset: the search's preset name, for errors.
        seed: seeds the edge and node order.
        learning_rate, eta_min, momentum, weight_decay, gradient_clip: the search's weight optimiser settings.
        tune_epochs: fine-tuning epochs between two steps (0: none).
        state_path: where the state is saved after every decision, and resumed from when it exists.

    Raises:
        SelectionUnsupportedError: a preset whose supernet cannot lose an op (names ``preset``).
        ArgumentTypeError, ArgumentValueError: bad arguments (``argument`` names the keyword).
        CheckpointError: a ``state_path`` written by another selection (other seed, tune epochs or net).
    """
    cells = check_perturbation_selection(search, preset)
    seed = check_int("seed", seed)
    tune_epochs = check_int("tune_epochs", tune_epochs, minimum=0)
    learning_rate = check_positive("learning_rate", learning_rate)
    eta_min = check_float("eta_min", eta_min, low=0.0)
    momentum = check_float("momentum", momentum, low=0.0)
    weight_decay = check_float("weight_decay", weight_decay, low=0.0)
    gradient_clip = check_optional(check_positive, "gradient_clip", gradient_clip)

    start = time.perf_counter()
    base_arch = search.export()  # the magnitude rule's cell, recorded next to the choice
    net = _Supernet(search, cells, val_loader)
    steps = _plan(net, seed)
    total_epochs = tune_epochs * max(len(steps) - 1, 0)
    tuner = _Tuner(search, train_loader, val_loader, learning_rate=learning_rate, momentum=momentum,
                   weight_decay=weight_decay, eta_min=eta_min, total_epochs=total_epochs,
                   gradient_clip=gradient_clip)
    settings = {"seed": seed, "tune_epochs": tune_epochs,
                "steps": [[[str(label), kind, pos, j] for label, kind, pos, j in step] for step in steps]}
    decisions: list[dict[str, Any]] = []
    done = 0
    with net.hooked():
        if state_path is not None and state_path.exists():
            done, decisions = _load_state(state_path, search, tuner, net, settings)
            _logger.info("selection: resumed after %d of %d decisions (%s)", done, sum(map(len, steps)), state_path)
        else:
            settings["accuracy_before"] = net.accuracy()
        count = 0
        for k, step in enumerate(steps):
            for label, kind, pos, j in step:
                count += 1
                if count <= done:
                    continue
                decision = _decide_op(net, label, pos, j) if kind == "op" else _decide_inputs(net, label, pos)
                decision["order"] = count - 1
                decision["step"] = k
                last_of_step = (label, kind, pos, j) == step[-1]
                if last_of_step and k < len(steps) - 1:
                    for _ in range(tune_epochs):
                        tuner.epoch()
                decisions.append(decision)
                if state_path is not None:
                    _save_state(state_path, search, tuner, net, settings, count, decisions)
        accuracy_after = net.accuracy()
    arch = _arch(net, base_arch)
    record = {
        "version": RECORD_VERSION,
        "selection": "perturbation",
        "criterion": "validation accuracy of the supernet without the candidate (lowest: kept op; highest: "
                     "dropped input)",
        "seed": seed,
        "tune_epochs": tune_epochs,
        "order": [[f"{label}/{kind}/{net.cell(label).node_indices[pos]}" + (f"/{j}" if kind == "op" else "")
                   for label, kind, pos, j in step] for step in steps],
        "decisions": decisions,
        "magnitude_arch": base_arch,
        "supernet_val_accuracy_before": settings["accuracy_before"],
        "supernet_val_accuracy_after": accuracy_after,
        "selection_seconds": round(time.perf_counter() - start, 2),
    }
    return SelectionResult(arch=arch, record=record)


def _arch(net: _Supernet, base: dict[str, Any]) -> dict[str, Any]:
    """NNI's arch dict: ``base`` with every cell's ops and inputs replaced by the selection's."""
    arch = dict(base)
    for label in net.labels:
        cell = net.cell(label)
        for pos, node in enumerate(cell.node_indices):
            inputs = [j for j in range(node) if (label, pos, j) not in net.hook.dropped]
            if len(inputs) != cell.num_ops_per_node:
                raise RuntimeError(f"{label} node {node} kept {inputs}: the selection did not finish")
            for n, j in enumerate(inputs):
                (op,) = net.kept_ops(label, pos, j)
                arch[f"{label}/op_{node}_{n}"] = cell.op_names[op]
                arch[f"{label}/input_{node}_{n}"] = [j]
    return arch


def _save_state(path: Path, search: DartsSearchModule, tuner: _Tuner, net: _Supernet, settings: dict[str, Any],
                done: int, decisions: list[dict[str, Any]]) -> None:
    if not is_rank_zero():
        return
    state = {"settings": settings, "done": done, "decisions": decisions,
             "dropped": sorted([str(label), pos, j] for label, pos, j in net.hook.dropped),
             "model": search.state_dict(), "optimizers": tuner.state_dict(), "rng": torch.get_rng_state()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)


def _load_state(path: Path, search: DartsSearchModule, tuner: _Tuner, net: _Supernet,
                settings: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: torch raises many kinds
        raise CheckpointError(f"{path}: not a selection state ({type(exc).__name__})") from None
    saved = state["settings"]
    for key in ("seed", "tune_epochs", "steps"):
        if saved.get(key) != settings[key]:
            raise CheckpointError(f"{path}: written by another selection ({key} {saved.get(key)!r}, this one "
                                  f"{settings[key]!r}); remove it or use another folder")
    settings.update(saved)
    search.load_state_dict(state["model"])
    tuner.load_state_dict(state["optimizers"])
    labels = {str(label): label for label in net.labels}
    net.hook.dropped = {(labels[label], int(pos), int(j)) for label, pos, j in state["dropped"]}
    torch.set_rng_state(state["rng"])
    return int(state["done"]), list(state["decisions"])
