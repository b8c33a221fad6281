"""P-DARTS' progressive search: stages of growing depth with op pruning between them, on the one search module.

P-DARTS (Chen et al., ICCV 2019, https://arxiv.org/abs/1904.12760; github:chenxin061/pdarts ``train_search.py``)
searches in stages: 5 -> 11 -> 17 cells on CIFAR-10 (``--layers 5 --add_layers 6 --add_layers 12``), and after
each stage drops the weakest candidates of every edge (:func:`.progressive.prune_ops`), so the deeper supernets
compute fewer ops. Skip connections get a dropout that rises from stage to stage and decays within one; the
exported normal cell keeps at most two skip connections.

Here each stage is a fresh supernet of the evaluator's space type with ``num_cells`` grown by the stage's
offset (``stage.num_cells - stages[0].num_cells``: 0, 6, 12), new architecture parameters, the pruned ops masked
out (not computed), and a fresh trainer of the evaluator's settings (so every stage runs the recipe's epochs and
warm-up, as the official code runs 25 epochs with 10 warm-up epochs per stage). Built on the stage hooks of
:class:`~.strategy.DartsSearch` only (``num_stages``, ``build_stage``, ``end_stage``, ``checkpoint_extras``,
``resume_stage``) and NNI's public ``mutate_model``: a checkpoint records its stage and op masks, so a resumed
run (``--resume`` or NNI's ``load_state_dict``) continues in the stage it stopped in.

Example::

    strategy = darts_strategy("p-darts")
    NasExperiment(DartsSpace(width=16, num_cells=5), evaluator, strategy).run()
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import nni
import torch
import torch.nn as nn

from .._compat import import_nni_quietly
from ..checks import check_float, check_int
from ..errors import ArgumentTypeError, ArgumentValueError
from .cells import MixedCell
from .progressive import PDARTS_CIFAR10_STAGES, Stage, prune_ops
from .schedules import pdarts_skip_dropout
from .strategy import DartsSearch

with import_nni_quietly():
    from nni.common.serializer import is_traceable
    from nni.nas.evaluator.pytorch import Lightning

__all__ = ["ProgressiveDartsSearch", "StageSkipDropout"]

_logger = logging.getLogger(__name__)
STAGE_KEY = "progressive_search"  # checkpoint entry: {"stage": index, "masks": {label: {node: mask}}}


class StageSkipDropout:
    """Cell schedule: P-DARTS skip-connect dropout of one stage (:func:`.schedules.pdarts_skip_dropout`).

    A :class:`~.parts.CellSchedule`.

    Example::

        StageSkipDropout(0.4, warmup_epochs=10)(epoch=12, max_epochs=25)   # {'skip_dropout': ...}
    """

    def __init__(self, stage_rate: float, *, warmup_epochs: int):
        self.stage_rate = check_float("stage_rate", stage_rate, low=0.0, high=1.0, high_open=True)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=0)

    def __call__(self, epoch: int, max_epochs: int) -> dict[str, Any]:
        rate = pdarts_skip_dropout(epoch, stage_rate=self.stage_rate, stage_epochs=max_epochs,
                                   warmup_epochs=min(self.warmup_epochs, max_epochs))
        return {"skip_dropout": rate}


@nni.trace
class ProgressiveDartsSearch(DartsSearch):
    """:class:`~.strategy.DartsSearch` run in P-DARTS stages (see the module docstring).

    Args:
        stages: the stages (default: the official CIFAR-10 schedule); only their cell offsets, width increases,
            kept ops and skip dropout are used: every stage runs the evaluator's epochs and this strategy's warm-up.
        **kwargs: :class:`~.strategy.DartsSearch` arguments (``max_skip_connects=2`` is P-DARTS' export rule),
            except ``cell_schedule``: the skip dropout of each stage is the cell schedule.

    Raises:
        ArgumentTypeError, ArgumentValueError: ``stages`` that are not :class:`~.progressive.Stage` s, a
            ``cell_schedule``; from :meth:`check_space`, a space that is not rebuilt from its ``nni.trace``
            arguments with a ``num_cells`` keyword (``argument``: ``space``).

    Example::

        ProgressiveDartsSearch(max_skip_connects=2, warmup_epochs=10)
    """

    def __init__(self, *, stages: Sequence[Stage] = PDARTS_CIFAR10_STAGES, **kwargs: Any):
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages \
                or not all(isinstance(s, Stage) for s in stages):
            raise ArgumentTypeError("stages", "must be a non-empty sequence of progressive.Stage")
        if kwargs.get("cell_schedule") is not None:
            raise ArgumentValueError("cell_schedule", "is P-DARTS' own (the skip dropout of each stage); leave it out")
        super().__init__(**kwargs)
        self.stages = tuple(stages)
        self._masks: dict[str, dict[int, torch.Tensor]] = {}
        self.cell_schedule = self._skip_dropout(0)

    # -------------------------------------------------------------------------------------------- checks
    def check_space(self, space: nn.Module) -> None:
        """:meth:`DartsSearch.check_space`, and a space P-DARTS can rebuild deeper: ``nni.trace`` recorded its
        ``num_cells=`` keyword (as for ``nni.nas.hub.pytorch.DARTS``)."""
        super().check_space(space)
        if not is_traceable(space) or "num_cells" not in space.trace_kwargs:
            raise ArgumentValueError("space", "must be built with a num_cells= keyword that nni.trace recorded "
                                              "(e.g. nni.nas.hub.pytorch.DARTS): p-darts grows the supernet between "
                                              "stages")

    def mutate_model(self, model: Any) -> Any:
        """The supernet, with the ops pruned by the previous stages masked out."""
        supernet = super().mutate_model(model)
        for cell in _cells_by_label(supernet, first_only=False):
            for node, mask in self._masks.get(str(cell.label), {}).items():
                cell.set_op_mask(int(node), mask)
        return supernet

    # -------------------------------------------------------------------------------------------- stages
    def num_stages(self) -> int:
        return len(self.stages)

    def build_stage(self, index: int) -> tuple[nn.Module, Lightning]:
        """The space rebuilt with the stage's cells (and width), and a fresh evaluator of the same settings."""
        self.cell_schedule = self._skip_dropout(index)
        _logger.info("p-darts stage %d/%d: %s ops per edge kept so far", index + 1, len(self.stages),
                     self.stages[index - 1].ops_kept)
        return self._stage_space(index), self._fresh_evaluator()

    def end_stage(self, index: int) -> None:
        """Prune every edge to the stage's ``ops_kept`` strongest ops (by the deterministic mixing weights)."""
        if index + 1 < len(self.stages):
            self._masks = self._pruned_masks(self.stages[index].ops_kept)

    def checkpoint_extras(self) -> dict[str, Any]:
        return {STAGE_KEY: {"stage": self.stage_index, "masks": self._masks}}

    def resume_stage(self, checkpoint: Mapping[str, Any]) -> int:
        record = checkpoint.get(STAGE_KEY) or {}
        stage = int(record.get("stage", 0))
        if stage:
            self._masks = record["masks"]
        return stage

    # --------------------------------------------------------------------------------------------- parts
    def _skip_dropout(self, index: int) -> StageSkipDropout:
        return StageSkipDropout(self.stages[index].skip_dropout, warmup_epochs=self.warmup_epochs)

    def _stage_space(self, index: int) -> nn.Module:
        base = self.model_space.model_space  # its nni.trace record is that of the space the user built
        kwargs = dict(base.trace_kwargs)
        offset = self.stages[index].num_cells - self.stages[0].num_cells
        kwargs["num_cells"] = int(kwargs["num_cells"]) + offset
        width_increase = self.stages[index].width_increase
        if width_increase:
            kwargs["width"] = int(kwargs["width"]) + width_increase
        return type(base)(*base.trace_args, **kwargs)

    def _fresh_evaluator(self) -> Lightning:
        """A new module and trainer of the user's evaluator's settings (their ``nni.trace`` records, else a copy of
        the module), the same data."""
        evaluator = self.model_space.evaluator
        module = evaluator.module.trace_copy().get() if is_traceable(evaluator.module) \
            else copy.deepcopy(evaluator.module)
        trainer = evaluator.trainer.trace_copy().get()
        fit_kwargs = {key: value for key, value in evaluator.fit_kwargs.items() if key != "ckpt_path"}
        return Lightning(module, trainer, train_dataloaders=evaluator.train_dataloaders,
                         val_dataloaders=evaluator.val_dataloaders, datamodule=evaluator.datamodule,
                         fit_kwargs=fit_kwargs)

    def _pruned_masks(self, keep: int) -> dict[str, dict[int, torch.Tensor]]:
        masks: dict[str, dict[int, torch.Tensor]] = {}
        for cell in _cells_by_label(self.supernet, first_only=True):
            # Plain str keys (NNI's labels are a str subclass that a weights-only checkpoint read refuses).
            node_masks = masks[str(cell.label)] = {}
            for pos, node in enumerate(cell.node_indices):
                with torch.no_grad():
                    weights = cell.mixing_weights(pos, deterministic=True).detach().cpu()
                current = cell.op_mask(node).cpu()
                node_masks[node] = prune_ops(weights, min(keep, int(current.sum(-1).min())), current,
                                                    op_names=cell.op_names)
        return masks


def _cells_by_label(model: nn.Module, *, first_only: bool) -> list[MixedCell]:
    """The model's cells; with ``first_only`` one per label (cells of a type share their alphas and masks)."""
    labels: set[str] = set()
    found = []
    for module in model.modules():
        if isinstance(module, MixedCell) and not (first_only and module.label in labels):
            labels.add(module.label)
            found.append(module)
    return found
