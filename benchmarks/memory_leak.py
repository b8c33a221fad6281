"""Does memory grow over a long run? Peak and current RSS after every epoch of a tiny search and a tiny retrain.

A DARTS search runs 50 epochs and a retrain 600; a leak of a few MB per epoch (a history kept on the GPU, a
growing log, a loader's cached iterators) would end a run after hours. This script runs, in one process, a tiny
first-order DARTS search (NNI's DARTS space, width 4, 3 cells, 8x8 digits) and then a tiny retrain of the
architecture it found, each for ``--epochs`` epochs, and records after every epoch the process's peak RSS
(``getrusage``) and its current RSS (``/proc/self/statm``). The growth is measured from the end of epoch
``--settle`` (allocators, caches and lazy imports settle in the first epochs) to the last epoch.

The run goes through the long-run pieces a real run uses: atomic checkpoints, a timed ``last.ckpt``
(``--checkpoint-every-steps`` batches, so the save path is exercised many times), exact-resume state.

Example::

    python benchmarks/memory_leak.py --epochs 30 --json runs/memory.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
KIB = 1024
MIB = 1024 * 1024
WIDTH, CELLS, IMAGE_SIZE, BATCH = 4, 3, 8, 32  # tiny: the point is many epochs, not a big net
DEFAULT_EPOCHS = 30
DEFAULT_SETTLE = 3
DEFAULT_TRAIN_BATCHES = 8
LEARNING_RATE = 0.025  # DARTS paper, Sec. 3.1.1 (search) and A.1.2 (retrain): SGD lr 0.025
GRADIENT_CLIP = 5.0  # DARTS paper: gradient norm clipped at 5
GROWTH_LIMIT_PERCENT = 5.0  # issue acceptance: growth after the first epochs under 5%


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / MIB  # Linux reports KiB


def _growth(series: list[float], settle: int) -> float | None:
    if len(series) <= settle:
        return None
    base = series[settle - 1] if settle > 0 else series[0]
    return 100.0 * (series[-1] - base) / base


def _memory_callback(records: list[dict[str, Any]], stage: str) -> Any:
    import pytorch_lightning as pl

    class MemoryPerEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            records.append({"stage": stage, "epoch": trainer.current_epoch, "peak_rss_mb": round(_peak_rss_mb(), 2),
                            "rss_mb": round(_current_rss_mb(), 2), "seconds": round(time.perf_counter(), 2)})
            logging.getLogger("memory_leak").info("%s epoch %d: peak %.1f MB, now %.1f MB", stage,
                                                  trainer.current_epoch, records[-1]["peak_rss_mb"],
                                                  records[-1]["rss_mb"])

    return MemoryPerEpoch()


def run(epochs: int, settle: int, train_batches: int, checkpoint_every_steps: int, out: Path) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    import nni_darts_ext as nde
    from nni_darts_ext._compat import import_nni_quietly
    from nni_darts_ext.callbacks import AtomicCheckpointIO
    from nni_darts_ext.callbacks.timed_checkpoint import TimedCheckpoint
    from nni_darts_ext.resumable_data import ExactResume, ResumableDataLoader

    with import_nni_quietly():
        from nni.nas.experiment import NasExperiment
        from nni.nas.hub.pytorch import DARTS as DartsSpace

    class StepClock(pl.Callback):  # a clock of training steps, so the timed checkpoint fires every N batches
        def __init__(self) -> None:
            self.now = 0.0

        def __call__(self) -> float:
            return self.now

        def on_train_batch_start(self, *args: Any) -> None:
            self.now += 1.0

    records: list[dict[str, Any]] = []
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                 default_root_dir=str(out))
    train_set = nde.get_dataset("digits", train=True, image_size=IMAGE_SIZE)

    pl.seed_everything(0, verbose=False)
    train_loader, val_loader = nde.search_dataloaders(train_set, batch_size=BATCH)
    clock = StepClock()
    evaluator = nde.darts_evaluator(
        train_loader, val_loader, max_epochs=epochs, learning_rate=LEARNING_RATE, auxiliary_loss_weight=0.0,
        limit_train_batches=train_batches, limit_val_batches=1, enable_checkpointing=False,
        callbacks=[clock, ExactResume(), TimedCheckpoint(checkpoint_every_steps, out / "search", clock=clock),
                   _memory_callback(records, "search")],
        plugins=[AtomicCheckpointIO()], **quiet)
    strategy = nde.darts_strategy("first-order")
    experiment = NasExperiment(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"), evaluator, strategy)
    experiment.config.experiment_working_directory = str(out / "nni")
    experiment.run()
    experiment.stop()
    arch = nde.normalize_arch(strategy.oneshot_module.export())

    pl.seed_everything(0, verbose=False)
    net = nde.build_model(arch, width=WIDTH, num_cells=CELLS, image_size=IMAGE_SIZE)
    module = nde.DartsClassificationModule(max_epochs=epochs, learning_rate=LEARNING_RATE, auxiliary_loss_weight=0.0)
    module.set_model(net)
    clock = StepClock()
    trainer = nde.darts_trainer(
        max_epochs=epochs, limit_train_batches=train_batches, gradient_clip_val=GRADIENT_CLIP,
        enable_checkpointing=False, plugins=[AtomicCheckpointIO()],
        callbacks=[clock, ExactResume(), TimedCheckpoint(checkpoint_every_steps, out / "retrain", clock=clock),
                   _memory_callback(records, "retrain")], **quiet)
    trainer.fit(module, ResumableDataLoader(train_set, batch_size=BATCH, shuffle=True, seed=0))

    summary: dict[str, Any] = {}
    for stage in ("search", "retrain"):
        stage_records = [r for r in records if r["stage"] == stage]
        peak = [r["peak_rss_mb"] for r in stage_records]
        now = [r["rss_mb"] for r in stage_records]
        summary[stage] = {
            "epochs": len(stage_records),
            "peak_rss_mb_first": peak[0] if peak else None,
            "peak_rss_mb_after_settle": peak[settle - 1] if len(peak) >= settle else None,
            "peak_rss_mb_last": peak[-1] if peak else None,
            "peak_growth_percent_after_settle": _growth(peak, settle),
            "rss_growth_percent_after_settle": _growth(now, settle),
        }
    return {
        "config": {"epochs": epochs, "settle": settle, "train_batches": train_batches, "width": WIDTH,
                   "cells": CELLS, "image_size": IMAGE_SIZE, "batch": BATCH,
                   "checkpoint_every_steps": checkpoint_every_steps, "threads": torch.get_num_threads(),
                   "load_average": list(os.getloadavg()), "growth_limit_percent": GROWTH_LIMIT_PERCENT},
        "summary": summary,
        "epochs": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs of the search and of the retrain")
    parser.add_argument("--settle", type=int, default=DEFAULT_SETTLE, help="growth is measured after this epoch")
    parser.add_argument("--train-batches", type=int, default=DEFAULT_TRAIN_BATCHES, help="batches per epoch")
    parser.add_argument("--checkpoint-every-steps", type=int, default=5, help="timed last.ckpt every N batches")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.settle < 1 or args.train_batches < 1 or args.checkpoint_every_steps < 1:
        parser.error("--epochs, --settle, --train-batches and --checkpoint-every-steps must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("NNI_HOME", tempfile.mkdtemp(prefix="nni-home-"))
    with tempfile.TemporaryDirectory(prefix="memory-leak-") as out:
        report = run(args.epochs, args.settle, args.train_batches, args.checkpoint_every_steps, Path(out))
    text = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    for stage, figures in report["summary"].items():
        print(f"{stage}: {figures['epochs']} epochs, peak RSS {figures['peak_rss_mb_first']} -> "
              f"{figures['peak_rss_mb_last']} MB; growth after epoch {args.settle}: peak "
              f"{figures['peak_growth_percent_after_settle']}%, current {figures['rss_growth_percent_after_settle']}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
