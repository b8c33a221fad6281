"""Benchmark: our batched Cutout against the NNI DARTS tutorial's per-image NumPy Cutout.

The tutorial (docs/source/tutorials/darts.py in NNI, copied from quark0/darts cnn/utils.py) builds an
``np.ones`` mask per image, draws ``y, x`` with ``np.random``, zeroes the clipped square, converts the mask with
``torch.from_numpy`` and multiplies the image in place. It runs once per sample inside the dataset. We time, on
one batch of 96 3x32x32 images (the tutorial's retraining batch size):

* ``tutorial, per image``: the tutorial's transform called on each of the 96 images;
* ``ours, per image``: our :class:`~nni_darts_ext.transforms.Cutout` called on each image (what a Dataset
  transform does, e.g. in ``cifar10_transforms``);
* ``ours, batched``: one call on the ``(96, 3, 32, 32)`` batch (e.g. after collation, or on the GPU).

Each row is the median over ``--repeats`` timed calls after ``--warmup`` untimed ones.

Usage::

    python benchmarks/cutout.py [--repeats 200] [--threads N] [--device cpu|cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from nni_darts_ext.constants import DEFAULT_CUTOUT_LENGTH
from nni_darts_ext.io import atomic_write_json
from nni_darts_ext.transforms import Cutout

# The NNI tutorial's retraining batch (DataLoader(train_data, batch_size=96)) of 3x32x32 CIFAR-10 images.
BATCH, CHANNELS, SIZE = 96, 3, 32
DEFAULT_REPEATS = 200
DEFAULT_WARMUP = 10
# The speed-up the batched path is expected to reach over the tutorial (stated target of this benchmark).
TARGET_SPEEDUP = 10.0


class TutorialCutout:
    """The NNI DARTS tutorial's Cutout (as in quark0/darts cnn/utils.py): one CHW image, NumPy RNG, in place."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.size(1), img.size(2)
        mask = np.ones((h, w), np.float32)
        y, x = np.random.randint(h), np.random.randint(w)
        y1, y2 = np.clip(y - self.length // 2, 0, h), np.clip(y + self.length // 2, 0, h)
        x1, x2 = np.clip(x - self.length // 2, 0, w), np.clip(x + self.length // 2, 0, w)
        mask[y1:y2, x1:x2] = 0.0
        img *= torch.from_numpy(mask).expand_as(img)
        return img


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(repeats: int, warmup: int, device: str, length: int = DEFAULT_CUTOUT_LENGTH) -> dict:
    """Time the three paths; returns a dict of settings and results (seconds per 96-image batch)."""
    torch.manual_seed(0)
    np.random.seed(0)
    batch = torch.randn(BATCH, CHANNELS, SIZE, SIZE, device=device)
    cpu_batch = batch.cpu()
    sync = torch.cuda.synchronize if batch.is_cuda else (lambda: None)
    tutorial, ours = TutorialCutout(length), Cutout(length)

    def tutorial_per_image() -> None:  # NumPy masks live on the CPU: the tutorial cannot run on a GPU tensor
        for img in cpu_batch:
            tutorial(img)

    def ours_per_image() -> None:
        for img in batch:
            ours(img)

    timings = {
        "tutorial, per image": _median_seconds(tutorial_per_image, repeats, warmup, lambda: None),
        "ours, per image": _median_seconds(ours_per_image, repeats, warmup, sync),
        "ours, batched": _median_seconds(lambda: ours(batch), repeats, warmup, sync),
    }
    return {
        "batch_shape": [BATCH, CHANNELS, SIZE, SIZE],
        "length": length,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(batch.device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "median_seconds": timings,
        "speedup_vs_tutorial": {name: timings["tutorial, per image"] / t for name, t in timings.items()},
    }


def markdown(result: dict) -> str:
    """The result as a markdown table, with a line of settings."""
    base = result["median_seconds"]["tutorial, per image"]
    lines = [
        f"Cutout({result['length']}) on a {'x'.join(map(str, result['batch_shape']))} batch, {result['device']}, "
        f"torch {result['torch']} with {result['torch_threads']} threads, median of {result['repeats']}, "
        f"load average {result['load_average_1_5_15'][0]:.2f}",
        "",
        "| path | median per batch (ms) | per image (us) | speed-up vs tutorial |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in result["median_seconds"].items():
        lines.append(f"| {name} | {seconds * 1e3:.3f} | {seconds / result['batch_shape'][0] * 1e6:.1f} "
                     f"| {base / seconds:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats and --threads must be >= 1, --warmup >= 0")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run(args.repeats, args.warmup, args.device)
    print(markdown(result))
    speedup = result["speedup_vs_tutorial"]["ours, batched"]
    print(f"\nbatched speed-up {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x): "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
