"""Datasets and loaders for DARTS search and retraining: a seeded search split, CIFAR-10 and offline digits.

* :func:`search_split` / :func:`search_dataloaders`: DARTS searches on two halves of the training set (weights
  on one, architecture on the other; quark0/darts ``cnn/train_search.py``), here shuffled with a seed and
  returned as indices so that they can be saved.
* :func:`cifar10`: torchvision's CIFAR-10 with one-line errors for missing or corrupt files.
* :func:`digits`: scikit-learn's bundled handwritten digits (no download), shaped like small RGB images, for
  quick searches on a CPU.
* :func:`get_dataset`: the above by name, with the DARTS transforms.

Every dataset here is ``nni.trace``d, so NNI can dump loaders over it (``nni.dump(loader)``).

Example::

    train = get_dataset("digits", train=True, cutout=8)
    search_train, search_val = search_dataloaders(train, batch_size=16)
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import pickle
from collections.abc import Callable, Sequence, Sized
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset, Subset
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.checks import check_bool, check_int
from nni_darts_ext.constants import (
    CIFAR10_IMAGE_SIZE,
    DIGITS_IMAGE_SIZE,
    DIGITS_MEAN,
    DIGITS_NATIVE_SIZE,
    DIGITS_STD,
    DIGITS_TEST_FRACTION,
    NUM_CLASSES,
    SEARCH_TRAIN_FRACTION,
)
from nni_darts_ext.errors import ArgumentTypeError, DatasetError
from nni_darts_ext.transforms import Cutout, cifar10_transforms

with import_nni_quietly():
    import nni

__all__ = [
    "DATASETS",
    "CIFAR10Dataset",
    "DatasetError",
    "DigitsDataset",
    "cifar10",
    "digits",
    "get_dataset",
    "search_dataloaders",
    "search_split",
]

_logger = logging.getLogger(__name__)

#: Names accepted by :func:`get_dataset`.
DATASETS: tuple[str, ...] = ("cifar10", "digits")

# Digits pixel values run 0..16 (sklearn.datasets.load_digits, "an integer in the range 0..16").
_DIGITS_MAX_VALUE = 16.0
# CIFAR-10 batches hold rows of 3 * 32 * 32 uint8 values (https://www.cs.toronto.edu/~kriz/cifar.html).
_CIFAR10_ROW = 3 * CIFAR10_IMAGE_SIZE * CIFAR10_IMAGE_SIZE


# --------------------------------------------------------------------------------------------------------------
# Search split
# --------------------------------------------------------------------------------------------------------------


def search_split(
    dataset: Sized, train_fraction: float = SEARCH_TRAIN_FRACTION, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split ``range(len(dataset))`` into DARTS's weight-training and architecture-validation indices.

    A seeded ``torch.randperm``; the first ``floor(n * train_fraction)`` indices go to training, the rest to
    validation, like quark0/darts ``train_search.py`` (which takes the first half unshuffled). The fraction is
    taken as the decimal it prints as, so ``0.29`` of 100 gives 29, not the 28 of ``floor(100 * 0.29)``.

    Returns:
        ``(train_indices, val_indices)``: two disjoint lists of ints covering ``range(len(dataset))``, the same
        for the same ``seed``.

    Raises:
        TypeError: ``dataset`` has no length, ``train_fraction`` is not a number, ``seed`` is not an int.
        ValueError: ``train_fraction`` outside (0, 1), or one side would be empty.

    Example::

        >>> train_idx, val_idx = search_split(range(10), 0.5, seed=0)
        >>> sorted(train_idx + val_idx) == list(range(10))
        True
    """
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(f"`dataset` must have a length, got {type(dataset).__name__}") from None
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, numbers.Real):
        raise TypeError(f"`train_fraction` must be a float, got {type(train_fraction).__name__}")
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"`train_fraction` must be in (0, 1), got {train_fraction}")
    seed = check_int("seed", seed, minimum=0)
    n_train = math.floor(Fraction(repr(float(train_fraction))) * n)
    if n_train == 0:  # n_train < n always holds, as train_fraction < 1: the validation side is never empty
        raise ValueError(f"`train_fraction`={train_fraction} of {n} samples leaves the training side empty")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return permutation[:n_train], permutation[n_train:]


def search_dataloaders(
    dataset: Dataset,
    batch_size: int,
    train_fraction: float = SEARCH_TRAIN_FRACTION,
    seed: int = 0,
    num_workers: int = 0,
    **loader_kwargs: Any,
) -> tuple[Any, Any]:
    """Two shuffled loaders over the :func:`search_split` halves of ``dataset``, for NNI's one-shot strategies.

    Each loader is a traced :class:`~nni_darts_ext.resumable_data.ResumableDataLoader` (its order depends on
    ``(seed, epoch)`` alone, so a resumed search replays it exactly) over a traced
    ``torch.utils.data.Subset`` with ``shuffle=True, drop_last=False``, so ``nni.dump(loader)`` works when
    ``dataset`` is traced too (all datasets of this module are). A Subset with ``shuffle`` rather than a
    ``SubsetRandomSampler`` (the NNI tutorial's way) lets Lightning's DDP swap in a ``DistributedSampler`` over
    the Subset, which gives each rank its own shard of each half.

    Args:
        dataset: any map-style dataset with a length.
        batch_size: samples per batch, an int >= 1.
        train_fraction, seed: see :func:`search_split`.
        num_workers: DataLoader worker processes, an int >= 0.
        **loader_kwargs: passed to the DataLoader (e.g. ``pin_memory``, ``generator``); not ``shuffle``,
            ``sampler``, ``batch_sampler`` or ``drop_last``, which this function sets.

    Returns:
        ``(train_loader, val_loader)``: pass them as NNI's ``train_dataloaders`` and ``val_dataloaders``.

    Example::

        train_loader, val_loader = search_dataloaders(get_dataset("digits", train=True), batch_size=16)
        evaluator = Classification(train_dataloaders=train_loader, val_dataloaders=val_loader, ...)
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_workers = check_int("num_workers", num_workers, minimum=0)
    fixed = sorted({"shuffle", "sampler", "batch_sampler", "drop_last"} & loader_kwargs.keys())
    if fixed:
        raise TypeError(f"search_dataloaders sets {', '.join(fixed)} itself; do not pass them")
    train_indices, val_indices = search_split(dataset, train_fraction, seed)

    from .resumable_data import ResumableDataLoader  # imports Lightning: only when needed

    traced_subset = nni.trace(Subset)
    loaders = tuple(
        nni.trace(ResumableDataLoader)(
            dataset=traced_subset(dataset=dataset, indices=indices),
            batch_size=batch_size,
            shuffle=True,
            seed=seed + half,  # each half's order depends on (seed, epoch) alone: an exact resume replays it
            drop_last=False,
            num_workers=num_workers,
            **loader_kwargs,
        )
        for half, indices in enumerate((train_indices, val_indices))
    )
    return loaders[0], loaders[1]


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------------------------

# What a broken pickle or a badly shaped array raises inside torchvision's CIFAR10.__init__ (pickle.load, then
# np.vstack(...).reshape(-1, 3, 32, 32)) and _load_meta (data["label_names"]). Missing files and md5 mismatches
# (torchvision's RuntimeError) are checked before torchvision runs.
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    ImportError,
    OverflowError,
)


def _cifar_file_problem(path: Path, *, meta: bool) -> str | None:
    """Why one CIFAR-10 file cannot be used, or None; loads it the way torchvision does."""
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except _LOAD_ERRORS as err:
        return f"cannot be unpickled ({type(err).__name__}: {err})"
    if not isinstance(entry, dict):
        return f"holds a {type(entry).__name__}, not a dict"
    if meta:
        names = entry.get("label_names")
        if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
            return f"has no list of {NUM_CLASSES} 'label_names' (keys: {', '.join(sorted(map(repr, entry)))})"
        return None
    if "data" not in entry or "labels" not in entry:
        return f"has no 'data' and 'labels' entries (keys: {', '.join(sorted(map(repr, entry)))})"
    data, labels = entry["data"], entry["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR10_ROW:
        shape = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        return f"'data' must be a uint8 array of shape (N, {_CIFAR10_ROW}), got {shape}"
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(data):
        count = len(labels) if isinstance(labels, (list, tuple, np.ndarray)) else type(labels).__name__
        return f"'labels' must hold one label per image ({len(data)}), got {count}"
    if any(not isinstance(label, numbers.Integral) or not 0 <= label < NUM_CLASSES for label in labels):
        return f"'labels' must be ints in 0..{NUM_CLASSES - 1}"
    return None


@nni.trace
class CIFAR10Dataset(torchvision.datasets.CIFAR10):
    """``torchvision.datasets.CIFAR10`` with clear errors for missing or corrupt files; see :func:`cifar10`.

    ``verify=True`` checks each file's md5 against torchvision's published sums (as torchvision always does);
    ``verify=False`` only checks that the files exist, so that files written in CIFAR's format (tests, a
    re-packed copy) load. Either way every file is then loaded by torchvision's own code and checked for shape,
    labels and class names. The files are pickles: only load files you trust (as with torchvision).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = False,
        verify: bool = True,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be a path, got {type(root).__name__}")
        train = check_bool("train", train)
        download = check_bool("download", download)
        self.verify = check_bool("verify", verify)
        root_path = Path(root).expanduser()
        folder = root_path / self.base_folder
        # torchvision requires all seven files whichever split is loaded; we verify and load the split's own.
        meta_file = (folder / self.meta["filename"], self.meta["md5"])
        all_files = [(folder / name, md5) for name, md5 in self.train_list + self.test_list] + [meta_file]
        wanted = [(folder / name, md5) for name, md5 in (self.train_list if train else self.test_list)]
        wanted.append(meta_file)

        if download and (self._missing(all_files) or (verify and self._bad_checksum(wanted))):
            download_and_extract_archive(self.url, str(root_path), filename=self.filename, md5=self.tgz_md5)
        missing = self._missing(all_files)
        if missing:
            expected = ", ".join(path.name for path, _ in all_files)
            lacking = "no files" if len(missing) == len(all_files) else f"missing {', '.join(p.name for p in missing)}"
            raise FileNotFoundError(
                f"CIFAR-10 not found in {folder} ({lacking}; expected {expected}): pass download=True, "
                f"or download {self.url} and extract it into {root_path}"
            )
        if verify:
            bad = self._bad_checksum(wanted)
            if bad is not None:
                path, expected_md5, actual_md5 = bad
                raise DatasetError(
                    f"{path} fails its md5 check (expected {expected_md5}, got {actual_md5}): the file is corrupt "
                    f"or not the official CIFAR-10; download it again, or pass verify=False for files you made"
                )

        # Checked above: torchvision's own checks become "file exists" (md5 None), its loading code stays.
        self.train_list = [[name, None] for name, _ in self.train_list]
        self.test_list = [[name, None] for name, _ in self.test_list]
        self.meta = dict(self.meta, md5=None)
        try:
            super().__init__(str(root_path), train=train, transform=transform, target_transform=target_transform)
        except _LOAD_ERRORS as err:
            raise self._diagnose(wanted, err) from err
        if (
            self.data.dtype != np.uint8
            or len(self.data) != len(self.targets)
            or len(self.classes) != NUM_CLASSES
            or any(not isinstance(t, numbers.Integral) or not 0 <= t < NUM_CLASSES for t in self.targets)
        ):
            raise self._diagnose(wanted, None)

    @staticmethod
    def _missing(wanted: Sequence[tuple[Path, str]]) -> list[Path]:
        return [path for path, _ in wanted if not path.is_file()]

    @staticmethod
    def _bad_checksum(wanted: Sequence[tuple[Path, str]]) -> tuple[Path, str, str] | None:
        for path, md5 in wanted:
            if not path.is_file():
                return path, md5, "no file"
            actual = calculate_md5(path)
            if actual != md5:
                return path, md5, actual
        return None

    def _diagnose(self, wanted: Sequence[tuple[Path, str]], err: BaseException | None) -> DatasetError:
        meta_path = wanted[-1][0]
        for path, _ in wanted:
            problem = _cifar_file_problem(path, meta=path == meta_path)
            if problem is not None:
                return DatasetError(f"corrupt CIFAR-10 file {path}: {problem}")
        detail = f" ({type(err).__name__}: {err})" if err is not None else ""
        files = ", ".join(str(path) for path, _ in wanted)
        return DatasetError(f"CIFAR-10 files in {wanted[0][0].parent} do not load together{detail}: {files}")


def cifar10(
    root: str | os.PathLike[str],
    train: bool,
    transform: Callable | None = None,
    download: bool = False,
    verify: bool = True,
) -> CIFAR10Dataset:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (torchvision's layout and loader), with clear errors.

    Args:
        root: folder that holds (or will hold) ``cifar-10-batches-py``.
        train: the 50,000-image training set (``data_batch_1..5``) or the 10,000-image test set (``test_batch``).
        transform: applied to each PIL image, e.g. :func:`~nni_darts_ext.transforms.cifar10_transforms`.
        download: fetch and extract the archive when the files are missing (or fail ``verify``).
        verify: check md5 sums like torchvision (default). ``False`` only checks that the files exist, for files
            written in CIFAR's format that are not the official ones.

    Raises:
        FileNotFoundError: files missing and ``download=False``; names the folder, the expected files, the URL.
        DatasetError: a file fails its md5 check, cannot be unpickled, or has the wrong shape or labels; names it.

    Example::

        train_set = cifar10("data", train=True, transform=cifar10_transforms(train=True), download=True)
    """
    return CIFAR10Dataset(root=root, train=train, transform=transform, download=download, verify=verify)


# --------------------------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------------------------


@nni.trace
class DigitsDataset(Dataset):
    """scikit-learn's 1797 handwritten 8x8 digits as normalised 3-channel float images; offline, seconds to train.

    At construction: pixel values scaled to [0, 1], resized once to ``image_size`` (bilinear), repeated to 3
    channels, normalised by the digits train-set statistics (``constants.DIGITS_MEAN`` / ``DIGITS_STD``). The
    split is a fixed stratified 80/20 ``train_test_split(random_state=seed)``: 1437 train / 360 test images for
    every seed. Items are ``(float32 tensor (3, S, S), int label 0..9)``; ``transform`` (e.g.
    :class:`~nni_darts_ext.transforms.Cutout`) runs on a copy of each image tensor.

    Attributes:
        images: ``(N, 3, S, S)`` float32 tensor; ``targets``: list of int labels; ``indices``: the rows of
        ``load_digits()`` in this split.

    Example::

        >>> ds = DigitsDataset(train=True, image_size=16)
        >>> len(ds), ds[0][0].shape
        (1437, torch.Size([3, 16, 16]))
    """

    def __init__(
        self, train: bool = True, transform: Callable | None = None, image_size: int = 32, seed: int = 0
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        super().__init__()
        self.train = check_bool("train", train)
        self.image_size = check_int("image_size", image_size, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be callable or None, got {type(transform).__name__}")
        self.transform = transform

        bunch = load_digits()
        all_indices = np.arange(len(bunch.target))
        train_rows, test_rows = train_test_split(
            all_indices, test_size=DIGITS_TEST_FRACTION, random_state=self.seed, stratify=bunch.target
        )
        rows = np.sort(train_rows if self.train else test_rows)
        pixels = torch.as_tensor(bunch.data[rows] / _DIGITS_MAX_VALUE, dtype=torch.float32)
        pixels = pixels.reshape(-1, 1, DIGITS_NATIVE_SIZE, DIGITS_NATIVE_SIZE)
        if self.image_size != DIGITS_NATIVE_SIZE:
            pixels = torch.nn.functional.interpolate(
                pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        self.images = ((pixels - DIGITS_MEAN) / DIGITS_STD).repeat(1, 3, 1, 1).contiguous()
        self.targets: list[int] = [int(t) for t in bunch.target[rows]]
        self.indices: list[int] = [int(r) for r in rows]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image.clone())
        return image, self.targets[index]

    def extra_repr(self) -> str:
        return f"train={self.train}, image_size={self.image_size}, seed={self.seed}, n={len(self)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def digits(
    train: bool, transform: Callable | None = None, image_size: int = 32, seed: int = 0
) -> DigitsDataset:
    """The :class:`DigitsDataset` split ``train`` (1437 images) or test (360), resized to ``image_size``.

    Example::

        train_set = digits(train=True, transform=Cutout(8), image_size=16)
    """
    return DigitsDataset(train=train, transform=transform, image_size=image_size, seed=seed)


# --------------------------------------------------------------------------------------------------------------
# By name
# --------------------------------------------------------------------------------------------------------------


def get_dataset(
    name: str,
    *,
    train: bool,
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    cutout: int | None = None,
    download: bool = False,
    verify: bool = True,
) -> Dataset:
    """A dataset of :data:`DATASETS` by name, with the DARTS augmentation for training.

    * ``"cifar10"``: :func:`cifar10` under ``root`` with :func:`~nni_darts_ext.transforms.cifar10_transforms`
      (Cutout ``cutout`` on the training split only); ``image_size`` must be None or 32.
    * ``"digits"``: :func:`digits` at ``image_size`` (default ``constants.DIGITS_IMAGE_SIZE`` = 16), with
      ``Cutout(cutout)`` on the training split when ``cutout`` is given; ``root``, ``download`` and ``verify``
      are ignored (the data ships with scikit-learn).
    * an own dataset (``imagefolder``, ``npz``, ``cifar100``, ``mnist``, ``fashion-mnist``, ``svhn``):
      :func:`nni_darts_ext.datasets.load_images` of ``root`` at ``image_size``, the split with the generalised
      DARTS augmentation (Cutout ``cutout`` px) for training; defaults for the other settings.

    Raises:
        ValueError: unknown ``name`` (lists the known ones), ``cutout`` longer than the image (names both),
            ``image_size`` other than 32 for CIFAR-10.
        TypeError: ``root`` missing for CIFAR-10, or arguments of the wrong type.

    Example::

        train_set = get_dataset("cifar10", train=True, root="data", cutout=16)
        test_set = get_dataset("digits", train=False)
    """
    from .datasets import OWN_DATASETS, load_images

    if name in OWN_DATASETS:  # read (and checked) on every call: build both splits from one load_images instead
        images = load_images(name, root, image_size=image_size)
        return images.dataset(train=check_bool("train", train), cutout=cutout)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join((*DATASETS, *OWN_DATASETS))}")
    train = check_bool("train", train)
    if cutout is not None:
        cutout = check_int("cutout", cutout, minimum=1)
    if image_size is not None:
        image_size = check_int("image_size", image_size, minimum=1)

    if name == "cifar10":
        if root is None:
            raise ArgumentTypeError("root", "is needed for CIFAR-10: the folder that holds cifar-10-batches-py")
        if image_size not in (None, CIFAR10_IMAGE_SIZE):
            raise ValueError(f"CIFAR-10 images are {CIFAR10_IMAGE_SIZE}x{CIFAR10_IMAGE_SIZE}; "
                             f"`image_size`={image_size} is not supported")
        _check_cutout_fits(cutout, CIFAR10_IMAGE_SIZE)
        transform = cifar10_transforms(train, cutout if train else None)
        return cifar10(root, train, transform, download=download, verify=verify)

    size = image_size if image_size is not None else DIGITS_IMAGE_SIZE
    _check_cutout_fits(cutout, size)
    transform = Cutout(cutout) if train and cutout else None
    return digits(train, transform=transform, image_size=size)


def _check_cutout_fits(cutout: int | None, image_size: int) -> None:
    if cutout is not None and cutout > image_size:
        raise ValueError(f"`cutout`={cutout} is longer than the {image_size}x{image_size} images "
                         f"(`image_size`={image_size})")
