"""A folder of runs: the parent folder of a multi-seed search or a comparison, and the state of each run in it.

A command made of many runs (``nni-darts search --seeds``, ``nni-darts compare``) writes its resolved recipe to
``DIR/config.yaml`` and each run into a subfolder that is a complete run folder of its own. Continuing such a
command (``--resume``) keeps every finished run (its ``summary.json`` exists), continues every interrupted one from
its ``last.ckpt`` and starts the others afresh; a run killed before its first checkpoint left only its
``config.yaml`` behind, which is cleared first. The recipe must be the one the command was started with.

Example::

    out = check_run_set("runs/seeds", resume=False, what="multi-seed search", markers=("seeds.json",))
    state = prepare_run(out / "seed-0")   # "done", "resume" or "start"
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checks import PathLike
from ..errors import RecipeError, UsageError
from ..recipes import Recipe, load_recipe
from .run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    refuse_if_in_use,
    usable_out_dir,
)

__all__ = ["DONE", "RESUME", "START", "check_run_set", "check_same_recipe", "prepare_run", "read_summary"]

_logger = logging.getLogger("nni_darts_ext.pipeline")

#: States of one run of a set (:func:`prepare_run`).
DONE, RESUME, START = "done", "resume", "start"
#: Recipe keys that may differ when a set is continued: where the data lies and how it is loaded.
_MACHINE_KEYS = ("dataset.data_dir", "dataset.num_workers")


def check_run_set(out: PathLike | None, *, resume: bool, what: str, markers: Sequence[str]) -> Path:
    """The parent folder of a set of runs, checked before anything is written.

    Without ``resume`` a folder that already holds a set (its ``config.yaml`` or one of ``markers``) or a single
    run (``checkpoints/``, ``summary.json``) is refused; with ``resume`` it must hold this kind of set. ``what``
    names the kind in messages (``"comparison"``).

    Raises:
        UsageError: no ``out``, not a folder, already used (one line saying what to do).
        RunLockedError: a live run holds the folder.

    Example::

        out = check_run_set("runs/c", resume=False, what="comparison", markers=("compare.json",))
    """
    out = usable_out_dir(out)
    single = [name for name in (CHECKPOINT_DIR, SUMMARY_FILE) if (out / name).exists()]
    if single:
        raise UsageError(f"--out {out}: holds a single run ({single[0]}), not a {what}; choose another folder")
    ours = [name for name in (CONFIG_FILE, *markers) if (out / name).exists()]
    if resume and not (out / CONFIG_FILE).is_file():
        raise UsageError(f"--resume: {out} holds no {what} to continue ({out / CONFIG_FILE} does not exist)")
    if not resume and ours:
        raise UsageError(f"--out {out}: already holds a {what} ({ours[0]}); pass --resume to continue it or choose "
                         "another folder")
    return out


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_recipe(out: Path, recipe: Recipe, *, may_differ: Iterable[str] = ()) -> None:
    """``--resume`` with other recipe values than ``out/config.yaml``'s: UsageError naming the first key.

    The data folder and loader workers may change (the runs are the same); so may the keys in ``may_differ``.

    Example::

        check_same_recipe(Path("runs/c"), recipe, may_differ=("search.seeds",))
    """
    try:
        started = load_recipe(str(out / CONFIG_FILE))
    except RecipeError as exc:
        raise UsageError(f"--resume: {exc}") from None
    ignored = set(_MACHINE_KEYS) | set(may_differ)
    before, now = _flat(started.to_dict()), _flat(recipe.to_dict())
    for key in sorted(set(before) | set(now)):
        if key not in ignored and before.get(key) != now.get(key):
            raise UsageError(f"--resume: {key} is {now.get(key)!r} but the runs in {out} were started with "
                             f"{before.get(key)!r}; continue with the same recipe (the default with --resume: "
                             f"{out / CONFIG_FILE})")


def prepare_run(folder: Path) -> str:
    """The state of one run of a set, after clearing what a run killed before its first checkpoint left behind.

    Returns :data:`DONE` (``summary.json`` exists: keep it), :data:`RESUME` (``checkpoints/last.ckpt`` exists:
    continue from it) or :data:`START` (nothing usable: the folder does not exist, or was removed).

    Raises:
        RunLockedError: a live run holds ``folder``.

    Example::

        if prepare_run(out / "seed-0") == DONE: ...
    """
    if (folder / SUMMARY_FILE).is_file():
        return DONE
    if (folder / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file():
        return RESUME
    if folder.exists():
        refuse_if_in_use(folder)
        _logger.info("%s: no checkpoint (stopped before its first epoch ended); starting it again", folder)
        shutil.rmtree(folder)
    return START


def read_summary(folder: Path) -> dict[str, Any]:
    """``folder/summary.json`` of a finished run.

    Raises:
        UsageError: missing or not JSON (names the file).
    """
    path = folder / SUMMARY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the finished run's summary ({exc})") from None
