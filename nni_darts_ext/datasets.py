"""Your own images: a folder of images, an ``.npz`` file, or torchvision's CIFAR-100, MNIST, Fashion-MNIST, SVHN
from local files, with any number of classes, 1 or 3 channels and any size.

:func:`load_images` reads both splits once, checks them (one :class:`~nni_darts_ext.errors.DatasetError` line
naming the folder, file or classes at fault) and returns :class:`OwnImages`: the decoded (or, with
``cache="none"``, listed) images of each split and a :class:`DataInfo` (classes, channels, size, per-channel
mean / std of the training split, counts per split and class, skipped files), which the pipeline writes to
``RUN/dataset.json``. :meth:`OwnImages.dataset` gives a map-style dataset with the DARTS augmentation generalised
to any size: random crop with ``image_size // 8`` padding, horizontal flip when ``flip``, Cutout.

* ``imagefolder``: ``DATA/train/CLASS/*`` and ``DATA/test/CLASS/*`` (``val/`` accepted for ``test/``); classes
  sorted as torchvision's ``ImageFolder`` sorts them (its ``find_classes``). Without ``test/``, a seeded split of
  ``test_fraction`` of each class is held out. Pillow reads PNG, JPEG, BMP, GIF, TIFF, WebP (and PGM/PPM);
  grayscale, RGB, RGBA (alpha dropped), palette and 16-bit images are converted to the run's channels (1 when
  every image is grayscale, else 3, unless ``in_channels`` says) and resized to ``image_size`` (else all must
  share one square size). Files with other suffixes (``.txt``, ``.DS_Store``) are ignored and counted.
* ``npz``: one file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (NHW, NHWC or NCHW; uint8 0..255 or
  float 0..1) and optionally ``classes``.
* ``cifar100``, ``mnist``, ``fashion-mnist``, ``svhn``: torchvision's classes on the files in ``data_dir``, never
  downloaded; a missing file is one ``FileNotFoundError`` line naming the folder and the files to put there.

Example::

    images = load_images("imagefolder", "data/shapes", image_size=32, seed=0)
    images.info.classes, images.info.in_channels         # (['circle', 'square'], 1)
    train = images.dataset(train=True, cutout=8)         # (float tensor (1, 32, 32), label)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from . import recipes
from .checks import check_bool, check_choice, check_float, check_int, check_optional
from .constants import (
    CROP_PADDING_DIVISOR,
    IMAGEFOLDER_TEST_FRACTION,
    MEMORY_CACHE_BYTES,
    STATISTICS_SAMPLE,
)
from .errors import BadImageError, DataFolderError, DatasetError, ImageSizeError, LabelError
from .transforms import Cutout

__all__ = [
    "CACHE_MODES",
    "IMAGE_SUFFIXES",
    "OWN_DATASETS",
    "DataInfo",
    "ImageDataset",
    "OwnImages",
    "augmentation",
    "digits_info",
    "load_images",
    "memory_bytes",
]

_logger = logging.getLogger(__name__)

#: ``dataset.name`` values this module reads.
OWN_DATASETS: tuple[str, ...] = recipes.OWN_DATASETS
#: ``dataset.cache``: ``memory`` decodes every image once and keeps it; ``none`` decodes on every access;
#: ``auto`` keeps them when they take at most ``constants.MEMORY_CACHE_BYTES``.
CACHE_MODES: tuple[str, ...] = recipes.CACHE_MODES
#: Suffixes read as images (torchvision's ``IMG_EXTENSIONS`` and GIF); other files are ignored and counted.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm",
                                   ".ppm")
_TEST_FOLDERS = ("test", "val")
_SPLITS = ("train", "test")
# Pillow modes of one channel; 16-bit ones are scaled by 1/65535 (their full range), "F" taken as 0..1.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_UINT16_MAX = 65535.0
_UINT8_MAX = 255.0
# What Pillow raises for files it cannot decode (PIL docs: Image.open raises UnidentifiedImageError (an OSError),
# truncated data raises OSError on load, some decoders ValueError / SyntaxError / EOFError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, PIL.Image.DecompressionBombError)


# ------------------------------------------------------------------------------------------------------ DataInfo
@dataclass
class DataInfo:
    """What a run knows of its data; written as ``RUN/dataset.json`` and into ``summary.json``.

    Attributes:
        name: ``dataset.name``. classes: class names, label ``i`` is ``classes[i]``. num_classes: their number.
        in_channels: 1 or 3. image_size: side of the square input. mean, std: per channel, of the training split
            (pixel values scaled to 0..1). images: ``{"train": n, "test": n}``. per_class: ``{split: {class: n}}``.
        skipped: unreadable files skipped (``dataset.skip_bad_images``), relative to the data folder.
        ignored: files that are not images (by suffix), not read.

    Example::

        DataInfo.from_dict(json.loads(Path("runs/r/dataset.json").read_text())).classes
    """

    name: str
    classes: list[str]
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    images: dict[str, int]
    per_class: dict[str, dict[str, int]]
    skipped: list[str] = field(default_factory=list)
    ignored: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataInfo:
        """The :class:`DataInfo` of :meth:`to_dict`'s dict (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def summary(self) -> dict[str, Any]:
        """The keys a run's ``summary.json`` holds: every field; ``per_class`` as the counts per split and class."""
        return self.to_dict()


def _counts(targets: list[int], classes: list[str]) -> dict[str, int]:
    counted = Counter(targets)
    return {name: int(counted.get(i, 0)) for i, name in enumerate(classes)}


# ------------------------------------------------------------------------------------------------------ pixels
def _is_gray(image: PIL.Image.Image) -> bool:
    if image.mode in _GRAY_MODES:
        return True
    return image.mode in ("P", "PA") and image.palette is not None and image.palette.mode == "L"


def _equal_channels(array: np.ndarray) -> bool:
    """Whether an ``HxWx3`` image is gray (a grayscale picture saved as RGB, palette or WebP)."""
    return bool((array[:, :, 0] == array[:, :, 1]).all() and (array[:, :, 1] == array[:, :, 2]).all())


def _pixels(image: PIL.Image.Image, channels: int) -> np.ndarray:
    """``image`` as an ``HxWxC`` array with ``channels`` channels: uint8, or float32 0..1 for 16-bit / float."""
    if image.mode in _WIDE_MODES or image.mode == "F":
        scale = _UINT16_MAX if image.mode in _WIDE_MODES else 1.0
        array = np.asarray(image, dtype=np.float32) / scale
        array = np.clip(array, 0.0, 1.0)[:, :, None]
        return np.repeat(array, channels, axis=2) if channels == 3 else array
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _to_tensor(array: np.ndarray, image_size: int) -> torch.Tensor:
    """``HxWxC`` array as a ``CxSxS`` tensor (its dtype kept), resized (bilinear, antialiased) when needed."""
    tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())
    if tensor.shape[1:] == (image_size, image_size):
        return tensor
    resized = torch.nn.functional.interpolate(tensor[None].float(), size=(image_size, image_size), mode="bilinear",
                                              antialias=True, align_corners=False)[0]
    if tensor.dtype == torch.uint8:
        return resized.round().clamp(0, _UINT8_MAX).to(torch.uint8)
    return resized


def _as_float(image: torch.Tensor) -> torch.Tensor:
    return image.float().div(_UINT8_MAX) if image.dtype == torch.uint8 else image.float()


def _decode(path: Path, channels: int, image_size: int) -> torch.Tensor:
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return _to_tensor(_pixels(image, channels), image_size)
    except _DECODE_ERRORS as exc:
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------------------------------------ sources
class _Images:
    """The untransformed images of one split: ``len``, ``get(i)`` (float ``CxSxS`` in 0..1) and ``targets``."""

    targets: list[int]

    def __len__(self) -> int:
        return len(self.targets)

    def get(self, index: int) -> torch.Tensor:
        raise NotImplementedError


class _TensorImages(_Images):
    """Images decoded once and kept (``uint8`` or ``float32`` tensors of one shape)."""

    def __init__(self, images: list[torch.Tensor] | torch.Tensor, targets: list[int]):
        self.images = images
        self.targets = targets

    def get(self, index: int) -> torch.Tensor:
        return _as_float(self.images[index])


class _FileImages(_Images):
    """Images decoded from their files on every access (``dataset.cache: none``)."""

    def __init__(self, paths: list[Path], targets: list[int], channels: int, image_size: int):
        self.paths = paths
        self.targets = targets
        self.channels = channels
        self.image_size = image_size

    def get(self, index: int) -> torch.Tensor:
        return _as_float(_decode(self.paths[index], self.channels, self.image_size))


class ImageDataset(Dataset):
    """A map-style dataset of one split: ``(normalised float tensor (C, S, S), int label)``.

    ``transform`` runs on the normalised tensor (the DARTS augmentation of :meth:`OwnImages.dataset`).

    Example::

        image, label = images.dataset(train=False)[0]
    """

    def __init__(self, source: _Images, mean: list[float], std: list[float], transform: Any = None):
        self.source = source
        self.targets = source.targets
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = (self.source.get(index) - self.mean) / self.std
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def augmentation(image_size: int, *, flip: bool, cutout: int | None) -> v2.Compose:
    """The DARTS training augmentation at any size: RandomCrop(S, padding=S // 8), a horizontal flip when
    ``flip``, then Cutout of side ``cutout`` (quark0/darts ``cnn/utils.py``: 32 px, padding 4, Cutout 16).

    Example::

        augmentation(64, flip=False, cutout=16)
    """
    steps: list[Any] = [v2.RandomCrop(image_size, padding=image_size // CROP_PADDING_DIVISOR)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if cutout:
        steps.append(Cutout(cutout))
    return v2.Compose(steps)


@dataclass
class OwnImages:
    """Both splits of a dataset, checked and (when cached) decoded, and their :class:`DataInfo`.

    Example::

        images = load_images("npz", "data/set.npz", seed=0)
        train, test = images.dataset(train=True, cutout=8), images.dataset(train=False)
    """

    info: DataInfo
    train: _Images
    test: _Images
    flip: bool = True

    def dataset(self, *, train: bool, cutout: int | None = None) -> ImageDataset:
        """The training split with the DARTS augmentation (``cutout``: Cutout side, None: none), or the test split."""
        source = self.train if train else self.test
        transform = augmentation(self.info.image_size, flip=self.flip, cutout=cutout) if train else None
        return ImageDataset(source, self.info.mean, self.info.std, transform)


# ------------------------------------------------------------------------------------------------------ checks
def _check_classes(classes: list[str], targets: dict[str, list[int]], where: str) -> None:
    if len(classes) < 2:
        raise DataFolderError(f"{where}: {len(classes)} class{'es' if len(classes) != 1 else ''} "
                              f"({', '.join(classes) or 'none'}); a classifier needs at least 2")
    for split, labels in targets.items():
        present = set(labels)
        empty = [name for i, name in enumerate(classes) if i not in present]
        if empty:
            raise DataFolderError(f"{where}: class {empty[0]!r} has no image in the {split} split"
                                  + (f" (nor {', '.join(map(repr, empty[1:]))})" if len(empty) > 1 else ""))


def _statistics(source: _Images, channels: int, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (population) of ``source``: all images, or a seeded sample of
    ``constants.STATISTICS_SAMPLE``."""
    n = len(source)
    indices = range(n)
    if n > STATISTICS_SAMPLE:
        indices = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:STATISTICS_SAMPLE].tolist()
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for i in indices:
        image = source.get(i).double()
        total += image.sum(dim=(1, 2))
        squares += (image * image).sum(dim=(1, 2))
        count += image.shape[1] * image.shape[2]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: leave it unscaled
    return [round(float(v), 8) for v in mean], [round(float(v), 8) for v in std]


def _check_stats(name: str, values: list[float] | None, channels: int) -> list[float] | None:
    if values is None:
        return None
    if len(values) != channels:
        raise DatasetError(f"dataset.{name}: {len(values)} value(s) for images of {channels} channel(s)")
    return [float(v) for v in values]


# ------------------------------------------------------------------------------------------------------ folders
def _list_split(root: Path, classes: list[str], data_dir: Path) -> tuple[list[Path], list[int], int]:
    paths: list[Path] = []
    labels: list[int] = []
    ignored = 0
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if path.suffix.lower() in IMAGE_SUFFIXES and not filename.startswith("."):
                    paths.append(path)
                    labels.append(label)
                else:
                    ignored += 1
    return paths, labels, ignored


def _find_classes(root: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


class _Scan:
    """One pass over the files: each decoded once (checked), its size and grayness noted, kept when cached."""

    def __init__(self, data_dir: Path, cache: str, skip_bad_images: bool, channels: int | None):
        self.data_dir = data_dir
        self.cache = cache
        self.skip = skip_bad_images
        self.channels = channels
        self.kept_bytes = 0
        self.keep = cache != "none"
        self.skipped: list[str] = []
        self.sizes: dict[tuple[int, int], Path] = {}
        self.all_gray = True

    def read(self, paths: list[Path], labels: list[int]) -> tuple[list[Path], list[int], list[Any]]:
        good_paths, good_labels, pixels = [], [], []
        for path, label in zip(paths, labels, strict=True):
            try:
                with PIL.Image.open(path) as image:
                    image.load()
                    gray = _is_gray(image)
                    array = _pixels(image, self.channels or (1 if gray else 3))
                    size = image.size
                if not gray and self.channels is None and _equal_channels(array):  # gray stored as colour
                    gray, array = True, array[:, :, :1]
            except _DECODE_ERRORS as exc:
                if not self.skip:
                    raise BadImageError(path, f"{type(exc).__name__}: {exc}") from None
                self.skipped.append(str(path.relative_to(self.data_dir)))
                _logger.warning("skipped unreadable image %s (%s)", path, exc)
                continue
            self.all_gray &= gray
            self.sizes.setdefault(size, path)
            if self.keep:
                self.kept_bytes += array.nbytes
                if self.cache == "auto" and self.kept_bytes > MEMORY_CACHE_BYTES:
                    _logger.info("dataset.cache auto: decoded images exceed %d bytes; decoding on access",
                                 MEMORY_CACHE_BYTES)
                    self.keep = False
                    pixels = []
            good_paths.append(path)
            good_labels.append(label)
            if self.keep:
                pixels.append((array, gray))
        return good_paths, good_labels, pixels


def _image_folder(data_dir: Path, *, image_size: int | None, in_channels: int | None, test_fraction: float,
                  cache: str, skip_bad_images: bool, seed: int) -> tuple[dict[str, _Images], list[str], int, int,
                                                                        list[str], int]:
    if not data_dir.is_dir():
        raise DataFolderError(f"dataset.data_dir {data_dir}: no such folder (expected {data_dir}/train/CLASS/*.png "
                              "and optionally test/CLASS/*.png)")
    train_root = data_dir / "train"
    if not train_root.is_dir():
        raise DataFolderError(f"dataset.data_dir {data_dir}: no train/ folder (expected train/CLASS/*.png, e.g. "
                              f"train/cat/1.png, and optionally test/CLASS/*.png)")
    test_root = next((data_dir / name for name in _TEST_FOLDERS if (data_dir / name).is_dir()), None)
    classes = _find_classes(train_root)
    if not classes:
        raise DataFolderError(f"{train_root}: empty, no class folders (expected train/CLASS/*.png)")
    if test_root is not None:
        test_classes = _find_classes(test_root)
        if test_classes != classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            parts = ([f"only in train/: {', '.join(only_train)}"] if only_train else []) + (
                [f"only in {test_root.name}/: {', '.join(only_test)}"] if only_test else [])
            raise DataFolderError(f"{data_dir}: train/ and {test_root.name}/ have different classes "
                                  f"({'; '.join(parts)})")
    scan = _Scan(data_dir, cache, skip_bad_images, in_channels)
    listed = {"train": _list_split(train_root, classes, data_dir)}
    if test_root is not None:
        listed["test"] = _list_split(test_root, classes, data_dir)
    ignored = sum(item[2] for item in listed.values())
    if sum(len(item[0]) for item in listed.values()) == 0:
        raise DataFolderError(f"{data_dir}: no images in the class folders (read: {', '.join(IMAGE_SUFFIXES)}; "
                              f"{ignored} other file(s) ignored)")
    read = {split: scan.read(paths, labels) for split, (paths, labels, _) in listed.items()}
    if test_root is None:  # a seeded held-out fraction of each class
        paths, labels, pixels = read["train"]
        _check_classes(classes, {"train": labels}, str(data_dir))
        generator = np.random.default_rng(seed)
        test_rows: set[int] = set()
        for label, name in enumerate(classes):
            rows = [i for i, y in enumerate(labels) if y == label]
            if len(rows) < 2:
                raise DataFolderError(f"{train_root / name}: {len(rows)} image(s); without a test/ folder each class "
                                      "needs at least 2 (one is held out for testing)")
            n_test = min(len(rows) - 1, max(1, round(test_fraction * len(rows))))
            test_rows.update(generator.permutation(rows)[:n_test].tolist())
        split_rows = {"train": [i for i in range(len(labels)) if i not in test_rows], "test": sorted(test_rows)}
        read = {split: ([paths[i] for i in rows], [labels[i] for i in rows], [pixels[i] for i in rows] if pixels
                        else []) for split, rows in split_rows.items()}
    _check_classes(classes, {split: item[1] for split, item in read.items()}, str(data_dir))

    channels = in_channels or (1 if scan.all_gray else 3)
    if image_size is None:
        if len(scan.sizes) > 1:
            (size_a, path_a), (size_b, path_b) = list(scan.sizes.items())[:2]
            raise ImageSizeError(f"images differ in size: {path_a} is {size_a[0]}x{size_a[1]}, {path_b} is "
                                 f"{size_b[0]}x{size_b[1]}; set dataset.image_size to resize them all")
        (width, height), path = next(iter(scan.sizes.items()))
        if width != height:
            raise ImageSizeError(f"images are {width}x{height} (e.g. {path}), not square; set dataset.image_size to "
                                 "resize them to a square")
        image_size = width
    sources: dict[str, _Images] = {}
    for split, (paths, labels, pixels) in read.items():
        if scan.keep:
            images = [_to_tensor(_regray(array, channels), image_size) for array, _ in pixels]
            sources[split] = _TensorImages(images, labels)
        else:
            sources[split] = _FileImages(paths, labels, channels, image_size)
    return sources, classes, channels, image_size, scan.skipped, ignored


def _regray(array: np.ndarray, channels: int) -> np.ndarray:
    """A kept image decoded with its own channel count, brought to the run's (gray to RGB by repetition)."""
    if array.shape[2] == channels:
        return array
    if channels == 3:
        return np.repeat(array, 3, axis=2)
    raise AssertionError("colour images make a 3-channel run")  # in_channels None: 1 only when all are gray


# ------------------------------------------------------------------------------------------------------ arrays
def _array_images(x: np.ndarray, where: str) -> torch.Tensor:
    """``x`` (NHW, NHWC or NCHW; uint8 or float 0..1) as an ``NxCxHxW`` tensor (uint8 or float32)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise LabelError(f"{where}: images must be N x H x W, N x H x W x C or N x C x H x W with C 1 or 3, "
                         f"got shape {x.shape}")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if not np.issubdtype(x.dtype, np.floating):
        raise LabelError(f"{where}: images must be uint8 (0..255) or float (0..1), got {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _array_labels(y: Any, n: int, num_classes: int | None, where: str) -> list[int]:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise LabelError(f"{where}: labels must be a 1-D array of integers, got {y.dtype} of shape {y.shape}")
    if len(y) != n:
        raise LabelError(f"{where}: {len(y)} labels for {n} images; there must be one label per image")
    if len(y) and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        top = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise LabelError(f"{where}: label {bad} is out of range (labels must be {top})")
    return [int(v) for v in y]


def _from_arrays(splits: dict[str, tuple[Any, Any]], classes: list[str] | None, where: str
                 ) -> tuple[dict[str, torch.Tensor], dict[str, list[int]], list[str]]:
    images = {split: _array_images(np.asarray(x), f"{where} x_{split}") for split, (x, _) in splits.items()}
    count = len(classes) if classes is not None else None
    labels = {split: _array_labels(y, len(images[split]), count, f"{where} y_{split}")
              for split, (_, y) in splits.items()}
    if classes is None:
        top = max(labels["train"], default=0)
        classes = [str(i) for i in range(top + 1)]
        labels["test"] = _array_labels(labels["test"], len(images["test"]), len(classes), f"{where} y_test")
    shapes = {split: tuple(x.shape[1:]) for split, x in images.items()}
    if shapes["train"] != shapes["test"]:
        raise ImageSizeError(f"{where}: x_train images are {shapes['train']} but x_test images are {shapes['test']}")
    return images, labels, classes


def _npz(path: Path) -> tuple[dict[str, tuple[Any, Any]], list[str] | None]:
    if not path.is_file():
        raise FileNotFoundError(f"dataset.data_dir {path}: no such .npz file (expected one file with x_train, "
                                "y_train, x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x_train", "y_train", "x_test", "y_test") if key not in archive.files]
            if missing:
                raise LabelError(f"{path}: missing array(s) {', '.join(missing)} (has: {', '.join(archive.files)})")
            splits = {split: (archive[f"x_{split}"], archive[f"y_{split}"]) for split in _SPLITS}
            classes = [str(c) for c in archive["classes"].tolist()] if "classes" in archive.files else None
    except (OSError, ValueError, EOFError) as exc:  # not a zip / a pickled object array
        raise LabelError(f"{path}: cannot read the .npz file ({type(exc).__name__}: {exc})") from None
    return splits, classes


def _missing_files(title: str, folder: Path, files: list[str], source: str) -> None:
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{title} not found in {folder} (missing {', '.join(missing)}; expected "
                                f"{', '.join(files)}): put the files from {source} there (they are never "
                                "downloaded)")


def _torchvision(name: str, root: Path) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
    """The two splits of a torchvision dataset in ``root``, as arrays, checked for their files first."""
    import torchvision.datasets as tvd

    splits: dict[str, tuple[Any, Any]] = {}
    if name in ("mnist", "fashion-mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        files = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
        _missing_files(cls.__name__, root / cls.__name__ / "raw", files, cls.mirrors[0])
        for split in _SPLITS:
            data = _load_torchvision(cls, root, train=split == "train")
            splits[split] = (data.data.numpy(), data.targets.numpy())
        return splits, list(data.classes)
    if name == "cifar100":
        folder = root / tvd.CIFAR100.base_folder
        _missing_files("CIFAR-100", folder, ["train", "test", "meta"], tvd.CIFAR100.url)

        class _Cifar100(tvd.CIFAR100):  # files checked above; their md5 is not (files written in its format load)
            train_list = [[n, None] for n, _ in tvd.CIFAR100.train_list]
            test_list = [[n, None] for n, _ in tvd.CIFAR100.test_list]
            meta = dict(tvd.CIFAR100.meta, md5=None)

        for split in _SPLITS:
            data = _load_torchvision(_Cifar100, root, train=split == "train")
            splits[split] = (data.data, np.asarray(data.targets))
        return splits, list(data.classes)
    files = [tvd.SVHN.split_list[split][1] for split in _SPLITS]
    _missing_files("SVHN", root, files, "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat)")

    class _Svhn(tvd.SVHN):  # files checked above; their md5 is not
        split_list = {key: [url, filename, None] for key, (url, filename, _) in tvd.SVHN.split_list.items()}

    for split in _SPLITS:
        data = _load_torchvision(_Svhn, root, split=split)
        splits[split] = (data.data, np.asarray(data.labels))
    return splits, [str(i) for i in range(10)]


def _load_torchvision(cls: Any, root: Path, **kwargs: Any) -> Any:
    import pickle

    try:
        return cls(str(root), download=False, **kwargs)
    except (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError, IndexError) as exc:
        raise LabelError(f"{root}: the files do not load ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------------------ entry
def load_images(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    *,
    image_size: int | None = None,
    in_channels: int | None = None,
    test_fraction: float = IMAGEFOLDER_TEST_FRACTION,
    cache: str = "auto",
    skip_bad_images: bool = False,
    seed: int = 0,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    flip: bool = True,
) -> OwnImages:
    """Read and check both splits of dataset ``name`` (:data:`OWN_DATASETS`) in ``data_dir``.

    ``image_size``: resize to it (else the images' own square size); ``in_channels``: 1 or 3 (else 1 when every
    image is grayscale, else 3); ``mean`` / ``std``: per-channel statistics to use (else computed on the training
    split, a seeded sample of at most ``constants.STATISTICS_SAMPLE`` images); ``seed``: the held-out split
    (imagefolder without test/) and the statistics sample.

    Raises:
        FileNotFoundError: missing files of a torchvision dataset or the ``.npz`` file (names folder and files).
        DataFolderError, BadImageError, ImageSizeError, LabelError: unusable data (one line naming it).
        ArgumentTypeError, ArgumentValueError: a bad argument.

    Example::

        images = load_images("imagefolder", "data", image_size=25, seed=0)
    """
    name = check_choice("name", name, OWN_DATASETS)
    if data_dir is None:
        raise DataFolderError(f"dataset.data_dir: {name} needs a data folder (dataset.data_dir or --data-dir)")
    data_dir = Path(data_dir).expanduser()
    image_size = check_optional(check_int, "image_size", image_size, minimum=1)
    in_channels = check_optional(check_choice, "in_channels", in_channels, (1, 3))
    test_fraction = check_float("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    cache = check_choice("cache", cache, CACHE_MODES)
    skip_bad_images = check_bool("skip_bad_images", skip_bad_images)
    seed = check_int("seed", seed, minimum=0)
    flip = check_bool("flip", flip)

    skipped: list[str] = []
    ignored = 0
    if name == "imagefolder":
        sources, classes, channels, image_size, skipped, ignored = _image_folder(
            data_dir, image_size=image_size, in_channels=in_channels, test_fraction=test_fraction, cache=cache,
            skip_bad_images=skip_bad_images, seed=seed)
        if skipped:
            _logger.warning("skipped %d unreadable image(s): %s", len(skipped), ", ".join(skipped))
    else:
        splits, classes = _npz(data_dir) if name == "npz" else _torchvision(name, data_dir)
        images, labels, classes = _from_arrays(splits, classes, str(data_dir))
        _check_classes(classes, labels, str(data_dir))
        native = images["train"].shape[-1]
        if images["train"].shape[-2] != native and image_size is None:
            raise ImageSizeError(f"{data_dir}: images are {images['train'].shape[-1]}x{images['train'].shape[-2]}, "
                                 "not square; set dataset.image_size to resize them to a square")
        own_channels = images["train"].shape[1]
        channels = in_channels or own_channels
        image_size = image_size or native
        sources = {split: _TensorImages(_convert(x, own_channels, channels, image_size), labels[split])
                   for split, x in images.items()}

    mean = _check_stats("mean", mean, channels)
    std = _check_stats("std", std, channels)
    if mean is None or std is None:
        computed_mean, computed_std = _statistics(sources["train"], channels, seed)
        mean = mean or computed_mean
        std = std or computed_std
    info = DataInfo(
        name=name, classes=list(classes), num_classes=len(classes), in_channels=channels, image_size=image_size,
        mean=mean, std=std, images={split: len(sources[split]) for split in _SPLITS},
        per_class={split: _counts(sources[split].targets, list(classes)) for split in _SPLITS},
        skipped=skipped, ignored=ignored,
    )
    _logger.info("dataset %s: %d classes, %d channel(s), %dx%d, %d train / %d test images%s", name, info.num_classes,
                 channels, image_size, image_size, info.images["train"], info.images["test"],
                 f", {ignored} non-image file(s) ignored" if ignored else "")
    return OwnImages(info=info, train=sources["train"], test=sources["test"], flip=flip)


def _convert(images: torch.Tensor, own: int, channels: int, image_size: int) -> torch.Tensor:
    """``NxCxHxW`` images to ``channels`` channels (gray repeated; RGB to ITU-R 601 luma, as Pillow's "L") and
    ``image_size``."""
    if own == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        gray = (images.float() * weights).sum(dim=1, keepdim=True)
        images = gray.round().clamp(0, _UINT8_MAX).to(torch.uint8) if images.dtype == torch.uint8 else gray
    elif own == 1 and channels == 3:
        images = images.repeat(1, 3, 1, 1)
    if tuple(images.shape[-2:]) == (image_size, image_size):
        return images
    resized = torch.nn.functional.interpolate(images.float(), size=(image_size, image_size), mode="bilinear",
                                              antialias=True, align_corners=False)
    return resized.round().clamp(0, _UINT8_MAX).to(torch.uint8) if images.dtype == torch.uint8 else resized


def digits_info(image_size: int) -> DataInfo:
    """The :class:`DataInfo` basics of scikit-learn's digits as :mod:`nni_darts_ext.data` serves them (3 equal
    channels, normalised by ``constants.DIGITS_MEAN`` / ``DIGITS_STD``); counts are filled in by the caller.

    Example::

        digits_info(8).classes[:3]   # ['0', '1', '2']
    """
    from .constants import DIGITS_MEAN, DIGITS_STD

    return DataInfo(name="digits", classes=[str(i) for i in range(10)], num_classes=10, in_channels=3,
                    image_size=image_size, mean=[DIGITS_MEAN] * 3, std=[DIGITS_STD] * 3, images={}, per_class={})


def memory_bytes(info: DataInfo) -> int:
    """Bytes the decoded uint8 images of ``info`` take in memory (both splits).

    Example::

        memory_bytes(images.info) < constants.MEMORY_CACHE_BYTES
    """
    per_image = info.in_channels * info.image_size * info.image_size
    return per_image * sum(info.images.values())

