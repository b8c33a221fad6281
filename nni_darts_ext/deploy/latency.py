"""CPU latency of one forward pass: eager PyTorch, TorchScript and ONNX Runtime, at batch 1 and batch 64.

Each figure is the median over ``repeats`` timed calls of ``torch.utils.benchmark.Timer`` (after ``warmup``
untimed calls), on ``threads`` CPU threads (``Timer(num_threads=...)`` for torch; the session's intra-op threads
for ONNX Runtime), on random inputs of the run's image size.

Example::

    measure_latency({"eager": eager_runner, "onnxruntime": onnx_runner}, (3, 32, 32), threads=1, repeats=20)
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..checks import check_int
from .formats import Runner

__all__ = ["LATENCY_BATCHES", "LATENCY_REPEATS", "measure_latency"]

LATENCY_BATCHES = (1, 64)
#: Timed calls per figure by default (``nni-darts export --latency-repeats``).
LATENCY_REPEATS = 30
_WARMUP = 3


class _quiet_cpp_extension:
    """torch.utils.cpp_extension's import-time warning ("No CUDA runtime is found") held back."""

    _logger = logging.getLogger("torch.utils.cpp_extension")

    def __enter__(self) -> None:
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *_: object) -> None:
        self._logger.setLevel(self._level)


def measure_latency(runners: dict[str, Runner], image_shape: tuple[int, int, int], *, threads: int,
                    repeats: int = LATENCY_REPEATS, batches: tuple[int, ...] = LATENCY_BATCHES,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Median latency in milliseconds, ``{runtime: {"batch_1": ms, "batch_64": ms}}``.

    Example::

        measure_latency({"eager": runner}, (3, 8, 8), threads=1, repeats=3)["eager"]["batch_1"]
    """
    with _quiet_cpp_extension():  # imported by torch.utils.benchmark; warns about CUDA on a CPU-only machine
        from torch.utils.benchmark import Measurement, Timer

    repeats = check_int("repeats", repeats, minimum=1)
    threads = check_int("threads", threads, minimum=1)
    generator = torch.Generator().manual_seed(seed)
    figures: dict[str, dict[str, float]] = {}
    for name, runner in runners.items():
        figures[name] = {}
        for batch in batches:
            images = torch.randn((batch, *image_shape), generator=generator).numpy().astype(np.float32)
            for _ in range(_WARMUP):
                runner(images)
            timer = Timer(stmt="runner(images)", globals={"runner": runner, "images": images}, num_threads=threads,
                          label="latency", sub_label=name, description=f"batch {batch}")
            merged = Measurement.merge([timer.timeit(1) for _ in range(repeats)])[0]
            figures[name][f"batch_{batch}"] = round(merged.median * 1e3, 4)
    return figures
