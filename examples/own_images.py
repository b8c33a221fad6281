#!/usr/bin/env python
"""Your own images, end to end: write a small image folder, then search -> retrain -> evaluate with ``nni-darts``.

The folder is made from data scikit-learn ships (offline), in the layout ``nni-darts`` reads
(``DATA/train/CLASS/*.png`` and ``DATA/test/CLASS/*.png``, as torchvision's ``ImageFolder``):

* ``--kind gray``: scikit-learn's handwritten digits (``load_digits``), one class per digit (``--classes``, default 2),
  upscaled to ``--size`` px (default 25) grayscale PNGs;
* ``--kind rgb``: random ``--size`` px (default 48) crops of scikit-learn's two sample photos
  (``load_sample_images``: china.jpg, flower.jpg), 4 classes (each photo's left and right half), RGB JPEGs.

Then the three commands run, printed before each so they can be pasted (``nni-darts`` is ``python -m
nni_darts_ext``)::

    nni-darts search --recipe demo --set dataset.name=imagefolder dataset.data_dir=DATA dataset.image_size=25 \\
        dataset.flip=false --out OUT/search
    nni-darts retrain --recipe demo --arch OUT/search/arch.json --set (the same) --out OUT/retrain
    nni-darts evaluate --arch OUT/retrain --weights OUT/retrain/model.pt --out OUT/evaluate

Usage::

    python examples/own_images.py --kind gray --out runs/own-gray            # a few minutes on a CPU
    python examples/own_images.py --kind rgb --out runs/own-rgb --tiny      # one epoch of each, a smoke test
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

# Images per class and split written by default (train, test).
_PER_CLASS = {"train": 40, "test": 10}
_DEFAULT_SIZE = {"gray": 25, "rgb": 48}
# Settings for a smoke test: one epoch of each stage on tiny nets.
_TINY = ["search.width=4", "search.cells=3", "search.epochs=1", "search.batch_size=16", "retrain.width=4",
         "retrain.cells=3", "retrain.epochs=1", "retrain.batch_size=16"]


def write_gray(data: Path, *, classes: int, size: int, seed: int) -> None:
    """``classes`` digit classes of scikit-learn's digits as ``size`` px grayscale PNGs."""
    import PIL.Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(classes):
        rows = rng.permutation(np.flatnonzero(digits.target == label))
        start = 0
        for split, count in _PER_CLASS.items():
            folder = data / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i, row in enumerate(rows[start:start + count]):
                pixels = (digits.images[row] * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
                image = PIL.Image.fromarray(pixels, mode="L").resize((size, size), PIL.Image.BILINEAR)
                image.save(folder / f"{i}.png")
            start += count


def write_rgb(data: Path, *, size: int, seed: int) -> None:
    """4 classes of ``size`` px RGB JPEG crops: the left and right halves of scikit-learn's two sample photos."""
    import PIL.Image
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    rng = np.random.default_rng(seed)
    for photo, name in zip(sample.images, ("china", "flower"), strict=True):
        height, width = photo.shape[:2]
        for side, (left, right) in (("left", (0, width // 2)), ("right", (width // 2, width))):
            for split, count in _PER_CLASS.items():
                folder = data / split / f"{name}-{side}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    y = int(rng.integers(0, height - size))
                    x = int(rng.integers(left, right - size))
                    PIL.Image.fromarray(photo[y:y + size, x:x + size]).save(folder / f"{i}.jpg", quality=95)


def run(command: list[str]) -> None:
    """Run one ``nni-darts`` command, printed first; stop with its exit code when it fails."""
    print("$ nni-darts " + " ".join(shlex.quote(part) for part in command), flush=True)
    done = subprocess.run([sys.executable, "-m", "nni_darts_ext", *command])
    if done.returncode:
        sys.exit(done.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("gray", "rgb"), default="gray")
    parser.add_argument("--out", type=Path, default=Path("runs/own-images"), help="folder for data/ and the runs")
    parser.add_argument("--classes", type=int, default=2, help="gray: how many digit classes (2..10)")
    parser.add_argument("--size", type=int, help="image side in px (default 25 gray, 48 rgb)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="one epoch of each stage on tiny nets (a smoke test)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more recipe settings for search and retrain")
    args = parser.parse_args(argv)
    if not 2 <= args.classes <= 10:
        parser.error(f"--classes: 2..10 digit classes, got {args.classes}")
    size = args.size or _DEFAULT_SIZE[args.kind]
    data = args.out / "data"
    if data.exists():
        parser.error(f"--out: {data} exists; choose another folder")
    if args.kind == "gray":
        write_gray(data, classes=args.classes, size=size, seed=args.seed)
    else:
        write_rgb(data, size=size, seed=args.seed)
    print(f"wrote {data} (train/ and test/, {size}x{size} {args.kind} images)", flush=True)

    settings = ["dataset.name=imagefolder", f"dataset.data_dir={data}", f"dataset.image_size={size}",
                f"dataset.flip={'false' if args.kind == 'gray' else 'true'}",  # digits must not be mirrored
                *(_TINY if args.tiny else []), *args.overrides]
    search, retrain, evaluate = (args.out / name for name in ("search", "retrain", "evaluate"))
    run(["search", "--recipe", "demo", "--set", *settings, "--out", str(search)])
    run(["retrain", "--recipe", "demo", "--arch", str(search / "arch.json"), "--set", *settings,
         "--out", str(retrain)])
    run(["evaluate", "--arch", str(retrain), "--weights", str(retrain / "model.pt"), "--out", str(evaluate)])
    summary = json.loads((evaluate / "summary.json").read_text(encoding="utf-8"))
    print(f"{summary['num_classes']} classes, {summary['in_channels']} channel(s), {summary['image_size']} px: "
          f"test accuracy {summary['test_accuracy']:.4f}; per class {summary['per_class_accuracy']}; "
          f"confusion matrix {evaluate / 'confusion.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
