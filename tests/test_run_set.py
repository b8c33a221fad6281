"""A folder of runs: the parent folder's checks, each run's state on --resume, the same recipe on --resume."""

from __future__ import annotations

import pytest

from nni_darts_ext.errors import UsageError
from nni_darts_ext.pipeline.run_folder import write_config
from nni_darts_ext.pipeline.run_set import DONE, RESUME, START, check_run_set, check_same_recipe, prepare_run
from nni_darts_ext.recipes import load_recipe


def test_prepare_run_keeps_finished_and_interrupted_runs_and_clears_a_run_without_checkpoint(tmp_path):
    finished = tmp_path / "a"
    (finished / "checkpoints").mkdir(parents=True)
    (finished / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (finished / "summary.json").write_text("{}")
    interrupted = tmp_path / "b"
    (interrupted / "checkpoints").mkdir(parents=True)
    (interrupted / "checkpoints" / "last.ckpt").write_bytes(b"x")
    early = tmp_path / "c"  # killed in its first epoch: config.yaml and logs, no checkpoint
    (early / "tensorboard").mkdir(parents=True)
    (early / "config.yaml").write_text("x")
    assert prepare_run(finished) == DONE and (finished / "summary.json").exists()
    assert prepare_run(interrupted) == RESUME and (interrupted / "checkpoints" / "last.ckpt").exists()
    assert prepare_run(early) == START and not early.exists()
    assert prepare_run(tmp_path / "d") == START


def test_check_run_set_refuses_used_folders_and_a_resume_of_nothing(tmp_path):
    out = tmp_path / "set"
    assert check_run_set(out, resume=False, what="comparison", markers=("runs",)) == out
    assert not out.exists()  # checking writes nothing
    with pytest.raises(UsageError, match=r"--resume: .* holds no comparison to continue"):
        check_run_set(out, resume=True, what="comparison", markers=("runs",))
    (out / "runs").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"already holds a comparison \(runs\); pass --resume"):
        check_run_set(out, resume=False, what="comparison", markers=("runs",))
    single = tmp_path / "single"
    (single / "checkpoints").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"holds a single run \(checkpoints\), not a comparison"):
        check_run_set(single, resume=True, what="comparison", markers=("runs",))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        check_run_set(tmp_path / "file", resume=False, what="comparison", markers=())


def test_check_same_recipe_names_the_first_changed_key(tmp_path):
    recipe = load_recipe("demo", ["search.seeds=[0, 1]"])
    write_config(tmp_path, recipe, "test")
    check_same_recipe(tmp_path, recipe)
    check_same_recipe(tmp_path, load_recipe("demo", ["search.seeds=[0, 1]", "dataset.num_workers=2"]))  # machine
    check_same_recipe(tmp_path, load_recipe("demo", ["search.seeds=[0, 1, 2]"]), may_differ=("search.seeds",))
    with pytest.raises(UsageError, match=r"--resume: retrain.epochs is 3 but the runs in .* were started with 12"):
        check_same_recipe(tmp_path, load_recipe("demo", ["search.seeds=[0, 1]", "retrain.epochs=3"]))
    with pytest.raises(UsageError, match=r"search.seeds is \[0, 1, 2\]"):
        check_same_recipe(tmp_path, load_recipe("demo", ["search.seeds=[0, 1, 2]"]))
