"""Lightning callbacks and a checkpoint plugin that keep a long DARTS run from being lost.

A DARTS retrain runs for a day or more and a search for hours, so a crash, a signal or a diverging loss must cost
minutes, not the run:

* :class:`NonFiniteLossGuard` stops the run at the first NaN/inf training loss, before any checkpoint of the bad
  state is written, with a message naming the epoch and batch (DARTS is known to diverge).
* :class:`CheckpointOnSignal` turns SIGINT (Ctrl+C) and SIGTERM (``kill``, batch schedulers) into "finish this
  step, save ``last.ckpt``, stop": the run continues with ``trainer.fit(..., ckpt_path=".../last.ckpt")``.
* :class:`ApplySettingsOnResume` makes a resumed run use the *current* optimizer and schedule settings (a lower
  learning rate after a divergence, more epochs) instead of the ones restored from the checkpoint.
* :class:`CheckResumeCheckpoint` and :func:`read_checkpoint` turn a corrupt, truncated or mismatched checkpoint
  into a one-line :class:`CheckpointError` naming the file and the keys or shapes that differ.
* :class:`AtomicCheckpointIO` writes every checkpoint through a temporary file in the destination folder and an
  atomic rename, and reads checkpoints with ``torch.load(weights_only=True)``.

Why a checkpoint plugin: Lightning's ``TorchCheckpointIO`` (``lightning_fabric.utilities.cloud_io._atomic_save``)
writes through an fsspec transaction whose local temporary file comes from ``tempfile.mkstemp()``, i.e. lives in
``$TMPDIR``, and is then moved with ``shutil.move``. When ``$TMPDIR`` is on another filesystem than the checkpoint
folder (a tmpfs ``/tmp``, a network or scratch filesystem for runs: the usual case on clusters), ``shutil.move``
falls back to copying *into the destination path*: a kill during that copy leaves a truncated ``last.ckpt`` where
a good one was. It also never calls ``fsync`` and keeps two copies of the checkpoint in memory.

Why the signal design: Lightning itself turns SIGTERM into ``SIGTERMException`` (a ``SystemExit``) at the end of
the batch, or inside a validation loop, without saving anything, and catches ``KeyboardInterrupt`` (Python's
default SIGINT behaviour, raised at any bytecode, e.g. between two parameter updates of an optimizer step) with
``sys.exit(1)`` and no checkpoint. :class:`CheckpointOnSignal` replaces both handlers while training runs with one
that only records the signal; the checkpoint is written in ``on_train_batch_end``, after the optimizer step, the
point Lightning's own ``ModelCheckpoint(every_n_train_steps=...)`` saves at and resumes from mid-epoch. Stopping
with ``trainer.should_stop = True`` instead would run the epoch-end hooks, step the LR scheduler and let
``ModelCheckpoint`` save the half-done epoch as finished: a resumed run would then train fewer batches.

Example::

    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import ModelCheckpoint

    ckpt_dir = "runs/x/checkpoints"
    trainer = Trainer(
        max_epochs=600,
        callbacks=[NonFiniteLossGuard(), CheckpointOnSignal(ckpt_dir), ModelCheckpoint(ckpt_dir, save_last=True)],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, loader, ckpt_path=resume_path)  # resume_path: "runs/x/checkpoints/last.ckpt" or None
"""

from __future__ import annotations

import contextlib
import copy
import glob
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .io import atomic_open

__all__ = [
    "LAST_CHECKPOINT_NAME",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "TrainingInterrupted",
    "CheckpointOnSignal",
    "AtomicCheckpointIO",
    "ApplySettingsOnResume",
    "CheckpointError",
    "CheckResumeCheckpoint",
    "read_checkpoint",
    "state_dict_mismatch",
    "checkpoint_safe_globals",
]

_logger = logging.getLogger(__name__)

#: File name of the resumable checkpoint: what ``ModelCheckpoint(save_last=True)`` writes
#: (``ModelCheckpoint.CHECKPOINT_NAME_LAST = "last"`` plus ``FILE_EXTENSION = ".ckpt"``).
LAST_CHECKPOINT_NAME = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"

#: Exit status of a process stopped by signal ``N`` is conventionally ``128 + N`` (POSIX shells: 130 for SIGINT,
#: 143 for SIGTERM).
_SIGNAL_EXIT_BASE = 128

_DEFAULT_RESUME_HINT = (
    "resume from it with changed settings (e.g. a lower learning rate or gradient clipping) by passing it as "
    "`ckpt_path` to `Trainer.fit`"
)

PathLike = Union[str, "os.PathLike[str]"]


def _check_path(name: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}")
    if not os.fspath(value):
        raise ValueError(f"{name} must not be empty")
    return Path(value)


def _check_hint(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"resume_hint must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("resume_hint must not be empty")
    return value


def _batch_loss(outputs: Any) -> Optional[torch.Tensor]:
    """The training loss in ``outputs`` of ``on_train_batch_end``.

    Automatic optimisation passes ``{"loss": loss, ...}``; manual optimisation (NNI's one-shot strategies) passes
    whatever ``training_step`` returned, wrapped as ``{"loss": tensor}`` when it was a tensor. NNI's DARTS
    ``training_step`` returns the evaluator module's output for the weight step (``differentiable.py`` ~L88); a
    non-finite architecture step makes the architecture weights, hence that loss, non-finite in the same batch.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        loss = outputs.get("loss")
        if isinstance(loss, torch.Tensor):
            return loss
    return None


def _is_finite(loss: torch.Tensor) -> bool:
    return bool(torch.isfinite(loss.detach()).all())


def _loss_repr(loss: torch.Tensor) -> str:
    value = loss.detach().float()
    if value.numel() == 1:
        return str(value.item())
    return f"tensor with {int((~torch.isfinite(value)).sum())} non-finite of {value.numel()} values"


def _last_good_checkpoint(trainer: "pl.Trainer") -> Optional[str]:
    """The newest checkpoint a ``ModelCheckpoint`` of this trainer wrote, if any."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            path = callback.last_model_path or callback.best_model_path
            if path:
                return path
    return None


# ------------------------------------------------------------------------------------------------- NaN guard
class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run was stopped before checkpointing that state.

    Attributes: ``epoch``, ``batch_idx`` (within the epoch), ``global_step``, ``loss`` (its text form) and
    ``checkpoint`` (the last good checkpoint a ``ModelCheckpoint`` wrote, or ``None``).
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        batch_idx: int,
        global_step: int,
        loss: str,
        checkpoint: Optional[str],
    ):
        super().__init__(message)
        self.epoch = epoch
        self.batch_idx = batch_idx
        self.global_step = global_step
        self.loss = loss
        self.checkpoint = checkpoint


class NonFiniteLossGuard(Callback):
    """Stop training at the first NaN/inf training loss, before a checkpoint of the bad state is written.

    Checks the loss after every training batch (``on_train_batch_end``) and raises :class:`NonFiniteLossError`,
    whose message names the epoch and the batch and says which checkpoint is kept and how to resume. Lightning
    calls checkpoint callbacks last, and saves epoch-end checkpoints after the batch hooks, so raising here means
    neither ``ModelCheckpoint(every_n_train_steps=...)`` nor the epoch-end ``last.ckpt`` sees the bad state.
    Works under automatic optimisation and under NNI's one-shot strategies (manual optimisation).

    Each check reads the loss back to the host (one device synchronisation per batch); with several processes the
    decision is all-reduced, so every process stops at the same batch.

    Args:
        resume_hint: how to continue, appended to the error message ("... the last good checkpoint ... is kept;
            <resume_hint>"). The ``nni-darts`` command passes its ``--resume --set`` instructions.

    Raises:
        NonFiniteLossError: from ``trainer.fit`` when a training loss is NaN or infinite.

    Example::

        trainer = Trainer(callbacks=[NonFiniteLossGuard(), ModelCheckpoint("ckpt", save_last=True)])
        try:
            trainer.fit(module, loader)
        except NonFiniteLossError as error:
            print(error)  # "non-finite training loss (nan) at epoch 3, batch 17 (global step 281); ..."
    """

    def __init__(self, resume_hint: str = _DEFAULT_RESUME_HINT):
        self.resume_hint = _check_hint(resume_hint)

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _batch_loss(outputs)
        finite = loss is None or _is_finite(loss)
        # Several processes (DDP): stop all of them or none, else the others wait forever in the next all-reduce.
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        checkpoint = _last_good_checkpoint(trainer)
        kept = (
            f"the last good checkpoint ({checkpoint}) is kept"
            if checkpoint
            else "no checkpoint of an earlier state was written yet"
        )
        loss_text = "another process's" if finite else _loss_repr(loss)
        message = (
            f"non-finite training loss ({loss_text}) at epoch {trainer.current_epoch}, batch {batch_idx} "
            f"(global step {trainer.global_step}); training stopped without saving this state: {kept}; "
            f"{self.resume_hint}"
        )
        raise NonFiniteLossError(
            message,
            epoch=trainer.current_epoch,
            batch_idx=batch_idx,
            global_step=trainer.global_step,
            loss=loss_text,
            checkpoint=checkpoint,
        )


# ------------------------------------------------------------------------------------------ signal checkpoints
class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving a resumable checkpoint.

    A ``SystemExit`` (like Lightning's own ``SIGTERMException``): uncaught, the process ends without a traceback
    and with the conventional status ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM). ``str(error)`` is
    a one-line message; attributes ``signum``, ``checkpoint`` (path of the saved file), ``epoch``, ``global_step``.
    """

    def __init__(self, signum: int, checkpoint: Path, epoch: int, global_step: int):
        super().__init__(_SIGNAL_EXIT_BASE + int(signum))
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.global_step = global_step

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return (
            f"stopped by {name} in epoch {self.epoch} at global step {self.global_step}; "
            f"resumable checkpoint saved to {self.checkpoint}"
        )


_CATCHABLE = {signal.SIGINT, signal.SIGTERM}


class CheckpointOnSignal(Callback):
    """On SIGINT/SIGTERM: finish the current training step, save ``dirpath/last.ckpt``, stop the run.

    While training runs (``on_train_start`` to ``on_train_end``), the signals' handlers only record the signal.
    At the end of the current training batch the callback saves a resumable checkpoint with
    ``trainer.save_checkpoint`` (model, optimizer and scheduler states, loop counters; atomic with
    :class:`AtomicCheckpointIO`) and raises :class:`TrainingInterrupted` out of ``trainer.fit``. Continue with
    ``trainer.fit(..., ckpt_path=callback.path)``: Lightning resumes after that batch, so the run ends with the
    same number of epochs and steps. A signal that arrives during validation or the epoch end is acted on at the
    end of the next training batch; one that arrives after the last training batch lets the run finish normally
    (see :attr:`received_signal`). A second signal before the checkpoint is written interrupts at once with
    ``KeyboardInterrupt`` (no new checkpoint; earlier checkpoints stay intact). Previous handlers are restored when
    training ends or fails. A batch whose loss is NaN/inf is never saved: put :class:`NonFiniteLossGuard` first.

    Only single-process runs in the main thread are handled; elsewhere (DDP, a worker thread) the callback logs a
    warning and leaves Lightning's own handling in place.

    Args:
        dirpath: folder of the checkpoint (the ``ModelCheckpoint`` folder, so ``--resume`` finds one file).
        filename: checkpoint file name, default ``last.ckpt`` (what ``ModelCheckpoint(save_last=True)`` writes).
        signals: signals to handle, a subset of SIGINT and SIGTERM.

    Raises:
        TrainingInterrupted: from ``trainer.fit``, after the checkpoint is saved.

    Example::

        trainer = Trainer(
            callbacks=[NonFiniteLossGuard(), CheckpointOnSignal("runs/x/checkpoints"),
                       ModelCheckpoint("runs/x/checkpoints", save_last=True)],
            plugins=[AtomicCheckpointIO()],
        )
        trainer.fit(module, loader)  # kill -TERM <pid> -> runs/x/checkpoints/last.ckpt, exit status 143
    """

    def __init__(
        self,
        dirpath: PathLike,
        filename: str = LAST_CHECKPOINT_NAME,
        signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
    ):
        self.dirpath = _check_path("dirpath", dirpath)
        if not isinstance(filename, str):
            raise TypeError(f"filename must be a str, got {type(filename).__name__}")
        if not filename or os.sep in filename or (os.altsep and os.altsep in filename):
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        if isinstance(signals, (int, str)) or not isinstance(signals, Iterable):
            raise TypeError(f"signals must be a sequence of signal numbers, got {type(signals).__name__}")
        signals = tuple(signals)
        if not signals:
            raise ValueError("signals must not be empty")
        for signum in signals:
            if isinstance(signum, bool) or not isinstance(signum, int):
                raise TypeError(f"signals must hold signal numbers, got {signum!r}")
            if signum not in _CATCHABLE:
                raise ValueError(f"signals may hold SIGINT and SIGTERM only, got {signum!r}")
        self.filename = filename
        self.signals = tuple(signal.Signals(s) for s in dict.fromkeys(signals))
        self._received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    @property
    def path(self) -> Path:
        """Where the checkpoint is saved: ``dirpath / filename``."""
        return self.dirpath / self.filename

    @property
    def received_signal(self) -> Optional[int]:
        """The signal received during the last ``fit``, or ``None``; callers check it between stages."""
        return self._received

    # ------------------------------------------------------------------------------------------- handlers
    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only record: the checkpoint is written at the end of the current step, never halfway through it.
        if self._received is not None:
            self._restore_handlers()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a new checkpoint")
        self._received = signum

    def _install_handlers(self) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            # Only undo our own handler: Lightning's teardown may already have restored its originals.
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # ---------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # Lightning registers its SIGTERM handler just before the training stage starts (Trainer._run); installing
        # ours here, after it, keeps its SIGTERMException from stopping the run before the checkpoint is saved.
        self._received = None
        if threading.current_thread() is not threading.main_thread():
            _logger.warning("CheckpointOnSignal: not in the main thread, signals are left to Lightning")
            return
        if trainer.world_size > 1:
            _logger.warning("CheckpointOnSignal: %d processes, signals are left to Lightning", trainer.world_size)
            return
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            _logger.info("CheckpointOnSignal: %s is not atomic on every filesystem; use AtomicCheckpointIO",
                         type(trainer.strategy.checkpoint_io).__name__)
        self._install_handlers()

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._received is None or not self._previous:
            return
        loss = _batch_loss(outputs)
        if loss is not None and not _is_finite(loss):
            _logger.error("%s received, but this batch's loss is not finite: no checkpoint saved",
                          signal.Signals(self._received).name)
            return  # NonFiniteLossGuard (or the next batch) ends the run; the bad state is not saved
        signum = self._received
        name = signal.Signals(signum).name
        _logger.warning("%s received: saving %s (epoch %d, global step %d) and stopping",
                        name, self.path, trainer.current_epoch, trainer.global_step)
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state: optimizers, schedulers, loops
        self._restore_handlers()
        raise TrainingInterrupted(signum, self.path, trainer.current_epoch, trainer.global_step)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._received is not None and self._previous:
            _logger.warning("%s received after the last training step: training finished normally",
                            signal.Signals(self._received).name)
        self._restore_handlers()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        # Never save here: the state may be mid-step or non-finite. Only give the signals back.
        self._restore_handlers()

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._restore_handlers()


# ------------------------------------------------------------------------------------------ resume with changes
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
        self._fresh_optimizers: Optional[list[list[dict]]] = None
        self._fresh_schedulers: Optional[list[dict]] = None
        #: The changes applied at the last resume, as ``"what: old -> new"`` lines.
        self.applied: list[str] = []

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.applied = []
        if trainer.ckpt_path is None:
            self._fresh_optimizers = self._fresh_schedulers = None
            return
        self._fresh_optimizers = [[copy.deepcopy(_settings(g)) for g in opt.param_groups] for opt in trainer.optimizers]
        self._fresh_schedulers = [
            {k: copy.deepcopy(v) for k, v in config.scheduler.state_dict().items() if k not in _SCHEDULER_PROGRESS}
            for config in trainer.lr_scheduler_configs
        ]

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._fresh_optimizers is None or self._fresh_schedulers is None:
            return
        lr_changed: dict[int, list[tuple[float, float]]] = {}  # id(optimizer) -> per group (old base, new base)
        for index, (optimizer, fresh_groups) in enumerate(zip(trainer.optimizers, self._fresh_optimizers)):
            name = f"optimizer {index} ({type(optimizer).__name__})"
            bases = []
            for group_index, (group, fresh) in enumerate(zip(optimizer.param_groups, fresh_groups)):
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
        for index, (config, fresh) in enumerate(zip(trainer.lr_scheduler_configs, self._fresh_schedulers)):
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

        for index, optimizer in enumerate(trainer.optimizers):
            if id(optimizer) in lr_changed and id(optimizer) not in scheduled:  # unscheduled: the new rate as is
                for group, (_, new_base) in zip(optimizer.param_groups, lr_changed[id(optimizer)]):
                    group["lr"] = new_base

    def _reschedule(self, scheduler: Any, bases: Optional[list[tuple[float, float]]], index: int) -> None:
        closed_form = getattr(scheduler, "_get_closed_form_lr", None)
        if closed_form is not None:
            rates = list(closed_form())
        else:
            rates = []
            for group, (old, new) in zip(scheduler.optimizer.param_groups, bases or []):
                rates.append(group["lr"] * new / old if old else new)
            if not rates:
                return
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        self._note(f"scheduler {index} ({type(scheduler).__name__}) learning rate now {scheduler._last_lr} "
                   f"(step {scheduler.last_epoch})")

    def _note(self, line: str) -> None:
        self.applied.append(line)
        _logger.info("resume with changed settings: %s", line)



# --------------------------------------------------------------------------------------------- resume checks
#: What ``Trainer.fit(ckpt_path=...)`` needs besides the weights (``weights_only=True`` checkpoints lack them).
_RESUMABLE_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "epoch", "global_step")
_LISTED = 3  # keys named in a mismatch message


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from: unreadable, not a full Lightning checkpoint, or not this run's net."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint to resume from (``weights_only``, see :class:`AtomicCheckpointIO`).

    Raises:
        CheckpointError: no such file; unreadable (corrupt, truncated, not a PyTorch file, unsafe content);
            not a full training checkpoint (no optimizer or loop state). The message names the file.

    Example::

        checkpoint = read_checkpoint("runs/x/checkpoints/last.ckpt")
        checkpoint["epoch"], checkpoint["global_step"]
    """
    import pickle

    path = _check_path("path", path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint, it is corrupt or truncated ({_first_line(exc)}); resume from "
            "an older checkpoint in its folder (copy it to last.ckpt) or start the run again"
        ) from None
    missing = [key for key in _RESUMABLE_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path}: not a resumable training checkpoint (no {', '.join(missing)}); weights-only files can be "
            "evaluated but not resumed"
        )
    return checkpoint


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:_LISTED]) + (", ..." if len(keys) > _LISTED else "")


def state_dict_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> Optional[str]:
    """``None`` when ``found`` has the keys and shapes of ``expected``, else a one-line account of what differs."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        k for k in expected
        if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({_names(unexpected)})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatch(es) ({k}: checkpoint {list(found[k].shape)} vs net "
            f"{list(expected[k].shape)}{', ...' if len(shapes) > 1 else ''})"
        )
    return "; ".join(problems) or None


class CheckResumeCheckpoint(Callback):
    """Before ``fit`` resumes from ``ckpt_path``, check that the file is readable and fits the module.

    Lightning would fail inside the restore with an unpickling error or a many-line ``load_state_dict`` report;
    this callback reads the file in ``setup`` (before anything is restored) and raises :class:`CheckpointError`
    naming the file and the keys or shapes that differ (e.g. a run resumed with another width or cell).

    Args:
        ckpt_path: the checkpoint ``fit`` resumes from; ``None`` (a fresh run) checks nothing.

    Example::

        trainer = Trainer(callbacks=[CheckResumeCheckpoint(path)])
        trainer.fit(module, loader, ckpt_path=path)
    """

    def __init__(self, ckpt_path: Optional[PathLike]):
        self.ckpt_path = None if ckpt_path is None else _check_path("ckpt_path", ckpt_path)

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self.ckpt_path is None or stage != "fit":
            return
        checkpoint = read_checkpoint(self.ckpt_path)
        problem = state_dict_mismatch(pl_module.state_dict(), checkpoint["state_dict"])
        if problem is not None:
            raise CheckpointError(
                f"{self.ckpt_path}: does not fit this run's net: {problem}; resume with the settings the run was "
                "started with (sizes, cells, architecture)"
            )


# ------------------------------------------------------------------------------------------- checkpoint plugin
def checkpoint_safe_globals() -> list[Any]:
    """The classes ``torch.load(weights_only=True)`` must accept to read our Lightning checkpoints.

    NNI's ``ClassificationModule`` saves its ``criterion`` and ``optimizer`` *classes* as hyper-parameters
    (``nni/nas/evaluator/pytorch/lightning.py`` ~L230), so its checkpoints hold references to, e.g.,
    ``torch.nn.CrossEntropyLoss`` and ``torch.optim.SGD``, which the weights-only unpickler rejects by default.
    Allowed here: the loss classes of ``torch.nn`` and the optimizer classes of ``torch.optim``; nothing that can
    run code beyond building such an object.
    """
    allowed: list[Any] = []
    for namespace, base in ((torch.nn, torch.nn.modules.loss._Loss), (torch.optim, torch.optim.Optimizer)):
        for name in dir(namespace):
            value = getattr(namespace, name)
            if isinstance(value, type) and issubclass(value, base) and value is not base:
                allowed.append(value)
    return allowed


@contextlib.contextmanager
def _allow_checkpoint_globals() -> Iterator[None]:
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        yield


def _is_local(path: PathLike) -> bool:
    protocol = get_filesystem(path).protocol
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in protocols or "local" in protocols


def _remove_stale_temporaries(path: Path) -> None:
    """Delete what a killed earlier save of ``path`` left: ``atomic_open``'s ``.<name>.<random>.tmp`` siblings.

    Called right after a save of ``path`` succeeded, when no temporary file of this process is pending; a run folder
    has one writer (the CLI refuses a second run into it), so the others are leftovers of a SIGKILL or power loss.
    """
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            _logger.info("removed %s, left by an interrupted save", stale)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically and reads with ``torch.load(weights_only=True)``.

    Saving goes through :func:`nni_darts_ext.io.atomic_open`: a temporary file in the destination folder, ``fsync``,
    then ``os.replace``; a kill or an error mid-save never leaves a truncated file where a good one was (see the
    module docstring for where Lightning's default falls short). A temporary file left by a process killed
    mid-save is deleted by the next successful save of the same checkpoint. Loading allows, besides tensors and plain
    containers, only the loss and optimizer classes of :func:`checkpoint_safe_globals`. Remote (fsspec) paths fall
    back to Lightning's own saving.

    Args:
        weights_only: default of ``load_checkpoint`` when Lightning passes none (``Trainer.fit(ckpt_path=...)``
            without ``weights_only``). Keep ``True`` unless every checkpoint you load comes from a trusted source.

    Example::

        trainer = Trainer(plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint("ckpt", save_last=True)])
    """

    def __init__(self, weights_only: bool = True):
        if not isinstance(weights_only, bool):
            raise TypeError(f"weights_only must be a bool, got {type(weights_only).__name__}")
        super().__init__()
        self.weights_only = weights_only

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options is not supported by {type(self).__name__}, got {storage_options!r}")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        _logger.debug("saving checkpoint %s", path)
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)
        _remove_stale_temporaries(Path(path))



    def load_checkpoint(
        self,
        path: PathLike,
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        if weights_only is None:
            weights_only = self.weights_only
        with _allow_checkpoint_globals():
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

