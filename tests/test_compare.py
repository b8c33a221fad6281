"""compare: searched vs random cells under several retrain seeds; the same numbers twice, after a resume too."""

from __future__ import annotations

import json
import statistics

import pytest

from nni_darts_ext.arch import build_model, count_parameters, random_arch
from nni_darts_ext.cli import main
from nni_darts_ext.errors import RunInterrupted
from nni_darts_ext.pipeline import compare as compare_module
from nni_darts_ext.pipeline.compare import candidates_of, run_compare
from nni_darts_ext.pipeline.options import RunOptions
from nni_darts_ext.recipes import load_recipe

# Tiny retrains (CONTRIBUTING.md): 40 digits per split, width 4, 3 cells, one epoch.
TINY = ["dataset.image_size=8", "dataset.max_samples=40", "retrain.width=4", "retrain.cells=3", "retrain.batch_size=8",
        "retrain.epochs=1"]
CELLS = {"archs": ["darts-v2", "darts-v1"], "random": 2, "seeds": 2}


def _numbers(summary: dict) -> dict:
    """Everything but wall times."""
    timeless = {key: value for key, value in summary.items() if key not in ("total_seconds", "candidates", "runs")}
    runs = [(run["candidate"], run["seed"], run["test_accuracy"], run["folder"]) for run in summary["runs"]]
    return {**timeless, "runs": runs}


@pytest.mark.e2e
def test_the_same_seeds_give_the_same_numbers_and_a_resumed_comparison_equals_an_uninterrupted_one(tmp_path,
                                                                                                   monkeypatch):
    recipe = load_recipe("demo", TINY)
    first = run_compare(recipe, RunOptions(out=tmp_path / "a", accelerator="cpu"), **CELLS)
    second = run_compare(recipe, RunOptions(out=tmp_path / "b", accelerator="cpu"), **CELLS)
    assert _numbers(first) == _numbers(second)

    calls, stopped = [], []
    real_retrain = compare_module.run_retrain

    def retrain_stopping_after_three(r, arch, options, **kwargs):
        calls.append(options.out)
        if len(calls) == 4 and not stopped:
            stopped.append(options.out)
            raise RunInterrupted("stopped for the test")
        return real_retrain(r, arch, options, **kwargs)

    monkeypatch.setattr(compare_module, "run_retrain", retrain_stopping_after_three)
    with pytest.raises(RunInterrupted):
        run_compare(recipe, RunOptions(out=tmp_path / "c", accelerator="cpu"), **CELLS)
    assert not (tmp_path / "c" / "compare.json").exists()
    done = calls[:3]
    calls.clear()
    # As a user continues it: `--resume` alone takes the recipe, cells and counts the comparison was started with.
    assert main(["compare", "--resume", "--out", str(tmp_path / "c"), "--accelerator", "cpu", "--quiet"]) == 0
    assert len(calls) == 4 * 2 - 3 and not set(calls) & set(done)  # finished retrains are not run again
    resumed = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert _numbers(resumed) == _numbers(first)
    assert [c["source"] for c in resumed["candidates"][:2]] == ["darts-v2", "darts-v1"]

    # The record, checked against the run folders and by hand.
    out = tmp_path / "a"
    assert json.loads((out / "compare.json").read_text()) == first
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert [c["name"] for c in first["candidates"]] == ["arch-0", "arch-1", "random-0", "random-1"]
    assert first["retrain_seeds"] == [0, 1] and first["random_cells"] == 2 and first["match_params"] is None
    values = {}
    for run in first["runs"]:
        retrained = json.loads((out / run["folder"] / "summary.json").read_text())
        assert retrained["test_accuracy"] == run["test_accuracy"] and retrained["seed"] == run["seed"]
        assert retrained["epochs"] == 1
        values.setdefault(run["candidate"], []).append(run["test_accuracy"])
    random_means = [statistics.fmean(values["random-0"]), statistics.fmean(values["random-1"])]
    assert first["difference"] == pytest.approx(statistics.fmean(values["arch-0"]) - statistics.fmean(random_means))
    assert first["rank"] == 1 + sum(m > statistics.fmean(values["arch-0"]) for m in random_means)
    assert first["rank_of"] == 3
    assert first["verdict"] == first["comparisons"][0]["verdict"]
    assert first["verdict"].startswith(("searched cells beat random cells by", "no evidence that the search helped"))
    assert [c["arch"] for c in first["comparisons"]] == ["arch-0", "arch-1"]
    assert first["comparisons"][1]["difference"] == pytest.approx(
        statistics.fmean(values["arch-1"]) - statistics.fmean(random_means))
    assert first["pooled"]["n_searched"] == 2 and first["pooled"]["n_random"] == 2
    variances = [statistics.variance(v) for v in values.values()]  # two seeds each: one degree of freedom each
    assert first["seed_noise"] == pytest.approx(statistics.fmean(variances) ** 0.5)
    for key in ("difference", "welch_p", "mannwhitney_p", "verdict"):
        assert key in first


def test_random_cells_can_be_matched_to_the_searched_cells_parameter_count():
    recipe = load_recipe("demo", TINY)
    r = recipe.retrain

    def params(arch):
        return count_parameters(build_model(arch, width=r.width, num_cells=r.cells, image_size=recipe.image_size))

    searched = random_arch(3)  # a cell of typical size (darts-v2's pooling reduction cell is far smaller)
    candidates, drawn = candidates_of(recipe, [searched], random=2, match_params=0.05)
    reference = params(searched)
    assert candidates[0].params == reference and candidates[0].kind == "arch"
    chosen = {int(c.name.split("-")[1]) for c in candidates[1:]}
    assert len(chosen) == 2 and drawn == max(chosen) + 1 and drawn > 2  # some draws were too large or too small
    for seed in range(drawn):  # every draw in tolerance was taken, every other one skipped
        assert (seed in chosen) == (abs(params(random_arch(seed)) - reference) <= 0.05 * reference)
    unmatched, drawn = candidates_of(recipe, [], random=2, match_params=None)
    assert [c.name for c in unmatched] == ["random-0", "random-1"] and drawn == 2


@pytest.mark.parametrize("argv, words", [
    (["--random", "0"], "nothing to compare: give --arch ARCH and/or --random N"),
    (["--random", "-1", "--arch", "darts-v2"], "--random must be >= 0, got -1"),
    (["--seeds", "0", "--arch", "darts-v2"], "--seeds must be >= 1, got 0"),
    (["--match-params", "0.1"], "--match-params: needs --arch"),
    (["--match-params", "0", "--arch", "darts-v2"], "--match-params must be in (0.0, inf)"),
    (["--arch", "missing.json"], "missing.json"),
    (["--arch", "darts-v2", "--parallel", "0"], "--parallel must be >= 1, got 0"),
    (["--arch", "darts-v2", "--set", "retrain.epochs=0"], "retrain.epochs: must be >= 1"),
])
def test_bad_compare_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, words):
    out = tmp_path / "c"
    assert main(["compare", *argv, "--out", str(out), "--accelerator", "cpu"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not out.exists()


def test_parameter_counts_are_those_of_the_runs_data_shape():
    """Own data: a cell's parameter count is that of the retrain net for the data's classes and channels."""
    from nni_darts_ext.datasets import DataInfo

    recipe = load_recipe("demo", ["retrain.width=4", "retrain.cells=3"])
    info = DataInfo(name="npz", classes=["a", "b"], num_classes=2, in_channels=1, image_size=8, mean=[0.5],
                    std=[0.25], images={"train": 4, "test": 2}, per_class={})
    (with_info,), _ = candidates_of(recipe, ["darts-v2"], random=0, match_params=None, info=info)
    (without,), _ = candidates_of(recipe, ["darts-v2"], random=0, match_params=None)
    expected = count_parameters(build_model("darts-v2", width=4, num_cells=3, image_size=8, num_classes=2,
                                            in_channels=1))
    assert with_info.params == expected
    assert without.params != expected  # 10 classes of 3 channels: a different count
