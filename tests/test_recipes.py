"""Recipes: the shipped protocols' numbers, strict validation naming the key, overrides, extends, round trips."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import MISSING

from nni_darts_ext.recipes import (
    ExportSection,
    Recipe,
    RecipeError,
    SearchSection,
    SelectSection,
    apply_overrides,
    list_recipes,
    load_recipe,
    parse_override,
    recipe_text,
)

SHIPPED = ("demo", "paper", "pc-darts", "tutorial")


def test_shipped_recipes_are_listed_and_load():
    assert set(SHIPPED) <= set(list_recipes())
    for name in SHIPPED:
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe)
        assert recipe.name == name
        assert recipe.description


def test_paper_recipe_numbers():
    r = load_recipe("paper")
    assert r.dataset.name == "cifar10" and r.dataset.image_size is None and r.image_size == 32
    s = r.search
    assert (s.strategy, s.cells, s.width, s.epochs, s.batch_size) == ("first-order", 8, 16, 50, 64)
    assert s.train_fraction == 0.5
    assert (s.learning_rate, s.momentum, s.weight_decay, s.eta_min) == (0.025, 0.9, 3e-4, 0.001)
    assert s.gradient_clip == 5.0
    assert (s.arc_learning_rate, s.arc_betas, s.arc_weight_decay) == (3e-4, (0.5, 0.999), 1e-3)
    assert s.warmup_epochs == 0 and s.partial_channels is None
    t = r.retrain
    assert (t.cells, t.width, t.epochs, t.batch_size) == (20, 36, 600, 96)
    assert (t.learning_rate, t.momentum, t.weight_decay, t.eta_min) == (0.025, 0.9, 3e-4, 0.0)
    assert (t.auxiliary_weight, t.drop_path_prob, t.cutout, t.gradient_clip) == (0.4, 0.2, 16, 5.0)
    # types are exact: ints stay ints, floats floats
    assert type(s.epochs) is int and type(s.learning_rate) is float and type(t.eta_min) is float


def test_tutorial_is_paper_with_cosine_to_1e_3_in_retrain():
    paper, tutorial = load_recipe("paper").to_dict(), load_recipe("tutorial").to_dict()
    assert tutorial["retrain"]["eta_min"] == 0.001 and paper["retrain"]["eta_min"] == 0.0
    for recipe in (paper, tutorial):
        for key in ("name", "description"):
            recipe.pop(key)
        recipe["retrain"].pop("eta_min")
        recipe["dataset"].pop("num_workers")  # the tutorial's loaders use 6 workers, quark0/darts 2
    assert paper == tutorial


def test_pc_darts_recipe_numbers():
    r = load_recipe("pc-darts")
    s = r.search
    assert (s.strategy, s.batch_size, s.learning_rate, s.eta_min, s.arc_learning_rate) == (
        "pc-darts", 256, 0.1, 0.0, 6e-4)
    assert (s.warmup_epochs, s.partial_channels, s.epochs) == (15, 4, 50)
    assert r.retrain == load_recipe("paper").retrain


def test_demo_recipe_is_digits():
    r = load_recipe("demo")
    assert r.dataset.name == "digits" and r.image_size == 8 and r.dataset.num_workers == 0


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_are_complete_and_commented(name):
    text = recipe_text(name)
    raw = yaml.safe_load(text)
    assert "extends" not in raw
    expected = load_recipe(name).to_dict()
    assert set(raw) == set(expected)
    for section in ("dataset", "search", "retrain", "export", "select"):
        assert set(raw[section]) == set(expected[section]), section
    # every value line carries a comment (its source or the reason for the choice), except a few self-evident ones
    for line in text.splitlines():
        match = re.match(r"^\s+(\w+):\s*([^#]+?)\s*(#.*)?$", line)
        if match and match.group(1) not in ("partial_channels", "name") and re.match(r"[-\d.\[]", match.group(2)):
            assert match.group(3), f"{name}: no source comment on {line.strip()!r}"


@pytest.mark.parametrize(
    "override, key",
    [
        ("search.widht=4", "search.widht"),
        ("retrain.foo=1", "retrain.foo"),
        ("bogus=1", "bogus"),
        ("training.epochs=1", "training.epochs"),
    ],
)
def test_unknown_keys_name_the_key(override, key):
    with pytest.raises(RecipeError) as err:
        load_recipe("paper", [override])
    assert key in str(err.value) and "unknown" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("search.epochs=1.0", "search.epochs", "expected int, got float"),
        ("search.epochs=true", "search.epochs", "expected int, got bool"),
        ("search.epochs=ten", "search.epochs", "expected int, got string"),
        ("search.learning_rate='0.1'", "search.learning_rate", "expected float, got string"),
        ("search.learning_rate=yes", "search.learning_rate", "expected float, got bool"),
        ("search.strategy=3", "search.strategy", "expected string, got int"),
        ("retrain.cutout=[1]", "retrain.cutout", "expected int or null, got list"),
        ("search.arc_betas=[0.5]", "search.arc_betas", "expected [float, float] or null, got list"),
        ("seed=1.5", "seed", "expected int"),
    ],
)
def test_wrong_types_name_the_key(override, key, words):
    with pytest.raises(RecipeError) as err:
        load_recipe("paper", [override])
    message = str(err.value)
    assert key in message and words in message, message


@pytest.mark.parametrize(
    "override, key",
    [
        ("search.epochs=0", "search.epochs"),
        ("retrain.epochs=-3", "retrain.epochs"),
        ("search.batch_size=0", "search.batch_size"),
        ("retrain.batch_size=-1", "retrain.batch_size"),
        ("search.train_fraction=0", "search.train_fraction"),
        ("search.train_fraction=1", "search.train_fraction"),
        ("search.train_fraction=1.5", "search.train_fraction"),
        ("retrain.cutout=33", "retrain.cutout"),
        ("retrain.drop_path_prob=1.0", "retrain.drop_path_prob"),
        ("retrain.drop_path_prob=-0.1", "retrain.drop_path_prob"),
        ("search.strategy=second-best", "search.strategy"),
        ("dataset.name=imagenet", "dataset.name"),
        ("search.cells=2", "search.cells"),
        ("search.learning_rate=.nan", "search.learning_rate"),
        ("search.eta_min=1.0", "search.eta_min"),
        ("search.warmup_epochs=50", "search.warmup_epochs"),
        ("search.partial_channels=0", "search.partial_channels"),
        ("dataset.image_size=16", "dataset.image_size"),
        ("seed=-1", "seed"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(RecipeError) as err:
        load_recipe("paper", [override])
    message = str(err.value)
    assert key in message, message
    assert "\n" not in message


def test_cutout_is_checked_against_the_actual_image_size():
    assert load_recipe("demo", ["dataset.image_size=16", "retrain.cutout=16"]).retrain.cutout == 16
    with pytest.raises(RecipeError, match=r"retrain.cutout: 9 is longer than the 8x8 images"):
        load_recipe("demo", ["dataset.image_size=8", "retrain.cutout=9"])
    with pytest.raises(RecipeError, match=r"retrain.cutout: 17 is longer than the 16x16 images"):
        load_recipe("demo", ["dataset.image_size=null", "retrain.cutout=17"])  # digits' default size: 16


def test_overrides_parse_yaml_and_type_check():
    r = load_recipe("paper", ["search.arc_learning_rate=6e-4", "retrain.eta_min=0", "retrain.cutout=null",
                              "search.arc_betas=[0.9, 0.99]", "dataset.data_dir=/tmp/x", "seed=7"])
    assert r.search.arc_learning_rate == 6e-4 and type(r.retrain.eta_min) is float
    assert r.retrain.cutout is None and r.search.arc_betas == (0.9, 0.99)
    assert r.dataset.data_dir == "/tmp/x" and r.seed == 7
    assert parse_override("retrain.epochs=10") == ("retrain.epochs", 10)
    assert parse_override("search.learning_rate=1e-3") == ("search.learning_rate", 1e-3)
    for bad in ("retrain.epochs", "=3", "retrain.epochs=", "retrain.epochs=3\nseed: 1"):
        with pytest.raises(RecipeError):
            parse_override(bad)
    with pytest.raises(RecipeError, match="is a section"):
        load_recipe("paper", ["search=3"])
    # mapping form and apply_overrides
    assert apply_overrides(r, {"retrain.epochs": 3}).retrain.epochs == 3
    assert r.retrain.epochs == 600  # frozen: the original is unchanged


def test_yaml_files_extends_and_round_trip(tmp_path):
    resolved = load_recipe("paper", ["retrain.epochs=10"])
    path = tmp_path / "resolved.yaml"
    path.write_text(resolved.to_yaml(header="a header"))
    assert load_recipe(path) == resolved

    (tmp_path / "mine.yaml").write_text("extends: paper\nname: mine\nsearch:\n  epochs: 2\n")
    (tmp_path / "child.yaml").write_text("extends: mine.yaml\nretrain:\n  epochs: 3\n")
    child = load_recipe(tmp_path / "child.yaml")
    assert (child.name, child.search.epochs, child.retrain.epochs) == ("mine", 2, 3)
    assert child.search.width == 16

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="extends"):
        load_recipe(tmp_path / "a.yaml")

    (tmp_path / "partial.yaml").write_text("name: p\nseed: 0\n")
    with pytest.raises(RecipeError, match=r"description: missing"):
        load_recipe(tmp_path / "partial.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("extends: paper\nretrain:\n  epoch: 3\n")
    with pytest.raises(RecipeError, match=r"retrain\.epoch: unknown key"):
        load_recipe(tmp_path / "typo.yaml")


def test_unknown_names_and_missing_files():
    with pytest.raises(RecipeError, match="unknown recipe 'papr'.*paper"):
        load_recipe("papr")
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe("missing/recipe.yaml")


_KEYS = [f"{section}.{key}" for section, values in
         [("search", ["epochs", "width", "learning_rate", "strategy", "arc_betas", "partial_channels"]),
          ("retrain", ["cutout", "drop_path_prob", "gradient_clip", "batch_size"]),
          ("dataset", ["name", "image_size", "max_samples"])] for key in values] + ["seed", "name"]
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.floats(0, 1), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(_KEYS), value=_VALUES)
def test_any_override_is_accepted_or_a_recipe_error_naming_the_key(key, value):
    try:
        recipe = load_recipe("demo", {key: value})
    except RecipeError as err:
        assert "\n" not in str(err)
        message = str(err)
        assert key.split(".")[-1] in message or any(s in message for s in ("dataset", "search.", "retrain."))
    else:
        assert isinstance(recipe, Recipe)
        section, _, field = key.rpartition(".")
        got = getattr(getattr(recipe, section) if section else recipe, field)
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(got, float) and math.isnan(got)
        elif isinstance(value, list):
            assert list(got) == value  # a list key holds the values given
        else:
            assert got == value and isinstance(got, str) == isinstance(value, str)  # the value given, its kind kept


# ----------------------------------------------------------------------------------------------------------------
# Options added with defaults, strictness beyond OmegaConf's conversions, interpolation, extends by path
# ----------------------------------------------------------------------------------------------------------------


def test_new_options_have_defaults_so_older_files_stay_valid(tmp_path):
    old = load_recipe("paper").to_dict()
    for key in ("order", "strategy_options", "hessian_every", "early_stop", "seeds", "select"):
        old["search"].pop(key)
    old.pop("export")
    old.pop("select")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    s = load_recipe(path).search
    assert (s.order, s.strategy_options, s.hessian_every, s.early_stop) == (None, {}, 0, None)
    assert load_recipe(path).export.max_skip_connects is None
    # one search; a multi-seed search would choose by a short retrain of 100 epochs (DARTS Sec. 3.2) on 10% held out
    assert (s.seeds, s.select) == (None, "val")
    assert (load_recipe(path).select.epochs, load_recipe(path).select.held_out_fraction) == (100, 0.1)


def test_shipped_values_of_the_new_options():
    paper = load_recipe("paper")
    assert paper.search.hessian_every == 2 and paper.search.early_stop is None and paper.search.order is None
    assert paper.export.max_skip_connects is None and paper.search.strategy_options == {}
    assert load_recipe("demo").search.hessian_every == 0


def test_new_options_are_checked():
    r = load_recipe("paper", ["search.order=2", "search.early_stop=hessian", "export.max_skip_connects=2",
                              "search.strategy_options={hessian_eps: 0.01}", "search.strategy_options.extra=true"])
    assert (r.search.order, r.search.early_stop, r.export.max_skip_connects) == (2, "hessian", 2)
    assert r.search.strategy_options == {"hessian_eps": 0.01, "extra": True}
    assert apply_overrides(r, {"search.strategy_options": {}}).search.strategy_options == {}
    cases = {
        "search.order=3": r"search.order: must be null or one of 1, 2, got 3",
        "search.order=first": r"search.order: expected int or null, got string",
        "search.hessian_every=-1": r"search.hessian_every: must be >= 0, got -1",
        "search.early_stop=loss": r"search.early_stop: must be null or one of 'hessian', got 'loss'",
        "search.strategy_options=3": r"search.strategy_options: expected a mapping",
        "export.max_skip_connects=-1": r"export.max_skip_connects: must be >= 0",
        "export.max_skip=1": r"export.max_skip: unknown key; export has: max_skip_connects",
    }
    for override, message in cases.items():
        with pytest.raises(RecipeError, match=message):
            load_recipe("paper", [override])
    with pytest.raises(RecipeError, match=r"search.early_stop: 'hessian' needs .*search.hessian_every"):
        load_recipe("demo", ["search.early_stop=hessian"])


@pytest.mark.parametrize(
    "override, words",
    [
        ("search.epochs='3'", "search.epochs: expected int, got string '3'"),  # OmegaConf alone would convert it
        ("search.learning_rate='1e-3'", "search.learning_rate: expected float, got string"),
        ("name=3", "name: expected string, got int 3"),  # OmegaConf alone would make it '3'
        ("dataset.data_dir=false", "dataset.data_dir: expected string or null, got bool"),
    ],
)
def test_types_are_stricter_than_the_library(override, words):
    with pytest.raises(RecipeError) as err:
        load_recipe("paper", [override])
    assert words in str(err.value)


def test_interpolation_in_files_and_overrides(tmp_path):
    r = load_recipe("paper", ["retrain.width=${search.width}", "retrain.eta_min=${search.eta_min}"])
    assert r.retrain.width == 16 and r.retrain.eta_min == 0.001
    (tmp_path / "tied.yaml").write_text("extends: paper\nsearch:\n  width: 8\nretrain:\n  width: ${search.width}\n")
    tied = load_recipe(tmp_path / "tied.yaml")
    assert tied.retrain.width == 8 and "${" not in tied.to_yaml()
    with pytest.raises(RecipeError, match=r"retrain.width: .*search.widht"):
        load_recipe("paper", ["retrain.width=${search.widht}"])
    with pytest.raises(RecipeError, match=r"retrain.width: expected int, got string"):
        load_recipe("paper", ["retrain.width=${search.strategy}"])


def test_extends_by_absolute_path_and_a_later_key_wins(tmp_path):
    base = tmp_path / "sub" / "base.yaml"
    base.parent.mkdir()
    base.write_text("extends: demo\nsearch:\n  epochs: 2\n  strategy_options: {a: 1, b: 2}\n")
    (tmp_path / "top.yaml").write_text(f"extends: {base}\nsearch:\n  strategy_options: {{b: 3}}\n")
    top = load_recipe(tmp_path / "top.yaml")
    assert top.search.epochs == 2 and top.search.strategy_options == {"a": 1, "b": 3}  # mappings merge key by key
    assert top.dataset == load_recipe("demo").dataset
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(RecipeError, match="expected a mapping of sections"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "dup.yaml").write_text("name: a\nname: b\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "dup.yaml")


def test_multi_seed_keys_are_checked():
    r = load_recipe("demo", ["search.seeds=[3, 0, 1]", "search.select=last-val", "select.epochs=2",
                             "select.held_out_fraction=0.25"])
    assert (r.search.seeds, r.search.select, r.select.epochs, r.select.held_out_fraction) == ([3, 0, 1], "last-val",
                                                                                              2, 0.25)
    assert load_recipe("paper").select.epochs == 100 and load_recipe("demo").select.epochs == 4
    cases = {
        "search.seeds=[0, 1, 1]": r"search.seeds: seed 1 is listed twice",
        "search.seeds=[]": r"search.seeds: expected at least one seed",
        "search.seeds=[-1]": r"search.seeds\[0\]: must be >= 0, got -1",
        "search.seeds=[0.5]": r"search.seeds: expected list of int or null, got list",
        "search.seeds=[true]": r"search.seeds: expected list of int or null, got list",
        "search.seeds=3": r"search.seeds: expected list of int or null, got int 3",
        "search.select=best": r"search.select: must be one of 'val', 'last-val', got 'best'",
        "select.epochs=0": r"select.epochs: must be >= 1, got 0",
        "select.held_out_fraction=1.0": r"select.held_out_fraction: must be in \(0.0, 1.0\), got 1.0",
        "select.fraction=0.1": r"select.fraction: unknown key; select has: epochs, held_out_fraction",
    }
    for override, message in cases.items():
        with pytest.raises(RecipeError, match=message):
            load_recipe("demo", [override])


def test_every_option_with_a_default_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Recipes"):readme.index("## Reliability")]
    for prefix, cls in (("search", SearchSection), ("export", ExportSection), ("select", SelectSection)):
        for f in dataclasses.fields(cls):
            if f.default is not MISSING or f.default_factory is not dataclasses.MISSING:
                assert f"`{prefix}.{f.name}`" in section, f.name
