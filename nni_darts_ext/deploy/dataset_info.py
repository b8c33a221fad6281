"""What a run's inputs look like: classes, channels, image size, mean/std and image counts.

A run folder written by a version of the package that records its data has ``dataset.json`` (keys ``name``,
``classes``, ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``, ``images``, ``per_class``,
``skipped``); it is read as it is. Older runs of the package's own datasets (digits, CIFAR-10) get the same facts
from their ``config.yaml`` and the package's constants. Both paths meet in :func:`run_dataset_info`.

Example::

    info = run_dataset_info("runs/demo", load_recipe("runs/demo/config.yaml"))
    info["classes"], info["image_size"], info["mean"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checks import PathLike
from ..constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DIGITS_MEAN, DIGITS_STD, NUM_CLASSES
from ..errors import UsageError

__all__ = ["DATASET_FILE", "INFO_KEYS", "run_dataset_info", "images_of_test_split"]

DATASET_FILE = "dataset.json"
#: The keys every dataset description has (``per_class`` and ``skipped`` are optional).
INFO_KEYS = ("name", "classes", "num_classes", "in_channels", "image_size", "mean", "std", "images")
# The package's datasets feed 3-channel images to NNI's DARTS (digits are grey, repeated to 3 channels).
_RGB = 3


def _read_dataset_file(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read as JSON ({exc})") from None
    missing = [key for key in INFO_KEYS if not isinstance(info, dict) or key not in info]
    if missing:
        raise UsageError(f"{path}: missing key(s) {', '.join(missing)}")
    return info


def _derived_info(recipe: Any, data: Any) -> dict[str, Any]:
    """The facts of a package dataset (digits, CIFAR-10) from the recipe; image counts from ``data`` (RecipeData)."""
    name = recipe.dataset.name
    if name == "digits":
        classes, mean, std = [str(d) for d in range(NUM_CLASSES)], [DIGITS_MEAN] * _RGB, [DIGITS_STD] * _RGB
    elif name == "cifar10":
        classes, mean, std = list(CIFAR10_CLASSES), list(CIFAR10_MEAN), list(CIFAR10_STD)
    else:
        raise UsageError(f"dataset {name!r}: no {DATASET_FILE} in the run and no built-in description")
    return {
        "name": name,
        "classes": classes,
        "num_classes": len(classes),
        "in_channels": _RGB,
        "image_size": recipe.image_size,
        "mean": mean,
        "std": std,
        "images": {"train": len(data.split(train=True)), "test": len(data.split(train=False))},
    }


def run_dataset_info(run_dir: PathLike, recipe: Any, data: Any) -> dict[str, Any]:
    """The dataset description of a run: ``RUN/dataset.json`` when present, else derived from the recipe.

    ``data`` is the run's :class:`~nni_darts_ext.recipe_data.RecipeData` (only read when deriving image counts).

    Raises:
        UsageError: ``dataset.json`` unreadable or incomplete, or a dataset the package cannot describe.

    Example::

        run_dataset_info("runs/demo", recipe, RecipeData(recipe))["classes"]   # ['0', '1', ..., '9']
    """
    path = Path(run_dir) / DATASET_FILE
    if path.is_file():
        return _read_dataset_file(path)
    return _derived_info(recipe, data)


def images_of_test_split(data: Any, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` (default: all) test images of ``data`` (RecipeData), normalised as in training, and
    their labels.

    Example::

        images, labels = images_of_test_split(RecipeData(recipe), 512)
    """
    split = data.split(train=False)
    n = len(split) if limit is None else min(limit, len(split))
    items = [split[i] for i in range(n)]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])
