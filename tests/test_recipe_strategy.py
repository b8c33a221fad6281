"""A recipe's strategy settings: ``null`` is the preset's own, any value given wins; the strategy checks what it takes.

Sizes: digits at 8x8, 64 images per split, width 4, 3 cells, batch 16, one epoch, one torch thread.
"""

from __future__ import annotations

import pytest
import torch

from nni_darts_ext.cli import main
from nni_darts_ext.constants import ARC_BETAS, ARC_WEIGHT_DECAY, DRNAS_ARC_LEARNING_RATE, FAIR_DARTS_ARC_BETAS
from nni_darts_ext.pipeline.assemble import assemble_search, search_strategy, strategy_overrides
from nni_darts_ext.pipeline.options import RunOptions
from nni_darts_ext.recipes import RecipeError, load_recipe

# The shipped recipes are CIFAR-10 protocols: tiny digits instead, every stage small.
TINY = ["dataset.name=digits", "dataset.data_dir=null", "dataset.image_size=8", "dataset.max_samples=64",
        "retrain.cutout=null", "search.width=4", "search.cells=3", "search.epochs=1", "search.batch_size=16",
        "search.warmup_epochs=0", "search.hessian_every=0"]


def _tiny(name: str, *overrides: str):
    return load_recipe(name, [*TINY, *overrides])


def _assembled_strategy(tmp_path, name: str, *overrides: str):
    return assemble_search(_tiny(name, *overrides), RunOptions(out=tmp_path / "run", accelerator="cpu")).strategy


# ------------------------------------------------------------------------------------------------ who wins
@pytest.mark.parametrize("name, key, value, argument", [
    ("fair-darts", "search.arc_betas", list(ARC_BETAS), "arc_betas"),
    ("drnas", "search.arc_weight_decay", ARC_WEIGHT_DECAY, "arc_weight_decay"),
])
def test_an_explicit_value_wins_even_when_it_is_darts_default(tmp_path, name, key, value, argument):
    """fair-darts has betas (0.9, 0.999) and drnas weight decay 0 of their own: DARTS' value, written out, wins."""
    strategy = _assembled_strategy(tmp_path, name, f"{key}={value}")
    expected = tuple(value) if isinstance(value, list) else value
    assert getattr(strategy, argument) == expected
    assert getattr(search_strategy(_tiny(name, f"{key}=null")), argument) != expected  # null: the preset's own


def test_null_means_the_presets_own(tmp_path):
    recipe = _tiny("fair-darts", "search.arc_betas=null", "search.arc_learning_rate=null", "search.gradient_clip=null",
                   "search.warmup_epochs=null")
    assert not {"arc_betas", "arc_learning_rate", "gradient_clip_val", "warmup_epochs"} & set(strategy_overrides(recipe))
    strategy = _assembled_strategy(tmp_path, "fair-darts", "search.arc_betas=null", "search.arc_learning_rate=null")
    assert strategy.arc_betas == FAIR_DARTS_ARC_BETAS
    drnas = search_strategy(_tiny("drnas", "search.arc_learning_rate=null", "search.arc_weight_decay=null"))
    assert (drnas.arc_learning_rate, drnas.arc_weight_decay) == (DRNAS_ARC_LEARNING_RATE, 0.0)
    assert search_strategy(_tiny("pc-darts", "search.partial_channels=null")).partial_channels == 4


def test_shipped_recipes_keep_their_presets_settings():
    """Each shipped recipe's strategy gets the settings its preset's paper gives (the YAMLs' sources)."""
    fair, drnas = search_strategy(load_recipe("fair-darts")), search_strategy(load_recipe("drnas"))
    assert (fair.arc_betas, fair.arc_learning_rate) == (FAIR_DARTS_ARC_BETAS, 3e-3)
    assert (drnas.arc_weight_decay, drnas.arc_learning_rate, drnas.warmup_epochs) == (0.0, 6e-4, 10)
    pc = search_strategy(load_recipe("pc-darts"))
    assert (pc.partial_channels, pc.warmup_epochs, pc.arc_learning_rate) == (4, 15, 6e-4)
    # demo leaves the architecture Adam's betas and weight decay to the preset: another preset keeps its own
    assert search_strategy(_tiny("demo", "search.strategy=fair-darts")).arc_betas == FAIR_DARTS_ARC_BETAS
    assert search_strategy(_tiny("demo", "search.strategy=drnas")).arc_weight_decay == 0.0


def test_a_presets_own_warmup_that_leaves_no_epoch_names_the_key():
    with pytest.raises(RecipeError, match=r"^search.warmup_epochs: null gives the 'p-darts' preset's own 10"):
        search_strategy(_tiny("demo", "search.strategy=p-darts", "search.warmup_epochs=null"))


# ------------------------------------------------------------------------------------------ partial channels
@pytest.mark.parametrize("name", ["drnas", "first-order", "fair-darts"])
def test_partial_channels_are_taken_on_any_preset(tmp_path, name):
    recipe = _tiny("demo", f"search.strategy={name}", "search.partial_channels=4")
    assert recipe.search.partial_channels == 4
    assert _assembled_strategy(tmp_path, "demo", f"search.strategy={name}", "search.partial_channels=4"
                               ).partial_channels == 4


def test_the_strategys_refusal_is_reported_with_the_recipe_key(tmp_path):
    with pytest.raises(RecipeError, match=r"^search.partial_channels: \(3\) must divide every cell's channel count"):
        _assembled_strategy(tmp_path, "drnas", "search.partial_channels=3")
    with pytest.raises(RecipeError, match=r"^search.strategy_options.hessian_eps: must be"):
        _assembled_strategy(tmp_path, "demo", "search.strategy_options={hessian_eps: -1.0}")
    with pytest.raises(RecipeError, match=r"^search.strategy_options.nope: is not an argument of the 'drnas'"):
        search_strategy(_tiny("drnas", "search.strategy_options={nope: 1}"))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ through the CLI
# (NNI's experiment manifest goes to the session's private HOME, set in conftest.py)
@pytest.mark.e2e
def test_drnas_advice_partial_channels_works_and_a_default_value_wins_through_the_cli(tmp_path):
    """The drnas recipe's advice ``--set search.partial_channels=4``, with DARTS' arc weight decay written out."""
    out = tmp_path / "run"
    code = main(["search", "--recipe", "drnas", "--out", str(out), "--quiet", "--threads", "1", "--accelerator",
                 "cpu", "--set", *TINY, "search.partial_channels=4", f"search.arc_weight_decay={ARC_WEIGHT_DECAY}"])
    assert code == 0 and (out / "arch.json").is_file()
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    adam = [group for state in checkpoint["optimizer_states"] for group in state["param_groups"] if "betas" in group]
    assert [group["weight_decay"] for group in adam] == [ARC_WEIGHT_DECAY]  # not drnas' own 0
    # width 4 over K = 4: the candidate ops see one channel of each edge
    depthwise = [value for key, value in checkpoint["state_dict"].items()
                 if "stages.0.blocks.0." in key and "sep_conv_3x3.1.weight" in key]
    assert depthwise and all(value.shape[0] == 1 for value in depthwise)


@pytest.mark.e2e
def test_a_partial_channels_the_net_cannot_take_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--recipe", "drnas", "--out", str(out), "--quiet", "--threads", "1", "--accelerator",
                 "cpu", "--set", *TINY, "search.partial_channels=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "search.partial_channels" in err and "Traceback" not in err
    assert not out.exists()
