"""An exported model read back for ``predict`` and ``evaluate --model``: runner, preprocessing and class names.

``MODEL`` is an exported file (``model.onnx``, ``model.ts``) with its ``model_card.json`` beside it, an export
folder (its ONNX file, else its TorchScript file), or a retrain folder (its PyTorch net, eager). An exported file
is checked against the SHA-256 its card records before it is loaded, so a truncated or altered file is refused.

Example::

    model = open_model("runs/demo/export/model.onnx")
    model.runner(model.prepare(normalised_images))   # logits
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import PathLike
from ..errors import ExportError
from ..io import sha256_of
from .formats import FORMATS, Runner, eager_runner, format_of_file
from .inference import to_pixels
from .model_card import CARD_FILE, RECIPE_FILE, read_model_card

__all__ = ["OpenedModel", "open_model"]


@dataclasses.dataclass
class OpenedModel:
    """A model ready to run: ``runner`` and how to feed it (``preprocessing`` as in the model card)."""

    source: Path
    runner: Runner
    preprocessing: dict[str, Any]
    classes: list[str]
    recipe_file: Path | None  # the recipe whose test split ``evaluate --model`` uses

    def prepare(self, normalised: torch.Tensor) -> np.ndarray:
        """Normalised images (N, C, H, W) as this model's input (pixel values when it normalises itself)."""
        pre = self.preprocessing
        images = to_pixels(normalised, pre["mean"], pre["std"]) if pre["included"] else normalised
        return images.numpy().astype(np.float32)


def _open_file(path: Path, *, threads: int) -> OpenedModel:
    fmt = format_of_file(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    card_path = path.parent / CARD_FILE
    if not card_path.is_file():
        raise ExportError(f"{path}: no {CARD_FILE} beside it (it says how to feed the model; export again)")
    card = read_model_card(card_path)
    entry = card["files"].get(fmt.name)
    if entry is None or entry.get("file") != path.name:
        raise ExportError(f"{path}: not listed in {card_path}")
    if sha256_of(path) != entry.get("sha256"):
        raise ExportError(f"{path}: differs from the exported file (SHA-256 does not match {card_path}); it is "
                          "truncated or altered: export again")
    return OpenedModel(source=path, runner=fmt.load(path, threads=threads), preprocessing=card["preprocessing"],
                       classes=list(card["classes"]), recipe_file=path.parent / RECIPE_FILE)


def _open_run(folder: Path) -> OpenedModel:
    from ..pipeline.run_folder import CONFIG_FILE
    from .inference import Named, load_run

    run = load_run(folder)  # a retrain folder, or a demo folder's retrain/
    info = run.info
    pre = {"included": False, "image_size": int(info["image_size"]), "in_channels": int(info["in_channels"]),
           "resize": "bilinear", "scale": "1/255", "mean": list(info["mean"]), "std": list(info["std"])}
    return OpenedModel(source=folder, runner=eager_runner(Named(run.net).eval()), preprocessing=pre,
                       classes=list(info["classes"]), recipe_file=run.folder / CONFIG_FILE)


def open_model(model: PathLike, *, threads: int = 1) -> OpenedModel:
    """Open ``model`` (exported file, export folder or retrain folder); see the module docstring.

    Raises:
        ExportError: missing file or card, checksum mismatch, unloadable file (exit 2 on the command line).
        UsageError: a retrain folder that cannot be read.

    Example::

        open_model("runs/demo").classes
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / CARD_FILE).is_file():
            card = read_model_card(path / CARD_FILE)
            for name in FORMATS:
                if name in card["files"]:
                    return _open_file(path / card["files"][name]["file"], threads=threads)
            raise ExportError(f"{path / CARD_FILE}: lists no exported file")
        return _open_run(path)
    return _open_file(path, threads=threads)
