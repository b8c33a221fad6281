"""Images per second the ``imagefolder`` loader delivers, with ``dataset.cache`` memory and none, against what one
DARTS search step consumes.

The script writes a synthetic image folder (``--classes`` x ``--per-class`` noise images of ``--size`` px in
``--format``, ``--channels`` 1 or 3) to a temporary folder, then:

* for each cache mode: the time :func:`nni_darts_ext.datasets.load_images` takes (scan, decode when cached,
  statistics) and the images per second of one pass of a ``DataLoader`` over the training split with the DARTS
  augmentation (``--batch``, ``--workers``), after one warm-up batch;
* the search step: NNI's DARTS one-shot training of :func:`~nni_darts_ext.space.darts_space` (``--width``,
  ``--cells``) with the ``first-order`` preset on in-memory tensors of the same shape, for ``--warmup`` + ``--steps``
  batches; a step reads ``2 * batch`` images (a weight batch and an architecture batch), so it consumes
  ``2 * batch / step_seconds`` images per second.

``loader_to_step`` > 1 means the loader keeps up with the search on one process.

Example::

    python benchmarks/loader_throughput.py --size 32 --classes 4 --per-class 256 --batch 64 --json runs/loader.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CACHE_MODES = ("memory", "none")
FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "webp": "WEBP"}


def write_images(root: Path, *, classes: int, per_class: int, size: int, channels: int, fmt: str, seed: int) -> None:
    """``root/train/cK/i.fmt`` and ``root/test/cK/i.fmt`` noise images (a quarter as many in test)."""
    import PIL.Image

    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, 3)
    for split, count in (("train", per_class), ("test", max(1, per_class // 4))):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                PIL.Image.fromarray(pixels).save(folder / f"{i}.{fmt}", FORMATS[fmt])


def loader_rate(root: Path, cache: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load time and images per second of one pass over the augmented training split."""
    from torch.utils.data import DataLoader

    from nni_darts_ext.datasets import load_images

    start = time.perf_counter()
    images = load_images("imagefolder", root, cache=cache, seed=0)
    load_seconds = time.perf_counter() - start
    dataset = images.dataset(train=True, cutout=max(1, args.size // 2))
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers)
    iterator = iter(loader)
    next(iterator)  # warm-up (worker start, first decode)
    count, start = 0, time.perf_counter()
    for batch, _ in iterator:
        count += len(batch)
    seconds = time.perf_counter() - start
    return {"cache": cache, "load_seconds": round(load_seconds, 4), "images": count,
            "images_per_second": round(count / seconds, 1) if seconds > 0 and count else None}


def search_rate(args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds of one first-order search step on in-memory batches, and the images per second it reads."""
    import torch
    from pytorch_lightning.callbacks import Callback

    from nni_darts_ext._compat import import_nni_quietly
    from nni_darts_ext.search import darts_strategy
    from nni_darts_ext.space import darts_space

    with import_nni_quietly():
        from nni.nas.evaluator.pytorch import ClassificationModule, DataLoader, Lightning, Trainer
        from nni.nas.execution import SequentialExecutionEngine
        from nni.nas.space import RawFormatModelSpace

    class StepTimes(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, *unused: Any) -> None:
            self.ends.append(time.perf_counter())

    torch.manual_seed(0)
    n = args.batch * (args.warmup + args.steps + 1)
    x = torch.randn(n, args.channels, args.size, args.size)
    y = torch.randint(0, args.classes, (n,))

    def loader() -> Any:
        return DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch)

    times = StepTimes()
    trainer = Trainer(max_epochs=1, limit_train_batches=args.warmup + args.steps + 1, accelerator="cpu",
                      logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      callbacks=[times])
    module = ClassificationModule(learning_rate=0.025, num_classes=args.classes, export_onnx=False)
    space = darts_space(num_classes=args.classes, in_channels=args.channels, image_size=args.size, width=args.width,
                        num_cells=args.cells)
    strategy = darts_strategy("first-order")
    strategy(RawFormatModelSpace(space, Lightning(module, trainer, train_dataloaders=loader(),
                                                  val_dataloaders=loader())), SequentialExecutionEngine())
    steps = [b - a for a, b in zip(times.ends[args.warmup:], times.ends[args.warmup + 1:], strict=False)]
    step = statistics.median(steps) if steps else None
    return {"step_seconds": round(step, 5) if step else None,
            "images_per_second": round(2 * args.batch / step, 1) if step else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=256)
    parser.add_argument("--format", choices=tuple(FORMATS), default="png")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.size < 8 or args.per_class < 1 or args.batch < 1 or args.steps < 1:
        print("loader_throughput.py: error: --size >= 8, --per-class, --batch and --steps >= 1", file=sys.stderr)
        return 2

    import torch

    with tempfile.TemporaryDirectory(prefix="loader-throughput-") as folder:
        root = Path(folder)
        write_images(root, classes=args.classes, per_class=args.per_class, size=args.size, channels=args.channels,
                     fmt=args.format, seed=0)
        loaders = {cache: loader_rate(root, cache, args) for cache in CACHE_MODES}
    step = search_rate(args)
    consumed = step["images_per_second"]
    result = {
        "settings": {key: value for key, value in vars(args).items() if key != "json"},
        "torch_threads": torch.get_num_threads(),
        "loader": loaders,
        "search_step": step,
        "loader_to_step": {cache: (round(r["images_per_second"] / consumed, 2)
                                   if r["images_per_second"] and consumed else None)
                           for cache, r in loaders.items()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
