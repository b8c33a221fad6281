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
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import pytorch_lightning as pl
import torch

from ..checkpoint import LAST_CHECKPOINT_NAME
from ..errors import TrainingInterrupted

__all__ = ["DistributedSignalStop"]

_logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
_CATCHABLE = (signal.SIGTERM, signal.SIGINT)


def _all_ranks_max(trainer: pl.Trainer, values: list[int]) -> list[int]:
    if trainer.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=trainer.strategy.root_device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


def _batch_loss_finite(outputs: Any) -> bool:
    loss = outputs if isinstance(outputs, torch.Tensor) else outputs.get("loss") if isinstance(outputs, dict) else None
    return not isinstance(loss, torch.Tensor) or bool(torch.isfinite(loss.detach()).all())


class DistributedSignalStop(pl.Callback):
    """On SIGTERM/SIGINT at any rank: all ranks finish the same step, rank 0 saves ``dirpath/last.ckpt``, all exit.

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

    def __init__(self, dirpath: PathLike, *, signals: Sequence[int] = _CATCHABLE):
        if not isinstance(dirpath, (str, os.PathLike)) or not os.fspath(dirpath):
            raise TypeError("dirpath must be a non-empty str or os.PathLike")
        signals = tuple(signals)
        if not signals or any(s not in _CATCHABLE for s in signals):
            raise ValueError(f"signals must be a non-empty subset of SIGTERM and SIGINT, got {signals}")
        self.path = Path(dirpath) / LAST_CHECKPOINT_NAME
        self.signals = signals
        self._received: int | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------------------------------------ handlers
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._received is not None:  # second signal: give up on the checkpoint, end now
            self._restore_handlers()
            os.kill(os.getpid(), signum)
            return
        self._received = signum

    def _install_handlers(self) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # --------------------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's own SIGTERM handler (registered when the trainer starts), so ours wins while training.
        self._received = None
        if threading.current_thread() is not threading.main_thread():
            _logger.warning("DistributedSignalStop: not in the main thread, signals are left to Lightning")
            return
        self._install_handlers()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        received, non_finite = _all_ranks_max(
            trainer, [self._received or 0, 0 if _batch_loss_finite(outputs) else 1])
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

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._received is not None and self._previous:
            _logger.warning("%s received after the last training step: training finished normally",
                            signal.Signals(self._received).name)
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_handlers()
