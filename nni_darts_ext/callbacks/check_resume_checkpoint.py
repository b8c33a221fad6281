"""Check, before ``fit`` restores anything, that the checkpoint it resumes from is readable and fits the module.

Example::

    trainer = Trainer(callbacks=[CheckResumeCheckpoint(path)])
    trainer.fit(module, loader, ckpt_path=path)
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from ..checkpoint import check_path, read_checkpoint, state_dict_mismatch
from ..checks import PathLike
from ..errors import CheckpointError

__all__ = ["CheckResumeCheckpoint"]


class CheckResumeCheckpoint(Callback):
    """Before ``fit`` resumes from ``ckpt_path``, check that the file is readable and fits the module.

    Lightning would fail inside the restore with an unpickling error or a many-line ``load_state_dict`` report;
    this callback reads the file in ``setup`` (before anything is restored) and raises :class:`CheckpointError`
    naming the file and the keys or shapes that differ (e.g. a run resumed with another width or cell).

    Args:
        ckpt_path: the checkpoint ``fit`` resumes from; ``None`` (a fresh run) checks nothing. Only the first fit
            resumes from it: when one callback serves several fits in turn (the stages of a P-DARTS search, each a
            fresh trainer with the same callbacks), the later fits are not checked against it.

    Example::

        trainer = Trainer(callbacks=[CheckResumeCheckpoint(path)])
        trainer.fit(module, loader, ckpt_path=path)
    """

    def __init__(self, ckpt_path: PathLike | None):
        self.ckpt_path = None if ckpt_path is None else check_path("ckpt_path", ckpt_path)
        self._fitted = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.ckpt_path is None or stage != "fit" or self._fitted:
            return
        self._fitted = True
        checkpoint = read_checkpoint(self.ckpt_path)
        problem = state_dict_mismatch(pl_module.state_dict(), checkpoint["state_dict"])
        if problem is not None:
            raise CheckpointError(
                f"{self.ckpt_path}: does not fit this run's net: {problem}; resume with the settings the run was "
                "started with (sizes, cells, architecture)"
            )
