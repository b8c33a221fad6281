"""``nni-darts predict`` and ``nni-darts evaluate --model``: class names of images, accuracy of an exported file.

Images are read with Pillow, converted to the model's channels (RGB, or L for one channel), resized to its input
size (bilinear), scaled to [0, 1] and normalised with the run's mean/std (or fed as pixel values to a model with
the preprocessing inside).

Example::

    for row in predict_files("runs/demo/export/model.onnx", ["digits/"], top_k=3):
        row["file"], row["top"][0]["class"], row["top"][0]["probability"]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import PathLike, check_int
from ..errors import UsageError
from .exported import OpenedModel, open_model

__all__ = ["IMAGE_SUFFIXES", "image_files", "load_image", "model_accuracy", "predict_files"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_BATCH = 64


def image_files(inputs: Sequence[PathLike]) -> list[Path]:
    """Image files of ``inputs``: files as given, folders' image files (by suffix, sorted, not recursive).

    Raises:
        UsageError: an input that does not exist, or no image at all.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder")
    if not files:
        raise UsageError(f"{' '.join(map(str, inputs))}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: Path, preprocessing: dict[str, Any]) -> torch.Tensor:
    """One image as the normalised (C, S, S) float32 tensor the net was trained on.

    Raises:
        UsageError: not an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError

    size, channels = int(preprocessing["image_size"]), int(preprocessing["in_channels"])
    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L").resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot be read as an image ({' '.join(str(exc).split())})") from None
    tensor = torch.from_numpy(pixels.reshape(size, size, -1)).permute(2, 0, 1)
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32).view(-1, 1, 1)
    return (tensor - mean) / std


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict_files(model: PathLike | OpenedModel, inputs: Sequence[PathLike], *, top_k: int = 1,
                  threads: int = 1) -> list[dict[str, Any]]:
    """The ``top_k`` classes and probabilities of each image: ``[{"file", "top": [{"class", "index",
    "probability"}]}]``.

    Example::

        predict_files("runs/demo", ["seven.png"])[0]["top"][0]["class"]   # '7'
    """
    top_k = check_int("--top-k", top_k, minimum=1)
    opened = model if isinstance(model, OpenedModel) else open_model(model, threads=threads)
    top_k = min(top_k, len(opened.classes))
    files = image_files(inputs)
    rows = []
    for start in range(0, len(files), _BATCH):
        chunk = files[start:start + _BATCH]
        images = torch.stack([load_image(f, opened.preprocessing) for f in chunk])
        probabilities = _softmax(opened.runner(opened.prepare(images)))
        for path, p in zip(chunk, probabilities, strict=True):
            order = np.argsort(-p, kind="stable")[:top_k]
            rows.append({"file": str(path), "top": [{"class": opened.classes[i], "index": int(i),
                                                     "probability": round(float(p[i]), 6)} for i in order]})
    return rows


def model_accuracy(model: PathLike, *, threads: int = 1) -> dict[str, Any]:
    """Test accuracy of an exported file (or run folder) on its run's test split, by its own runtime.

    Example::

        model_accuracy("runs/demo/export/model.onnx")["test_accuracy"]
    """
    from ..recipe_data import RecipeData
    from ..recipes import load_recipe
    from .dataset_info import images_of_test_split

    opened = open_model(model, threads=threads)
    if opened.recipe_file is None or not opened.recipe_file.is_file():
        raise UsageError(f"{opened.source}: no recipe beside it to find the test set")
    recipe = load_recipe(opened.recipe_file)
    images, labels = images_of_test_split(RecipeData(recipe))
    correct = 0
    for start in range(0, len(images), _BATCH):
        logits = opened.runner(opened.prepare(images[start:start + _BATCH]))
        correct += int((logits.argmax(1) == labels[start:start + _BATCH].numpy()).sum())
    return {"model": str(opened.source), "dataset": recipe.dataset.name, "images": len(images),
            "test_accuracy": round(correct / len(images), 6)}
