"""What a run's inputs look like: classes, channels, image size, mean/std and image counts.

Every run folder of this package has ``dataset.json`` (:class:`~nni_darts_ext.datasets.DataInfo`: ``name``,
``classes``, ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``, ``images``, ``per_class``,
``skipped``); it is read as it is. A run folder written before ``dataset.json`` existed gets the same facts from
its recipe's data (:meth:`~nni_darts_ext.recipe_data.RecipeData.info`, both splits counted).

Example::

    info = run_dataset_info("runs/demo/retrain", RecipeData(load_recipe("runs/demo/retrain/config.yaml")))
    info["classes"], info["image_size"], info["mean"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checks import PathLike
from ..errors import UsageError

__all__ = ["INFO_KEYS", "images_of_test_split", "run_dataset_info"]

#: The keys every dataset description has (``per_class`` and ``skipped`` may be missing).
INFO_KEYS = ("name", "classes", "num_classes", "in_channels", "image_size", "mean", "std", "images")


def _read_dataset_file(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read as JSON ({exc})") from None
    missing = [key for key in INFO_KEYS if not isinstance(info, dict) or key not in info]
    if missing:
        raise UsageError(f"{path}: missing key(s) {', '.join(missing)}")
    return info


def run_dataset_info(run_dir: PathLike, data: Any) -> dict[str, Any]:
    """The dataset description of a run: ``RUN/dataset.json`` when present, else ``data.info()`` (``data``: the
    run's :class:`~nni_darts_ext.recipe_data.RecipeData`, read only then).

    Raises:
        UsageError: ``dataset.json`` unreadable or incomplete.

    Example::

        run_dataset_info("runs/demo/retrain", RecipeData(recipe))["classes"]   # ['0', '1', ..., '9']
    """
    from ..pipeline.run_folder import DATASET_FILE

    path = Path(run_dir) / DATASET_FILE
    if path.is_file():
        return _read_dataset_file(path)
    data.split(train=True)  # both splits counted
    data.split(train=False)
    return data.info(test=True).to_dict()


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
