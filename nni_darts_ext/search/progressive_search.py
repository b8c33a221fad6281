"""P-DARTS' progressive search: stages of growing depth with op pruning between them, on the one search module.

P-DARTS (Chen et al., ICCV 2019, https://arxiv.org/abs/1904.12760; github:chenxin061/pdarts ``train_search.py``)
searches in stages: 5 -> 11 -> 17 cells on CIFAR-10 (``--layers 5 --add_layers 6 --add_layers 12``), and after
each stage drops the weakest candidates of every edge (:func:`.progressive.prune_ops`), so the deeper supernets
compute fewer ops. Skip connections get a dropout that rises from stage to stage and decays within one; the
exported normal cell keeps at most two skip connections.

Here each stage is a fresh supernet of the evaluator's space type with ``num_cells`` grown by the stage's
offset (``stage.num_cells - stages[0].num_cells``: 0, 6, 12), new architecture parameters, the pruned ops masked
out (not computed), and a fresh trainer of the evaluator's settings (so every stage runs the recipe's epochs and
warm-up, as the official code runs 25 epochs with 10 warm-up epochs per stage). A checkpoint records its stage,
so ``--resume`` continues in the stage it stopped in.

Example::

    strategy = darts_strategy("p-darts")
    NasExperiment(DartsSpace(width=16, num_cells=5), evaluator, strategy).run()
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import nni
import torch

from .._compat import import_nni_quietly
from ..checkpoint import read_checkpoint
from .cells import MixedCell
from .progressive import PDARTS_CIFAR10_STAGES, Stage, prune_ops
from .schedules import pdarts_skip_dropout
from .strategy import DartsSearch

with import_nni_quietly():
    from nni.nas.evaluator.pytorch import Lightning
    from nni.nas.space import ModelStatus, RawFormatModelSpace

__all__ = ["ProgressiveDartsSearch", "StageSkipDropout"]

_logger = logging.getLogger(__name__)
STAGE_KEY = "progressive_search"  # checkpoint entry: {"stage": index, "masks": {label: {node: mask}}}


class StageSkipDropout:
    """Cell schedule: P-DARTS skip-connect dropout of one stage (:func:`.schedules.pdarts_skip_dropout`).

    Example::

        StageSkipDropout(0.4, warmup_epochs=10)(epoch=12, max_epochs=25)   # {'skip_dropout': ...}
    """

    def __init__(self, stage_rate: float, *, warmup_epochs: int):
        self.stage_rate = stage_rate
        self.warmup_epochs = warmup_epochs

    def __call__(self, epoch: int, max_epochs: int) -> dict[str, Any]:
        rate = pdarts_skip_dropout(epoch, stage_rate=self.stage_rate, stage_epochs=max_epochs,
                                   warmup_epochs=min(self.warmup_epochs, max_epochs))
        return {"skip_dropout": rate}


@nni.trace
class ProgressiveDartsSearch(DartsSearch):
    """:class:`~.strategy.DartsSearch` run in P-DARTS stages (see the module docstring).

    Args:
        stages: the stages (default: the official CIFAR-10 schedule); only their cell offsets, kept ops and
            skip dropout are used: every stage runs the evaluator's epochs and this strategy's warm-up.
        **kwargs: :class:`~.strategy.DartsSearch` arguments (``max_skip_connects=2`` is P-DARTS' export rule).

    Raises:
        ValueError: a space that is not rebuilt from its ``nni.trace`` arguments with a ``num_cells`` keyword.

    Example::

        ProgressiveDartsSearch(max_skip_connects=2, warmup_epochs=10)
    """

    def __init__(self, *, stages: Sequence[Stage] = PDARTS_CIFAR10_STAGES, **kwargs: Any):
        stages = tuple(stages)
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise TypeError("stages must be a non-empty sequence of progressive.Stage")
        super().__init__(**kwargs)
        self.stages = stages
        self.stage_index = 0
        self._base_space: Any = None
        self._base_evaluator: Any = None
        self._masks: dict[str, dict[int, torch.Tensor]] = {}
        self._resume_stage: int | None = None

    # -------------------------------------------------------------------------------------------- stages
    def _initialize(self, model_space: Any, engine: Any) -> Any:
        self._base_space = model_space.model_space
        self._base_evaluator = model_space.evaluator
        kwargs = getattr(self._base_space, "trace_kwargs", None)
        if not isinstance(kwargs, dict) or "num_cells" not in kwargs:
            raise ValueError("p-darts grows the supernet between stages: it needs a space built with a num_cells= "
                             "keyword that nni.trace recorded (e.g. nni.nas.hub.pytorch.DARTS)")
        self._stage_setup(0)
        ckpt = model_space.evaluator.fit_kwargs.get("ckpt_path")
        if ckpt:  # `nni-darts search --resume`: the checkpoint says which stage it belongs to
            self._resume_from(str(ckpt), model_space.evaluator)
        return super()._initialize(model_space, engine)

    def _resume_from(self, path: str, evaluator: Any) -> None:
        """Continue in the stage ``path`` was written in; stage 0 resumes through the evaluator as usual."""
        record = read_checkpoint(path).get(STAGE_KEY, {})
        stage = int(record.get("stage", 0))
        if stage:
            self._resume_stage, self._resume_ckpt, self._masks = stage, path, record["masks"]
            evaluator.fit_kwargs.pop("ckpt_path", None)  # not for the stage-0 supernet

    def _stage_setup(self, index: int) -> None:
        stage = self.stages[index]
        self.stage_index = index
        self.cell_schedule = StageSkipDropout(stage.skip_dropout, warmup_epochs=self.warmup_epochs)

    def _stage_space(self, index: int) -> Any:
        base = self._base_space
        kwargs = dict(base.trace_kwargs)
        offset = self.stages[index].num_cells - self.stages[0].num_cells
        kwargs["num_cells"] = int(kwargs["num_cells"]) + offset
        width_increase = self.stages[index].width_increase
        if width_increase:
            kwargs["width"] = int(kwargs["width"]) + width_increase
        return type(base)(*base.trace_args, **kwargs)

    def _fresh_evaluator(self) -> Any:
        evaluator = self._base_evaluator
        module = evaluator.module.trace_copy().get() if hasattr(evaluator.module, "trace_copy") \
            else copy.deepcopy(evaluator.module)
        trainer = evaluator.trainer.trace_copy().get()
        return Lightning(module, trainer, train_dataloaders=evaluator.train_dataloaders,
                         val_dataloaders=evaluator.val_dataloaders, datamodule=getattr(evaluator, "datamodule", None),
                         fit_kwargs=dict(evaluator.fit_kwargs))

    def _run(self) -> None:
        start = self._resume_stage or 0
        for index in range(start, len(self.stages)):
            if index > 0:
                self._stage_setup(index)
                model = self.mutate_model(self._stage_space(index))
                self._apply_masks(model)
                evaluator = self.mutate_evaluator(self._fresh_evaluator())
                if index == start and self._resume_ckpt is not None:
                    evaluator.fit_kwargs["ckpt_path"] = self._resume_ckpt
                self._mutated_model_space = RawFormatModelSpace(model, evaluator)
                self._mutated_model_space.status = ModelStatus.Frozen
            _logger.info("p-darts stage %d/%d: %d cells, %s ops per edge kept so far", index + 1, len(self.stages),
                         sum(1 for m in self.supernet.modules() if isinstance(m, MixedCell)),
                         self.stages[index - 1].ops_kept if index else "all")
            self.oneshot_module.search_stage = index
            super()._run()
            if index + 1 < len(self.stages):
                self._masks = self._pruned_masks(self.stages[index].ops_kept)

    def _cells_by_label(self, model: Any) -> dict[str, MixedCell]:
        cells: dict[str, MixedCell] = {}
        for module in model.modules():
            if isinstance(module, MixedCell):
                cells.setdefault(module.label, module)
        return cells

    def _pruned_masks(self, keep: int) -> dict[str, dict[int, torch.Tensor]]:
        masks: dict[str, dict[int, torch.Tensor]] = {}
        for label, cell in self._cells_by_label(self.supernet).items():
            masks[label] = {}
            for pos, node in enumerate(cell._node_indices):
                with torch.no_grad():
                    weights = cell._edge_weights(pos, deterministic=True).detach().cpu()
                current = cell.op_mask(node).cpu()
                masks[label][node] = prune_ops(weights, min(keep, int(current.sum(-1).min())), current,
                                               op_names=cell.op_names)
        return masks

    def _apply_masks(self, model: Any) -> None:
        for module in model.modules():
            if isinstance(module, MixedCell) and module.label in self._masks:
                for node, mask in self._masks[module.label].items():
                    module.set_op_mask(node, mask)

    # ----------------------------------------------------------------------------------------- resume
    _resume_ckpt: str | None = None

    def load_state_dict(self, state_dict: dict) -> None:
        """Resume in the stage the checkpoint was written in (its masks come back with the weights)."""
        path = state_dict.get("ckpt_path")
        if path and self._mutated_model_space is not None:
            self._resume_from(str(path), self._mutated_model_space.evaluator)
            if self._resume_stage:
                return
        super().load_state_dict(state_dict)

    def configure_oneshot_module(self, training_module: Any) -> Any:
        module = super().configure_oneshot_module(training_module)
        strategy = self

        def on_save_checkpoint(checkpoint: dict[str, Any]) -> None:
            checkpoint[STAGE_KEY] = {"stage": strategy.stage_index, "masks": strategy._masks}

        module.on_save_checkpoint = on_save_checkpoint
        return module
