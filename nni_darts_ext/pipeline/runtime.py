"""Running an assembled trainer: seeding, Ctrl-C and NNI's console, and the facts every summary records.

Example::

    with quiet_nni(), interruptible(trainer, "retrain", out):
        trainer.fit(module, train_loader, val_loader)
    check_interrupted(trainer, "retrain", out)
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerStatus

from ..errors import OutOfMemoryInStage, RunInterrupted, TrainingInterrupted
from ..run_lock import RunLock, holds_run_lock
from .options import RunOptions

__all__ = ["check_interrupted", "device_name", "explained_out_of_memory", "interruptible", "quiet_nni", "run_facts",
           "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (and the data-loader workers) like Lightning does.

    Example::

        seed_everything(recipe.seed)
    """
    pl.seed_everything(seed, workers=True, verbose=False)


def check_interrupted(trainer: Any, what: str, out: Path) -> None:
    """Raise :class:`RunInterrupted` when Lightning stopped the run early (it does not raise by itself).

    Example::

        check_interrupted(trainer, "search", Path("runs/s"))
    """
    if trainer.state.status == TrainerStatus.INTERRUPTED or trainer.interrupted:
        raise RunInterrupted(f"{what} interrupted; continue it with --resume --out {out}")


@contextlib.contextmanager
def interruptible(trainer: Any, what: str, out: Path) -> Iterator[None]:
    """Lightning answers Ctrl-C with a graceful stop and ``sys.exit(1)`` (pytorch_lightning/trainer/call.py), and
    ignores SIGINT from then on: turn that exit into :class:`RunInterrupted` and restore the SIGINT handler.

    Example::

        with interruptible(trainer, "retrain", out):
            trainer.fit(module, loader)
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        yield
    except TrainingInterrupted:  # CheckpointOnSignal saved last.ckpt after the step: the CLI reports it (130/143)
        raise
    except SystemExit:
        if trainer.interrupted:
            raise RunInterrupted(f"{what} interrupted; continue it with --resume --out {out}") from None
        raise
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


#: What to try, per command, when a step runs out of memory (recipe keys).
OUT_OF_MEMORY_ADVICE = {
    "search": "search.checkpointing: cells (or edges), search.partial_channels (pc-darts), or search.batch_size: "
              "auto with --memory-limit",
    "retrain": "retrain.checkpointing: cells, or retrain.batch_size: auto with --memory-limit",
}


@contextlib.contextmanager
def explained_out_of_memory(stage: str, command: str, batch_size: int | None, out: Path | None) -> Iterator[None]:
    """Turn ``torch.OutOfMemoryError`` into :class:`~nni_darts_ext.errors.OutOfMemoryInStage` (one line: the stage,
    the batch, what to try, the last checkpoint, which the atomic writes leave whole).

    Example::

        with explained_out_of_memory("retrain", "retrain", 96, out):
            trainer.fit(module, loader)
    """
    try:
        yield
    except torch.OutOfMemoryError:
        last = None if out is None else out / "checkpoints" / "last.ckpt"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemoryInStage(stage, batch_size, last if last is not None and last.is_file() else None,
                                 OUT_OF_MEMORY_ADVICE[command]) from None


@contextlib.contextmanager
def quiet_nni() -> Iterator[None]:
    """NNI's console handler off (its log still goes to DIR/<experiment>/log/experiment.log).

    Example::

        with quiet_nni():
            experiment.run()
    """
    with contextlib.suppress(ImportError):
        from nni.runtime.log import silence_stdout

        silence_stdout()
    yield


def device_name(trainer: Any) -> str:
    """The trainer's root device, with the GPU's name (``cuda:0 (NVIDIA H200)``).

    Example::

        summary["device"] = device_name(trainer)
    """
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def run_facts(recipe: Any) -> dict[str, Any]:
    """Seed, torch threads and torch version, recorded in every summary.

    Example::

        summary = {"command": "retrain", **run_facts(recipe)}
    """
    return {"seed": recipe.seed, "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__}


@contextlib.contextmanager
def holding_run_lock(out: Path, options: RunOptions) -> Iterator[None]:
    """Hold ``out``'s run lock (:class:`~nni_darts_ext.run_lock.RunLock`) while a run writes there.

    Only the first process of a run takes it (DDP ranks re-run the same command), and not the stages of a demo,
    whose folder is locked as a whole.

    Raises:
        RunLockedError: another live run holds the folder (one line: its pid and host).
    """
    if not options.lock or not holds_run_lock():
        yield
        return
    with RunLock(out, command=sys.argv):
        yield
