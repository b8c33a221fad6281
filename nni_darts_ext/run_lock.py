"""One run per output folder: an exclusive lock file that names its holder and survives a killed holder.

A second ``search``/``retrain``/``demo`` into a folder in use would interleave checkpoints and overwrite
``arch.json``; :class:`RunLock` refuses it at once with one line naming the holder (pid and host).

How it works: the lock file ``<out>/.nni-darts.lock`` holds a JSON record (pid, host, start time, command) and is
locked with ``fcntl.flock`` on an open file descriptor for as long as the run lives. The kernel drops the flock
when the holder dies, however it dies (SIGKILL, out of memory, power loss of another host's NFS client after the
lease), so a lock whose flock is free is stale and is taken over with a warning naming the old holder. The record
is written to a temporary file, locked, then renamed over the lock file (atomic); every acquirer checks after
locking that the file it locked is still the one at the path, so two racing starts never both win.

Limits: ``flock`` locks on NFS are honoured across hosts by Linux clients (NFSv4, or NFSv3 with NLM); on a
filesystem that only locks locally, a run on another host is not seen. The record's host and pid then only name
the previous holder in the warning. Processes forked by the run without ``exec`` (data-loader workers) share the
lock until they exit.

Example::

    with RunLock("runs/x"):
        run_search(...)   # a second process entering RunLock("runs/x") raises RunLockedError
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checks import PathLike
from .errors import RunLockedError

__all__ = ["LOCK_FILE_NAME", "RANK_VARIABLES", "RunLock", "holds_run_lock", "read_lock_record"]

_logger = logging.getLogger(__name__)

#: Name of the lock file inside the output folder.
LOCK_FILE_NAME = ".nni-darts.lock"
_ACQUIRE_ATTEMPTS = 5  # races lost to a concurrent take-over before giving up (each one means another run won)
_MAX_RECORD_BYTES = 64 * 1024


#: Environment variables that launchers set to a process's rank: Lightning's DDP launcher re-runs the command for
#: ranks 1.. with ``LOCAL_RANK``/``NODE_RANK``; ``torchrun`` sets ``RANK``; ``srun`` sets ``SLURM_PROCID``.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def holds_run_lock(environ: dict[str, str] | None = None) -> bool:
    """Whether this process is the one of a run that takes the folder's lock (the first process of the first node).

    The other processes of a multi-process run (DDP ranks re-running the same command) must not take it: they would
    be refused by their own rank 0.

    Example::

        lock = RunLock(out) if holds_run_lock() else contextlib.nullcontext()
    """
    environ = os.environ if environ is None else environ
    return all(environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def read_lock_record(path: PathLike) -> dict[str, Any]:
    """The holder record in a lock file (``{}`` when missing, empty or unreadable)."""
    try:
        with open(path, "rb") as handle:
            record = json.loads(handle.read(_MAX_RECORD_BYTES).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder(record: dict[str, Any]) -> str:
    pid, host = record.get("pid", "?"), record.get("host", "?")
    text = f"pid {pid} on host {host}"
    if record.get("started"):
        text += f", started {record['started']}"
    if record.get("command"):
        text += f", command: {record['command']}"
    return text


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class RunLock:
    """Exclusive lock on an output folder for the lifetime of a run (context manager, or acquire/release).

    Args:
        out_dir: the run's output folder (created if missing).
        command: what the record says the holder runs (default: this process's command line).

    Raises:
        RunLockedError: from :meth:`acquire` (``with``) when another live process holds the folder; the
            message names its pid and host and how to proceed.

    Example::

        lock = RunLock("runs/x")
        lock.acquire()
        try:
            ...
        finally:
            lock.release()
    """

    def __init__(self, out_dir: PathLike, *, command: Sequence[str] | None = None):
        if not isinstance(out_dir, (str, os.PathLike)):
            raise TypeError(f"out_dir must be a str or os.PathLike, got {type(out_dir).__name__}")
        if not os.fspath(out_dir):
            raise ValueError("out_dir must not be empty")
        if command is not None and (isinstance(command, str) or not all(isinstance(c, str) for c in command)):
            raise TypeError("command must be a sequence of str")
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE_NAME
        self.command = " ".join(command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def _record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": self.command,
        }

    def _locked_record_file(self) -> tuple[int, str]:
        """A temporary file in the folder with our record, flocked by us."""
        fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_FILE_NAME}.", suffix=".tmp", dir=self.out_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows this file: never blocks
            os.write(fd, (json.dumps(self._record()) + "\n").encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd, tmp

    def _is_current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunLockedError`; a stale lock (holder dead) is taken over."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this RunLock")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(_ACQUIRE_ATTEMPTS):
            try:
                old_fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd, tmp = self._locked_record_file()
                try:
                    os.link(tmp, self.path)  # fails if another run created it meanwhile
                except FileExistsError:
                    os.close(fd)
                    continue
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                self._fd = fd
                return self
            try:
                fcntl.flock(old_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(old_fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                record = read_lock_record(self.path)
                raise RunLockedError(
                    f"{self.out_dir} is in use by another run ({_holder(record)}); wait for it to end or choose "
                    "another output folder",
                    pid=record.get("pid"), host=record.get("host"),
                ) from None
            if not self._is_current(old_fd):  # replaced or removed by a run that won the race: look again
                os.close(old_fd)
                continue
            # The flock is free: the holder is gone. Replace the record atomically, still holding the old inode.
            stale = read_lock_record(self.path)
            try:
                fd, tmp = self._locked_record_file()
                try:
                    os.replace(tmp, self.path)
                except BaseException:
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            finally:
                os.close(old_fd)
            self._fd = fd
            if stale:
                same_host = stale.get("host") == socket.gethostname()
                state = ("no longer running" if not _pid_alive(stale.get("pid")) else "holding no lock") \
                    if same_host else "holding no lock"
                _logger.warning("%s: took over a stale lock of %s (%s)", self.out_dir, _holder(stale), state)
            return self
        raise RunLockedError(
            f"{self.out_dir}: another run took the folder while this one started; choose another output folder",
            pid=None, host=None,
        )

    def release(self) -> None:
        """Give the lock up (removes the lock file); does nothing if not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._is_current(fd):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # while still locked: a waiter re-checks the path and starts afresh
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
