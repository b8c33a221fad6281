"""The retrained net of a run in inference form: no auxiliary head, no drop path, BatchNorm in eval mode.

The net is rebuilt as ``retrain`` built it (``RUN/config.yaml`` gives width, cells, auxiliary head, drop path and
input size; ``RUN/arch.json`` the cell), the weights of ``RUN/model.pt`` are loaded strictly (any usual key prefix,
``module.`` of a DDP wrapper included), and only then is it put in inference form, so the architecture is always
applied before the weights. :class:`Preprocessed` puts the scaling and normalisation into the graph.

Example::

    run = load_run("runs/demo")
    logits = run.net(images)                   # (N, num_classes), images normalised as in training
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..arch import build_model, load_arch
from ..checkpoint import load_weights, read_state_dict
from ..checks import PathLike
from ..errors import ArchError, CheckpointError, RecipeError, UsageError

__all__ = ["DEMO_RETRAIN_DIR", "PIXEL_SCALE", "Named", "Preprocessed", "Run", "inference_form", "load_run",
           "retrain_folder", "to_pixels"]

#: The sub-folder of an ``nni-darts demo`` folder that holds its retrain (``runs/demo/retrain``).
DEMO_RETRAIN_DIR = "retrain"
#: Pixel values of the input of a net with preprocessing in the graph are 0..255 (8-bit images).
PIXEL_SCALE = 255.0


@dataclasses.dataclass
class Run:
    """A retrained run read back: its folder, recipe, arch dict and the net in inference form."""

    folder: Path
    recipe: Any
    arch: dict[str, Any]
    net: nn.Module
    info: dict[str, Any]  # the data description (dataset_info.run_dataset_info)
    data: Any  # the recipe's RecipeData


def inference_form(net: nn.Module) -> nn.Module:
    """``net`` (NNI's DARTS) without its auxiliary head, drop path off, in eval mode (returned, changed in place).

    Example::

        net = inference_form(build_model("darts-v2", width=4, num_cells=3, auxiliary_loss=True))
    """
    net.set_drop_path_prob(0.0)
    if net.auxiliary_loss:
        del net.auxiliary_head
        net.auxiliary_loss = False
    return net.eval().requires_grad_(False)


def retrain_folder(run_dir: PathLike) -> Path:
    """The retrain folder of ``run_dir``: itself, or its ``retrain/`` when it is a ``demo`` folder.

    Example::

        retrain_folder("runs/demo")      # Path('runs/demo/retrain')
    """
    from ..pipeline.run_folder import MODEL_FILE

    folder = Path(run_dir).expanduser()
    if not (folder / MODEL_FILE).is_file() and (folder / DEMO_RETRAIN_DIR / MODEL_FILE).is_file():
        return folder / DEMO_RETRAIN_DIR
    return folder


def load_run(run_dir: PathLike) -> Run:
    """Read a retrain folder (config.yaml, arch.json, model.pt, dataset.json), or a demo folder's ``retrain/``,
    into its inference net, built as ``retrain`` built it (classes, channels, size and stem of its data).

    Raises:
        UsageError: a file missing or unreadable, or ``model.pt`` does not fit the arch and recipe (one line).

    Example::

        load_run("runs/demo").net
    """
    from ..pipeline.run_folder import ARCH_FILE, CONFIG_FILE, MODEL_FILE
    from ..recipe_data import RecipeData
    from ..recipes import load_recipe
    from ..space import default_stem
    from .dataset_info import run_dataset_info

    folder = retrain_folder(run_dir)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such run folder")
    for name in (CONFIG_FILE, ARCH_FILE, MODEL_FILE):
        if not (folder / name).is_file():
            raise UsageError(f"{folder}: no {name} (export needs a finished `nni-darts retrain` folder)")
    try:
        recipe = load_recipe(folder / CONFIG_FILE)
        arch = load_arch(folder / ARCH_FILE)
        state = read_state_dict(folder / MODEL_FILE)
    except (RecipeError, ArchError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    data = RecipeData(recipe)
    info = run_dataset_info(folder, data)
    r = recipe.retrain
    size = int(info["image_size"])
    net = build_model(arch, width=r.width, num_cells=r.cells, auxiliary_loss=r.auxiliary_weight > 0,
                      drop_path_prob=r.drop_path_prob, image_size=size, num_classes=int(info["num_classes"]),
                      in_channels=int(info["in_channels"]), stem=r.stem or default_stem(size))
    try:
        load_weights(net, state, f"{folder / MODEL_FILE}")
    except CheckpointError as exc:
        raise UsageError(f"{exc} (of {folder / ARCH_FILE} and {folder / CONFIG_FILE})") from None
    return Run(folder=folder, recipe=recipe, arch=arch, net=inference_form(net), info=info, data=data)


class Preprocessed(nn.Module):
    """``net`` behind the run's scaling and normalisation: takes pixel values 0..255 (float, N x C x H x W).

    Resizing stays the caller's (the exported graph has a fixed image size).

    Example::

        Preprocessed(net, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])(torch.full((1, 3, 32, 32), 128.0))
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net((image / PIXEL_SCALE - self.mean) / self.std)


class Named(nn.Module):
    """``net`` with its one input named ``image`` (the name the exported graphs carry)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def to_pixels(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Normalised images back to pixel values 0..255 (the input of a :class:`Preprocessed` net).

    Example::

        to_pixels(torch.zeros(1, 3, 8, 8), [0.5] * 3, [0.25] * 3)   # all 127.5
    """
    mean_t = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images * std_t + mean_t) * PIXEL_SCALE


