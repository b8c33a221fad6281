"""The examples run end to end (tiny settings, offline digits)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.arch import load_arch

with import_nni_quietly():
    import nni
    import nni.runtime.trial_command_channel as trial_command_channel
    import nni.trial
    from nni.runtime.trial_command_channel import ParameterRecord, TrialCommandChannel

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# A retrain of the searched cell at search size keeps the one-batch run to seconds (CONTRIBUTING.md test sizes).
TINY_RETRAIN = ["--set", "retrain.cells=3", "--set", "retrain.width=4", "--set", "retrain.batch_size=16",
                "--set", "search.batch_size=16", "--set", "dataset.max_samples=200"]


@pytest.mark.e2e
def test_darts_cifar10_example_fast_dev_run_on_digits(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "out"
    # NNI's manifest goes to HOME. One torch thread: two threads on two busy shared cores are many times slower.
    env = {**os.environ, "HOME": str(home), "NNI_HOME": str(home / ".nni"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(EXAMPLES / "darts_cifar10.py"), "--dataset", "digits", "--fast-dev-run",
               "--accelerator", "cpu", "--out", str(out), *TINY_RETRAIN]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "digits" and result["recipe"] == "demo" and result["fast_dev_run"] is True
    assert 0.0 <= result["test_acc"] <= 1.0
    arch = load_arch(out / "arch.json")  # validated by normalize_arch
    assert len(arch) == 32
    assert (out / "cells.png").stat().st_size > 0
    assert "test accuracy" in done.stdout
    manifest = json.loads((home / "nni-experiments" / ".experiment").read_text())
    [entry] = manifest.values()
    assert entry["status"] == "STOPPED" and entry["logDir"] == str(out / "nni-experiments")


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name.replace('/', '_')}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_darts_cifar10_example_rejects_a_bad_override(tmp_path, capsys):
    example = _load_example("darts_cifar10")
    assert example.main(["--dataset", "digits", "--set", "retrain.epochs=zero", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "retrain.epochs" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


class _RecordingChannel(TrialCommandChannel):
    """The channel an NNI training service gives a trial: one parameter set in, metrics recorded."""

    def __init__(self, parameters):
        self.parameters = parameters
        self.metrics: list[tuple[str, float]] = []

    def receive_parameter(self):
        return ParameterRecord(parameter_id=0, parameters=self.parameters)

    def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002 (NNI's name)
        self.metrics.append((type, value))


def test_nnictl_trial_api_example_reports_like_a_trial(tmp_path, monkeypatch):
    """examples/nnictl_retrain/trial_api.py under a fake NNI runtime: overrides applied, 2 epochs + 1 final report."""
    channel = _RecordingChannel({"learning_rate": 0.05, "cutout": 4, "auxiliary_weight": 0.4, "drop_path_prob": 0.1})
    monkeypatch.setattr(trial_command_channel, "_channel", channel)
    monkeypatch.setattr(nni.trial, "_params", None)  # nni.trial keeps the received parameters in globals
    monkeypatch.setattr(nni.trial, "_intermediate_seq", 0)
    monkeypatch.chdir(tmp_path)
    import nni_darts_ext

    built = []  # the evaluator the example builds, to read what it trained with

    def recording_evaluator(*args, _real=nni_darts_ext.darts_evaluator, **kwargs):
        built.append((args, _real(*args, **kwargs)))
        return built[-1][1]

    monkeypatch.setattr(nni_darts_ext, "darts_evaluator", recording_evaluator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = _load_example("nnictl_retrain/trial_api").main(
            ["--accelerator", "cpu", "--set", "retrain.cells=3", "retrain.width=4", "retrain.epochs=2",
             "retrain.batch_size=32", "dataset.max_samples=200"]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    kinds = [kind for kind, _ in channel.metrics]
    assert kinds == ["PERIODICAL", "PERIODICAL", "FINAL"]
    assert all(0.0 <= value <= 1.0 for _, value in channel.metrics)
    # The tuner's parameters were applied over the recipe's (demo: lr 0.025, no cutout, no aux head, no drop path)
    # and the --set values kept: the run trained with them.
    [((recipe, *_), evaluator)] = built
    r = recipe.retrain
    assert (r.learning_rate, r.cutout, r.auxiliary_weight, r.drop_path_prob) == (0.05, 4, 0.4, 0.1)
    assert (r.cells, r.width, r.epochs) == (3, 4, 2)
    [optimizer] = evaluator.trainer.optimizers
    assert optimizer.param_groups[0]["initial_lr"] == 0.05


def test_cluttered_digits_example_writes_an_npz_the_loader_reads_without_test_digits_in_training(tmp_path):
    from sklearn.datasets import load_digits

    from nni_darts_ext.datasets import load_images

    example = _load_example("cluttered_digits")
    path = tmp_path / "data" / "cluttered.npz"
    assert example.main(["--out", str(path), "--canvas", "12", "--copies", "1", "--test-copies", "2"]) == 0
    assert [p.name for p in path.parent.iterdir()] == ["cluttered.npz"]  # no partial file left
    images = load_images("npz", path, seed=0)
    assert (images.info.num_classes, images.info.in_channels, images.info.image_size) == (10, 1, 12)
    assert images.info.classes == [str(label) for label in range(10)]
    arrays = example.make(seed=0, canvas=12, copies=1, test_copies=2, noise=0.0, fragments=0)
    assert arrays["x_train"].shape == (1437, 12, 12) and arrays["x_test"].shape == (720, 12, 12)
    # Without noise and clutter each canvas is one digit at some offset: find which (the 1,797 digits are distinct).
    digits = load_digits()
    label_of = {image.tobytes(): label for image, label in
                zip(np.round(digits.images / 16 * 255).astype(np.uint8), digits.target, strict=True)}
    found = {}
    for split in ("train", "test"):
        found[split] = set()
        for image, label in zip(arrays[f"x_{split}"], arrays[f"y_{split}"], strict=True):
            [key] = {crop.tobytes() for y in range(5) for x in range(5)
                     if (crop := image[y:y + 8, x:x + 8]).sum() == image.sum() and crop.tobytes() in label_of}
            assert label_of[key] == label
            found[split].add(key)
    assert len(found["train"]) == 1437 and len(found["test"]) == 360
    assert not found["train"] & found["test"]  # no test digit is ever seen in training


def test_cluttered_digits_example_refuses_a_canvas_smaller_than_a_digit(tmp_path, capsys):
    example = _load_example("cluttered_digits")
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--out", str(tmp_path / "x.npz"), "--canvas", "6"])
    assert exit_info.value.code == 2 and "canvas" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
