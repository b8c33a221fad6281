"""The layout of a run folder and the checks that keep a run from overwriting another.

Imports nothing heavy (the CLI reads :data:`CONFIG_FILE` without loading torch).

Example::

    out, resume_from = check_out_dir("runs/s", resume=False)   # refuses a folder that already holds a run
"""

from __future__ import annotations

from pathlib import Path

from ..checks import PathLike
from ..errors import UsageError
from ..io import atomic_write_text
from ..recipes import Recipe, RecipeError, load_recipe
from ..run_lock import LOCK_FILE_NAME, RunLock

__all__ = [
    "ALPHAS_FILE",
    "ALPHAS_PLOT",
    "ARCH_FILE",
    "CELLS_PLOT",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "CONFUSION_PLOT",
    "DATASET_FILE",
    "GENOTYPE_FILE",
    "LAST_CHECKPOINT",
    "MODEL_FILE",
    "SUMMARY_FILE",
    "TENSORBOARD_DIR",
    "check_out_dir",
    "check_out_dir_on_rank",
    "check_search_resume",
    "usable_out_dir",
    "write_config",
]


# Output layout of a run folder.
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # Lightning ModelCheckpoint(save_last=True) file name
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
ARCH_FILE = "arch.json"
GENOTYPE_FILE = "genotype.txt"
CELLS_PLOT = "cells.png"
ALPHAS_PLOT = "alphas.png"
ALPHAS_FILE = "alphas.json"
MODEL_FILE = "model.pt"
DATASET_FILE = "dataset.json"
CONFUSION_PLOT = "confusion.png"
# Files whose presence means DIR already holds a run (refused without --resume, so nothing is overwritten).
_RUN_MARKERS = (CHECKPOINT_DIR, SUMMARY_FILE, CONFIG_FILE, MODEL_FILE, ARCH_FILE)
#: Recipe keys that shape the search supernet: a search checkpoint only fits the values it was started with.
_SEARCH_SHAPE_KEYS = ("width", "cells", "strategy", "partial_channels", "stem")


def check_out_dir(out: PathLike | None, resume: bool) -> tuple[Path, Path | None]:
    """(folder, checkpoint to resume from or None). Refuses to overwrite a previous run without ``resume``.

    The checkpoint's content is checked later, against the assembled module (:mod:`.assemble`).

    Example::

        out, last = check_out_dir("runs/s", resume=True)   # runs/s/checkpoints/last.ckpt must exist
    """
    out = usable_out_dir(out)
    last = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume:
        if not last.is_file():
            raise UsageError(f"--resume: no checkpoint to resume from ({last} does not exist)")
        return out, last
    existing = [name for name in _RUN_MARKERS if (out / name).exists()]
    if existing:
        raise UsageError(
            f"--out {out}: already holds a run ({existing[0]}); pass --resume to continue it or choose another folder"
        )
    return out, None


def usable_out_dir(out: PathLike | None) -> Path:
    """``--out`` as a path: given, a folder or nothing yet, and not in use by a live run.

    Example::

        out = usable_out_dir("runs/s")
    """
    if out is None:
        raise UsageError("--out: required")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    refuse_if_in_use(out)
    return out


def refuse_if_in_use(out: Path) -> None:
    """Raise :class:`~nni_darts_ext.errors.RunLockedError` (pid and host) at once if a live run holds ``out``.

    Only looks when a lock file exists (it writes nothing otherwise); a stale lock is taken over and released.
    """
    if (out / LOCK_FILE_NAME).exists():
        RunLock(out).acquire().release()


def check_out_dir_on_rank(out: PathLike | None, resume: bool, rank: int) -> tuple[Path, Path | None]:
    """:func:`check_out_dir` on rank 0; ranks that Lightning (or torchrun/SLURM) started later find rank 0's folder.

    Example::

        out, last = check_out_dir_on_rank("runs/s", False, launched_rank())
    """
    if rank == 0:
        return check_out_dir(out, resume)
    out = Path(out).expanduser()
    last = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    return out, (last if resume else None)


def check_search_resume(out: Path, recipe: Recipe) -> None:
    """--resume with another supernet than DIR/config.yaml's: UsageError, before anything is written.

    Example::

        check_search_resume(Path("runs/s"), load_recipe("demo", ["search.width=8"]))
    """
    try:
        started = load_recipe(str(out / CONFIG_FILE)).search
    except RecipeError:  # no or unreadable config.yaml: the checkpoint check in the trainer still applies
        return
    for key in _SEARCH_SHAPE_KEYS:
        before, now = getattr(started, key), getattr(recipe.search, key)
        if before != now:
            raise UsageError(f"--resume: search.{key} is {now!r} but the run in {out} was started with {before!r}; "
                             "its checkpoint only fits the same supernet")


def write_config(out: Path, recipe: Recipe, what: str) -> None:
    """Write the resolved recipe to ``out/config.yaml`` (atomically), as ``--resume`` reads it back.

    Example::

        write_config(Path("runs/s"), recipe, "search")
    """
    atomic_write_text(out / CONFIG_FILE, recipe.to_yaml(header=f"Resolved recipe of this {what} (nni-darts)."))
