"""Checkpoints and weight files: atomic write, safe read (one ``weights_only`` allow-list), state-dict fitting.

Everything the package reads or writes as a PyTorch file goes through here:

* :class:`AtomicCheckpointIO`, the Lightning checkpoint plugin of every ``nni-darts`` trainer: writes through a
  temporary file in the destination folder and an atomic rename, reads with ``torch.load(weights_only=True)``.
* :func:`checkpoint_safe_globals` / :func:`allow_checkpoint_globals`: the one allow-list of classes such a read
  accepts (the loss and optimizer classes NNI's module keeps as hyper-parameters).
* :func:`read_checkpoint`: a resumable Lightning checkpoint, or :class:`~nni_darts_ext.errors.CheckpointError`.
* :func:`read_state_dict`, :func:`load_weights`, :func:`state_dict_mismatch`, :func:`shape_of_weights`: weights
  of a net from a raw state dict or a checkpoint, loaded strictly, with mismatches named in one line.

Why a checkpoint plugin: Lightning's ``TorchCheckpointIO`` (``lightning_fabric.utilities.cloud_io._atomic_save``)
writes through an fsspec transaction whose local temporary file comes from ``tempfile.mkstemp()``, i.e. lives in
``$TMPDIR``, and is then moved with ``shutil.move``. When ``$TMPDIR`` is on another filesystem than the checkpoint
folder (a tmpfs ``/tmp``, a network or scratch filesystem for runs: the usual case on clusters), ``shutil.move``
falls back to copying *into the destination path*: a kill during that copy leaves a truncated ``last.ckpt`` where
a good one was. It also never calls ``fsync`` and keeps two copies of the checkpoint in memory.

Example::

    trainer = Trainer(plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint("ckpt", save_last=True)])
    checkpoint = read_checkpoint("ckpt/last.ckpt")
    load_weights(net, read_state_dict("runs/r/model.pt"), "runs/r/model.pt")
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .checks import PathLike
from .errors import CheckpointError
from .io import atomic_open

__all__ = [
    "LAST_CHECKPOINT_NAME",
    "AtomicCheckpointIO",
    "CheckpointError",
    "allow_checkpoint_globals",
    "check_path",
    "checkpoint_safe_globals",
    "load_weights",
    "read_checkpoint",
    "read_state_dict",
    "shape_of_weights",
    "state_dict_mismatch",
    "strip_prefix",
]

_logger = logging.getLogger(__name__)


#: File name of the resumable checkpoint: what ``ModelCheckpoint(save_last=True)`` writes
#: (``ModelCheckpoint.CHECKPOINT_NAME_LAST = "last"`` plus ``FILE_EXTENSION = ".ckpt"``).
LAST_CHECKPOINT_NAME = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"

#: What ``Trainer.fit(ckpt_path=...)`` needs besides the weights (``weights_only=True`` checkpoints lack them).
_RESUMABLE_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "epoch", "global_step")
_LISTED = 3  # keys named in a mismatch message
# What a corrupt, truncated or unsafe file raises inside torch.load.
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, KeyError)
# Where a net's state dict may sit inside a checkpoint: a raw state dict (""), our retrain module ("model."; NNI's
# LightningModule keeps the net as `model`), a wrapped module ("module.").
_KEY_PREFIXES = ("", "model.", "_model.", "module.", "training_module.model.")
# NNI's DARTS stem is Conv2d(3, stem_multiplier * width, 3) with stem_multiplier 3 for CIFAR (nasnet.py NDS: C_curr =
# stem_multiplier * C, called by DARTS with stem_multiplier=3 through NDS defaults): used to read width from weights.
_STEM_MULTIPLIER = 3
_STEM_WEIGHT = "stem.0.weight"
_AUX_PREFIX = "auxiliary_head."


def check_path(name: str, value: Any) -> Path:
    """``value`` as a Path; TypeError / ValueError naming ``name`` when it is not a non-empty str or PathLike.

    Example::

        check_path("dirpath", "runs/x/checkpoints")
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}")
    if not os.fspath(value):
        raise ValueError(f"{name} must not be empty")
    return Path(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------ allow-list
def checkpoint_safe_globals() -> list[Any]:
    """The classes ``torch.load(weights_only=True)`` must accept to read our Lightning checkpoints.

    NNI's ``ClassificationModule`` saves its ``criterion`` and ``optimizer`` *classes* as hyper-parameters
    (``nni/nas/evaluator/pytorch/lightning.py`` ~L230), so its checkpoints hold references to, e.g.,
    ``torch.nn.CrossEntropyLoss`` and ``torch.optim.SGD``, which the weights-only unpickler rejects by default.
    Allowed here: the loss classes of ``torch.nn`` and the optimizer classes of ``torch.optim``; nothing that can
    run code beyond building such an object.

    Example::

        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            torch.load("last.ckpt", weights_only=True)
    """
    allowed: list[Any] = []
    for namespace, base in ((torch.nn, torch.nn.modules.loss._Loss), (torch.optim, torch.optim.Optimizer)):
        for name in dir(namespace):
            value = getattr(namespace, name)
            if isinstance(value, type) and issubclass(value, base) and value is not base:
                allowed.append(value)
    return allowed


@contextlib.contextmanager
def allow_checkpoint_globals() -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=True)`` accepts :func:`checkpoint_safe_globals` (Lightning's
    own resume reads the checkpoint that way).

    Example::

        with allow_checkpoint_globals():
            trainer.fit(module, loader, ckpt_path="runs/x/checkpoints/last.ckpt")
    """
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        yield


# ------------------------------------------------------------------------------------------------ atomic write
def _is_local(path: PathLike) -> bool:
    protocol = get_filesystem(path).protocol
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in protocols or "local" in protocols


def _remove_stale_temporaries(path: Path) -> None:
    """Delete what a killed earlier save of ``path`` left: ``atomic_open``'s ``.<name>.<random>.tmp`` siblings.

    Called right after a save of ``path`` succeeded, when no temporary file of this process is pending; a run folder
    has one writer (the CLI refuses a second run into it), so the others are leftovers of a SIGKILL or power loss.
    """
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            _logger.info("removed %s, left by an interrupted save", stale)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically and reads with ``torch.load(weights_only=True)``.

    Saving goes through :func:`nni_darts_ext.io.atomic_open`: a temporary file in the destination folder, ``fsync``,
    then ``os.replace``; a kill or an error mid-save never leaves a truncated file where a good one was (see the
    module docstring for where Lightning's default falls short). A temporary file left by a process killed
    mid-save is deleted by the next successful save of the same checkpoint. Loading allows, besides tensors and plain
    containers, only the loss and optimizer classes of :func:`checkpoint_safe_globals`. Remote (fsspec) paths fall
    back to Lightning's own saving.

    Args:
        weights_only: default of ``load_checkpoint`` when Lightning passes none (``Trainer.fit(ckpt_path=...)``
            without ``weights_only``). Keep ``True`` unless every checkpoint you load comes from a trusted source.

    Example::

        trainer = Trainer(plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint("ckpt", save_last=True)])
    """

    def __init__(self, weights_only: bool = True):
        if not isinstance(weights_only, bool):
            raise TypeError(f"weights_only must be a bool, got {type(weights_only).__name__}")
        super().__init__()
        self.weights_only = weights_only

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options is not supported by {type(self).__name__}, got {storage_options!r}")
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        _logger.debug("saving checkpoint %s", path)
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)
        _remove_stale_temporaries(Path(path))

    def load_checkpoint(
        self,
        path: PathLike,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is None:
            weights_only = self.weights_only
        with allow_checkpoint_globals():
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


# -------------------------------------------------------------------------------------------------- safe read
def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint to resume from (``weights_only``, see :class:`AtomicCheckpointIO`).

    Raises:
        CheckpointError: no such file; unreadable (corrupt, truncated, not a PyTorch file, unsafe content);
            not a full training checkpoint (no optimizer or loop state). The message names the file.

    Example::

        checkpoint = read_checkpoint("runs/x/checkpoints/last.ckpt")
        checkpoint["epoch"], checkpoint["global_step"]
    """
    path = check_path("path", path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu")
    except _UNREADABLE as exc:
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint, it is corrupt or truncated ({_first_line(exc)}); resume from "
            "an older checkpoint in its folder (copy it to last.ckpt) or start the run again"
        ) from None
    missing = [key for key in _RESUMABLE_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path}: not a resumable training checkpoint (no {', '.join(missing)}); weights-only files can be "
            "evaluated but not resumed"
        )
    return checkpoint


def read_state_dict(path: PathLike) -> dict[str, Any]:
    """A state dict from ``path``: a raw ``torch.save(state_dict)`` or a Lightning checkpoint's ``state_dict``.

    Read with ``torch.load(weights_only=True)`` and the allow-list of :func:`checkpoint_safe_globals`.

    Raises:
        CheckpointError: no such file, unreadable, or not a mapping of names to tensors; names the file.

    Example::

        state = read_state_dict("runs/retrain/model.pt")
    """
    path = check_path("path", path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with allow_checkpoint_globals():
            data = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as exc:
        raise CheckpointError(f"{path}: cannot be read as PyTorch weights ({_first_line(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    tensors = isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items())
    if not tensors:
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return data


# ------------------------------------------------------------------------------------------ fitting weights
def _names(keys: list[str]) -> str:
    return ", ".join(keys[:_LISTED]) + (", ..." if len(keys) > _LISTED else "")


def state_dict_mismatch(expected: dict[str, Any], found: dict[str, Any], *, found_as: str = "checkpoint") -> str | None:
    """``None`` when ``found`` has the keys and shapes of ``expected``, else a one-line account of what differs.

    Example::

        >>> state_dict_mismatch({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
        '1 shape mismatch(es) (w: checkpoint [3] vs net [2])'
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        k for k in expected
        if k in found and hasattr(found[k], "shape") and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({_names(unexpected)})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatch(es) ({k}: {found_as} {list(found[k].shape)} vs net "
            f"{list(expected[k].shape)}{', ...' if len(shapes) > 1 else ''})"
        )
    return "; ".join(problems) or None


def strip_prefix(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    """``state`` with the key prefix (``model.``, ``module.``, ...) that best matches ``expected`` removed.

    Example::

        >>> sorted(strip_prefix({"model.w": 1, "x": 2}, {"w"}))
        ['w']
    """
    best, best_hits = state, -1
    for prefix in _KEY_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(expected & stripped.keys())
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def shape_of_weights(state: dict[str, Any]) -> tuple[int | None, int | None, bool]:
    """(width, num_cells, has auxiliary head) read from a DARTS state dict, None where it cannot tell.

    Example::

        width, cells, auxiliary = shape_of_weights(read_state_dict("runs/r/model.pt"))
    """
    stripped = strip_prefix(state, {_STEM_WEIGHT})
    stem = stripped.get(_STEM_WEIGHT)
    width = int(stem.shape[0]) // _STEM_MULTIPLIER if stem is not None and stem.ndim == 4 else None
    cells = {tuple(k.split(".")[1:3]) for k in stripped if k.startswith("stages.") and len(k.split(".")) > 3}
    aux = any(k.startswith(_AUX_PREFIX) for k in stripped)
    return width, (len(cells) or None), aux


def load_weights(model: Any, state: dict[str, Any], source: str) -> None:
    """Load ``state`` (under any usual key prefix) into ``model`` strictly.

    Raises:
        CheckpointError: missing or unexpected keys or other shapes, named in one line starting with ``source``.

    Example::

        load_weights(net, read_state_dict("runs/r/model.pt"), "--weights runs/r/model.pt")
    """
    expected = model.state_dict()
    state = strip_prefix(state, set(expected))
    problem = state_dict_mismatch(expected, state, found_as="file")
    if problem is not None:
        raise CheckpointError(f"{source}: weights do not fit the net: {problem}")
    model.load_state_dict(state, strict=True)
