"""DARTS-style image transforms: a batched, seeded Cutout and the CIFAR-10 pipeline of the DARTS paper.

Cutout (DeVries & Taylor 2017, https://arxiv.org/abs/1708.04552) zeroes one ``length x length`` square per
image. The square's centre is drawn uniformly over the image and the square is clipped at the borders,
exactly as in quark0/darts ``cnn/utils.py`` ``Cutout``; unlike that class (and the NNI DARTS tutorial's copy)
it draws with torch's RNG, takes an optional ``torch.Generator``, works on a whole ``NCHW`` batch at once
(one independent square per image, no Python loop), keeps the input's device and does not modify its input.

Example::

    from nni_darts_ext.transforms import Cutout, cifar10_transforms

    train_tf = cifar10_transforms(train=True, cutout=16)   # RandomCrop, Flip, ToTensor, Normalize, Cutout
    batch = Cutout(16)(torch.randn(96, 3, 32, 32))           # one square per image
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import transforms as T
from torchvision import tv_tensors
from torchvision.transforms import v2

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.constants import (
    CIFAR10_IMAGE_SIZE,
    CIFAR10_MEAN,
    CIFAR10_PADDING,
    CIFAR10_STD,
    DEFAULT_CUTOUT_LENGTH,
)

from .checks import check_int

with import_nni_quietly():
    import nni

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Cutout",
    "cifar10_transforms",
    "cutout",
]


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"Cutout works on tensors (use it after ToTensor, as in quark0/darts); got {type(images).__name__}"
        )
    if images.ndim not in (3, 4):
        raise ValueError(
            f"Cutout expects a CHW image or an NCHW batch, got a tensor of shape {tuple(images.shape)}"
        )


def cutout(
    images: torch.Tensor, centres: torch.Tensor | Sequence[int] | Sequence[Sequence[int]], length: int
) -> torch.Tensor:
    """Zero a ``length x length`` square around each given centre; the deterministic kernel behind :class:`Cutout`.

    Rows ``clip(y - length//2, 0, H) .. clip(y + length//2, 0, H)`` (end excluded) and likewise for columns are
    zeroed, as in quark0/darts ``cnn/utils.py``: an odd ``length`` zeroes ``length - 1`` rows and columns, and
    ``length=1`` zeroes nothing. A batch gets one mask built by broadcasting ``arange(H)`` / ``arange(W)``
    against the per-image bounds (no loop over images); a single image on the CPU is sliced instead, which is
    faster per call.

    Args:
        images: a ``(C, H, W)`` image or an ``(N, C, H, W)`` batch, any dtype and device.
        centres: integer ``(y, x)`` centres, shape ``(2,)`` for one image or ``(N, 2)`` for a batch, as a tensor
            or nested sequence of ints (a centre outside the image is allowed and zeroes what falls inside).
        length: side of the square, an int >= 1.

    Returns:
        A new tensor like ``images`` (the input is not modified). The square is multiplied by 0, as in the
        original, so NaN or inf there become NaN.

    Raises:
        TypeError: ``images`` is not a tensor, ``centres`` is not integer, ``length`` is not an int.
        ValueError: wrong shapes, or ``length < 1``.

    Example::

        >>> cutout(torch.ones(1, 4, 4), torch.tensor([0, 0]), 2)[0]
        tensor([[0., 1., 1., 1.],
                [1., 1., 1., 1.],
                [1., 1., 1., 1.],
                [1., 1., 1., 1.]])
    """
    length = check_int("length", length, minimum=1)
    _check_images(images)
    batched = images.ndim == 4
    n = images.shape[0] if batched else 1
    height, width = images.shape[-2:]
    half = length // 2

    if not batched and isinstance(centres, (tuple, list)) and len(centres) == 2:
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in centres):
            raise TypeError(f"`centres` must be integers, got {centres!r}")
        return _cut_one(images, int(centres[0]), int(centres[1]), half)
    if not isinstance(centres, torch.Tensor):
        centres = torch.as_tensor(centres)
    if centres.dtype == torch.bool or centres.is_floating_point() or centres.is_complex():
        raise TypeError(f"`centres` must be integers, got dtype {centres.dtype}")
    expected = (n, 2) if batched else (2,)
    if tuple(centres.shape) != expected and not (not batched and tuple(centres.shape) == (1, 2)):
        raise ValueError(f"`centres` must have shape {expected} for images of shape {tuple(images.shape)}, "
                         f"got {tuple(centres.shape)}")

    if not batched and centres.device.type == "cpu":
        y, x = centres.reshape(2).tolist()
        return _cut_one(images, y, x, half)

    centres = centres.reshape(n, 2).to(images.device)
    batch = images if batched else images.unsqueeze(0)
    y, x = centres[:, 0:1], centres[:, 1:2]  # (n, 1) each: broadcast against the aranges below
    y1, y2 = (y - half).clamp(0, height), (y + half).clamp(0, height)
    x1, x2 = (x - half).clamp(0, width), (x + half).clamp(0, width)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    keep_rows = ((rows < y1) | (rows >= y2)).to(images.dtype)  # (n, H): 1 outside the square's rows
    keep_cols = ((cols < x1) | (cols >= x2)).to(images.dtype)  # (n, W)
    # A pixel is kept when its row or its column is outside the square. Multiplying by this mask is what the
    # original does (`img *= mask`: NaN and inf in the square become NaN), and on the CPU it is about twice as
    # fast as masked_fill or torch.where with a broadcast boolean mask.
    keep = torch.maximum(keep_rows[:, :, None], keep_cols[:, None, :])  # (n, H, W), shared by all channels
    out = batch * keep[:, None]
    return out if batched else out[0]


def _cut_one(image: torch.Tensor, y: int, x: int, half: int) -> torch.Tensor:
    """One CHW image, centre as ints: clone and zero the clipped slice (the quark0/darts bounds)."""
    height, width = image.shape[-2:]
    out = image.clone()
    out[:, min(max(y - half, 0), height):min(max(y + half, 0), height),
        min(max(x - half, 0), width):min(max(x + half, 0), width)] *= 0  # *= like the batch path and the original
    return out


def _is_plain_tensor(obj: Any) -> bool:
    return isinstance(obj, torch.Tensor) and not isinstance(obj, tv_tensors.TVTensor)


@nni.trace
class Cutout(v2.Transform):
    """Zero one random ``length x length`` square per image, as DARTS does after ``Normalize``.

    A torchvision v2 transform: call it on a ``CHW`` tensor, an ``NCHW`` batch (one independent square per
    image), a ``tv_tensors.Image`` / ``Video`` (one square per frame), or a sample such as ``(image, label)``
    (the label passes through). The centre ``(y, x)`` is uniform over the integer pixels of the image and the
    square is clipped at the borders (quark0/darts ``cnn/utils.py``), so near a border less than ``length**2``
    pixels are zeroed.
    It runs after ``ToTensor``, like the original: PIL images are rejected. The output is a new tensor on the
    input's device.

    Args:
        length: side of the square in pixels (default 16, the DARTS CIFAR-10 value). With an odd length the
            square is ``length - 1`` wide (``length=1`` zeroes nothing), as in the original code.
        generator: optional ``torch.Generator`` to draw centres from (default: torch's global RNG). Meant for
            reproducible single-process use: with DataLoader workers, leave it ``None`` so that each worker draws
            from its own seeded global RNG instead of a copy of the same generator. A generator also makes the
            transform too large for ``nni.dump``.

    Raises:
        TypeError: ``length`` is not an int (bools are rejected), or the input is a PIL image.
        ValueError: ``length < 1``, or the input is not 3-D / 4-D.

    Example::

        >>> t = Cutout(16, generator=torch.Generator().manual_seed(0))
        >>> t
        Cutout(length=16)
        >>> t(torch.ones(8, 3, 32, 32)).shape
        torch.Size([8, 3, 32, 32])
    """

    # Pure tensors, images and videos are cut; masks, boxes and labels pass through untouched. PIL images are
    # "transformed" only so that make_params can reject them instead of passing them through silently.
    _transformed_types = (_is_plain_tensor, tv_tensors.Image, tv_tensors.Video, PIL.Image.Image)

    def __init__(self, length: int = DEFAULT_CUTOUT_LENGTH, generator: torch.Generator | None = None) -> None:
        length = check_int("length", length, minimum=1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
        super().__init__()
        self.length = length
        self._generator = generator

    @property
    def generator(self) -> torch.Generator | None:
        return self._generator

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw one integer centre ``(y, x)`` per image of the first tensor input."""
        for inpt in flat_inputs:
            if isinstance(inpt, PIL.Image.Image):
                raise TypeError("Cutout works on tensors: put it after ToTensor (as quark0/darts does), "
                                "not on a PIL image")
        images = next(inpt for inpt in flat_inputs if isinstance(inpt, torch.Tensor))
        _check_images(images)
        height, width = images.shape[-2:]
        pixel = self._draw_pixels(images.shape[0] if images.ndim == 4 else 1, height, width, images.device)
        if images.ndim == 3 and pixel.device.type == "cpu":  # per-sample use in a Dataset: plain ints are cheaper
            index = int(pixel)
            return {"centres": (index // width, index % width)}
        centres = torch.stack([pixel // width, pixel % width], dim=1).to(images.device)
        return {"centres": centres if images.ndim == 4 else centres[0]}

    def _draw_pixels(self, n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """One uniform pixel index per image: a uniform y in [0, H) and an independent uniform x in [0, W)."""
        device = self._generator.device if self._generator is not None else device
        return torch.randint(0, height * width, (n,), generator=self._generator, device=device)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Apply :func:`cutout` with the drawn centres, keeping the tv_tensor type of ``inpt``."""
        if not isinstance(inpt, tv_tensors.TVTensor):
            return cutout(inpt, params["centres"], self.length)
        return tv_tensors.wrap(cutout(inpt.as_subclass(torch.Tensor), params["centres"], self.length), like=inpt)

    def forward(self, *inputs: Any) -> Any:
        """Cut ``inputs``: a single plain tensor takes a short path, anything else goes through v2's ``forward``."""
        if len(inputs) == 1 and _is_plain_tensor(inputs[0]) and inputs[0].ndim in (3, 4):
            # What v2 would do with one plain tensor, minus its pytree walk; CHW on the CPU (a Dataset transform,
            # once per sample) draws and slices with Python ints, drawing exactly what make_params would.
            image = inputs[0]
            if image.ndim == 3 and image.device.type == "cpu" and (
                self._generator is None or self._generator.device.type == "cpu"
            ):
                height, width = image.shape[-2:]
                index = int(self._draw_pixels(1, height, width, image.device))
                return _cut_one(image, index // width, index % width, self.length // 2)
            return self.transform(image, self.make_params([image]))
        return super().forward(*inputs)

    # torchvision < 0.21 calls the private names (they became public in vision PR #8787).
    def _get_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self.make_params(flat_inputs)

    def _transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self.transform(inpt, params)


# nni.trace'd torchvision classes (instances are still T.Compose etc.), so that nni.dump writes the pipeline as
# readable arguments: an untraced Compose holding a traced Cutout pickles to more than nni.dump's 4 KiB limit.
_Compose = nni.trace(T.Compose)
_RandomCrop = nni.trace(T.RandomCrop)
_RandomHorizontalFlip = nni.trace(T.RandomHorizontalFlip)
_ToTensor = nni.trace(T.ToTensor)
_Normalize = nni.trace(T.Normalize)


def _check_cutout(cutout_length: Any) -> int | None:
    if cutout_length is None:
        return None
    cutout_length = check_int("cutout", cutout_length, minimum=1)
    if cutout_length > CIFAR10_IMAGE_SIZE:
        raise ValueError(f"`cutout` must be None or an int in 1..{CIFAR10_IMAGE_SIZE} "
                         f"(the CIFAR-10 image size), got {cutout_length}")
    return cutout_length


def cifar10_transforms(train: bool, cutout: int | None = DEFAULT_CUTOUT_LENGTH) -> T.Compose:
    """The DARTS CIFAR-10 pipeline (quark0/darts ``cnn/utils.py`` ``_data_transforms_cifar10``).

    ``train=True``: RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize(CIFAR10_MEAN,
    CIFAR10_STD), then :class:`Cutout` (``cutout``) unless ``cutout`` is None. ``train=False``: ToTensor,
    Normalize (``cutout`` is ignored). Takes PIL images, as ``torchvision.datasets.CIFAR10`` yields them.
    The Compose and its steps are ``nni.trace``d torchvision classes (still instances of them), so a dataset
    holding this pipeline can be dumped by ``nni.dump``.

    Raises:
        TypeError: ``train`` is not a bool, ``cutout`` is not None or an int.
        ValueError: ``cutout`` outside 1..32.

    Example::

        dataset = torchvision.datasets.CIFAR10(root, train=True, transform=cifar10_transforms(train=True))
    """
    if not isinstance(train, bool):
        raise TypeError(f"`train` must be a bool, got {type(train).__name__}")
    cutout = _check_cutout(cutout)
    # Lists, not tuples: nni.dump writes tuples as JSON lists, and the reloaded pipeline should print the same.
    normalize = [_ToTensor(), _Normalize(mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD))]
    steps: list[Any] = normalize
    if train:
        steps = [
            _RandomCrop(size=CIFAR10_IMAGE_SIZE, padding=CIFAR10_PADDING),
            _RandomHorizontalFlip(),
            *normalize,
        ]
        if cutout is not None:
            steps.append(Cutout(cutout))
    return _Compose(transforms=steps)
