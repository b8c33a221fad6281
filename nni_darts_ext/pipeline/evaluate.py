"""``nni-darts evaluate``: the test accuracy of a net with given weights (a retrain's, or NNI's pretrained).

The net's width, cell count and auxiliary head are read from the weights, so any retrain output fits; the recipe
gives the dataset.

Example::

    run_evaluate(load_recipe("demo"), RunOptions(), arch="runs/r/arch.json", weights="runs/r/model.pt")
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..arch import build_model, count_parameters
from ..checkpoint import load_weights, read_state_dict, shape_of_weights, strip_prefix
from ..checks import PathLike
from ..datasets import DataInfo
from ..errors import ArgumentValueError, CheckpointError, UsageError
from ..io import atomic_write_json
from ..plotting import plot_confusion
from ..recipe_data import RecipeData
from ..recipes import Recipe
from .assemble import assemble_evaluate, check_device, data_errors, data_shape, resolve_arch, write_dataset_info
from .options import RunOptions
from .pretrained import PRETRAINED, fetch_pretrained
from .retrain import measure_test
from .run_folder import CHECKPOINT_DIR, CONFUSION_PLOT, DATASET_FILE, SUMMARY_FILE
from .runtime import device_name, quiet_nni, run_facts

__all__ = ["run_evaluate"]


# Any drop-path probability > 0 gives NNI's DropPath-wrapped op layout (its value is irrelevant in eval mode).
_STRUCTURAL_DROP_PATH = 0.1


def _net_for_weights(arch: dict[str, Any], state: dict[str, Any], **kwargs: Any) -> Any:
    """The fixed net for ``state``: NNI wraps each op in a DropPath container when the net was built with
    ``drop_path_prob > 0``, which changes the key names, so build the variant whose keys match (eval: no drop)."""
    plain = build_model(arch, drop_path_prob=0.0, **kwargs)
    keys = set(strip_prefix(state, set(plain.state_dict())))
    if keys == set(plain.state_dict()):
        return plain
    wrapped = build_model(arch, drop_path_prob=_STRUCTURAL_DROP_PATH, **kwargs)
    wrapped_keys = set(wrapped.state_dict())
    if len(keys & wrapped_keys) > len(keys & set(plain.state_dict())):
        wrapped.set_drop_path_prob(0.0)
        return wrapped
    return plain


def _read_weights(path: Path) -> dict[str, Any]:
    try:
        return read_state_dict(path)
    except CheckpointError as exc:
        raise UsageError(f"--weights {exc}") from None


def run_evaluate(
    recipe: Recipe,
    options: RunOptions,
    *,
    arch: Any = None,
    weights: PathLike | None = None,
    pretrained: str | None = None,
    data: RecipeData | None = None,
) -> dict[str, Any]:
    """Test accuracy of ``arch`` with ``weights`` (or NNI's ``pretrained`` net) on the recipe's test set.

    Writes ``DIR/summary.json`` only when ``options.out`` is set.

    Example::

        run_evaluate(load_recipe("demo"), RunOptions(), arch="runs/r/arch.json", weights="runs/r/model.pt")
    """
    if (pretrained is None) == (weights is None):
        raise UsageError("evaluate: give --arch with --weights, or --pretrained NAME")
    check_device(options.accelerator, options.devices)
    out = None
    if options.out is not None:
        out = Path(options.out).expanduser()
        if (out / SUMMARY_FILE).exists():
            raise UsageError(f"--out {out}: already holds {SUMMARY_FILE}; choose another folder")
    saved = _saved_info(weights, arch)
    if data is None:
        data = RecipeData(recipe, statistics=(saved.mean, saved.std) if saved is not None else None)

    if pretrained is not None:
        if arch is not None:
            raise UsageError("--arch: not used with --pretrained (the net's cell is fixed)")
        if pretrained not in PRETRAINED:
            raise UsageError(f"--pretrained {pretrained}: unknown; available: {', '.join(PRETRAINED)}")
        if recipe.dataset.name != "cifar10":
            raise UsageError(f"--pretrained {pretrained}: a CIFAR-10 net; the recipe's dataset is "
                             f"{recipe.dataset.name}")
        arch_dict, arch_name = resolve_arch(pretrained)
        data_errors(lambda: data.split(train=False))  # data first: no download when the data are missing anyway
        weights_path = fetch_pretrained(pretrained)
        width, cells, aux = PRETRAINED[pretrained]["width"], PRETRAINED[pretrained]["num_cells"], False
        state = _read_weights(weights_path)
    else:
        if arch is None:
            raise UsageError("--arch: required with --weights")
        arch_dict, arch_name = resolve_arch(arch)
        weights_path = Path(weights).expanduser()
        state = _read_weights(weights_path)
        width, cells, aux = shape_of_weights(state)
        width = width or recipe.retrain.width
        cells = cells or recipe.retrain.cells
        data_errors(lambda: data.split(train=False))

    info, stem = data_shape(data, recipe.retrain.stem, key="retrain.stem")
    if saved is not None and saved.classes != info.classes:
        raise UsageError(f"the weights were trained on classes {_names(saved.classes)} but the data has "
                         f"{_names(info.classes)}")
    try:
        model = _net_for_weights(arch_dict, state, width=width, num_cells=cells, auxiliary_loss=aux,
                                 image_size=info.image_size, num_classes=info.num_classes,
                                 in_channels=info.in_channels, stem=stem)
    except ArgumentValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        load_weights(model, state, f"--weights {weights_path}")
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    built = assemble_evaluate(recipe, options, model=model, auxiliary=aux, data=data, out=out)
    trainer = built.trainer
    start = time.perf_counter()
    with quiet_nni():
        tested = measure_test(trainer, built.module, built.test_loader)
    matrix = confusion_matrix(model, built.test_loader, info.num_classes)
    summary = {
        "command": "evaluate",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        **tested,
        "params": count_parameters(model),
        "evaluate_seconds": round(time.perf_counter() - start, 2),
        "arch": Path(arch_name).name if arch_name not in PRETRAINED else arch_name,
        "weights": str(weights_path),
        "width": width,
        "cells": cells,
        "device": device_name(trainer),
        "precision": str(trainer.precision),
        **run_facts(recipe),
        "stem": stem,
        **info.summary(),
        "per_class_accuracy": per_class_accuracy(matrix, info.classes),
        "confusion_matrix": matrix.tolist(),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_dataset_info(out, info)
        plot_confusion(matrix, info.classes, out / CONFUSION_PLOT)
        summary["confusion_plot"] = CONFUSION_PLOT
        atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def _names(classes: list[str], limit: int = 8) -> str:
    shown = ", ".join(classes[:limit])
    return f"[{shown}{', ...' if len(classes) > limit else ''}] ({len(classes)})"


def _saved_info(weights: PathLike | None, arch: Any) -> DataInfo | None:
    """The :class:`DataInfo` a retrain wrote beside its weights (or in the ``--arch`` run folder), or None."""
    folders = []
    if weights is not None:
        folder = Path(weights).expanduser().parent
        folders += [folder] + ([folder.parent] if folder.name == CHECKPOINT_DIR else [])
    if isinstance(arch, (str, os.PathLike)) and Path(arch).expanduser().is_dir():
        folders.append(Path(arch).expanduser())
    for folder in folders:
        path = folder / DATASET_FILE
        if path.is_file():
            try:
                return DataInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                raise UsageError(f"{path}: not a dataset description ({exc})") from None
    return None


def confusion_matrix(model: Any, loader: Any, num_classes: int) -> Any:
    """``num_classes x num_classes`` counts (rows: true class, columns: predicted) of ``model`` on ``loader``.

    Example::

        matrix = confusion_matrix(net, test_loader, 10)
    """
    import torch

    device = next(model.parameters()).device
    matrix = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for images, labels in loader:
            predicted = model(images.to(device)).argmax(dim=1).cpu()
            matrix += torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes)
    model.train(was_training)
    return matrix.view(num_classes, num_classes).numpy()


def per_class_accuracy(matrix: Any, classes: list[str]) -> dict[str, float | None]:
    """Each class's accuracy (recall): correct / test images of the class; None for a class without images.

    Example::

        >>> per_class_accuracy(np.array([[9, 1], [2, 8]]), ["cat", "dog"])
        {'cat': 0.9, 'dog': 0.8}
    """
    totals = matrix.sum(axis=1)
    return {name: (round(float(matrix[i, i]) / float(totals[i]), 6) if totals[i] else None)
            for i, name in enumerate(classes)}
