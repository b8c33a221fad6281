"""Lightning callbacks of the package, one per module, named after its job (as Lightning's own are).

Keeping a long DARTS run from being lost (a crash, a signal or a diverging loss must cost minutes, not the run):

* :class:`NonFiniteLossGuard` (``non_finite_loss``): stop at the first NaN/inf training loss, before any
  checkpoint of the bad state, naming the epoch and batch.
* :class:`CheckpointOnSignal` (``checkpoint_on_signal``): SIGINT/SIGTERM finish the step, save ``last.ckpt``, stop.
* :class:`DistributedSignalStop` (``distributed_signal``): the same under DDP: every rank stops at the same step.
* :class:`TimedCheckpoint` (``timed_checkpoint``): ``last.ckpt`` mid-epoch every so many seconds.
* :class:`ApplySettingsOnResume` (``apply_settings_on_resume``): a resumed run uses the current optimizer and
  schedule settings (a lower learning rate after a divergence, more epochs), not the checkpoint's.
* :class:`CheckResumeCheckpoint` (``check_resume_checkpoint``): a corrupt or mismatched checkpoint becomes a
  one-line :class:`~nni_darts_ext.errors.CheckpointError` before anything is restored.

Recording a run:

* :class:`AlphaHistory` (``alpha_history``): the architecture probabilities of a search, per epoch.
* :class:`EpochLog` (``epoch_log``): one line per epoch with epoch means and the validation accuracy.
* :class:`NniReportCallback` (``nni_report``): the validation accuracy of each epoch to NNI's tuner.
* :class:`SearchHealthMonitor` (``search_health``): per-epoch health records of a search, the Hessian eigenvalue
  and DARTS-ES early stopping.

The checkpoint plugin and readers (:class:`AtomicCheckpointIO`, :func:`read_checkpoint`, ...) live in
:mod:`nni_darts_ext.checkpoint` and the exceptions in :mod:`nni_darts_ext.errors`; both are re-exported here.

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

from ..checkpoint import (
    LAST_CHECKPOINT_NAME,
    AtomicCheckpointIO,
    checkpoint_safe_globals,
    read_checkpoint,
    state_dict_mismatch,
)
from ..errors import CheckpointError, NonFiniteLossError, TrainingInterrupted
from .alpha_history import AlphaHistory
from .apply_settings_on_resume import ApplySettingsOnResume
from .check_resume_checkpoint import CheckResumeCheckpoint
from .checkpoint_on_signal import CheckpointOnSignal
from .distributed_signal import DistributedSignalStop
from .epoch_log import EpochLog
from .nni_report import NniReportCallback
from .non_finite_loss import NonFiniteLossGuard
from .search_health import SearchHealthMonitor
from .timed_checkpoint import TimedCheckpoint

__all__ = [
    "LAST_CHECKPOINT_NAME",
    "AlphaHistory",
    "ApplySettingsOnResume",
    "AtomicCheckpointIO",
    "CheckResumeCheckpoint",
    "CheckpointError",
    "CheckpointOnSignal",
    "EpochLog",
    "NniReportCallback",
    "SearchHealthMonitor",
    "TimedCheckpoint",
    "DistributedSignalStop",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "TrainingInterrupted",
    "checkpoint_safe_globals",
    "read_checkpoint",
    "state_dict_mismatch",
]
