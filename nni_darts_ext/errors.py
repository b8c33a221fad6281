"""Every exception the package raises on purpose, in one place.

Bad input (the CLI prints one line, exit code 2): :class:`UsageError`, :class:`ArchError`, :class:`DatasetError`,
:class:`CheckpointError` and :class:`RecipeError`, all but :class:`UsageError` also ``ValueError``. A bad argument
of a component: :class:`ArgumentTypeError` / :class:`ArgumentValueError` (a ``TypeError`` / ``ValueError`` that
carries the argument's name in ``argument``, so a caller such as the recipe layer can say which recipe key it came
from without reading the message). A run that stopped: :class:`RunInterrupted` (exit 130),
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
    "BudgetError",
    "SIGNAL_EXIT_BASE",
    "ArgumentError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "ArchError",
    "CheckpointError",
    "DatasetError",
    "NonFiniteLossError",
    "ProfileError",
    "RecipeError",
    "RunInterrupted",
    "RunsFailed",
    "TrainingInterrupted",
    "UsageError",
]

#: Exit status of a process stopped by signal ``N`` is conventionally ``128 + N`` (POSIX shells: 130 for SIGINT,
#: 143 for SIGTERM).
SIGNAL_EXIT_BASE = 128


class UsageError(Exception):
    """Bad input the user can fix (options, files, devices, data); the CLI prints it on one line, exit code 2."""


class ArgumentError(Exception):
    """A component's argument has the wrong type or value; ``argument`` is its name (as the caller passed it).

    Raised as :class:`ArgumentTypeError` or :class:`ArgumentValueError`, so ``except TypeError`` /
    ``except ValueError`` keep working; callers that map arguments to their own names (the recipe layer maps
    ``arc_learning_rate`` to ``search.arc_learning_rate``) catch this class and read ``argument``.

    Example::

        >>> try:
        ...     raise ArgumentValueError("width", "must be >= 1, got 0")
        ... except ArgumentError as exc:
        ...     exc.argument, str(exc)
        ('width', 'width must be >= 1, got 0')
    """

    def __init__(self, argument: str, problem: str):
        super().__init__(f"{argument} {problem}")
        self.argument = argument
        self.problem = problem

    def __reduce__(self) -> Any:  # picklable across processes (DDP, pytest-xdist)
        return type(self), (self.argument, self.problem)


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type (``argument`` names it)."""


class ArgumentValueError(ArgumentError, ValueError):
    """An argument with a value out of range or inconsistent with another (``argument`` names it)."""


class RecipeError(ValueError):
    """A recipe (file, name or override) that cannot be used; the message names the key, on one line."""


class BudgetError(RecipeError):
    """A cost target or export limit no cell of the space meets; one line naming the key and the cheapest value.

    Attributes: ``key`` (the recipe key, e.g. ``export.max_params``) and ``cheapest`` (the lowest reachable cost).
    """

    def __init__(self, key: str, problem: str, cheapest: float | None = None):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.cheapest = cheapest

    def __reduce__(self) -> Any:
        return type(self), (self.key, str(self).split(": ", 1)[1], self.cheapest)


class RunInterrupted(Exception):
    """Training stopped early (Ctrl-C / SIGTERM handled by Lightning); the last checkpoint allows ``--resume``."""


class RunsFailed(RuntimeError):
    """Runs started as separate processes (``--parallel``) ended with an error; the others finished.

    ``failures`` holds ``(run folder, exit code, log file)`` of each; ``str(error)`` is one line naming them.
    """

    def __init__(self, failures: list[tuple[Path, int, Path]]):
        names = "; ".join(f"{out} (exit code {code}, log {log})" for out, code, log in failures)
        super().__init__(f"{len(failures)} run(s) failed: {names}")
        self.failures = failures

    def __reduce__(self) -> Any:
        return type(self), (self.failures,)


class ArchError(ValueError):
    """An architecture dict, genotype or arch file is malformed; the message names the offending key or file."""


class DatasetError(ValueError):
    """A dataset file exists but cannot be used (corrupt, truncated, wrong format or checksum)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not a full Lightning checkpoint, or not this run's net."""


class ProfileError(RuntimeError):
    """A cost counter (multiply-adds) could not run a model on the given input; the message names the cause."""


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

