"""Every exception the package raises on purpose, in one place.

Bad input (the CLI prints one line, exit code 2): :class:`UsageError`, :class:`ArchError`, :class:`DatasetError`,
:class:`CheckpointError` and ``RecipeError`` (defined with the recipes, re-exported here), all but
:class:`UsageError` also ``ValueError``. A run that stopped: :class:`RunInterrupted` (exit 130),
:class:`TrainingInterrupted` (a ``SystemExit`` with status 128 + signal), :class:`NonFiniteLossError` (exit 3).

This module imports nothing heavy (no torch, no Lightning), so anything may import it.

Example::

    from nni_darts_ext.errors import UsageError, CheckpointError

    try:
        run_retrain(recipe, "arch.json", options)
    except (UsageError, CheckpointError) as exc:
        logging.getLogger(__name__).error("%s", exc)  # one line, no traceback
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

__all__ = [
    "SIGNAL_EXIT_BASE",
    "ArchError",
    "CheckpointError",
    "DatasetError",
    "NonFiniteLossError",
    "RunInterrupted",
    "TrainingInterrupted",
    "UsageError",
]

#: Exit status of a process stopped by signal ``N`` is conventionally ``128 + N`` (POSIX shells: 130 for SIGINT,
#: 143 for SIGTERM).
SIGNAL_EXIT_BASE = 128


class UsageError(Exception):
    """Bad input the user can fix (options, files, devices, data); the CLI prints it on one line, exit code 2."""


class RunInterrupted(Exception):
    """Training stopped early (Ctrl-C / SIGTERM handled by Lightning); the last checkpoint allows ``--resume``."""


class ArchError(ValueError):
    """An architecture dict, genotype or arch file is malformed; the message names the offending key or file."""


class DatasetError(ValueError):
    """A dataset file exists but cannot be used (corrupt, truncated, wrong format or checksum)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not a full Lightning checkpoint, or not this run's net."""


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
        checkpoint: str | None,
    ):
        super().__init__(message)
        self.epoch = epoch
        self.batch_idx = batch_idx
        self.global_step = global_step
        self.loss = loss
        self.checkpoint = checkpoint


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after saving a resumable checkpoint.

    A ``SystemExit`` (like Lightning's own ``SIGTERMException``): uncaught, the process ends without a traceback
    and with the conventional status ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM). ``str(error)`` is
    a one-line message; attributes ``signum``, ``checkpoint`` (path of the saved file), ``epoch``, ``global_step``.
    """

    def __init__(self, signum: int, checkpoint: Path, epoch: int, global_step: int):
        super().__init__(SIGNAL_EXIT_BASE + int(signum))
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


def __getattr__(name: str) -> Any:
    # RecipeError belongs to the recipe loader (nni_darts_ext.recipes); re-exported lazily so that this module
    # stays importable from everywhere, the recipe loader included.
    if name == "RecipeError":
        from .recipes import RecipeError

        return RecipeError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
