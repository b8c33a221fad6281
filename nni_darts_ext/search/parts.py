"""The declared interfaces of the search engine's parts: all that the search module and the cell ask of each.

A DARTS-family search is one :class:`~.module.DartsSearchModule` and one kind of supernet cell
(:class:`~.cells.MixedCell`) put together from small parts. Each kind of part has one interface here; the engine
calls nothing else on a part, and checks each part against its interface when it is handed in
(:func:`check_parts`), so a part written outside this package only has to implement the methods listed.

========================  ======================================  ==============================================
Kind                      Interface                               Shipped parts
========================  ======================================  ==============================================
mixing                    :class:`~.mixing.Mixing` (base class;   ``SoftmaxMixing``, ``DirichletMixing``,
                          an ``nn.Module``, as NNI's cells hold   ``GumbelHardMixing``, ``SigmoidMixing``
                          it as a submodule)
architecture gradient     :class:`ArchitectureGradient`           ``FirstOrderGradient``, ``UnrolledGradient``
architecture loss term    :class:`ArchLossTerm`                   ``ArchRegularizer`` subclasses; ``ExpectedCost``
perturbation              :class:`Perturbation`                   ``RandomAlphaPerturbation``,
                                                                  ``PGDAlphaPerturbation``
cell schedule             :class:`CellSchedule`                   ``DartsMinusSkipSchedule``, ``StageSkipDropout``
cell: channels            :class:`ChannelSplit`                   ``FullChannels``, ``PartialChannels`` (PC-DARTS)
cell: which ops run       :class:`OpSelection`                    ``AllOps``, ``OneSampledOp`` (GDAS)
cell: after each edge     :class:`EdgeHook`                       ``AuxiliarySkip`` (DARTS-)
========================  ======================================  ==============================================

**Architecture loss terms** get the running search (:class:`SearchState`), not only the logits: a regulariser
reads ``search.op_alphas()`` and ``search.mixing``; a term that needs the supernet itself -- a differentiable
expected cost of the searched cell, for instance -- reads ``search.mixed_cells()`` and each cell's
``mixing_weights(pos)`` (differentiable) or ``edge_weights(pos)``, ``node_indices`` and ``op_names``. Hand such a
term to ``DartsSearch(regularizers=[...])`` like any regulariser; its value is added to the architecture loss
(:class:`~.cost.ExpectedCost`, the search cost, goes to ``DartsSearch(cost=...)``, which also reports it).

Example::

    class L1OnAlphas:                      # an ArchLossTerm: nothing to inherit
        def arch_loss(self, search, *, epoch, max_epochs):
            return 1e-4 * sum(a.abs().sum() for a in search.op_alphas())

    DartsSearch(regularizers=[L1OnAlphas()])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor, nn

from ..errors import ArgumentTypeError

if TYPE_CHECKING:  # imported for the annotations only: cells.py and module.py import this module
    import pytorch_lightning as pl

    from .cells import MixedCell, NodePlan
    from .mixing import Mixing
    from .module import DartsSearchModule

__all__ = [
    "ArchLossTerm",
    "ArchitectureGradient",
    "CellSchedule",
    "ChannelSplit",
    "EdgeHook",
    "OpSelection",
    "Perturbation",
    "SearchState",
    "check_parts",
]


# ------------------------------------------------------------------------------------------- the search module's
@runtime_checkable
class ArchitectureGradient(Protocol):
    """How the architecture step forms the gradient of the architecture parameters.

    Attributes:
        order: 1 (first order) or 2 (second order, unrolled); reported, never branched on by the engine.
        needs_weight_gradients: ``False`` lets the module freeze the weights during the architecture step.
    """

    order: int
    needs_weight_gradients: bool

    def check_trainer(self, trainer: pl.Trainer) -> None:
        """Refuse, before training, a trainer this gradient cannot work with (e.g. a GradScaler)."""

    def backward(self, search: DartsSearchModule, trn_batch: Any, val_batch: Any, batch_idx: int) -> Tensor:
        """Fill ``.grad`` of ``search.arch_parameters()`` (loss terms included); return the validation loss."""

    def on_epoch_end(self, search: DartsSearchModule) -> None:
        """Called at the end of every training epoch (report what is pending)."""


@runtime_checkable
class SearchState(Protocol):
    """What an architecture loss term may read of the running search (:class:`~.module.DartsSearchModule`)."""

    mixing: Mixing | None

    def op_alphas(self) -> list[nn.Parameter]:
        """The operation logits, in a stable order (PC-DARTS' edge ``beta`` excluded)."""

    def arch_parameters(self) -> list[nn.Parameter]:
        """Every architecture parameter (``beta`` included), in the same stable order."""

    def mixed_cells(self) -> list[MixedCell]:
        """The supernet's DARTS-style cells (empty on spaces without them)."""


@runtime_checkable
class ArchLossTerm(Protocol):
    """A scalar added to the architecture step's loss (a regulariser, a search cost).

    Example::

        term.arch_loss(search_module, epoch=3, max_epochs=50)   # a 0-dim tensor, already weighted
    """

    def arch_loss(self, search: SearchState, *, epoch: int, max_epochs: int) -> Tensor:
        """The term for ``epoch`` (0-based) of ``max_epochs``, differentiable w.r.t. the architecture."""


@runtime_checkable
class Perturbation(Protocol):
    """Changes the architecture parameters for the weight step only (SDARTS).

    Attributes:
        replaces_logits_with_weights: between :meth:`perturb` and :meth:`restore` the logits hold mixing weights;
            the module then runs the weight step inside ``mixing.passthrough()``.
    """

    replaces_logits_with_weights: bool

    def perturb(self, alphas: Sequence[nn.Parameter], loss_fn: Callable[[], Tensor], *, epoch: int,
                max_epochs: int) -> None:
        """Perturb ``alphas`` in place before the weight step (``loss_fn``: the weight-step loss, for attacks)."""

    def restore(self, alphas: Sequence[nn.Parameter]) -> None:
        """Undo :meth:`perturb` exactly, after the weight step."""


@runtime_checkable
class CellSchedule(Protocol):
    """Per-epoch run-time settings of the cells: ``(epoch, max_epochs) -> {setting: value}``.

    The settings are those of :attr:`.cells.MixedCell.SETTINGS` (``auxiliary_skip_weight``, ``skip_dropout``,
    ``max_skip_connects``, ``export_threshold``); computed from the epoch alone, so a resumed run gets the same.
    """

    def __call__(self, epoch: int, max_epochs: int) -> Mapping[str, Any]:
        """The settings for ``epoch`` (0-based) of ``max_epochs``."""


# --------------------------------------------------------------------------------------------------- the cell's
@runtime_checkable
class ChannelSplit(Protocol):
    """Which channels of an edge's input go through the candidate ops, and how the rest rejoins the node."""

    def narrow(self, op_factory: Any) -> Any:
        """The cell's op factories, built for the channels that go through the ops."""

    def split(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(through the ops, bypassing them or None)`` of one edge's input."""

    def add_bypass(self, total: Tensor | None, bypass: Tensor, ops_out: Tensor, beta: Tensor | None) -> Tensor:
        """Add one edge's bypassed channels (times its ``beta``) to the node's running bypass sum."""

    def merge(self, ops_sum: Tensor, bypass_sum: Tensor | None) -> Tensor:
        """The node's output from the ops' sum and the bypass sum."""


@runtime_checkable
class OpSelection(Protocol):
    """Which of an edge's kept candidate ops run in a forward pass."""

    def choose(self, weights: Tensor) -> list[int] | None:
        """Per edge the one op to run, from the node's ``(num_inputs, num_ops)`` weights; ``None``: all of them."""

    def straight_through(self, total: Tensor, weights: Tensor, node: NodePlan, chosen: list[int] | None) -> Tensor:
        """``total`` plus the (zero-valued) weights of the ops that did not run, so their gradient still flows."""


@runtime_checkable
class EdgeHook(Protocol):
    """A term added to the node's running sum after each edge's ops (outside the mixing)."""

    def __call__(self, cell: MixedCell, pos: int, edge: int, x: Tensor, total: Tensor,
                 beta: Tensor | None) -> Tensor:
        """The new running sum after edge ``edge`` (input ``x``) of node position ``pos``."""


# ------------------------------------------------------------------------------------------------------- checks
def check_parts(*, regularizers: Sequence[Any] = (), perturbation: Any = None, cell_schedule: Any = None,
                gradient: Any = None) -> list[ArchLossTerm]:
    """Check parts against their interfaces; returns the loss terms as a list.

    Raises:
        ArgumentTypeError: a part that does not implement its interface (``argument``: ``regularizers``,
            ``perturbation``, ``cell_schedule`` or ``gradient``).

    Example::

        terms = check_parts(regularizers=[BetaRegularizer()], perturbation=None)
    """
    if isinstance(regularizers, (str, bytes)) or not isinstance(regularizers, Sequence):
        raise ArgumentTypeError("regularizers", f"must be a sequence of loss terms, got {type(regularizers).__name__}")
    for term in regularizers:
        if not isinstance(term, ArchLossTerm):
            raise ArgumentTypeError("regularizers", f"must hold ArchLossTerm parts (an arch_loss(search, *, epoch, "
                                                    f"max_epochs) method), got {type(term).__name__}")
    if perturbation is not None and not isinstance(perturbation, Perturbation):
        raise ArgumentTypeError("perturbation", f"must implement Perturbation (perturb, restore, "
                                                f"replaces_logits_with_weights), got {type(perturbation).__name__}")
    if cell_schedule is not None and not callable(cell_schedule):
        raise ArgumentTypeError("cell_schedule", f"must be callable as (epoch, max_epochs) -> settings, got "
                                                 f"{type(cell_schedule).__name__}")
    if gradient is not None and not isinstance(gradient, ArchitectureGradient):
        raise ArgumentTypeError("gradient", f"must implement ArchitectureGradient (order, needs_weight_gradients, "
                                            f"check_trainer, backward, on_epoch_end), got {type(gradient).__name__}")
    return list(regularizers)
