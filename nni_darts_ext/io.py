"""Atomic file output: a kill or a failed write never leaves a truncated file where a good one was.

Each writer writes to a temporary file in the destination folder, flushes it to disk, then renames it over
the destination (``os.replace`` is atomic on POSIX and Windows).

A write that fails (disk full ``ENOSPC``, quota ``EDQUOT``, file-size limit ``EFBIG``, I/O error ``EIO``) raises
:class:`OutputWriteError`, an ``OSError`` whose one-line message names the file and the OS error; the temporary
file is removed and the previous file at the destination is untouched. Under a file-size limit (``ulimit -f``,
``RLIMIT_FSIZE``) the kernel kills a process with ``SIGXFSZ`` unless that signal is ignored; the writers ignore it
(see :func:`ignore_file_size_signal`) so that such a write fails with ``EFBIG`` instead. A program stopped by one
exits with :data:`EXIT_OUTPUT_WRITE_FAILED`.

Example::

    atomic_write_text("runs/x/summary.json", json.dumps(summary))
    atomic_torch_save(model.state_dict(), "runs/x/model.pt")
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .checks import PathLike
from .errors import OutputWriteError

__all__ = [
    "EXIT_OUTPUT_WRITE_FAILED",
    "ignore_file_size_signal",
    "atomic_open",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "sha256_of",
]

#: Exit status of a run stopped because an output file could not be written: ``EX_IOERR`` of BSD
#: ``sysexits.h`` (74), unused by the other outcomes (0 done, 1 diverged, 2 usage, 130/143 signals).
EXIT_OUTPUT_WRITE_FAILED = 74


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask); mkstemp's own is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: The errors of a file write (the folder, the temporary file, the rename); others (a network error while a
#: download streams into the file) pass through unchanged.
_WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "ENOSPC", "EDQUOT", "EFBIG", "EIO", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EISDIR", "EEXIST", "ENOENT",
        "ENAMETOOLONG", "EXDEV", "ESTALE", "EMFILE", "ENFILE", "EINVAL",
    ) if hasattr(errno, name)
)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The file-write ``OSError`` behind ``exc``: itself, or one in its cause/context chain (``torch.save``
    re-raises a failed ``write`` as ``RuntimeError`` with the ``OSError`` as context)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in _WRITE_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def ignore_file_size_signal() -> None:
    """Make writes past a file-size limit fail with ``EFBIG`` instead of killing the process with ``SIGXFSZ``.

    Only from the main thread, and only when ``SIGXFSZ`` still has its default action (a handler someone installed
    is kept). Called by every atomic writer; a program may call it at start.

    Example::

        ignore_file_size_signal()
    """
    sigxfsz = getattr(signal, "SIGXFSZ", None)
    if sigxfsz is None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(sigxfsz) == signal.SIG_DFL:
        signal.signal(sigxfsz, signal.SIG_IGN)


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """Open a binary file for writing that appears at ``path`` only once the block completes.

    Raises:
        OutputWriteError: the folder, the temporary file or the rename failed with an OS error (including one
            wrapped by the writer, as ``torch.save`` does); the temporary file is removed, ``path`` untouched.
    """
    path = Path(path)
    ignore_file_size_signal()
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, _default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        os_error = None if isinstance(exc, OutputWriteError) else _os_error_in(exc)
        if os_error is not None and (isinstance(exc, (OSError, RuntimeError))):
            raise OutputWriteError(os_error.errno, os_error.strerror, str(path)) from exc
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


def sha256_of(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes (``hashlib.file_digest``, read in blocks).

    Example::

        sha256_of("runs/r/export/model.onnx")
    """
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
