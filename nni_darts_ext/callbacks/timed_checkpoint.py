"""Time-based checkpoints: save ``last.ckpt`` every N seconds of wall time, mid-epoch too.

Checkpoints written only at epoch ends cost up to a whole epoch on a SIGKILL (out of memory, a node failure, a
scheduler's hard kill); with ``TimedCheckpoint(600, dirpath)`` a kill loses at most ten minutes plus one step.
The file is written with ``trainer.save_checkpoint`` (the full training state: optimizers, schedulers, loop
progress, callback states), so it goes through the trainer's checkpoint IO: with
:class:`~nni_darts_ext.callbacks.AtomicCheckpointIO` a kill or a failed write mid-save keeps the previous file
whole. Lightning resumes such a checkpoint at the next batch; with :class:`~nni_darts_ext.resumable_data.ExactResume`
and :class:`~nni_darts_ext.resumable_data.ResumableDataLoader` the resumed run is the uninterrupted one.

Under DDP the decision to save is taken by rank 0's clock and shared with every rank (one broadcast per batch),
because saving is collective.

Example::

    trainer = Trainer(
        plugins=[AtomicCheckpointIO()],
        callbacks=[ExactResume(), TimedCheckpoint(parse_duration("10m"), "runs/x/checkpoints")],
    )
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ..checks import PathLike

__all__ = ["TimedCheckpoint"]

_logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIX = ".ckpt"  # Lightning's ModelCheckpoint.FILE_EXTENSION


class TimedCheckpoint(pl.Callback):
    """Save ``dirpath/<filename>.ckpt`` at the first training-batch end after each ``every_seconds`` of wall time.

    Args:
        every_seconds: wall-clock seconds between saves (counted from the start of training and from each save).
        dirpath: folder of the checkpoint.
        filename: checkpoint name without ``.ckpt``; ``"last"`` is what ``ModelCheckpoint(save_last=True)``
            writes at epoch ends and what ``--resume`` reads.
        clock: seconds from a monotonic clock (tests pass a fake one).

    Attributes:
        saves: how many checkpoints this callback wrote in the current ``fit``.

    Example::

        TimedCheckpoint(600, "runs/x/checkpoints")  # last.ckpt every 10 minutes
    """

    def __init__(self, every_seconds: float, dirpath: PathLike, *, filename: str = "last",
                 clock: Callable[[], float] = time.monotonic):
        if isinstance(every_seconds, bool) or not isinstance(every_seconds, (int, float)):
            raise TypeError(f"every_seconds must be a number, got {type(every_seconds).__name__}")
        if not math.isfinite(every_seconds) or every_seconds <= 0:
            raise ValueError(f"every_seconds must be a positive finite number, got {every_seconds}")
        if not isinstance(dirpath, (str, os.PathLike)) or not os.fspath(dirpath):
            raise TypeError("dirpath must be a non-empty str or os.PathLike")
        if not isinstance(filename, str) or not filename or os.sep in filename:
            raise ValueError(f"filename must be a file name without folders, got {filename!r}")
        if not callable(clock):
            raise TypeError("clock must be callable")
        self.every_seconds = float(every_seconds)
        self.path = Path(dirpath) / f"{filename}{_CHECKPOINT_SUFFIX}"
        self._clock = clock
        self._last = 0.0
        self.saves = 0

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.path.name}]"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = self._clock()
        self.saves = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        due = self._clock() - self._last >= self.every_seconds
        if trainer.world_size > 1:
            due = bool(trainer.strategy.broadcast(due, src=0))
        if not due or trainer.sanity_checking:
            return
        _logger.info("timed checkpoint: saving %s (epoch %d, global step %d)", self.path, trainer.current_epoch,
                     trainer.global_step)
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saves += 1
        self._last = self._clock()
