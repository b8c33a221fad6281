#!/usr/bin/env python
"""A harder offline task for ``nni-darts compare``: scikit-learn's digits, shifted and cluttered, as an ``.npz``.

On the demo's 8x8 digits every reasonable cell reaches 98-99%, so cells barely differ. This task keeps the same
source (``sklearn.datasets.load_digits``, offline) and makes it harder in the way "cluttered MNIST" does (Mnih et
al., "Recurrent Models of Visual Attention", NeurIPS 2014; Jaderberg et al., "Spatial Transformer Networks",
NeurIPS 2015): each digit is placed at a random position of a larger dark canvas, with fragments of other digits
as clutter and pixel noise, so the net must find the digit and ignore look-alike strokes.

* The digits are split first (stratified, seeded, ``--test-fraction`` held out), so no test digit is ever seen in
  training; clutter comes from digits of the same split.
* ``--copies`` placements of each training digit and ``--test-copies`` of each test digit (more test images
  make the test accuracy less noisy; a digit's copies differ in position, clutter and noise).
* Written as ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8, N x H x W) and ``classes``: the layout
  ``dataset.name: npz`` reads.

Usage::

    python examples/cluttered_digits.py --out data/cluttered-digits.npz
    DATA="dataset.name=npz dataset.data_dir=data/cluttered-digits.npz dataset.image_size=16 dataset.flip=false"
    nni-darts search --recipe demo --seeds 0,1,2 --parallel 2 --set $DATA --out runs/cl-seeds
    nni-darts compare --recipe demo --arch runs/cl-seeds/arch.json --random 6 --seeds 3 --parallel 2 --set $DATA \\
        --out runs/cl-compare

(``dataset.flip=false``: a mirrored digit is not the same digit.)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

_logger = logging.getLogger("cluttered_digits")

#: Side of scikit-learn's digits (px) and their largest pixel value.
DIGIT_SIZE = 8
DIGIT_MAX = 16


def clutter(images: np.ndarray, *, copies: int, canvas: int, fragments: int, fragment_size: int, noise: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` cluttered placements of each of ``images`` (N x 8 x 8, values 0..1): returns the canvases
    (N * copies x canvas x canvas, values 0..1) and the index of the digit each one shows.

    Example::

        x, source = clutter(digits, copies=2, canvas=16, fragments=4, fragment_size=4, noise=0.1,
                            rng=np.random.default_rng(0))
    """
    count = len(images) * copies
    source = np.repeat(np.arange(len(images)), copies)
    out = np.zeros((count, canvas, canvas), dtype=np.float32)
    span = canvas - DIGIT_SIZE + 1
    for i, index in enumerate(source):
        for _ in range(fragments):  # fragments of other digits, under the digit
            other = images[rng.integers(len(images))]
            r, c = rng.integers(DIGIT_SIZE - fragment_size + 1, size=2)
            y, x = rng.integers(canvas - fragment_size + 1, size=2)
            patch = out[i, y:y + fragment_size, x:x + fragment_size]
            np.maximum(patch, other[r:r + fragment_size, c:c + fragment_size], out=patch)
        y, x = rng.integers(span, size=2)
        target = out[i, y:y + DIGIT_SIZE, x:x + DIGIT_SIZE]
        np.maximum(target, images[index], out=target)
    out += rng.normal(0.0, noise, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0), source


def make(*, seed: int = 0, canvas: int = 16, copies: int = 2, test_copies: int = 3, fragments: int = 4,
         fragment_size: int = 4, noise: float = 0.1, test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """The task's arrays, as :func:`numpy.savez` writes them (see the module docstring).

    Example::

        arrays = make(seed=0)
        arrays["x_train"].shape   # (2874, 16, 16)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if canvas < DIGIT_SIZE:
        raise ValueError(f"canvas: ({canvas}) must be at least the digits' {DIGIT_SIZE} px")
    if not 1 <= fragment_size <= DIGIT_SIZE:
        raise ValueError(f"fragment_size: ({fragment_size}) must be between 1 and {DIGIT_SIZE}")
    digits = load_digits()
    images = digits.images.astype(np.float32) / DIGIT_MAX
    train, test = train_test_split(np.arange(len(images)), test_size=test_fraction, stratify=digits.target,
                                   random_state=seed)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, rows, n in (("train", train, copies), ("test", test, test_copies)):
        x, source = clutter(images[rows], copies=n, canvas=canvas, fragments=fragments, fragment_size=fragment_size,
                            noise=noise, rng=rng)
        arrays[f"x_{split}"] = np.round(x * 255).astype(np.uint8)
        arrays[f"y_{split}"] = digits.target[rows][source].astype(np.int64)
    arrays["classes"] = np.array([str(label) for label in range(10)])
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--canvas", type=int, default=16, help="image side in px (default 16)")
    parser.add_argument("--copies", type=int, default=2, help="placements of each training digit (default 2)")
    parser.add_argument("--test-copies", type=int, default=3, help="placements of each test digit (default 3)")
    parser.add_argument("--fragments", type=int, default=4, help="clutter fragments per image (default 4)")
    parser.add_argument("--fragment-size", type=int, default=4, help="side of a fragment in px (default 4)")
    parser.add_argument("--noise", type=float, default=0.1, help="std of the pixel noise, 0..1 scale (default 0.1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        arrays = make(seed=args.seed, canvas=args.canvas, copies=args.copies, test_copies=args.test_copies,
                      fragments=args.fragments, fragment_size=args.fragment_size, noise=args.noise)
    except ValueError as exc:
        parser.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial.npz")
    np.savez_compressed(partial, **arrays)
    partial.replace(args.out)
    _logger.info("%s: %d training and %d test images, %d x %d px, 10 classes", args.out, len(arrays["y_train"]),
                 len(arrays["y_test"]), args.canvas, args.canvas)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
