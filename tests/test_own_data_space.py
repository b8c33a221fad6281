"""The DARTS space and fixed net for any classes, channels and sizes (nni_darts_ext.space, arch.build_model)."""

from __future__ import annotations

import pytest
import torch

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.arch import DARTS_V2, build_model
from nni_darts_ext.errors import ArgumentValueError
from nni_darts_ext.search import darts_strategy, list_strategies
from nni_darts_ext.space import DartsSpace, darts_space, default_stem, min_image_size

with import_nni_quietly():
    from nni.nas.evaluator.pytorch import ClassificationModule, DataLoader, Lightning, Trainer
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import RawFormatModelSpace

CLASSES, CHANNELS, SIZE = 3, 1, 8


def _loader(seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, CHANNELS, SIZE, SIZE, generator=gen)
    y = torch.randint(0, CLASSES, (8,), generator=gen)
    return DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


@pytest.mark.parametrize(("stem", "size", "channels"), [("cifar", 8, 1), ("cifar", 25, 3), ("imagenet", 64, 1)])
def test_space_takes_channels_and_gives_classes(stem, size, channels):
    space = darts_space(num_classes=5, in_channels=channels, image_size=size, width=4, num_cells=3, stem=stem)
    assert space(torch.randn(2, channels, size, size)).shape == (2, 5)
    fixed = space.freeze(DARTS_V2)
    assert isinstance(fixed, DartsSpace) and fixed.eval()(torch.randn(2, channels, size, size)).shape == (2, 5)


def test_default_stem_is_imagenet_from_64_px():
    assert default_stem(63) == "cifar" and default_stem(64) == "imagenet"
    assert darts_space(num_classes=2, image_size=64, width=4, num_cells=3).dataset == "imagenet"


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_too_small_images_are_refused_with_the_minimum(stem):
    minimum = min_image_size(stem)
    with pytest.raises(ArgumentValueError, match=f"minimum is {minimum} px") as info:
        darts_space(num_classes=2, image_size=minimum - 1, width=4, num_cells=3, stem=stem)
    assert info.value.argument == "image_size"
    with pytest.raises(ArgumentValueError):
        build_model(DARTS_V2, width=4, num_cells=3, image_size=minimum - 1, stem=stem)


@pytest.mark.parametrize(("size", "stem"), [(8, "cifar"), (25, "cifar"), (48, "cifar"), (64, "imagenet"),
                                            (96, "imagenet")])
def test_fixed_net_with_auxiliary_head_trains_at_any_size(size, stem):
    net = build_model(DARTS_V2, width=4, num_cells=3, auxiliary_loss=True, image_size=size, num_classes=4,
                      in_channels=1, stem=stem)
    logits, aux = net.train()(torch.randn(2, 1, size, size))
    assert logits.shape == aux.shape == (2, 4)
    (logits.sum() + aux.sum()).backward()


def test_nni_shape_keeps_nni_net():
    assert type(build_model(DARTS_V2, width=4, num_cells=3)).__name__ == "DARTS"
    assert isinstance(build_model(DARTS_V2, width=4, num_cells=3, num_classes=2), DartsSpace)


@pytest.mark.parametrize("preset", [p for p in list_strategies() if p != "p-darts"])
def test_every_preset_searches_the_space(preset, tmp_path):
    torch.manual_seed(0)
    space = darts_space(num_classes=CLASSES, in_channels=CHANNELS, image_size=SIZE, width=4, num_cells=3)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    module = ClassificationModule(learning_rate=0.05, num_classes=CLASSES, export_onnx=False)
    evaluator = Lightning(module, trainer, train_dataloaders=_loader(0), val_dataloaders=_loader(1))
    strategy = darts_strategy(preset)
    strategy(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine())
    sample = next(iter(strategy.list_models())).sample
    net = build_model(sample, width=4, num_cells=3, num_classes=CLASSES, in_channels=CHANNELS, image_size=SIZE)
    assert net(torch.randn(2, CHANNELS, SIZE, SIZE)).shape == (2, CLASSES)


def test_p_darts_accepts_the_space():
    space = darts_space(num_classes=CLASSES, in_channels=CHANNELS, image_size=SIZE, width=4, num_cells=3)
    darts_strategy("p-darts").check_space(space)
    assert space.trace_kwargs["num_classes"] == CLASSES
