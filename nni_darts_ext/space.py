"""The DARTS model space for any number of classes, input channels and image sizes.

NNI's ``nni.nas.hub.pytorch.DARTS`` is written for CIFAR-10 (3 channels, 10 classes) or ImageNet (3 channels,
1000 classes): its stem's first convolution reads 3 channels and its classifier has ``num_labels`` outputs fixed by
``dataset``. :class:`DartsSpace` is that space (same cells, same stems, same names of every parameter) with the
first stem convolution reading ``in_channels`` and the classifiers (the net's and the auxiliary head's) giving
``num_classes`` logits, so grayscale images go in as one channel (no silent conversion to RGB).

Stems (DARTS paper, Liu et al. ICLR 2019, Sec. 3.3 / Appendix; NNI ``nasnet.py`` ``NDS.__init__``):

* ``"cifar"``: one 3x3 convolution at full resolution; the cells reduce twice (/4 in all).
* ``"imagenet"``: three stride-2 3x3 convolutions (/8), then the cells' two reductions (/32 in all).

:func:`default_stem` picks ``imagenet`` for images of :data:`~nni_darts_ext.constants.IMAGENET_STEM_MIN_SIZE` px
and more; :func:`min_image_size` is the smallest input whose last stage still sees a 2x2 map.

Example::

    space = darts_space(num_classes=5, in_channels=1, image_size=64, width=8, num_cells=5)
    NasExperiment(space, evaluator, darts_strategy("first-order")).run()
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._compat import import_nni_quietly
from .checks import check_choice, check_int, check_optional
from .constants import (
    DARTS_NUM_CELLS,
    DARTS_WIDTH,
    IMAGENET_STEM_MIN_SIZE,
    LAST_STAGE_MIN_MAP,
    MIN_NUM_CELLS,
    NUM_CLASSES,
    STEM_REDUCTIONS,
)
from .errors import ArgumentValueError

with import_nni_quietly():
    from nni.nas.hub.pytorch import DARTS
    from nni.nas.space import model_context

__all__ = ["STEMS", "DartsSpace", "darts_space", "default_stem", "min_image_size", "check_image_size", "nni_shaped"]

#: The stems of NNI's DARTS space (its ``dataset`` argument).
STEMS: tuple[str, ...] = tuple(STEM_REDUCTIONS)


#: Classes of NNI's own DARTS net per stem (nasnet.py NDS: ``num_labels = 10 if dataset == 'cifar' else 1000``).
_NNI_NUM_LABELS = {"cifar": 10, "imagenet": 1000}


def nni_shaped(stem: str, num_classes: int, in_channels: int) -> bool:
    """Whether NNI's own ``DARTS(dataset=stem)`` already has ``num_classes`` outputs and ``in_channels`` inputs.

    Example::

        >>> nni_shaped("cifar", 10, 3), nni_shaped("cifar", 2, 1)
        (True, False)
    """
    return in_channels == 3 and num_classes == _NNI_NUM_LABELS[stem]


def default_stem(image_size: int) -> str:
    """``"imagenet"`` for images of :data:`~nni_darts_ext.constants.IMAGENET_STEM_MIN_SIZE` px and more, else
    ``"cifar"``.

    Example::

        >>> default_stem(32), default_stem(64)
        ('cifar', 'imagenet')
    """
    image_size = check_int("image_size", image_size, minimum=1)
    return "imagenet" if image_size >= IMAGENET_STEM_MIN_SIZE else "cifar"


def min_image_size(stem: str) -> int:
    """The smallest input side whose last stage still works on a ``LAST_STAGE_MIN_MAP`` x ``LAST_STAGE_MIN_MAP``
    map: ``LAST_STAGE_MIN_MAP * 2 ** (stride-2 steps)`` (8 for the cifar stem, 64 for the imagenet stem).

    Example::

        >>> min_image_size("cifar"), min_image_size("imagenet")
        (8, 64)
    """
    stem = check_choice("stem", stem, STEMS)
    return LAST_STAGE_MIN_MAP * 2 ** STEM_REDUCTIONS[stem]


def check_image_size(image_size: int, stem: str) -> int:
    """``image_size`` if the ``stem``'s net can reduce it, else ArgumentValueError (``argument`` "image_size")
    stating the minimum.

    Example::

        >>> check_image_size(25, "cifar")
        25
    """
    image_size = check_int("image_size", image_size, minimum=1)
    minimum = min_image_size(stem)
    if image_size < minimum:
        raise ArgumentValueError("image_size", f"is {image_size} px, too small for the DARTS net with the {stem} stem "
                                               f"({STEM_REDUCTIONS[stem]} halvings): the minimum is {minimum} px")
    return image_size


class DartsSpace(DARTS):
    """NNI's DARTS model space with ``in_channels`` input channels and ``num_classes`` outputs.

    Built as NNI's ``DARTS(width, num_cells, dataset=stem, auxiliary_loss, drop_path_prob)``; then the stem's first
    convolution is rebuilt for ``in_channels`` and the classifier (and the auxiliary head's, when present) for
    ``num_classes``. With 3 channels and NNI's class count (10 cifar, 1000 imagenet) nothing is replaced. Freezing
    (``DartsSpace.frozen_factory(arch)(...)``, a strategy's export) builds this class again, so the fixed net keeps
    both. Use :func:`darts_space` to build one with checked arguments.

    Example::

        net = DartsSpace.frozen_factory(arch)(width=16, num_cells=8, num_classes=2, in_channels=1)
    """

    def __init__(self, width: Any = (16, 24, 32), num_cells: Any = (4, 8, 12, 16, 20), dataset: str = "cifar",
                 auxiliary_loss: bool = False, drop_path_prob: float = 0.0, *, num_classes: int = NUM_CLASSES,
                 in_channels: int = 3):
        super().__init__(width=width, num_cells=num_cells, dataset=dataset, auxiliary_loss=auxiliary_loss,
                         drop_path_prob=drop_path_prob)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.num_labels = num_classes
        stem = self.stem0 if dataset == "imagenet" else self.stem
        first = stem[0]
        if in_channels != first.in_channels:
            stem[0] = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, stride=first.stride,
                                padding=first.padding, bias=False)
        if num_classes != self.classifier.out_features:
            self.classifier = nn.Linear(self.classifier.in_features, num_classes)
            if auxiliary_loss:
                head = self.auxiliary_head.classifier
                self.auxiliary_head.classifier = nn.Linear(head.in_features, num_classes)

    def freeze(self, sample: Any) -> DartsSpace:
        """The fixed net of ``sample`` (an arch dict), with this space's channels and classes."""
        with model_context(sample):
            return DartsSpace(self.width, self.num_cells, self.dataset, self.auxiliary_loss, self.drop_path_prob,
                              num_classes=self.num_classes, in_channels=self.in_channels)


def darts_space(
    num_classes: int = NUM_CLASSES,
    in_channels: int = 3,
    image_size: int = 32,
    width: int = DARTS_WIDTH,
    num_cells: int = DARTS_NUM_CELLS,
    stem: str | None = None,
) -> DartsSpace:
    """The DARTS model space for ``num_classes`` classes of ``in_channels``-channel ``image_size`` px images.

    ``stem`` None: :func:`default_stem` (imagenet from 64 px). Usable with NNI's ``NasExperiment`` and every preset
    of :func:`~nni_darts_ext.search.darts_strategy`.

    Raises:
        ArgumentTypeError, ArgumentValueError: a bad argument (``argument`` names it); ``image_size`` below
            :func:`min_image_size` of the stem (the message states the minimum).

    Example::

        space = darts_space(num_classes=2, in_channels=1, image_size=25, width=4, num_cells=3)
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    in_channels = check_int("in_channels", in_channels, minimum=1)
    width = check_int("width", width, minimum=1)
    num_cells = check_int("num_cells", num_cells, minimum=MIN_NUM_CELLS)
    image_size = check_int("image_size", image_size, minimum=1)
    stem = check_optional(check_choice, "stem", stem, STEMS)
    stem = stem or default_stem(image_size)
    check_image_size(image_size, stem)
    if stem == "imagenet" and width < 2:
        raise ArgumentValueError("width", f"must be >= 2 with the imagenet stem (its first conv has width // 2 "
                                          f"channels), got {width}")
    return DartsSpace(width=width, num_cells=num_cells, dataset=stem, num_classes=num_classes,
                      in_channels=in_channels)
