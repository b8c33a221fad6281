"""Let a resumed run use *this* run's optimizer and learning-rate schedule settings.

Example::

    trainer = Trainer(max_epochs=100, callbacks=[ApplySettingsOnResume()])
    trainer.fit(DartsClassificationModule(learning_rate=0.01, max_epochs=100), loader, ckpt_path="last.ckpt")
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

__all__ = ["ApplySettingsOnResume"]

_logger = logging.getLogger(__name__)

# Scheduler attributes that record progress rather than settings (torch.optim.lr_scheduler.LRScheduler.__dict__).
_SCHEDULER_PROGRESS = frozenset({"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial",
                                 "verbose"})
_LR_KEYS = ("lr", "initial_lr")


def _settings(group: dict) -> dict:
    return {key: value for key, value in group.items() if key != "params"}


def _changed(old: Any, new: Any) -> bool:
    try:
        return bool(old != new)
    except (RuntimeError, TypeError, ValueError):  # tensors with several values: compare as tensors
        return not (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and torch.equal(old, new))


class ApplySettingsOnResume(Callback):
    """When ``fit`` resumes from a checkpoint, keep the optimizer and LR-schedule settings of *this* run.

    Lightning restores optimizer and scheduler states wholesale, settings included: a run resumed with a lower
    learning rate (after a divergence), another weight decay or more epochs silently continues with the old
    values. This callback snapshots the settings the module's ``configure_optimizers`` built for this run
    (``on_fit_start``, before the restore), and after the restore (``on_train_start``) writes them back into the
    restored optimizers and schedulers, keeping their progress (moments, momentum buffers, ``last_epoch``). When
    the base learning rate or the schedule changed, the current learning rate is recomputed where the schedule is
    now (the scheduler's closed form, e.g. cosine; else scaled by new/old base rate). Each change is logged; a
    fresh (not resumed) fit is left alone.

    Example::

        trainer = Trainer(max_epochs=100, callbacks=[ApplySettingsOnResume()])
        trainer.fit(DartsClassificationModule(learning_rate=0.01, max_epochs=100), loader, ckpt_path="last.ckpt")
    """

    def __init__(self) -> None:
        self._fresh_optimizers: list[list[dict]] | None = None
        self._fresh_schedulers: list[dict] | None = None
        #: The changes applied at the last resume, as ``"what: old -> new"`` lines.
        self.applied: list[str] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.applied = []
        if trainer.ckpt_path is None:
            self._fresh_optimizers = self._fresh_schedulers = None
            return
        self._fresh_optimizers = [[copy.deepcopy(_settings(g)) for g in opt.param_groups] for opt in trainer.optimizers]
        self._fresh_schedulers = [
            {k: copy.deepcopy(v) for k, v in config.scheduler.state_dict().items() if k not in _SCHEDULER_PROGRESS}
            for config in trainer.lr_scheduler_configs
        ]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fresh_optimizers is None or self._fresh_schedulers is None:
            return
        lr_changed: dict[int, list[tuple[float, float]]] = {}  # id(optimizer) -> per group (old base, new base)
        pairs = zip(trainer.optimizers, self._fresh_optimizers, strict=False)
        for index, (optimizer, fresh_groups) in enumerate(pairs):
            name = f"optimizer {index} ({type(optimizer).__name__})"
            bases = []
            for group_index, (group, fresh) in enumerate(zip(optimizer.param_groups, fresh_groups, strict=False)):
                where = name if len(optimizer.param_groups) == 1 else f"{name} group {group_index}"
                for key, value in fresh.items():
                    if key not in _LR_KEYS and key in group and _changed(group[key], value):
                        self._note(f"{where} {key}: {group[key]} -> {value}")
                        group[key] = copy.deepcopy(value)
                old_base = group.get("initial_lr", group["lr"])
                new_base = fresh.get("initial_lr", fresh["lr"])
                bases.append((old_base, new_base))
                if _changed(old_base, new_base):
                    self._note(f"{where} base lr: {old_base} -> {new_base}")
                    if "initial_lr" in group:
                        group["initial_lr"] = new_base
            if any(_changed(old, new) for old, new in bases):
                lr_changed[id(optimizer)] = bases

        scheduled: set[int] = set()
        pairs = zip(trainer.lr_scheduler_configs, self._fresh_schedulers, strict=False)
        for index, (config, fresh) in enumerate(pairs):
            scheduler = config.scheduler
            optimizer = scheduler.optimizer
            scheduled.add(id(optimizer))
            changed = id(optimizer) in lr_changed
            for key, value in fresh.items():
                if _changed(getattr(scheduler, key, None), value):
                    if key != "base_lrs":  # base rates are reported with the optimizer
                        self._note(f"scheduler {index} ({type(scheduler).__name__}) {key}: "
                                   f"{getattr(scheduler, key, None)} -> {value}")
                    setattr(scheduler, key, copy.deepcopy(value))
                    changed = True
            if changed:
                self._reschedule(scheduler, lr_changed.get(id(optimizer)), index)

        for optimizer in trainer.optimizers:
            if id(optimizer) in lr_changed and id(optimizer) not in scheduled:  # unscheduled: the new rate as is
                for group, (_, new_base) in zip(optimizer.param_groups, lr_changed[id(optimizer)], strict=False):
                    group["lr"] = new_base

    def _reschedule(self, scheduler: Any, bases: list[tuple[float, float]] | None, index: int) -> None:
        closed_form = getattr(scheduler, "_get_closed_form_lr", None)
        if closed_form is not None:
            rates = list(closed_form())
        else:
            rates = []
            for group, (old, new) in zip(scheduler.optimizer.param_groups, bases or [], strict=False):
                rates.append(group["lr"] * new / old if old else new)
            if not rates:
                return
        for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=False):
            group["lr"] = rate
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        self._note(f"scheduler {index} ({type(scheduler).__name__}) learning rate now {scheduler._last_lr} "
                   f"(step {scheduler.last_epoch})")

    def _note(self, line: str) -> None:
        self.applied.append(line)
        _logger.info("resume with changed settings: %s", line)
