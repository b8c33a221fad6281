"""SIGTERM/SIGINT under DDP: every rank stops at the same step, rank 0 saves one consistent ``last.ckpt``.

SLURM sends SIGTERM (or the signal chosen with ``--signal``) before it preempts or times a job out, to every task
or only to the batch shell; Ctrl+C sends SIGINT to all processes of the terminal. Lightning alone turns SIGTERM
into an exit without a checkpoint (it broadcasts rank 0's flag only, so a signal that reaches rank 1 alone is
lost) and turns SIGINT into ``sys.exit(1)`` after killing the other ranks.

:class:`DistributedSignalStop` installs, while training runs, a handler that only records the signal. At every
training-batch end (after the optimizer step) the ranks all-reduce (MAX) the recorded signal number, so a signal
that reached any one rank stops all of them after the same step. Then every rank calls
``trainer.save_checkpoint`` (collective: rank 0 writes the file, the others wait), which holds the full state of
the module, architecture parameters included, and every rank raises
:class:`~nni_darts_ext.callbacks.TrainingInterrupted`, a ``SystemExit`` with code ``128 + signal``: 143 for
SIGTERM, 130 for SIGINT. ``trainer.fit(..., ckpt_path=<last.ckpt>)`` on the same world size continues.

Cost: one all-reduce of one integer per training batch. With one process it behaves like
:class:`~nni_darts_ext.callbacks.CheckpointOnSignal` and can replace it.

Limits: a signal that arrives before training starts (setup, data loading) or during validation is acted on at the
end of the next training batch; after the last batch the run finishes normally. A second signal before the
checkpoint is written restores the previous handlers and re-sends itself: the process ends at once without a
checkpoint (the other ranks then stop with an error from their next collective).

Example::

    trainer = Trainer(strategy="ddp", devices=2, plugins=[AtomicCheckpointIO()],
                      callbacks=[DistributedSignalStop("runs/x/checkpoints")])
    trainer.fit(module, loader)          # SIGTERM on any rank -> all exit 143, runs/x/checkpoints/last.ckpt
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from ..checks import PathLike
from ..errors import TrainingInterrupted
from .checkpoint_on_signal import CheckpointOnSignal
from .non_finite_loss import batch_loss, is_finite

__all__ = ["DistributedSignalStop"]

_logger = logging.getLogger(__name__)

_CATCHABLE = (signal.SIGTERM, signal.SIGINT)


def _all_ranks_max(trainer: pl.Trainer, values: list[int]) -> list[int]:
    if trainer.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=trainer.strategy.root_device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


class DistributedSignalStop(CheckpointOnSignal):
    """On SIGTERM/SIGINT at any rank: all ranks finish the same step, rank 0 saves ``dirpath/last.ckpt``, all exit.

    The handlers and their restoring are :class:`CheckpointOnSignal`'s; what differs is the decision, taken by
    all ranks together at every batch end, and a second signal, which ends the process at once.

    Args:
        dirpath: folder of the checkpoint.
        signals: the signals handled (default SIGTERM and SIGINT).

    Attributes:
        path: the checkpoint written on a signal.

    Raises:
        TrainingInterrupted: out of ``trainer.fit`` on every rank after the checkpoint is saved (exit code
            ``128 + signal`` when uncaught).

    Example::

        Trainer(strategy="ddp", callbacks=[DistributedSignalStop("runs/x/checkpoints")])
    """

    single_process_only = False  # every rank installs the handlers; the decision is taken together

    def __init__(self, dirpath: PathLike, *, signals: Sequence[int] = _CATCHABLE):
        super().__init__(dirpath, signals=signals)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._received is not None:  # second signal: give up on the checkpoint, end now
            self._restore_handlers()
            os.kill(os.getpid(), signum)
            return
        self._received = signum

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = batch_loss(outputs)
        received, non_finite = _all_ranks_max(
            trainer, [self._received or 0, 0 if loss is None or is_finite(loss) else 1])
        if not received:
            return
        name = signal.Signals(received).name
        if non_finite:
            _logger.error("%s received, but this step's loss is not finite on some rank: no checkpoint saved", name)
            return  # NonFiniteLossGuard ends the run; the bad state is not saved
        if trainer.is_global_zero:
            _logger.warning("%s received: all %d process(es) stop after global step %d; saving %s", name,
                            trainer.world_size, trainer.global_step, self.path)
        trainer.save_checkpoint(self.path, weights_only=False)  # collective; rank 0 writes
        self._restore_handlers()
        raise TrainingInterrupted(received, self.path, trainer.current_epoch, trainer.global_step)
