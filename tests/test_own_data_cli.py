"""Own images through the CLI: the search -> retrain -> evaluate flows and every bad input (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_own_data import write_folder

from nni_darts_ext.cli import main

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_own_data_cli")]  # one worker: its fixture runs once

THREADS = ["--threads", "1"]
TINY = ["search.width=4", "search.cells=3", "search.epochs=1", "search.batch_size=8", "retrain.width=4",
        "retrain.cells=3", "retrain.epochs=1", "retrain.batch_size=8"]
DATA_KEYS = {"name", "classes", "num_classes", "in_channels", "image_size", "mean", "std", "images", "per_class",
             "skipped"}



def _flow(root: Path, data: Path, settings: list[str]) -> dict[str, Path]:
    """search -> retrain -> evaluate as the README shows them; the run folders."""
    runs = {name: root / name for name in ("S", "R", "E")}
    common = ["--recipe", "demo", "--quiet", *THREADS, "--set", *settings, *TINY]
    assert main(["search", *common, "--out", str(runs["S"])]) == 0
    assert main(["retrain", *common, "--arch", str(runs["S"] / "arch.json"), "--out", str(runs["R"])]) == 0
    assert main(["evaluate", "--arch", str(runs["R"]), "--weights", str(runs["R"] / "model.pt"), "--quiet",
                 *THREADS, "--out", str(runs["E"])]) == 0
    return runs


@pytest.fixture(scope="module")
def gray_runs(tmp_path_factory, nni_home):
    """Grayscale 25x25 PNGs in 2 classes, with one corrupt image (skipped) and one text file (ignored)."""
    root = tmp_path_factory.mktemp("gray")
    data = write_folder(root / "data", classes=("cat", "dog"), per_class=6, size=25)
    (data / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (data / "train" / "dog" / "notes.txt").write_text("not an image")
    settings = ["dataset.name=imagefolder", f"dataset.data_dir={data}", "dataset.image_size=25",
                "dataset.skip_bad_images=true", "dataset.flip=false"]
    return _flow(root, data, settings)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_gray_flow_records_the_data_in_every_run(gray_runs):
    retrained = _summary(gray_runs["R"])
    assert retrained["num_classes"] == 2 and retrained["in_channels"] == 1 and retrained["image_size"] == 25
    assert retrained["classes"] == ["cat", "dog"]
    assert retrained["images"] == {"train": 12, "test": 12}
    assert retrained["per_class"]["test"] == {"cat": 6, "dog": 6}
    assert retrained["skipped"] == ["train/cat/broken.png"] and retrained["ignored"] == 1
    for name in ("S", "R", "E"):
        info = json.loads((gray_runs[name] / "dataset.json").read_text())
        assert DATA_KEYS <= set(info) and len(info["mean"]) == len(info["std"]) == 1
        assert DATA_KEYS <= set(_summary(gray_runs[name]))


def test_evaluate_uses_the_run_statistics_and_reports_per_class(gray_runs):
    evaluated = _summary(gray_runs["E"])
    retrained = _summary(gray_runs["R"])
    assert evaluated["mean"] == retrained["mean"] and evaluated["std"] == retrained["std"]
    assert set(evaluated["per_class_accuracy"]) == {"cat", "dog"}
    matrix = np.array(evaluated["confusion_matrix"])
    assert matrix.sum() == 12 and np.trace(matrix) / 12 == pytest.approx(evaluated["test_accuracy"], abs=1e-6)
    assert (gray_runs["E"] / "confusion.png").stat().st_size > 0


def test_rgb_jpeg_flow(tmp_path, nni_home):
    data = write_folder(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=3, size=48, mode="RGB",
                        suffix="jpg")
    runs = _flow(tmp_path, data, ["dataset.name=imagefolder", f"dataset.data_dir={data}", "dataset.image_size=48"])
    retrained = _summary(runs["R"])
    assert (retrained["num_classes"], retrained["in_channels"], retrained["image_size"]) == (4, 3, 48)
    assert len(retrained["mean"]) == 3 and retrained["stem"] == "cifar"
    assert len(_summary(runs["E"])["per_class_accuracy"]) == 4


def _bad(tmp_path: Path, kind: str) -> tuple[list[str], str]:
    """A broken data set of ``kind``: the --set values and a text the error line must hold."""
    data = tmp_path / "data"
    folder = ["dataset.name=imagefolder", f"dataset.data_dir={data}"]
    if kind == "missing":
        return folder, "no such folder"
    if kind == "empty":
        (data / "train").mkdir(parents=True)
        return folder, "empty"
    if kind == "one-class":
        write_folder(data, classes=("a",))
        return folder, "at least 2"
    if kind == "class-without-test-image":
        write_folder(data)
        for path in (data / "test" / "b").iterdir():
            path.unlink()
        return folder, "class 'b' has no image in the test split"
    if kind == "classes-differ":
        write_folder(data, classes=("a", "b"), splits=("train",))
        write_folder(data, classes=("a", "c"), splits=("test",))
        return folder, "only in train/: b; only in test/: c"
    if kind == "truncated":
        write_folder(data)
        good = (data / "test" / "a" / "0.png").read_bytes()
        (data / "test" / "a" / "0.png").write_bytes(good[: len(good) // 2])
        return folder, "0.png"
    if kind == "too-small":
        write_folder(data, size=6)
        return folder + ["dataset.image_size=null"], "minimum is 8 px"
    if kind == "too-small-imagenet":
        write_folder(data, size=40)
        return folder + ["dataset.image_size=null", "search.stem=imagenet"], "minimum is 64 px"
    if kind in ("mnist-missing", "svhn-missing"):
        data.mkdir()
        name = kind.removesuffix("-missing")
        return [f"dataset.name={name}", f"dataset.data_dir={data}", "dataset.image_size=null"], (
            "MNIST/raw" if name == "mnist" else "train_32x32.mat")
    x = np.zeros((4, 8, 8), np.uint8)
    labels = np.array([0, 1, 0, 1])
    data.mkdir()
    if kind == "npz-label-range":
        np.savez(data / "set.npz", x_train=x, y_train=labels, x_test=x, y_test=np.array([0, 1, 2, 1]))
        message = "label 2 is out of range"
    else:
        np.savez(data / "set.npz", x_train=x, y_train=labels[:3], x_test=x, y_test=labels)
        message = "3 labels for 4 images"
    return ["dataset.name=npz", f"dataset.data_dir={data / 'set.npz'}"], message


@pytest.mark.parametrize("kind", ["missing", "empty", "one-class", "class-without-test-image", "classes-differ",
                                  "truncated", "too-small", "too-small-imagenet", "npz-label-range",
                                  "npz-length", "mnist-missing", "svhn-missing"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, kind):
    settings, message = _bad(tmp_path, kind)
    out = tmp_path / "out"
    code = main(["search", "--recipe", "demo", "--quiet", *THREADS, "--set", *settings, *TINY, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_evaluate_refuses_data_of_other_classes(gray_runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "R"
    shutil.copytree(gray_runs["R"], run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    info = json.loads((run / "dataset.json").read_text())
    (run / "dataset.json").write_text(json.dumps({**info, "classes": ["cat", "fox"]}))
    code = main(["evaluate", "--arch", str(run), "--weights", str(run / "model.pt"), "--quiet", *THREADS,
                 "--out", str(tmp_path / "E")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # skip warnings aside
    assert code == 2 and len(errors) == 1 and "[cat, fox]" in errors[0] and "[cat, dog]" in errors[0]
    assert not (tmp_path / "E").exists()
