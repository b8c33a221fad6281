"""Several ``nni-darts`` runs side by side, each in its own process, at most K at a time (``--parallel K``).

Each run is ``python -m nni_darts_ext <argv>`` in its own session (a terminal's Ctrl-C reaches this process only),
with its output appended to a log file. Tiny nets on a CPU run fastest with one torch thread per process (README,
"Performance": OpenMP threads spin-wait on a busy core), so on a CPU each run gets ``--threads 1`` and
``OMP_NUM_THREADS=1`` unless told otherwise.

SIGINT or SIGTERM to this process is passed on to every running run, which saves its ``last.ckpt`` and stops;
then :class:`~nni_darts_ext.errors.RunInterrupted` is raised (``--resume`` continues). A run that fails does not
stop the others; once all have ended, :class:`~nni_darts_ext.errors.RunsFailed` names each failed run's folder,
exit code and log.

Example::

    jobs = [Job("seed-0", Path("runs/s/seed-0"), ("search", "--recipe", "demo", "--out", "runs/s/seed-0"))]
    run_in_processes(jobs, parallel=2, log_dir=Path("runs/s/logs"))
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from ..checks import check_int
from ..errors import RunInterrupted, RunsFailed
from .options import RunOptions

__all__ = ["Job", "child_threads", "common_argv", "run_in_processes"]

_logger = logging.getLogger("nni_darts_ext.pipeline")

# How often the running processes are polled, in seconds (a run takes minutes; this only delays the next start).
_POLL_SECONDS = 0.5
# One torch thread per run on a CPU (README, "Performance": several threads per process are slower on a busy CPU).
_CPU_THREADS = 1


@dataclass(frozen=True)
class Job:
    """One ``nni-darts`` run: a name for the log lines and log file, its run folder, its arguments.

    Example::

        Job("random-3-seed-1", Path("runs/c/runs/random-3/seed-1"), ("retrain", "--arch", "...", "--out", "..."))
    """

    name: str
    out: Path
    argv: tuple[str, ...]


def child_threads(options: RunOptions, threads: int | None) -> int | None:
    """Torch threads of each run: ``threads`` if given, else 1 on a CPU, else torch's default (``None``).

    Example::

        child_threads(RunOptions(accelerator="cpu"), None)   # 1
    """
    if threads is not None:
        return check_int("threads", threads, minimum=1)
    on_cpu = options.accelerator == "cpu" or (options.accelerator == "auto" and not torch.cuda.is_available())
    return _CPU_THREADS if on_cpu else None


def common_argv(options: RunOptions, threads: int | None) -> tuple[str, ...]:
    """The command-line flags that give a run ``options`` (all but ``--out`` and ``--resume``) and ``threads``.

    Example::

        common_argv(RunOptions(accelerator="cpu", precision="bf16-mixed"), 1)
        # ('--accelerator', 'cpu', '--precision', 'bf16-mixed', '--threads', '1')
    """
    argv = ["--accelerator", options.accelerator]
    if options.devices is not None:
        argv += ["--devices", str(options.devices)]
    if options.strategy is not None:
        argv += ["--strategy", options.strategy]
    if options.num_nodes != 1:
        argv += ["--num-nodes", str(options.num_nodes)]
    if options.sync_batchnorm:
        argv.append("--sync-batchnorm")
    if options.precision is not None:
        argv += ["--precision", options.precision]
    if options.compile:
        argv.append("--compile")
    if options.checkpoint_every is not None:
        argv += ["--checkpoint-every", f"{options.checkpoint_every:g}s"]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return tuple(argv)


@contextlib.contextmanager
def _forwarding_signals(running: dict[subprocess.Popen, tuple[Job, IO[bytes]]]) -> Iterator[list[int]]:
    """While the block runs, SIGINT/SIGTERM are recorded (yielded list) and passed on to the running processes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        for process in running:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_in_processes(jobs: Sequence[Job], *, parallel: int, log_dir: Path, threads: int | None = None,
                     on_done: Callable[[Job], None] | None = None) -> None:
    """Run ``jobs`` as ``python -m nni_darts_ext <argv>`` processes, ``parallel`` at a time, in order.

    Each process's output is appended to ``log_dir/<name>.log``; ``OMP_NUM_THREADS`` is ``threads`` when given.
    ``on_done(job)`` is called as each run ends well.

    Raises:
        RunInterrupted: SIGINT/SIGTERM arrived; it was passed on and every running run has stopped.
        RunsFailed: some runs ended with a non-zero exit code (the others ran to their end).

    Example::

        run_in_processes(jobs, parallel=2, log_dir=Path("runs/s/logs"), threads=1)
    """
    parallel = check_int("parallel", parallel, minimum=1)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(check_int("threads", threads, minimum=1))
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = deque(jobs)
    running: dict[subprocess.Popen, tuple[Job, IO[bytes]]] = {}
    failures: list[tuple[Path, int, Path]] = []
    with _forwarding_signals(running) as received:
        try:
            while pending or running:
                while pending and len(running) < parallel and not received:
                    job = pending.popleft()
                    log = open(log_dir / f"{job.name}.log", "ab")  # closed when the process ends
                    process = subprocess.Popen([sys.executable, "-m", "nni_darts_ext", *job.argv], stdout=log,
                                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
                    running[process] = (job, log)
                    _logger.info("%s: started (pid %d, log %s)", job.name, process.pid, log.name)
                if received and not running:
                    break
                time.sleep(_POLL_SECONDS)
                for process in [p for p in running if p.poll() is not None]:
                    job, log = running.pop(process)
                    log.close()
                    if process.returncode == 0:
                        _logger.info("%s: finished", job.name)
                        if on_done is not None:
                            on_done(job)
                    elif not received:
                        failures.append((job.out, process.returncode, Path(log.name)))
                        _logger.warning("%s: failed with exit code %d (log %s)", job.name, process.returncode,
                                        log.name)
        finally:
            for process, (_, log) in running.items():  # only after an error of our own: stop and wait for them
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
                process.wait()
                log.close()
    if received:
        name = signal.Signals(received[0]).name
        raise RunInterrupted(f"stopped by {name}: the runs in progress saved their checkpoints; continue with --resume")
    if failures:
        raise RunsFailed(failures)
