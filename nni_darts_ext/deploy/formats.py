"""Export formats: write a net to a file, and run that file with its own runtime (no NNI, no nni_darts_ext).

Each format is an :class:`ExportFormat` registered in :data:`FORMATS` under its ``--format`` name:

* ``onnx`` (``model.onnx``): ``torch.onnx.export(dynamo=True)`` (the ``torch.export`` based exporter); if that
  raises, the TorchScript-based exporter (``dynamo=False``), with a warning naming the reason. Run with
  ONNX Runtime (CPU).
* ``torchscript`` (``model.ts``): ``torch.jit.trace`` of the eval-mode net (no data-dependent control flow
  remains), run with ``torch.jit.load``.

Both have one input named ``image`` (N x C x H x W float32) with a dynamic batch axis and one output ``logits``.

Example::

    path = FORMATS["onnx"].export(net, example, folder)
    FORMATS["onnx"].load(path, threads=1)(images)      # numpy logits
"""

from __future__ import annotations

import abc
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAME", "ExportFormat", "OnnxFormat", "Runner", "TorchScriptFormat",
           "eager_runner", "format_of_file"]

_logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: A loaded exported model: float32 images (N, C, H, W) in, float32 logits (N, classes) out.
Runner = Callable[[np.ndarray], np.ndarray]
# torch.jit and the TorchScript-based ONNX exporter announce their own deprecation on every call.
_DEPRECATION = r".*(is deprecated|deprecated and will be removed).*"


class ExportFormat(abc.ABC):
    """One export format: its ``--format`` name, file name, writer and runtime."""

    name: str
    file_name: str
    runtime: str

    @abc.abstractmethod
    def export(self, net: nn.Module, example: torch.Tensor, folder: Path) -> Path:
        """Write ``net`` (input named ``image``, dynamic batch) into ``folder``; returns the file."""

    @abc.abstractmethod
    def load(self, path: Path, *, threads: int) -> Runner:
        """The file at ``path`` as a :data:`Runner` (ONNX Runtime: ``threads`` intra-op threads; TorchScript runs
        on torch's own thread setting).

        Raises:
            ExportError: the file is missing or cannot be loaded (truncated, not this format).
        """


class OnnxFormat(ExportFormat):
    name, file_name, runtime = "onnx", "model.onnx", "onnxruntime"

    def export(self, net: nn.Module, example: torch.Tensor, folder: Path) -> Path:
        path = folder / self.file_name
        try:
            torch.onnx.export(net, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                              verbose=False, external_data=False)
        except Exception as exc:  # noqa: BLE001 - the dynamo exporter fails in many ways; the fallback is stated
            _logger.warning("export: torch.onnx.export(dynamo=True) failed (%s); using the TorchScript-based "
                            "exporter", " ".join(str(exc).split())[:200])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_DEPRECATION)
                torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"},
                                                                             OUTPUT_NAME: {0: "batch"}})
        return path

    def load(self, path: Path, *, threads: int) -> Runner:
        import onnxruntime as ort

        if not path.is_file():
            raise ExportError(f"{path}: no such file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind classes (Fail, InvalidProtobuf)
            raise ExportError(f"{path}: not a loadable ONNX model ({' '.join(str(exc).split())[:200]})") from None
        input_names = [i.name for i in session.get_inputs()]
        if input_names != [INPUT_NAME]:
            raise ExportError(f"{path}: expected one input named {INPUT_NAME!r}, found {input_names}")

        def run(images: np.ndarray) -> np.ndarray:
            return session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]

        return run


class TorchScriptFormat(ExportFormat):
    name, file_name, runtime = "torchscript", "model.ts", "torch.jit"

    def export(self, net: nn.Module, example: torch.Tensor, folder: Path) -> Path:
        path = folder / self.file_name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", message=_DEPRECATION)
            traced = torch.jit.trace(net, (example,))
            torch.jit.save(traced, str(path))
        return path

    def load(self, path: Path, *, threads: int) -> Runner:
        if not path.is_file():
            raise ExportError(f"{path}: no such file")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_DEPRECATION)
                module = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError, OSError) as exc:
            raise ExportError(f"{path}: not a loadable TorchScript model ({' '.join(str(exc).split())[:200]})") \
                from None

        def run(images: np.ndarray) -> np.ndarray:  # on torch's threads (torch.set_num_threads)
            with torch.no_grad():
                return module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()

        return run


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (OnnxFormat(), TorchScriptFormat())}


def format_of_file(path: Path) -> ExportFormat:
    """The format of an exported file by its suffix (``.onnx``; ``.ts`` or ``.pt`` TorchScript).

    Raises:
        ExportError: another suffix.
    """
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return FORMATS["onnx"]
    if suffix in (".ts", ".pt"):
        return FORMATS["torchscript"]
    raise ExportError(f"{path}: expected an .onnx or TorchScript (.ts, .pt) file")


def eager_runner(net: nn.Module) -> Runner:
    """``net`` itself (eager PyTorch, no gradients) as a :data:`Runner`, on torch's threads."""

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()

    return run
