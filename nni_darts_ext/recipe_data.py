"""The datasets and retrain loaders of a recipe, each dataset built once.

A recipe's ``dataset`` section names the data (``name``, ``data_dir``, ``image_size``, ``max_samples``); its
``retrain`` section adds Cutout to the training split. :class:`RecipeData` builds each split a run needs once and
hands the same object to every stage (search, retrain, a baseline retrain), and :func:`retrain_loaders` turns it
into the ``(train, val, test)`` loaders of a retrain, with the validation split either the test split (the paper's
and NNI's tutorial's practice) or a held-out fraction of the training split.

Errors of the data themselves are not translated here: a missing file raises ``FileNotFoundError``, a corrupt
one :class:`~nni_darts_ext.errors.DatasetError`, CIFAR-10 without a ``data_dir`` ``TypeError``.

Example::

    data = RecipeData(load_recipe("demo"))
    train_loader, val_loader, test_loader = retrain_loaders(data, batch_size=32, validation=0.1)
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

import torch
from torch.utils.data import Subset

from ._compat import import_nni_quietly
from .constants import CIFAR10_IMAGE_SIZE, CIFAR10_MEAN, CIFAR10_STD
from .data import get_dataset, search_split

with import_nni_quietly():
    import nni

from .resumable_data import ResumableDataLoader

_logger = logging.getLogger(__name__)

__all__ = ["RecipeData", "cifar10_info", "held_out_fraction", "retrain_loaders", "scaled_cutout", "test_loader"]


class RecipeData:
    """The splits of one recipe's dataset, each built on first use and then shared.

    ``dataset.max_samples``, when set, keeps a seeded random subset (``recipe.seed``) of each split.

    Args:
        recipe: a :class:`~nni_darts_ext.recipes.Recipe` (its ``dataset`` section and ``seed`` are read).

    Example::

        data = RecipeData(recipe)
        data.split(train=True) is data.split(train=True)  # True: built once
    """

    def __init__(self, recipe: Any, *, statistics: tuple[list[float], list[float]] | None = None) -> None:
        self.recipe = recipe
        self._splits: dict[tuple[bool, int | None], Any] = {}
        self._own: Any = None
        #: Per-channel (mean, std) to use instead of the recipe's or the computed ones (a trained net's own).
        self.statistics = statistics
        #: How many datasets were built (each split and Cutout setting once).
        self.builds = 0

    @property
    def own(self) -> bool:
        """Whether the recipe's dataset is an own dataset (:mod:`nni_darts_ext.datasets`)."""
        from .datasets import OWN_DATASETS

        return self.recipe.dataset.name in OWN_DATASETS

    def images(self) -> Any:
        """The own dataset's :class:`~nni_darts_ext.datasets.OwnImages`, read and checked once."""
        if self._own is None:
            from .datasets import load_images

            d = self.recipe.dataset
            mean, std = self.statistics if self.statistics is not None else (d.mean, d.std)
            self._own = load_images(d.name, d.data_dir, image_size=d.image_size, in_channels=d.in_channels,
                                    test_fraction=d.test_fraction, cache=d.cache, skip_bad_images=d.skip_bad_images,
                                    seed=self.recipe.seed, mean=mean, std=std, flip=d.flip)
        return self._own

    def info(self, *, test: bool = True) -> Any:
        """The :class:`~nni_darts_ext.datasets.DataInfo` of the run's data (built splits with ``max_samples``).

        ``test=False``: the test split is neither built nor counted (a selection retrain never reads it). The test
        split of cifar10 / digits are counted only when a stage has built them (a search does not need the test
        split, an evaluation not the training split); with neither built, the training split is built.
        """
        from .datasets import DataInfo, digits_info

        wanted = {"train": True, "test": test}
        if self.own:
            splits = {name: self.split(train=name == "train") for name, want in wanted.items() if want}
        else:
            built = {("train" if train else "test"): split for (train, _), split in self._splits.items()}
            splits = {name: built[name] for name, want in wanted.items() if want and name in built}
            splits = splits or {"train": self.split(train=True)}
        if self.own:
            base = self.images().info
        else:
            base = digits_info(self.recipe.image_size) if self.recipe.dataset.name == "digits" else \
                cifar10_info(next(iter(splits.values())))
        counts = {name: _targets(split) for name, split in splits.items()}
        return DataInfo(
            name=base.name, classes=base.classes, num_classes=base.num_classes, in_channels=base.in_channels,
            image_size=base.image_size, mean=base.mean, std=base.std,
            images={name: len(targets) for name, targets in counts.items()},
            per_class={name: {c: targets.count(i) for i, c in enumerate(base.classes)}
                       for name, targets in counts.items()},
            skipped=base.skipped, ignored=base.ignored,
        )

    def split(self, *, train: bool, cutout: int | None = None) -> Any:
        """The training (``train=True``, optionally with Cutout of side ``cutout``) or test split."""
        key = (bool(train), cutout)
        if key not in self._splits:
            self._splits[key] = self._build(train=bool(train), cutout=cutout)
            self.builds += 1
        return self._splits[key]

    def _build(self, *, train: bool, cutout: int | None) -> Any:
        d = self.recipe.dataset
        if self.own:
            images = self.images()
            data = images.dataset(train=train, cutout=scaled_cutout(cutout, images.info.image_size))
        else:
            data = get_dataset(d.name, train=train, root=d.data_dir, image_size=d.image_size, cutout=cutout)
        limit = getattr(d, "max_samples", None)
        if limit is not None and len(data) > limit:  # a seeded random `limit` images of the split
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.recipe.seed))
            data = nni.trace(Subset)(dataset=data, indices=sorted(order[:limit].tolist()))
        return data


def scaled_cutout(cutout: int | None, image_size: int) -> int | None:
    """An own dataset's Cutout side: ``retrain.cutout`` is the side on CIFAR-10's 32 px (the paper's 16), scaled to
    ``image_size`` (at least 1 px); None stays None.

    Example::

        >>> scaled_cutout(16, 64), scaled_cutout(16, 25), scaled_cutout(None, 25)
        (32, 12, None)
    """
    if cutout is None:
        return None
    return max(1, round(cutout * image_size / CIFAR10_IMAGE_SIZE))


def cifar10_info(train: Any) -> Any:
    """The :class:`~nni_darts_ext.datasets.DataInfo` basics of CIFAR-10 (counts: :meth:`RecipeData.info`)."""
    from .datasets import DataInfo

    base = train.dataset if isinstance(train, Subset) else train
    return DataInfo(name="cifar10", classes=list(base.classes), num_classes=len(base.classes), in_channels=3,
                    image_size=CIFAR10_IMAGE_SIZE, mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD), images={},
                    per_class={})


def _targets(split: Any) -> list[int]:
    """The labels of a split, in order (through a ``Subset`` of ``max_samples``)."""
    if isinstance(split, Subset):
        inner = _targets(split.dataset)
        return [inner[i] for i in split.indices]
    return [int(t) for t in split.targets]


def held_out_fraction(validation: Any) -> float | None:
    """``None`` for ``validation="test"`` (validate on the test split), else the held-out fraction in (0, 1).

    Raises:
        ValueError: neither ``"test"`` nor a fraction in (0, 1).

    Example::

        >>> held_out_fraction(0.1), held_out_fraction("test")
        (0.1, None)
    """
    if isinstance(validation, str) and validation == "test":
        return None
    if isinstance(validation, numbers.Real) and not isinstance(validation, bool) and 0.0 < validation < 1.0:
        return float(validation)
    raise ValueError(f"validation must be 'test' or a fraction in (0, 1), got {validation!r}")


def retrain_loaders(
    data: RecipeData,
    *,
    batch_size: int,
    validation: str | float = "test",
    shuffle_seed: int | None = None,
    with_test: bool = True,
    world_size: int = 1,
) -> tuple[Any, Any, Any]:
    """``(train, val, test)`` loaders of a retrain: NNI's traced ``DataLoader`` over ``data``'s splits.

    The training split has ``retrain.cutout`` and is shuffled; the test split is not. The validation loader is
    the test split's (``validation="test"``) or a held-out ``validation`` fraction of the training split (split
    with ``recipe.seed`` by :func:`~nni_darts_ext.data.search_split`, taken from a copy without Cutout). Every
    loader yields ``batch_size`` samples per step: under DDP pass the per-device batch and ``world_size``.

    Args:
        data: the recipe's datasets.
        batch_size: samples per step of each loader, an int >= 1.
        validation: ``"test"`` or a fraction in (0, 1).
        shuffle_seed: seeds the training loader's order (with the epoch); ``None``: the recipe's seed
            (a loader that must stay serialisable with ``nni.dump`` takes no generator).
        with_test: build the test loader; ``False`` returns ``None`` in its place and never builds the test split
            (a selection retrain must not see it; needs a held-out ``validation`` fraction).

    Raises:
        ValueError: a bad ``validation`` or ``batch_size``.

    Example::

        train_loader, val_loader, test_loader = retrain_loaders(RecipeData(recipe), batch_size=48, validation=0.1)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    fraction = held_out_fraction(validation)
    if not with_test and fraction is None:
        raise ValueError("with_test=False needs a held-out validation fraction: the validation split would be the test "
                         "split")
    with import_nni_quietly():
        from nni.nas.evaluator.pytorch import DataLoader

    recipe = data.recipe
    train_set = data.split(train=True, cutout=recipe.retrain.cutout)
    if fraction is None:
        val_set = data.split(train=False)
    else:
        train_indices, val_indices = search_split(train_set, 1.0 - fraction, seed=recipe.seed)
        subset = nni.trace(Subset)
        val_set = subset(dataset=data.split(train=True), indices=val_indices)  # without Cutout
        train_set = subset(dataset=train_set, indices=train_indices)
    loader = {"batch_size": batch_size, "num_workers": recipe.dataset.num_workers}
    # The training order depends on (seed, epoch) alone, so an exact resume replays it.
    seed = recipe.seed if shuffle_seed is None else shuffle_seed
    # A last training batch of one image would stop the run: batch norm in training mode needs more than one value
    # per channel, and the auxiliary head's last map is 1x1. Such an image is left out of that epoch instead.
    # Under DDP each of the world_size processes reads its own ceil(n / world_size) images.
    per_process = -(-len(train_set) // world_size)
    lone = per_process % batch_size == 1 and per_process > 1
    if lone:
        _logger.info("retrain: %d training images per process in batches of %d leave a batch of one; it is dropped "
                     "each epoch", per_process, batch_size)
    return (
        nni.trace(ResumableDataLoader)(dataset=train_set, shuffle=True, drop_last=lone, seed=seed, **loader),
        DataLoader(dataset=val_set, shuffle=False, **loader),
        test_loader(data, batch_size=batch_size) if with_test else None,
    )


def test_loader(data: RecipeData, *, batch_size: int) -> Any:
    """NNI's traced ``DataLoader`` over the recipe's test split, in order, ``batch_size`` samples per step.

    Example::

        loader = test_loader(RecipeData(recipe), batch_size=recipe.retrain.batch_size)
    """
    with import_nni_quietly():
        from nni.nas.evaluator.pytorch import DataLoader

    return DataLoader(dataset=data.split(train=False), batch_size=batch_size, shuffle=False,
                      num_workers=data.recipe.dataset.num_workers)
