"""``DartsSearch``: NNI's ``DARTS`` strategy assembled from the engine's parts.

Configuration only, as NNI's strategies are: the cell options become a mutation hook, the mixing becomes NNI's
``configure_softmax`` hook, and :meth:`DartsSearch.configure_oneshot_module` builds the one
:class:`~.module.DartsSearchModule` with the gradient, loss terms, perturbation and schedules. It runs on every
space NNI's ``DARTS`` accepts (``LayerChoice``, ``InputChoice``, ``nni.choice`` values in ``Mutable*`` layers,
``Repeat``, ``Cell``) and refuses what NNI refuses; options that need DARTS-style cells say so in one line.

**Checks.** Every argument is checked when the strategy is built (typed errors whose ``argument`` is the keyword);
:meth:`DartsSearch.check_space` refuses, without building anything, a space these options cannot run on (a
``partial_channels`` that does not divide a cell's channels, cell options on a space without DARTS-style cells).
``mutate_model`` runs the same check on the supernet it builds.

**Stages** (the one seam with NNI's run loop). NNI's strategy trains the supernet it built in ``initialize``;
a search that trains several supernets one after the other (P-DARTS) says so through four public hooks of this
class: :meth:`~DartsSearch.num_stages`, :meth:`~DartsSearch.build_stage`, :meth:`~DartsSearch.end_stage` and, for
resume, :meth:`~DartsSearch.checkpoint_extras` / :meth:`~DartsSearch.resume_stage`. Only this class touches NNI's
strategy internals (``_run``, the hook NNI's ``Strategy`` documents for subclasses, and ``_mutated_model_space``,
which NNI's ``supernet``, ``oneshot_module``, ``state_dict`` and ``list_models`` read).

Example::

    from nni.nas.experiment import NasExperiment
    strategy = DartsSearch(order=2, partial_channels=4, edge_normalization=True, gradient_clip_val=5.0)
    strategy.check_space(space)            # before anything is trained or written
    NasExperiment(space, evaluator, strategy).run()
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import nni
import torch.nn as nn

from .._compat import import_nni_quietly
from ..activation_checkpointing import SEARCH_CHECKPOINTING, check_checkpointing
from ..checkpoint import read_checkpoint
from ..checks import check_bool, check_float, check_int, check_optional, check_positive
from ..constants import ARC_BETAS, ARC_LEARNING_RATE, ARC_WEIGHT_DECAY, HESSIAN_EPS
from ..errors import ArgumentTypeError, ArgumentValueError
from .cells import MixedCell
from .cost import ExpectedCost
from .gradients import architecture_gradient
from .mixing import Mixing, SoftmaxMixing, as_mixing
from .module import DartsSearchModule, check_arc_betas, check_arc_weight_decay
from .parts import ArchLossTerm, CellSchedule, Perturbation, check_parts

with import_nni_quietly():
    from nni.nas.evaluator.pytorch import Lightning
    from nni.nas.space import ModelStatus, RawFormatModelSpace
    from nni.nas.strategy import DARTS

__all__ = ["DartsSearch"]

_logger = logging.getLogger(__name__)

@nni.trace
class DartsSearch(DARTS):
    """A DARTS-family search: cell x architecture gradient x mixing, plus optional loss terms and perturbation.

    Args:
        order: 1 (first order) or 2 (second order, the unrolled gradient of DARTS eq. 7-8).
        hessian_eps: second order's finite-difference length ``eps * ||v||``.
        partial_channels: K of PC-DARTS (1: every channel through the ops). Needs DARTS-style cells whose channel
            counts K divides.
        edge_normalization: PC-DARTS' per-edge ``beta``. Needs DARTS-style cells.
        auxiliary_skip: DARTS-' auxiliary skip connection on every edge (its weight comes from ``cell_schedule``).
        mixing: how weights come from the logits (default :class:`.mixing.SoftmaxMixing`).
        regularizers: :class:`~.parts.ArchLossTerm` s added to the architecture step's loss (regularisers on the
            logits, or terms that read the supernet's cells).
        cost: a search cost (:class:`~.cost.ExpectedCost`), added to the architecture loss after the preset's own
            regularizers and reported by the search module (``DartsSearchModule.cost``); ``None``: accuracy alone.
        perturbation: a :class:`~.parts.Perturbation` of the architecture during the weight step (SDARTS).
        cell_schedule: a :class:`~.parts.CellSchedule`, ``(epoch, max_epochs) -> {MixedCell setting: value}``,
            applied at every epoch start.
        max_skip_connects: at most this many skip connections in each exported normal cell (P-DARTS rule).
        export_threshold: FairDARTS' threshold on the exported edges' weights (reported; the DARTS space keeps
            two inputs per node).
        arc_betas, arc_weight_decay: the architecture Adam's betas and weight decay (NNI and the paper: (0.5,
            0.999), 1e-3).
        skip_unused_gradients: skip gradients that are zeroed before they are used (single process).
        channels_last: run the supernet channels-last (``None``: CPU only).
        checkpointing: activation checkpointing of the supernet: ``"none"``, ``"cells"`` (each cell) or
            ``"edges"`` (each mixed edge); same gradients, less memory, one more forward pass of the region
            (:mod:`nni_darts_ext.activation_checkpointing`).
        arc_learning_rate, gradient_clip_val, log_prob_every_n_step, warmup_epochs, penalty, mutation_hooks:
            as for :class:`nni.nas.strategy.DARTS` (``gradient_clip_val=None`` disables clipping).

    Raises:
        ArgumentTypeError, ArgumentValueError: an argument of the wrong type or range; ``argument`` is its keyword
            (``partial_channels``, ``hessian_eps``, ``arc_betas``, ...). The same, from :meth:`check_space` and
            ``mutate_model``, for options the space cannot take.

    Example::

        DartsSearch(order=2, gradient_clip_val=5.0)
    """

    def __init__(self, *, order: int = 1, hessian_eps: float = HESSIAN_EPS, partial_channels: int = 1,
                 edge_normalization: bool = False, auxiliary_skip: bool = False, mixing: Mixing | None = None,
                 regularizers: Sequence[ArchLossTerm] = (), cost: ExpectedCost | None = None,
                 perturbation: Perturbation | None = None,
                 cell_schedule: CellSchedule | None = None, max_skip_connects: int | None = None,
                 export_threshold: float | None = None, arc_betas: tuple[float, float] = ARC_BETAS,
                 arc_weight_decay: float = ARC_WEIGHT_DECAY, skip_unused_gradients: bool = True,
                 channels_last: bool | None = None, checkpointing: str = "none",
                 arc_learning_rate: float = ARC_LEARNING_RATE,
                 gradient_clip_val: float | None = None, log_prob_every_n_step: int = 10,
                 warmup_epochs: int = 0, penalty: Any = None, **kwargs: Any):
        architecture_gradient(order, hessian_eps=hessian_eps)  # checks order (and hessian_eps for order 2)
        self.hessian_eps = check_positive("hessian_eps", hessian_eps)
        self.partial_channels = check_int("partial_channels", partial_channels, minimum=1)
        self.edge_normalization = check_bool("edge_normalization", edge_normalization)
        self.auxiliary_skip = check_bool("auxiliary_skip", auxiliary_skip)
        self.mixing: Mixing = SoftmaxMixing() if mixing is None else _check_mixing(mixing)
        self.regularizers = check_parts(regularizers=regularizers, perturbation=perturbation,
                                        cell_schedule=cell_schedule)
        if cost is not None and not isinstance(cost, ExpectedCost):
            raise ArgumentTypeError("cost", f"must be an ExpectedCost, got {type(cost).__name__}")
        self.cost = cost
        self.max_skip_connects = check_optional(check_int, "max_skip_connects", max_skip_connects, minimum=0)
        self.export_threshold = check_optional(check_float, "export_threshold", export_threshold, low=0.0, high=1.0)
        self.arc_betas = check_arc_betas(arc_betas)
        self.arc_weight_decay = check_arc_weight_decay(arc_weight_decay)
        self.skip_unused_gradients = check_bool("skip_unused_gradients", skip_unused_gradients)
        self.channels_last = check_optional(check_bool, "channels_last", channels_last)
        self.checkpointing = check_checkpointing(checkpointing, SEARCH_CHECKPOINTING)
        check_positive("arc_learning_rate", arc_learning_rate)
        check_optional(check_positive, "gradient_clip_val", gradient_clip_val)
        check_int("log_prob_every_n_step", log_prob_every_n_step, minimum=1)
        check_int("warmup_epochs", warmup_epochs, minimum=0)
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs,
                         penalty=penalty, **kwargs)
        self.order = order
        self.perturbation = perturbation
        self.cell_schedule = cell_schedule
        self.stage_index = 0

    # ------------------------------------------------------------------------------------------- NNI hooks
    def configure_softmax(self) -> nn.Module:
        return self.mixing

    def cell_options(self) -> dict[str, Any]:
        """The :class:`.cells.MixedCell` options of this search."""
        return {"partial_channels": self.partial_channels, "edge_normalization": self.edge_normalization,
                "auxiliary_skip": self.auxiliary_skip}

    def default_mutation_hooks(self) -> list[Any]:
        return [functools.partial(MixedCell.mutate, **self.cell_options())] + super().default_mutation_hooks()

    def check_space(self, space: nn.Module) -> None:
        """Refuse a model space this search cannot run on, before anything is built or trained.

        Inspects the space's DARTS-style cells (plain NNI ``Cell`` s built from op factories, as in
        ``nni.nas.hub.pytorch.DARTS``) without building the supernet: each cell option must fit every cell
        (``partial_channels`` must divide its channels), and options that need such cells need at least one.

        Raises:
            ArgumentTypeError, ArgumentValueError: ``argument`` is the strategy option at fault
                (``partial_channels``, ``edge_normalization``, ``auxiliary_skip``).

        Example::

            darts_strategy("pc-darts").check_space(DARTS(width=6, num_cells=5))  # partial_channels: 4 vs 6 channels
        """
        if not isinstance(space, nn.Module):
            raise ArgumentTypeError("space", f"must be a model space (an nn.Module), got {type(space).__name__}")
        options = self.cell_options()
        cells = 0
        for module in space.modules():
            if MixedCell.replaces(module):
                MixedCell.check_options(module, **options)
                cells += 1
            elif isinstance(module, MixedCell):  # already mutated
                cells += 1
        needs_cells = [name for name, used in (("partial_channels", self.partial_channels > 1),
                                               ("edge_normalization", self.edge_normalization),
                                               ("auxiliary_skip", self.auxiliary_skip)) if used]
        if needs_cells and not cells:
            others = f" (so do {', '.join(needs_cells[1:])})" if len(needs_cells) > 1 else ""
            raise ArgumentValueError(needs_cells[0], f"needs DARTS-style cells{others}: nni.nas.nn.pytorch.Cell "
                                                     "built from op factories, as in nni.nas.hub.pytorch.DARTS; this "
                                                     "space has none")

    def mutate_model(self, model: Any) -> Any:
        """NNI's ``mutate_model`` (its own refusals first, as NNI's ``DARTS`` raises them), then :meth:`check_space`
        on the supernet."""
        supernet = super().mutate_model(model)
        self.check_space(supernet)
        return supernet

    def configure_oneshot_module(self, training_module: Any) -> DartsSearchModule:
        return DartsSearchModule(
            training_module,
            gradient=architecture_gradient(self.order, hessian_eps=self.hessian_eps),
            mixing=self.mixing,
            regularizers=[*self.regularizers, *([self.cost] if self.cost is not None else [])],
            cost=self.cost,
            perturbation=self.perturbation,
            cell_schedule=self.cell_schedule,
            cell_settings={"max_skip_connects": self.max_skip_connects, "export_threshold": self.export_threshold,
                           "checkpointing": self.checkpointing},
            arc_betas=self.arc_betas,
            arc_weight_decay=self.arc_weight_decay,
            skip_unused_gradients=self.skip_unused_gradients,
            channels_last=self.channels_last,
            checkpoint_extras=self.checkpoint_extras,
            arc_learning_rate=self.arc_learning_rate,
            gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step,
            warmup_epochs=self.warmup_epochs,
            penalty=self.penalty,
        )

    # -------------------------------------------------------------------------------- stages: public hooks
    def num_stages(self) -> int:
        """How many supernets this search trains one after the other (1; P-DARTS: one per stage)."""
        return 1

    def build_stage(self, index: int) -> tuple[nn.Module, Lightning]:
        """The model space and the plain Lightning evaluator of stage ``index`` >= 1, as a user would hand them to
        NNI; the strategy mutates both (:meth:`mutate_model`, ``mutate_evaluator``) and trains them."""
        raise NotImplementedError(f"{type(self).__name__} trains one stage")

    def end_stage(self, index: int) -> None:
        """Called after stage ``index`` has trained (P-DARTS prunes the ops here). Nothing by default."""

    def checkpoint_extras(self) -> dict[str, Any]:
        """Entries the search module adds to every checkpoint it saves (nothing by default)."""
        return {}

    def resume_stage(self, checkpoint: Mapping[str, Any]) -> int:
        """Restore this strategy's state from a checkpoint it wrote (:meth:`checkpoint_extras`); return the stage
        the checkpoint belongs to (0 by default). Called before the run when it resumes and has several stages."""
        return 0

    # ------------------------------------------------------- the one seam with NNI's strategy internals
    def _run(self) -> None:
        """Train every stage (NNI's ``OneShotStrategy._run`` submits one model; ``Strategy`` documents ``_run`` as
        the subclass hook). Resume, from ``--resume`` or NNI's ``load_state_dict`` alike, is the ``ckpt_path`` in
        the evaluator's ``fit_kwargs``: it goes to the stage it was written in."""
        space = self._mutated_model_space
        if space is None:
            raise RuntimeError("DartsSearch is not initialized yet")
        stages = self.num_stages()
        resume = space.evaluator.fit_kwargs.get("ckpt_path")
        first = self.resume_stage(read_checkpoint(resume)) if resume and stages > 1 else 0
        if first:
            space.evaluator.fit_kwargs.pop("ckpt_path")  # it belongs to a later stage's supernet
        for index in range(first, stages):
            if index:
                model, evaluator = self.build_stage(index)
                supernet = self.mutate_model(model)
                evaluator = self.mutate_evaluator(evaluator)
                if index == first:
                    evaluator.fit_kwargs["ckpt_path"] = resume
                space = RawFormatModelSpace(supernet, evaluator)
                space.status = ModelStatus.Frozen
                self._mutated_model_space = space
            self.stage_index = index
            if stages > 1:
                _logger.info("%s stage %d/%d: %d cells", type(self).__name__, index + 1, stages,
                             sum(1 for m in self.supernet.modules() if isinstance(m, MixedCell)))
            self.engine.submit_models(space)
            self.end_stage(index)


def _check_mixing(mixing: Any) -> Mixing:
    if not isinstance(mixing, nn.Module):
        raise ArgumentTypeError("mixing", f"must be a Mixing module, got {type(mixing).__name__}")
    return as_mixing(mixing)
