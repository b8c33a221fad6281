"""The options every run command takes besides the recipe (the CLI's common flags).

Example::

    options = RunOptions(out="runs/r", accelerator="cpu", devices=2, strategy="ddp")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..checks import PathLike

__all__ = ["RunOptions"]


@dataclass
class RunOptions:
    """Options common to the run commands (the CLI's common flags).

    Attributes:
        out: run folder (created after validation).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``/``cuda``, ``mps``).
        devices: number of devices (``None``: 1).
        precision: Lightning precision string (``32-true``, ``bf16-mixed``, ...); ``None``: Lightning's default.
        resume: continue from ``out/checkpoints/last.ckpt``.
        progress_bar: Lightning's progress bars (the CLI enables them on a terminal); otherwise one log line per
            epoch at INFO.
        extra_trainer_kwargs: passed to every Trainer (tests use ``limit_train_batches``, ``max_steps``).
        nni: retrain as an NNI trial (:mod:`nni_darts_ext.nni_trial`): validate each epoch on a held-out
            fraction of the training split and report it to NNI, then report the test accuracy as the final result.
        strategy: Lightning strategy (``ddp``, ``ddp_spawn``, ...); ``None``: Lightning's choice. With several
            processes the search averages architecture gradients across ranks (:mod:`nni_darts_ext.distributed`)
            and only rank 0 writes files.
        num_nodes: machines (Lightning ``num_nodes``); the world size is ``devices * num_nodes``.
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm (retrain under DDP).
        checkpoint_every: also save ``last.ckpt`` mid-epoch every so many seconds of wall time (``None``: at
            epoch ends only); a SIGKILL then loses at most that long.
        lock: hold the output folder's run lock while writing (``False`` inside a demo, which holds its own).
        compile: run the net through ``torch.compile`` (:mod:`nni_darts_ext.compile`): the search compiles each
            supernet cell, the retrain the whole net; where compilation fails, one warning and eager execution.

    Example::

        RunOptions(out="runs/s", resume=True)
    """

    out: PathLike | None = None
    accelerator: str = "auto"
    devices: int | None = None
    precision: str | None = None
    resume: bool = False
    progress_bar: bool = False
    extra_trainer_kwargs: dict = dataclasses.field(default_factory=dict)
    nni: bool = False
    strategy: str | None = None
    num_nodes: int = 1
    sync_batchnorm: bool = False
    checkpoint_every: float | None = None
    lock: bool = True
    compile: bool = False
