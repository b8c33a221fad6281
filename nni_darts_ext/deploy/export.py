"""``nni-darts export``: the retrained net of a run as standalone ONNX / TorchScript files with a model card.

Everything is written into a temporary folder beside the destination; each file is loaded back with its own
runtime and checked against the PyTorch net (:func:`~nni_darts_ext.deploy.parity.check_parity`); only when all
pass does the folder replace the destination, so a failure leaves no half-written export.

Example::

    card = run_export("runs/demo")                 # runs/demo/export/{model.onnx, model.ts, parity.json, ...}
    card["parity"]["onnx"]["max_abs_diff"]
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..arch import format_genotype, to_genotype
from ..checks import PathLike
from ..errors import UsageError
from ..io import atomic_write_json, atomic_write_text, sha256_of
from ..profile import count_macs, count_params
from .dataset_info import images_of_test_split
from .formats import FORMATS, INPUT_NAME, eager_runner
from .inference import Named, Preprocessed, load_run, to_pixels
from .latency import LATENCY_REPEATS, measure_latency
from .model_card import CARD_VERSION, RECIPE_FILE, write_model_card
from .parity import MAX_PARITY_IMAGES, check_parity

__all__ = ["EXPORT_DIR", "PARITY_FILE", "run_export"]

_logger = logging.getLogger("nni_darts_ext.pipeline")

EXPORT_DIR = "export"
PARITY_FILE = "parity.json"
CELLS_PLOT = "cells.png"
_EXAMPLE_BATCH = 2  # > 1, so the exporters keep the batch axis symbolic
_FOLDER_MODE = 0o777
_MACS_COUNTER = "ptflops 'pytorch' backend: convolutions, linear layers, BatchNorm, activations, pooling, sums"


def _formats(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise UsageError(f"--format {','.join(names)}: expected one or more of {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def _plot(arch: dict[str, Any], folder: Path) -> str | None:
    from ..plotting import plot_cells

    try:
        plot_cells(arch, folder / CELLS_PLOT)
    except (OSError, RuntimeError, ValueError) as exc:  # a missing drawing backend must not stop the export
        _logger.warning("export: cells.png not drawn (%s)", exc)
        return None
    return CELLS_PLOT


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_export(run_dir: PathLike, *, formats: Sequence[str] = tuple(FORMATS), out: PathLike | None = None,
               include_preprocessing: bool = False, latency_repeats: int = LATENCY_REPEATS) -> dict[str, Any]:
    """Export the retrained net of ``run_dir`` (a retrain folder, or a demo folder: its ``retrain/``) into ``out``
    (default ``RUN_DIR/export``); returns the model card.

    Writes ``model.onnx`` and/or ``model.ts``, ``parity.json``, ``model_card.json``, ``model_card.md``,
    ``cells.png`` and ``recipe.yaml`` (the run's recipe, which ``evaluate --model`` reads). Latency is measured
    on torch's current thread count (``--threads``), ``latency_repeats`` timed calls per figure.

    Raises:
        UsageError: not a retrain folder, ``model.pt`` not of this arch, unknown format (exit 2).
        ParityError: an exported file's logits differ from PyTorch's (exit 1); nothing is written.

    Example::

        run_export("runs/demo", formats=["onnx"], include_preprocessing=True)
    """
    names = _formats(formats)
    run = load_run(run_dir)
    out_dir = Path(out).expanduser() if out is not None else Path(run_dir).expanduser() / EXPORT_DIR
    info = run.info
    images, labels = images_of_test_split(run.data, MAX_PARITY_IMAGES)
    size, channels = int(info["image_size"]), int(info["in_channels"])
    if tuple(images.shape[1:]) != (channels, size, size):
        raise UsageError(f"{run.folder}: test images are {tuple(images.shape[1:])}, the data description says "
                         f"{(channels, size, size)}")
    if include_preprocessing:
        module = Preprocessed(run.net, info["mean"], info["std"]).eval()
        inputs = to_pixels(images, info["mean"], info["std"])
    else:
        module, inputs = Named(run.net).eval(), images
    threads = torch.get_num_threads()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, _FOLDER_MODE & ~_umask())  # mkdtemp's 0o700, as a normal folder would be
    try:
        files, parity, runners = {}, {}, {"eager": eager_runner(module)}
        for name in names:
            fmt = FORMATS[name]
            _logger.info("export: writing %s", fmt.file_name)
            path = fmt.export(module, inputs[:_EXAMPLE_BATCH].contiguous(), tmp)
            runner = fmt.load(path, threads=threads)
            parity[name] = check_parity(module, runner, inputs, labels, name=fmt.file_name)
            _logger.info("export: %s parity on %d test images: max |diff| %.3g, top-1 agreement %.4f",
                         fmt.file_name, parity[name]["images"], parity[name]["max_abs_diff"],
                         parity[name]["top1_agreement"])
            files[name] = {"file": fmt.file_name, "sha256": sha256_of(path), "runtime": fmt.runtime}
            runners[fmt.runtime] = runner
        atomic_write_json(tmp / PARITY_FILE, parity)
        shape = (1, channels, size, size)
        _logger.info("export: measuring CPU latency (%d thread(s), %d runs each)", threads, latency_repeats)
        latency = measure_latency(runners, shape[1:], threads=threads, repeats=latency_repeats)
        recipe_yaml = run.recipe.to_yaml(header="Recipe of the exported run (nni-darts export)")
        atomic_write_text(tmp / RECIPE_FILE, recipe_yaml)
        summary = _summary(run.folder)
        pre = {"included": include_preprocessing, "image_size": size, "in_channels": channels,
               "resize": "bilinear", "scale": "1/255", "mean": list(info["mean"]), "std": list(info["std"])}
        card = {
            "card_version": CARD_VERSION,
            "run": str(run.folder),
            "files": files,
            "input": {"name": INPUT_NAME, "shape": ["batch", channels, size, size], "dtype": "float32",
                      "values": "pixels 0..255" if include_preprocessing else "normalised"},
            "preprocessing": pre,
            "classes": list(info["classes"]),
            "data": info,
            "genotype": format_genotype(to_genotype(run.arch)),
            "cells_plot": _plot(run.arch, tmp),
            "width": run.recipe.retrain.width,
            "cells": run.recipe.retrain.cells,
            "params": count_params(run.net),
            "macs": count_macs(run.net, shape),
            "macs_input_shape": list(shape),
            "macs_counter": _MACS_COUNTER,
            "test_accuracy": summary.get("test_accuracy"),
            "parity": parity,
            "latency": {"ms": latency, "threads": threads, "repeats": latency_repeats,
                        "load_average_1min": round(os.getloadavg()[0], 2),
                        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, torch "
                                   f"{torch.__version__}"},
            "recipe": run.recipe.to_dict(),
            "recipe_yaml": recipe_yaml,
        }
        write_model_card(tmp, card)
        _move_into_place(tmp, out_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return card


def _summary(folder: Path) -> dict[str, Any]:
    import json

    from ..pipeline.run_folder import SUMMARY_FILE

    try:
        return json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
