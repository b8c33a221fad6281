"""Every exception the package raises on purpose, in one place.

Bad input (the CLI prints one line, exit code 2): :class:`UsageError`, :class:`ArchError`, :class:`DatasetError`,
:class:`CheckpointError`, :class:`RecipeError` (whose ``key`` names the recipe key) and :class:`InspectError`, all
but :class:`UsageError` also ``ValueError``; :class:`RunLockedError` (the output folder is in use).
:class:`OutputWriteError`: an output file could not be written (exit 74). A bad argument
of a component: :class:`ArgumentTypeError` / :class:`ArgumentValueError` (a ``TypeError`` / ``ValueError`` that
carries the argument's name in ``argument``, so a caller such as the recipe layer can say which recipe key it came
from without reading the message). A run that stopped: :class:`RunInterrupted` (exit 130),
:class:`TrainingInterrupted` (a ``SystemExit`` with status 128 + signal), :class:`NonFiniteLossError` (exit 1).
Out of device memory: :class:`OutOfMemoryInStage` (exit 75).

This module imports nothing heavy (no torch, no Lightning), so anything may import it.

Example::

    from nni_darts_ext.errors import UsageError, CheckpointError

    try:
        run_retrain(recipe, "arch.json", options)
    except (UsageError, CheckpointError) as exc:
        logging.getLogger(__name__).error("%s", exc)  # one line, no traceback
"""

from __future__ import annotations

import errno
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
    "ArrayDataError",
    "BadImageError",
    "DataFolderError",
    "DatasetError",
    "ExportError",
    "ImageSizeError",
    "InspectError",
    "NonFiniteLossError",
    "OutOfMemoryInStage",
    "OutputWriteError",
    "ParityError",
    "ProfileError",
    "RecipeError",
    "RunInterrupted",
    "RunLockedError",
    "RunsFailed",
    "SelectionUnsupportedError",
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
    """A recipe (file, name or override) that cannot be used; the message names the key, on one line.

    ``key``: the dotted recipe key at fault (``"search.arc_betas[0]"``, ``"retrain.cutout"``), or ``None`` when the
    problem is not one key's (a file that cannot be read, bad YAML).

    Example::

        >>> RecipeError("retrain.epochs: must be >= 1, got 0", key="retrain.epochs").key
        'retrain.epochs'
    """

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> Any:
        return _rebuild_recipe_error, (str(self), self.key)


def _rebuild_recipe_error(message: str, key: str | None) -> RecipeError:
    return RecipeError(message, key=key)


class InspectError(ValueError):
    """The folder is missing, not a folder, or not an ``nni-darts search`` output; the message is one line."""


class RunLockedError(RuntimeError):
    """The output folder is in use by another live run. ``str(error)`` is one line; attributes ``pid``, ``host``."""

    def __init__(self, message: str, *, pid: int | None, host: str | None):
        super().__init__(message)
        self.pid = pid
        self.host = host


class OutputWriteError(OSError):
    """An output file could not be written; the previous file at that path, if any, is kept whole.

    ``str(error)`` is one line naming the file and the OS error; ``errno``, ``strerror`` and ``filename`` are those
    of the failed operation.
    """

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno or 0, "unknown")
        return (
            f"cannot write {self.filename}: {self.strerror} (errno {self.errno}, {name}); "
            "the previous file, if any, is kept whole"
        )


class BudgetError(RecipeError):
    """A cost target or export limit no cell of the space meets; one line naming the key and the cheapest value.

    Attributes: ``key`` (the recipe key, e.g. ``export.max_params``) and ``cheapest`` (the lowest reachable cost).
    """

    def __init__(self, key: str, problem: str, cheapest: float | None = None):
        super().__init__(f"{key}: {problem}", key=key)
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


class SelectionUnsupportedError(ValueError):
    """The preset's supernet cannot be selected from by removing ops (perturbation selection); ``preset`` names it.

    Example::

        >>> str(SelectionUnsupportedError("gdas", "runs one sampled op per edge"))
        "perturbation selection does not work after preset 'gdas': runs one sampled op per edge"
    """

    def __init__(self, preset: str, problem: str):
        super().__init__(f"perturbation selection does not work after preset {preset!r}: {problem}")
        self.preset = preset
        self.problem = problem

    def __reduce__(self) -> Any:  # picklable across processes (DDP, pytest-xdist)
        return (type(self), (self.preset, self.problem))


class DataFolderError(DatasetError):
    """A dataset folder that cannot be used as given: missing or empty, fewer than 2 classes, a class without
    images in a split, train and test with different classes; the message names the folder and classes."""


class BadImageError(DatasetError):
    """An image file that cannot be decoded (unreadable, truncated, not what its suffix says); ``path`` names it."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: cannot read the image ({problem}); fix or remove it, or set "
                         "dataset.skip_bad_images=true to skip such files")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> Any:
        return type(self), (self.path, self.problem)


class ImageSizeError(DatasetError):
    """Images of differing sizes without ``dataset.image_size``, or images too small for the net's reductions."""


class ArrayDataError(DatasetError):
    """Arrays of images and labels that cannot be used (an ``.npz`` file, torchvision's files): labels out of range,
    not integers or not one per image, images of an unknown layout or value range, files that do not load."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not a full Lightning checkpoint, or not this run's net."""


class ExportError(ValueError):
    """An exported model that cannot be used: missing, truncated, altered since export (its checksum in
    ``model_card.json`` differs), or without the model card that says how to feed it; the message names the file."""


class ParityError(RuntimeError):
    """An exported model's logits differ from the PyTorch net's beyond the tolerance (nothing was exported)."""


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


class OutOfMemoryInStage(RuntimeError):
    """A device ran out of memory; ``str(error)`` is one line naming the stage, the batch and what to try.

    Attributes: ``stage`` (``"search step"``, ``"eigenvalue"`` or ``"retrain"``), ``batch_size``, ``checkpoint``
    (the last checkpoint, left whole, or ``None``). The CLI exits with status 75 (``EX_TEMPFAIL``: try again with
    other settings).
    """

    def __init__(self, stage: str, batch_size: int | None, checkpoint: Path | None, advice: str):
        where = f" at batch {batch_size}" if batch_size is not None else ""
        kept = f"; the last checkpoint {checkpoint} is whole (--resume continues from it)" if checkpoint else ""
        super().__init__(f"out of memory in the {stage}{where}; try {advice}{kept}")
        self.stage = stage
        self.batch_size = batch_size
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

