"""The assembly step of the pipeline: one dataset build per split, the per-device batch in every loader."""

from __future__ import annotations

import pytest

from nni_darts_ext import pipeline
from nni_darts_ext.data import search_split
from nni_darts_ext.errors import UsageError
from nni_darts_ext.nni_trial import TRIAL_VALIDATION_FRACTION
from nni_darts_ext.pipeline.assemble import (
    VALIDATION_ON_TEST,
    assemble_evaluate,
    assemble_retrain,
    assemble_search,
    per_device_batch,
)
from nni_darts_ext.pipeline.options import RunOptions
from nni_darts_ext.recipe_data import RecipeData, retrain_loaders
from nni_darts_ext.recipes import load_recipe

SAMPLES = 40  # dataset.max_samples: each split keeps 40 digits
TINY = ["dataset.image_size=8", f"dataset.max_samples={SAMPLES}", "search.width=4", "search.cells=3",
        "search.batch_size=8", "retrain.width=4", "retrain.cells=3", "retrain.batch_size=8", "retrain.epochs=1"]


def _recipe(*extra: str):
    return load_recipe("demo", [*TINY, *extra])


def _cpu(tmp_path, **kwargs) -> RunOptions:
    return RunOptions(out=tmp_path / "run", accelerator="cpu", **kwargs)


def _base(dataset):
    """The dataset under NNI's traced Subset wrappers."""
    while hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


# -------------------------------------------------------------------------------------------- per-device batch
def test_per_device_batch_splits_the_global_batch():
    assert per_device_batch(96, 1, key="retrain.batch_size", devices=1, num_nodes=1) == 96
    assert per_device_batch(96, 4, key="retrain.batch_size", devices=2, num_nodes=2) == 24


def test_per_device_batch_refuses_an_uneven_split():
    with pytest.raises(UsageError, match=r"retrain.batch_size 15 .* world size 2 \(--devices 2 x --num-nodes 1\)"):
        per_device_batch(15, 2, key="retrain.batch_size", devices=2, num_nodes=1)


# ------------------------------------------------------------------------------------------------ recipe data
def test_recipe_data_builds_each_split_once():
    data = RecipeData(_recipe("retrain.cutout=2"))
    train = data.split(train=True)
    assert data.split(train=True) is train and data.builds == 1
    with_cutout = data.split(train=True, cutout=2)
    assert with_cutout is not train and data.builds == 2
    assert len(data.split(train=False)) == SAMPLES and data.builds == 3
    data.split(train=False), data.split(train=True, cutout=2)
    assert data.builds == 3


def test_retrain_loaders_hold_out_a_fraction_without_cutout():
    data = RecipeData(_recipe("retrain.cutout=2"))
    train, val, test = retrain_loaders(data, batch_size=4, validation=0.1)
    # search_split keeps floor(40 * 0.9) = 36 images for training, the other 4 for validation.
    assert (len(train.dataset), len(val.dataset), len(test.dataset)) == (36, 4, SAMPLES)
    assert {train.batch_size, val.batch_size, test.batch_size} == {4}
    assert _base(train.dataset) is _base(data.split(train=True, cutout=2))
    assert _base(val.dataset) is _base(data.split(train=True))  # no Cutout on the held-out images
    assert sorted(val.dataset.indices) == sorted(search_split(range(SAMPLES), 0.9, seed=0)[1])


def test_retrain_loaders_validate_on_the_test_split_by_default():
    data = RecipeData(_recipe())
    _, val, test = retrain_loaders(data, batch_size=5)
    assert val.dataset is test.dataset is data.split(train=False)


@pytest.mark.parametrize("validation", ["train", 0.0, 1.0, True])
def test_retrain_loaders_reject_a_bad_validation(validation):
    with pytest.raises(ValueError, match="validation"):
        retrain_loaders(RecipeData(_recipe()), batch_size=4, validation=validation)


# ---------------------------------------------------------------------------------------------------- assembly
@pytest.mark.parametrize("nni", [False, True], ids=["test-set", "nni-held-out"])
def test_assembled_retrain_loaders_use_the_per_device_batch_on_two_processes(tmp_path, nni):
    """devices=2: every loader (the --nni ones included) yields retrain.batch_size / 2 per step."""
    built = assemble_retrain(_recipe(), "darts-v2", _cpu(tmp_path, devices=2, strategy="ddp", nni=nni))
    assert built.world_size == 2 and built.batch_size == 4
    assert [loader.batch_size for loader in (built.train_loader, built.val_loader, built.test_loader)] == [4, 4, 4]
    if nni:
        assert built.validation == f"held-out {TRIAL_VALIDATION_FRACTION:.0%} of the training split"
        assert len(built.val_loader.dataset) == SAMPLES - int(SAMPLES * (1 - TRIAL_VALIDATION_FRACTION))
    else:
        assert built.validation == VALIDATION_ON_TEST and built.val_loader.dataset is built.test_loader.dataset
    assert not (tmp_path / "run").exists()  # assembling writes nothing


def test_search_and_retrain_share_one_dataset_build(tmp_path):
    """As in a demo: the search's training split is the retrain's (no Cutout), the test split is built once."""
    recipe = _recipe()
    data = RecipeData(recipe)
    searched = assemble_search(recipe, RunOptions(out=tmp_path / "s", accelerator="cpu"), data=data)
    assert data.builds == 1 and searched.train_loader.batch_size == recipe.search.batch_size
    retrained = assemble_retrain(recipe, "darts-v2", RunOptions(out=tmp_path / "r", accelerator="cpu"), data=data)
    assert data.builds == 2  # + the test split
    assert _base(retrained.train_loader.dataset) is _base(searched.train_loader.dataset)
    assert retrained.trainer.max_epochs == recipe.retrain.epochs
    assert retrained.module.hparams.learning_rate == recipe.retrain.learning_rate


def test_assembled_search_passes_order_strategy_options_and_export_limit_to_the_preset(tmp_path, monkeypatch):
    """search.order, search.strategy_options and export.max_skip_connects reach darts_strategy and the strategy."""
    from nni_darts_ext.pipeline import assemble
    from nni_darts_ext.recipes import apply_overrides

    seen = {}
    real = assemble.darts_strategy

    def recording(name, **overrides):
        seen.update(overrides, name=name)
        return real(name, **overrides)

    monkeypatch.setattr(assemble, "darts_strategy", recording)
    recipe = apply_overrides(_recipe(), {"search.order": 2, "search.strategy_options": {"channels_last": False},
                                         "export.max_skip_connects": 1})
    built = assemble_search(recipe, RunOptions(out=tmp_path / "s", accelerator="cpu"))
    assert seen["name"] == recipe.search.strategy and seen["order"] == 2 and seen["channels_last"] is False
    assert seen["arc_learning_rate"] == recipe.search.arc_learning_rate and seen["max_skip_connects"] == 1
    assert (built.strategy.order, built.strategy.channels_last, built.strategy.max_skip_connects) == (2, False, 1)


def test_assembled_evaluate_builds_only_the_test_split(tmp_path):
    from nni_darts_ext.arch import DARTS_V2, build_model

    recipe = _recipe()
    data = RecipeData(recipe)
    net = build_model(DARTS_V2, width=4, num_cells=3, image_size=8)
    built = assemble_evaluate(recipe, RunOptions(accelerator="cpu"), model=net, auxiliary=False, data=data)
    assert data.builds == 1 and built.test_loader.dataset is data.split(train=False)
    assert built.test_loader.batch_size == recipe.retrain.batch_size and built.module.model is net


def test_pipeline_package_re_exports_the_run_functions():
    from nni_darts_ext.pipeline.retrain import run_retrain

    assert pipeline.run_retrain is run_retrain
    assert pipeline.UsageError is UsageError
    assert {"run_search", "run_retrain", "run_evaluate", "run_demo", "RunOptions"} <= set(pipeline.__all__)


def test_typed_errors_become_one_line_naming_the_recipe_key_or_flag(tmp_path):
    """CIFAR-10 without a data folder names dataset.data_dir; a precision Lightning does not take names --precision;
    both before anything is written."""
    recipe = _recipe("dataset.name=cifar10", "dataset.image_size=null", "retrain.cutout=null")
    with pytest.raises(UsageError, match=r"^dataset.data_dir: is needed for CIFAR-10"):
        assemble_search(recipe, _cpu(tmp_path))
    with pytest.raises(UsageError, match=r"^--precision bogus: expected one of .*bf16-mixed"):
        assemble_search(_recipe(), _cpu(tmp_path, precision="bogus"))
    assert not (tmp_path / "run").exists()
