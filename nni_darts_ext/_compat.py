"""Shims that let NNI 3.0 run quietly and correctly on today's torch / Lightning stack.

Nothing here changes NNI's behaviour; it only absorbs two breakages of NNI 3.0 on newer torch and Lightning:

* NNI warns at import that two torch 2.14 classes are "not a nn.Module": harmless, filtered by message.
* ``Trainer(gpus=N)`` is gone in Lightning 2: :func:`resolve_gpus` maps it to ``accelerator``/``devices``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["import_nni_quietly", "resolve_gpus"]

# The exact text NNI 3.0 emits (nni/nas/nn/pytorch/layers.py ~L94) for classes torch added after 2.0.
_NNI_NOT_A_MODULE = r".*is found to be not a nn\.Module, which is unexpected.*"


@contextlib.contextmanager
def import_nni_quietly() -> Iterator[None]:
    """Import NNI's NAS modules with only its harmless "not a nn.Module" warnings silenced.

    Example::

        with import_nni_quietly():
            import nni.nas.hub.pytorch
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NNI_NOT_A_MODULE, category=RuntimeWarning)
        yield


def resolve_gpus(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map the NNI tutorial's ``gpus=N`` keyword onto Lightning 2's ``accelerator``/``devices``.

    Returns a new dict; warns with :class:`DeprecationWarning` when ``gpus`` was given.

    Example::

        >>> resolve_gpus({"gpus": 1, "max_epochs": 3})  # doctest: +SKIP
        {'max_epochs': 3, 'accelerator': 'gpu', 'devices': 1}
    """
    if "gpus" not in kwargs:
        return dict(kwargs)
    kwargs = dict(kwargs)
    gpus = kwargs.pop("gpus")
    warnings.warn(
        "`gpus=` was removed in PyTorch Lightning 2; use `accelerator='gpu', devices=N` instead "
        "(mapped for you this time).",
        DeprecationWarning,
        stacklevel=3,
    )
    if "accelerator" in kwargs or "devices" in kwargs:
        raise TypeError("pass either `gpus` or `accelerator`/`devices`, not both")
    if not gpus:  # 0 or None: the tutorial's way of saying "CPU"
        kwargs["accelerator"] = "cpu"
        kwargs["devices"] = 1
    else:
        kwargs["accelerator"] = "gpu"
        kwargs["devices"] = gpus
    return kwargs


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX, as oneDNN reports it).

    Without it torch emulates bf16 on CPU, and ``bf16-mixed`` runs several times slower than ``32-true``.

    Example::

        if precision.startswith("bf16") and not cpu_has_native_bf16(): ...
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
