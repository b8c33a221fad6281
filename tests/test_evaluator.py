"""The NNI evaluator factories: darts_trainer, darts_evaluator (from loaders or a recipe), DartsLightning."""

from __future__ import annotations

import pytest
import torch
from nni_helpers import QUIET, digits_loaders, params_after_one_step, tiny_net

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.evaluator import (
    DartsLightning,
    darts_evaluator,
    darts_trainer,
    recipe_dataloaders,
)
from nni_darts_ext.training_module import DartsClassificationModule
from nni_darts_ext.transforms import Cutout

with import_nni_quietly():
    import nni
    from nni.nas.evaluator.pytorch import Lightning


# --------------------------------------------------------------------------------------------------- serialising


def test_evaluator_with_cutout_round_trips_and_trains_identically(darts_v2_arch):
    train_loader, val_loader = digits_loaders(cutout=4)
    kwargs = dict(max_epochs=1, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0, learning_rate=0.1, **QUIET)
    evaluator = darts_evaluator(train_loader, val_loader, **kwargs)
    assert isinstance(evaluator, Lightning)

    dumped = nni.dump(evaluator)
    assert "nni_darts_ext.data.DigitsDataset" in dumped and "nni_darts_ext.transforms.Cutout" in dumped
    restored = nni.load(dumped)
    assert isinstance(restored, DartsLightning) and isinstance(restored.module, DartsClassificationModule)
    transform = restored.train_dataloaders.dataset.dataset.transform
    assert isinstance(transform, Cutout) and transform.length == 4
    assert nni.dump(restored) == dumped

    before = [p.detach().clone() for p in tiny_net(darts_v2_arch).parameters()]
    original = params_after_one_step(evaluator, darts_v2_arch)
    reloaded = params_after_one_step(restored, darts_v2_arch)
    assert any(not torch.equal(a, b) for a, b in zip(before, original, strict=False))  # the step did train
    assert all(torch.equal(a, b) for a, b in zip(original, reloaded, strict=False))


def test_evaluator_can_evaluate_twice(darts_v2_arch):
    """NNI's sequential engine reuses one evaluator: the second model must train too (a Trainer fits once)."""
    train_loader, val_loader = digits_loaders()
    evaluator = darts_evaluator(train_loader, val_loader, max_epochs=1, max_steps=1, limit_val_batches=1,
                                num_sanity_val_steps=0, **QUIET)
    first_trainer = evaluator.trainer
    for seed in (0, 1):
        evaluator.evaluate(tiny_net(darts_v2_arch, seed=seed))
        assert evaluator.trainer.global_step == 1
    assert evaluator.trainer is not first_trainer


# ----------------------------------------------------------------------------------------------- from a recipe


def test_darts_evaluator_from_a_recipe_name():
    evaluator = darts_evaluator("demo", **QUIET)
    from nni_darts_ext.recipes import load_recipe

    r = load_recipe("demo").retrain
    assert isinstance(evaluator, DartsLightning)
    module, trainer = evaluator.module, evaluator.trainer
    assert module.hparams.learning_rate == r.learning_rate and module.max_epochs == r.epochs == trainer.max_epochs
    assert module.auxiliary_loss_weight == r.auxiliary_weight and module.drop_path_prob == r.drop_path_prob
    assert trainer.gradient_clip_val == r.gradient_clip
    assert evaluator.train_dataloaders.batch_size == r.batch_size
    assert len(evaluator.train_dataloaders.dataset) == 1437 and len(evaluator.val_dataloaders.dataset) == 360
    restored = nni.load(nni.dump(evaluator))
    assert len(restored.val_dataloaders.dataset) == 360 and restored.module.max_epochs == r.epochs


def test_darts_evaluator_from_a_recipe_with_held_out_validation(darts_v2_arch):
    from nni_darts_ext.recipes import load_recipe

    recipe = load_recipe("demo", ["retrain.cutout=4", "dataset.max_samples=100", "retrain.batch_size=16"])
    evaluator = darts_evaluator(recipe, validation=0.2, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                                num_sanity_val_steps=0, **QUIET)
    train_set, val_set = evaluator.train_dataloaders.dataset, evaluator.val_dataloaders.dataset
    assert (len(train_set), len(val_set)) == (80, 20)
    assert set(train_set.indices).isdisjoint(val_set.indices)
    assert isinstance(train_set.dataset.dataset.transform, Cutout) and val_set.dataset.dataset.transform is None
    evaluator.evaluate(tiny_net(darts_v2_arch))
    assert evaluator.trainer.global_step == 1 and "val_acc" in evaluator.trainer.callback_metrics


def test_darts_evaluator_argument_errors():
    from nni_darts_ext.recipes import RecipeError

    with pytest.raises(ValueError, match="validation"):
        darts_evaluator("demo", validation=1.5)
    with pytest.raises(TypeError, match="validation"):
        darts_evaluator(validation=0.1)
    with pytest.raises(TypeError, match="val_dataloaders"):
        darts_evaluator("demo", val_dataloaders=[])
    with pytest.raises(RecipeError, match="unknown recipe"):
        darts_evaluator("no-such-recipe")


# ------------------------------------------------------------------------------------------------ keyword split


def test_darts_evaluator_splits_keywords_between_module_and_trainer():
    train_loader, val_loader = digits_loaders()
    evaluator = darts_evaluator(train_loader, val_loader, learning_rate=0.07, auxiliary_loss_weight=0.0,
                                max_epochs=3, gradient_clip_val=2.5, **QUIET)
    module, trainer = evaluator.module, evaluator.trainer
    assert module.hparams.learning_rate == 0.07 and module.auxiliary_loss_weight == 0.0
    assert module.max_epochs == trainer.max_epochs == 3  # max_epochs goes to both: the schedule spans the run
    assert trainer.gradient_clip_val == 2.5 and not hasattr(module, "gradient_clip_val")
    assert evaluator.train_dataloaders is train_loader and evaluator.val_dataloaders is val_loader


def test_darts_trainer_maps_the_tutorials_gpus_keyword():
    with pytest.warns(DeprecationWarning, match="gpus"):
        trainer = darts_trainer(gpus=0, max_epochs=1, logger=False, enable_progress_bar=False)
    assert trainer.accelerator.__class__.__name__ == "CPUAccelerator" and trainer.num_devices == 1
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="not both"):
        darts_trainer(gpus=1, accelerator="cpu")


def test_recipe_dataloaders_use_the_recipe_batch_and_split():
    from nni_darts_ext.recipes import load_recipe

    recipe = load_recipe("demo", ["dataset.max_samples=50", "retrain.batch_size=10"])
    train, val, test = recipe_dataloaders(recipe, validation=0.2)
    # search_split keeps floor(50 * 0.8) = 40 images for training and holds out the other 10.
    assert (len(train.dataset), len(val.dataset), len(test.dataset)) == (40, 10, 50)
    assert {train.batch_size, val.batch_size, test.batch_size} == {10}
    _, val_on_test, test = recipe_dataloaders(recipe)
    assert val_on_test.dataset is test.dataset
    assert torch.equal(next(iter(val_on_test))[1], next(iter(test))[1])
