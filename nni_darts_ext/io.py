"""Atomic file output: a kill mid-write never leaves a truncated file where a good one was.

Each writer writes to a temporary file in the destination folder, flushes it to disk, then renames it over
the destination (``os.replace`` is atomic on POSIX and Windows).

Example::

    atomic_write_text("runs/x/summary.json", json.dumps(summary))
    atomic_torch_save(model.state_dict(), "runs/x/model.pt")
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Union

__all__ = ["atomic_open", "atomic_write_text", "atomic_write_json", "atomic_torch_save"]

PathLike = Union[str, "os.PathLike[str]"]


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask); mkstemp's own is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """Open a binary file for writing that appears at ``path`` only once the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path) as handle:
        handle.write(text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch

    with atomic_open(path) as handle:
        torch.save(obj, handle)
