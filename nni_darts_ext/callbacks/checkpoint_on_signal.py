"""Turn SIGINT (Ctrl+C) and SIGTERM (``kill``, batch schedulers) into "finish this step, save ``last.ckpt``, stop".

Lightning itself turns SIGTERM into ``SIGTERMException`` (a ``SystemExit``) at the end of the batch, or inside a
validation loop, without saving anything, and catches ``KeyboardInterrupt`` (Python's default SIGINT behaviour,
raised at any bytecode, e.g. between two parameter updates of an optimizer step) with ``sys.exit(1)`` and no
checkpoint. :class:`CheckpointOnSignal` replaces both handlers while training runs with one that only records the
signal; the checkpoint is written in ``on_train_batch_end``, after the optimizer step, the point Lightning's own
``ModelCheckpoint(every_n_train_steps=...)`` saves at and resumes from mid-epoch. Stopping with
``trainer.should_stop = True`` instead would run the epoch-end hooks, step the LR scheduler and let
``ModelCheckpoint`` save the half-done epoch as finished: a resumed run would then train fewer batches.

Example::

    trainer = Trainer(callbacks=[NonFiniteLossGuard(), CheckpointOnSignal("runs/x/checkpoints")],
                      plugins=[AtomicCheckpointIO()])
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from ..checkpoint import LAST_CHECKPOINT_NAME, AtomicCheckpointIO, check_path
from ..checks import PathLike
from ..errors import TrainingInterrupted
from .non_finite_loss import batch_loss, is_finite

__all__ = ["CheckpointOnSignal", "TrainingInterrupted"]

_logger = logging.getLogger(__name__)


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
        self.dirpath = check_path("dirpath", dirpath)
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
        self._received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def path(self) -> Path:
        """Where the checkpoint is saved: ``dirpath / filename``."""
        return self.dirpath / self.filename

    @property
    def received_signal(self) -> int | None:
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
    #: Leave signals to Lightning when several processes train (the DDP subclass coordinates them instead).
    single_process_only = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers its SIGTERM handler just before the training stage starts (Trainer._run); installing
        # ours here, after it, keeps its SIGTERMException from stopping the run before the checkpoint is saved.
        self._received = None
        name = type(self).__name__
        if threading.current_thread() is not threading.main_thread():
            _logger.warning("%s: not in the main thread, signals are left to Lightning", name)
            return
        if self.single_process_only and trainer.world_size > 1:
            _logger.warning("%s: %d processes, signals are left to Lightning", name, trainer.world_size)
            return
        if not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            _logger.info("%s: %s is not atomic on every filesystem; use AtomicCheckpointIO", name,
                         type(trainer.strategy.checkpoint_io).__name__)
        self._install_handlers()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._received is None or not self._previous:
            return
        loss = batch_loss(outputs)
        if loss is not None and not is_finite(loss):
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

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._received is not None and self._previous:
            _logger.warning("%s received after the last training step: training finished normally",
                            signal.Signals(self._received).name)
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Never save here: the state may be mid-step or non-finite. Only give the signals back.
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()
