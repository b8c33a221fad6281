"""Parity of an exported model with the PyTorch net it came from, on the run's test images.

Example::

    report = check_parity(net, runner, images, labels, tolerance=1e-4)
    report["max_abs_diff"], report["top1_agreement"]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ParityError
from .formats import Runner

__all__ = ["MAX_PARITY_IMAGES", "PARITY_TOLERANCE", "check_parity"]

#: At most this many test images are compared (all of them when the test split is smaller).
MAX_PARITY_IMAGES = 512
#: Largest absolute logit difference accepted in fp32.
PARITY_TOLERANCE = 1e-4
_BATCH = 64


def check_parity(net: nn.Module, runner: Runner, images: torch.Tensor, labels: torch.Tensor, *, name: str,
                 tolerance: float = PARITY_TOLERANCE) -> dict[str, float | int]:
    """Logits of ``runner`` (an exported file) against ``net`` on ``images``, batch by batch.

    Returns ``images``, ``max_abs_diff``, ``top1_agreement`` (fraction of images with the same top-1 class),
    ``accuracy`` (of the exported model against ``labels``) and ``tolerance``.

    Raises:
        ParityError: the difference exceeds ``tolerance`` or a top-1 class differs (names ``name`` and the figures).

    Example::

        check_parity(net, FORMATS["onnx"].load(path, threads=1), images, labels, name="model.onnx")
    """
    max_diff, agree, correct = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(images), _BATCH):
            batch = images[start:start + _BATCH]
            expected = net(batch).numpy()
            found = runner(batch.numpy())
            max_diff = max(max_diff, float(np.abs(found - expected).max()))
            agree += int((found.argmax(1) == expected.argmax(1)).sum())
            correct += int((found.argmax(1) == labels[start:start + _BATCH].numpy()).sum())
    n = len(images)
    report = {"images": n, "max_abs_diff": max_diff, "top1_agreement": agree / n, "accuracy": correct / n,
              "tolerance": tolerance}
    if not max_diff <= tolerance or agree != n:
        raise ParityError(f"{name}: parity check failed: max |logit difference| {max_diff:.3g} (tolerance "
                          f"{tolerance:g}), same top-1 class on {agree} of {n} test images; nothing exported")
    return report
