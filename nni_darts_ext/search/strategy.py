"""``DartsSearch``: NNI's ``DARTS`` strategy assembled from the engine's parts.

Configuration only, as NNI's strategies are: the cell options become a mutation hook, the mixing becomes NNI's
``configure_softmax`` hook, and :meth:`DartsSearch.configure_oneshot_module` builds the one
:class:`~.module.DartsSearchModule` with the gradient, loss terms, perturbation and schedules. It runs on every
space NNI's ``DARTS`` accepts (``LayerChoice``, ``InputChoice``, ``nni.choice`` values in ``Mutable*`` layers,
``Repeat``, ``Cell``) and refuses what NNI refuses; options that need DARTS-style cells say so in one line.

Example::

    from nni.nas.experiment import NasExperiment
    strategy = DartsSearch(order=2, partial_channels=4, edge_normalization=True, gradient_clip_val=5.0)
    NasExperiment(space, evaluator, strategy).run()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import nni
import torch.nn as nn

from .._compat import import_nni_quietly
from ..constants import ARC_BETAS, ARC_LEARNING_RATE, ARC_WEIGHT_DECAY, HESSIAN_EPS
from .cells import MixedCell
from .gradients import architecture_gradient
from .mixing import Mixing, SoftmaxMixing
from .module import CellSchedule, DartsSearchModule

with import_nni_quietly():
    from nni.nas.strategy import DARTS

__all__ = ["DartsSearch"]


@nni.trace
class DartsSearch(DARTS):
    """A DARTS-family search: cell x architecture gradient x mixing, plus optional loss terms and perturbation.

    Args:
        order: 1 (first order) or 2 (second order, the unrolled gradient of DARTS eq. 7-8).
        hessian_eps: second order's finite-difference length ``eps * ||v||``.
        partial_channels: K of PC-DARTS (1: every channel through the ops). Needs DARTS-style cells.
        edge_normalization: PC-DARTS' per-edge ``beta``. Needs DARTS-style cells.
        auxiliary_skip: DARTS-' auxiliary skip connection on every edge (its weight comes from ``cell_schedule``).
        mixing: how weights come from the logits (default :class:`.mixing.SoftmaxMixing`).
        regularizers: loss terms on the operation logits, added to the architecture step's loss.
        perturbation: SDARTS-style perturbation of the architecture parameters during the weight step.
        cell_schedule: ``(epoch, max_epochs) -> {MixedCell attribute: value}`` applied at every epoch start.
        max_skip_connects: at most this many skip connections in each exported normal cell (P-DARTS rule).
        export_threshold: FairDARTS' threshold on the exported edges' weights (reported; the DARTS space keeps
            two inputs per node).
        arc_betas, arc_weight_decay: the architecture Adam's betas and weight decay (NNI and the paper: (0.5,
            0.999), 1e-3).
        skip_unused_gradients: skip gradients that are zeroed before they are used (single process).
        channels_last: run the supernet channels-last (``None``: CPU only).
        arc_learning_rate, gradient_clip_val, log_prob_every_n_step, warmup_epochs, penalty, mutation_hooks:
            as for :class:`nni.nas.strategy.DARTS` (``gradient_clip_val=None`` disables clipping).

    Raises:
        TypeError, ValueError: an argument of the wrong type or range (the message names it); a cell option on a
            space without DARTS-style cells (when the space is mutated).

    Example::

        DartsSearch(order=2, gradient_clip_val=5.0)
    """

    def __init__(self, *, order: int = 1, hessian_eps: float = HESSIAN_EPS, partial_channels: int = 1,
                 edge_normalization: bool = False, auxiliary_skip: bool = False, mixing: Mixing | None = None,
                 regularizers: Sequence[Any] = (), perturbation: Any = None,
                 cell_schedule: CellSchedule | None = None, max_skip_connects: int | None = None,
                 export_threshold: float | None = None, arc_betas: tuple[float, float] = ARC_BETAS,
                 arc_weight_decay: float = ARC_WEIGHT_DECAY, skip_unused_gradients: bool = True,
                 channels_last: bool | None = None, arc_learning_rate: float = ARC_LEARNING_RATE,
                 gradient_clip_val: float | None = None, log_prob_every_n_step: int = 10,
                 warmup_epochs: int = 0, penalty: Any = None, **kwargs: Any):
        architecture_gradient(order, hessian_eps=hessian_eps)  # validates both
        _check_int("partial_channels", partial_channels, 1)
        _check_int("log_prob_every_n_step", log_prob_every_n_step, 1)
        _check_int("warmup_epochs", warmup_epochs, 0)
        if max_skip_connects is not None:
            _check_int("max_skip_connects", max_skip_connects, 0)
        for name, value in (("edge_normalization", edge_normalization), ("auxiliary_skip", auxiliary_skip),
                            ("skip_unused_gradients", skip_unused_gradients)):
            _check_bool(name, value)
        if channels_last is not None:
            _check_bool("channels_last", channels_last)
        _check_positive("arc_learning_rate", arc_learning_rate)
        if gradient_clip_val is not None:
            _check_positive("gradient_clip_val", gradient_clip_val)
        if mixing is not None and not isinstance(mixing, nn.Module):
            raise TypeError(f"mixing must be a Mixing module, got {type(mixing).__name__}")
        betas = tuple(arc_betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"arc_betas must be two numbers in [0, 1), got {arc_betas!r}")
        if arc_weight_decay < 0:
            raise ValueError(f"arc_weight_decay must be >= 0, got {arc_weight_decay}")
        super().__init__(arc_learning_rate=arc_learning_rate, gradient_clip_val=gradient_clip_val,
                         log_prob_every_n_step=log_prob_every_n_step, warmup_epochs=warmup_epochs,
                         penalty=penalty, **kwargs)
        self.order = order
        self.hessian_eps = float(hessian_eps)
        self.partial_channels = partial_channels
        self.edge_normalization = edge_normalization
        self.auxiliary_skip = auxiliary_skip
        self.mixing = mixing if mixing is not None else SoftmaxMixing()
        self.regularizers = list(regularizers)
        self.perturbation = perturbation
        self.cell_schedule = cell_schedule
        self.max_skip_connects = max_skip_connects
        self.export_threshold = export_threshold
        self.arc_betas = betas
        self.arc_weight_decay = float(arc_weight_decay)
        self.skip_unused_gradients = skip_unused_gradients
        self.channels_last = channels_last

    # ------------------------------------------------------------------------------------------- NNI hooks
    def configure_softmax(self) -> nn.Module:
        return self.mixing

    def cell_options(self) -> dict[str, Any]:
        """The :class:`.cells.MixedCell` options of this search."""
        return {"partial_channels": self.partial_channels, "edge_normalization": self.edge_normalization,
                "auxiliary_skip": self.auxiliary_skip}

    def default_mutation_hooks(self) -> list[Any]:
        return [functools.partial(MixedCell.mutate, **self.cell_options())] + super().default_mutation_hooks()

    def mutate_model(self, model: Any) -> Any:
        mutated = super().mutate_model(model)
        needs_cells = [name for name, value in (("partial_channels", self.partial_channels > 1),
                                                ("edge_normalization", self.edge_normalization),
                                                ("auxiliary_skip", self.auxiliary_skip)) if value]
        if needs_cells and not any(isinstance(m, MixedCell) for m in mutated.modules()):
            raise ValueError(f"{', '.join(needs_cells)} need DARTS-style cells (nni.nas.nn.pytorch.Cell built from "
                             f"op factories, as in nni.nas.hub.pytorch.DARTS); this space has none")
        return mutated

    def configure_oneshot_module(self, training_module: Any) -> DartsSearchModule:
        return DartsSearchModule(
            training_module,
            gradient=architecture_gradient(self.order, hessian_eps=self.hessian_eps),
            mixing=self.mixing,
            regularizers=self.regularizers,
            perturbation=self.perturbation,
            cell_schedule=self.cell_schedule,
            cell_settings={"max_skip_connects": self.max_skip_connects, "export_threshold": self.export_threshold},
            arc_betas=self.arc_betas,
            arc_weight_decay=self.arc_weight_decay,
            skip_unused_gradients=self.skip_unused_gradients,
            channels_last=self.channels_last,
            arc_learning_rate=self.arc_learning_rate,
            gradient_clip_val=self.gradient_clip_val,
            log_prob_every_n_step=self.log_prob_every_n_step,
            warmup_epochs=self.warmup_epochs,
            penalty=self.penalty,
        )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 and finite, got {value}")
