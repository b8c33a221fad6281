"""Time one retraining step of the DARTS evaluation network (darts-v2, 20 cells x 36 channels by default).

The step is what ``nni-darts retrain`` runs per batch: :class:`~nni_darts_ext.training_module.DartsClassificationModule`
(SGD, cosine schedule, auxiliary head weight 0.4, drop path) in a Lightning ``Trainer`` with gradient clipping 5,
on batches of random CIFAR-shaped images passed through our per-image :class:`~nni_darts_ext.transforms.Cutout`
in the dataset (as ``cifar10_transforms`` does). ``--precision`` goes to ``Trainer(precision=...)`` and
``--compile`` adds the :class:`~nni_darts_ext.compile.CompileModel` callback (whole net compiled).

One configuration per run. Steady state as in ``search_step.py`` (``_common.py``): warm-up until two consecutive
steps differ by less than 5% (at least ``--warmup``, at most ``--max-warmup`` 8 steps), then ``--steps`` (at least 3)
steady steps. Reported (printed, and as JSON with ``--json``): their median step time (every step's time in
``step_times_s``, with ``warmup_steps`` and ``steady``), images/s, peak memory (CPU: peak RSS; CUDA:
``max_memory_allocated``), the FLOPs of one step (``flops``, FlopCounterMode over one extra eager step) and
``matmul_fraction`` (achieved FLOP/s over the same process's ``--matmul-size`` square matmul rate in that precision).

Example::

    python benchmarks/retrain_step.py --steps 3 --precision bf16-mixed --compile --json runs/retrain.json
    python benchmarks/retrain_step.py --device cuda --batch 256 --steps 20 --max-warmup 10
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when this file is loaded as a module

from _common import (  # noqa: E402 - the benchmarks' shared module
    IMAGE_CHANNELS,
    NUM_CLASSES,
    REPO_ROOT,
    add_timing_arguments,
    check_timing_arguments,
    max_batches,
    prepare_child,
    step_timer,
    timing_result,
    write_json,
)

sys.path.insert(1, str(REPO_ROOT))  # nni_darts_ext, also when the package is not installed

ARCH = "darts-v2"  # nni_darts_ext.arch.NAMED_ARCHS
# DARTS evaluation recipe (quark0/darts cnn/train.py): --batch_size 96, --drop_path_prob 0.2, --auxiliary_weight
# 0.4, --cutout_length 16, --grad_clip 5, --epochs 600; network --init_channels 36 --layers 20.
RETRAIN_BATCH = 96
RETRAIN_DROP_PATH_PROB = 0.2
RETRAIN_EPOCHS = 600


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from nni_darts_ext.constants import DARTS_NUM_CELLS, DARTS_WIDTH

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=ARCH, help="a named arch (darts-v1, darts-v2) or an arch file")
    parser.add_argument("--width", type=int, default=DARTS_WIDTH)
    parser.add_argument("--cells", type=int, default=DARTS_NUM_CELLS)
    parser.add_argument("--batch", type=int, default=RETRAIN_BATCH)
    parser.add_argument("--image-size", type=int, default=32)
    add_timing_arguments(parser)
    parser.add_argument("--compile", action="store_true", help="compile the net with torch.compile (CompileModel)")
    parser.add_argument("--json", dest="json_path", default=None, help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    check_timing_arguments(parser, args, sizes=("width", "cells", "batch", "image_size"))
    if args.cells < 3:
        parser.error("--cells must be >= 3")
    from nni_darts_ext.arch import NAMED_ARCHS

    if args.arch not in NAMED_ARCHS and not os.path.isfile(args.arch):
        parser.error(f"--arch {args.arch!r} is neither a named arch ({', '.join(NAMED_ARCHS)}) nor a file")
    return args


class _CutoutDataset:
    """Random CIFAR-shaped images and labels, each image through our Cutout on access (a Dataset transform)."""

    def __init__(self, images: Any, labels: Any, cutout: Any):
        self.images, self.labels, self.cutout = images, labels, cutout

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Any:
        return self.cutout(self.images[index].clone()), self.labels[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fit one configuration until its steady steps and the FLOP step are timed; return its result dict.

    Example::

        result = run(_parse_args(["--width", "4", "--cells", "3", "--batch", "2", "--steps", "3"]))
    """
    cuda = prepare_child(args.threads, args.device)
    import torch

    from nni_darts_ext._compat import cpu_has_native_bf16, import_nni_quietly

    with import_nni_quietly():
        import pytorch_lightning as pl
    from nni_darts_ext.arch import NAMED_ARCHS, build_model, load_arch
    from nni_darts_ext.compile import CompileModel
    from nni_darts_ext.constants import AUXILIARY_LOSS_WEIGHT, DEFAULT_CUTOUT_LENGTH, GRADIENT_CLIP_VAL
    from nni_darts_ext.training_module import DartsClassificationModule
    from nni_darts_ext.transforms import Cutout

    arch = NAMED_ARCHS[args.arch] if args.arch in NAMED_ARCHS else load_arch(args.arch)
    torch.manual_seed(args.seed)
    net = build_model(arch, width=args.width, num_cells=args.cells, auxiliary_loss=True,
                      drop_path_prob=RETRAIN_DROP_PATH_PROB, image_size=args.image_size)
    module = DartsClassificationModule(auxiliary_loss_weight=AUXILIARY_LOSS_WEIGHT, max_epochs=RETRAIN_EPOCHS)
    module.set_model(net)

    total = max_batches(args)  # the timer stops the fit once warm-up, steady steps and the FLOP step have run
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(total * args.batch, IMAGE_CHANNELS, args.image_size, args.image_size, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (total * args.batch,), generator=gen)
    dataset = _CutoutDataset(images, labels, Cutout(length=min(DEFAULT_CUTOUT_LENGTH, args.image_size)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=False)

    timer = step_timer(cuda, args)
    callbacks = [timer, CompileModel(enabled=bool(args.compile))]
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, max_epochs=1, precision=args.precision,
        gradient_clip_val=GRADIENT_CLIP_VAL, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
    )
    start = time.time()
    trainer.fit(module, train_dataloaders=loader)
    return {
        "name": f"{args.arch} {args.precision}{' compiled' if args.compile else ''}",
        "arch": args.arch, "width": args.width, "cells": args.cells, "batch": args.batch,
        "image_size": args.image_size, "steps": args.steps, "warmup": args.warmup, "max_warmup": args.max_warmup,
        "tolerance": args.tolerance, "device": args.device, "precision": args.precision,
        "compile": bool(args.compile),
        **timing_result(timer, images_per_step=args.batch, matmul_size=args.matmul_size, precision=args.precision,
                        device=args.device),
        "startup_seconds": timer.first_start_wall - start,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        # False: no native bf16 on this CPU (oneDNN emulates it, far slower than fp32).
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    print(f"{result['name']}: {result['step_seconds']:.3f} s/step, {result['images_per_second']:.1f} images/s, "
          f"peak {result['peak_memory_mb']:.0f} MB, {result['flops'] / 1e9:.2f} GFLOP/step, "
          f"matmul fraction {result['matmul_fraction']:.1%} ({args.device}, threads={result['threads']}, "
          f"width {args.width}, {args.cells} cells, batch {args.batch}, median of {result['steady_steps']} steady "
          f"steps after {result['warmup_steps']} warm-up{'' if result['steady'] else ' (not steady)'}, load "
          f"{result['load_average_at_end']})")
    if args.json_path:
        write_json(args.json_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
