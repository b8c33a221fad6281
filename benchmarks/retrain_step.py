"""Time one retraining step of the DARTS evaluation network (darts-v2, 20 cells x 36 channels by default).

The step is what ``nni-darts retrain`` runs per batch: :class:`~nni_darts_ext.training_module.DartsClassificationModule`
(SGD, cosine schedule, auxiliary head weight 0.4, drop path) in a Lightning ``Trainer`` with gradient clipping 5,
on batches of random CIFAR-shaped images passed through our per-image :class:`~nni_darts_ext.transforms.Cutout`
in the dataset (as ``cifar10_transforms`` does). ``--precision`` goes to ``Trainer(precision=...)`` and
``--compile`` adds the :class:`~nni_darts_ext.compile.CompileModel` callback (whole net compiled).

One configuration per run. Reported (printed, and as JSON with ``--json``): median step time after ``--warmup``
steps, images/s, peak memory (CPU: peak RSS; CUDA: ``max_memory_allocated``), the FLOPs of one step
(``flops``, FlopCounterMode over one extra eager step) and ``matmul_fraction`` (achieved FLOP/s over the same
process's ``--matmul-size`` square matmul rate in that precision).

Example::

    python benchmarks/retrain_step.py --steps 2 --warmup 1 --precision bf16-mixed --compile --json runs/retrain.json
    python benchmarks/retrain_step.py --device cuda --batch 256 --steps 20 --warmup 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from search_step import (  # noqa: E402 - the sibling benchmark script
    FP32,
    IMAGE_CHANNELS,
    MATMUL_SIZE,
    NUM_CLASSES,
    PRECISIONS,
    _peak_rss_mb,
    _StepTimer,
    matmul_flops_per_second,
    precision_dtype,
    prepare_child,
)

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
    parser.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--precision", default=FP32, choices=PRECISIONS, help="Lightning Trainer precision")
    parser.add_argument("--compile", action="store_true", help="compile the net with torch.compile (CompileModel)")
    parser.add_argument("--matmul-size", type=int, default=MATMUL_SIZE,
                        help="size of the square matmul giving the reference FLOP rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="write the result as JSON to this file")
    args = parser.parse_args(argv)
    for name in ("width", "cells", "batch", "image_size", "steps", "matmul_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
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
    """Fit ``warmup + steps + 1`` batches of one configuration and return its result dict.

    Example::

        result = run(_parse_args(["--width", "4", "--cells", "3", "--batch", "2", "--steps", "1"]))
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

    total = args.warmup + args.steps + 1  # the last step is untimed, eager, under the FLOP counter
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(total * args.batch, IMAGE_CHANNELS, args.image_size, args.image_size, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (total * args.batch,), generator=gen)
    dataset = _CutoutDataset(images, labels, Cutout(length=min(DEFAULT_CUTOUT_LENGTH, args.image_size)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=False)

    timer = _StepTimer(cuda, flop_step=total - 1)
    callbacks = [timer, CompileModel(enabled=bool(args.compile))]
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, max_epochs=1, precision=args.precision,
        gradient_clip_val=GRADIENT_CLIP_VAL, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
    )
    start = time.time()
    trainer.fit(module, train_dataloaders=loader)
    if len(timer.ends) != total:
        raise RuntimeError(f"expected {total} steps, the trainer ran {len(timer.ends)}")
    timed = total - 1
    bounds = [timer.first_start] + timer.ends[:timed]
    durations = [bounds[i + 1] - bounds[i] for i in range(timed)]
    step = statistics.median(durations[args.warmup:])
    matmul_rate = matmul_flops_per_second(args.matmul_size, precision_dtype(args.precision), args.device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "name": f"{args.arch} {args.precision}{' compiled' if args.compile else ''}",
        "arch": args.arch, "width": args.width, "cells": args.cells, "batch": args.batch,
        "image_size": args.image_size, "steps": args.steps, "warmup": args.warmup, "device": args.device,
        "precision": args.precision, "compile": bool(args.compile),
        "step_seconds": step,
        "images_per_second": args.batch / step,
        "peak_memory_mb": timer.peak_memory_mb,
        "startup_seconds": timer.first_start_wall - start,
        "step_seconds_all": durations,
        "flops": timer.flops,
        "flops_per_second": timer.flops / step,
        "matmul_flops_per_second": matmul_rate,
        "matmul_fraction": timer.flops / step / matmul_rate,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        # False: no native bf16 on this CPU (oneDNN emulates it, far slower than fp32).
        "cpu_native_bf16": cpu_has_native_bf16(),
        "load_average_at_end": list(load) if load else None,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    print(f"{result['name']}: {result['step_seconds']:.3f} s/step, {result['images_per_second']:.1f} images/s, "
          f"peak {result['peak_memory_mb']:.0f} MB, {result['flops'] / 1e9:.2f} GFLOP/step, "
          f"matmul fraction {result['matmul_fraction']:.1%} ({args.device}, threads={result['threads']}, "
          f"width {args.width}, {args.cells} cells, batch {args.batch}, load {result['load_average_at_end']})")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json_path).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
