"""``nni-darts export / predict / evaluate --model`` end to end on one tiny retrained run (digits 8x8, width 4,
3 cells, one epoch, auxiliary head and drop path on), and the exported files loaded where neither ``nni`` nor
``nni_darts_ext`` can be imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from nni_darts_ext.cli import main
from nni_darts_ext.constants import DIGITS_MEAN, DIGITS_STD
from nni_darts_ext.deploy import formats as formats_module
from nni_darts_ext.deploy.inference import load_run
from nni_darts_ext.recipe_data import RecipeData

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_deploy_cli")]  # one worker: its fixtures run once

TINY = ["dataset.image_size=8", "dataset.max_samples=48", "retrain.width=4", "retrain.cells=3", "retrain.epochs=1",
        "retrain.batch_size=16", "retrain.drop_path_prob=0.2", "retrain.auxiliary_weight=0.4"]
THREADS = ["--threads", "1"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("retrain") / "run"
    assert main(["retrain", "--arch", "darts-v2", "--out", str(out), "--quiet", *THREADS, "--set", *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def exported(retrained):
    assert main(["export", str(retrained), "--latency-repeats", "1", "--quiet", *THREADS]) == 0
    return retrained / "export"


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory, retrained):
    """The first test digit as an 8-bit PNG, and the class the PyTorch net gives it."""
    net = load_run(retrained).net
    image = RecipeData(load_run(retrained).recipe).split(train=False)[0][0]
    pixels = (image[0].numpy() * DIGITS_STD + DIGITS_MEAN) * 255
    path = tmp_path_factory.mktemp("images") / "digit.png"
    Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)).save(path)
    with torch.no_grad():
        expected = int(net(image[None]).argmax())
    return path, str(expected)


def test_export_writes_files_parity_and_card(exported, retrained):
    names = {p.name for p in exported.iterdir()}
    assert {"model.onnx", "model.ts", "parity.json", "model_card.md", "model_card.json", "cells.png"} <= names
    assert not [n for n in names if n.startswith(".")] and not list(retrained.glob(".export*"))
    parity = json.loads((exported / "parity.json").read_text())
    for name in ("onnx", "torchscript"):
        assert parity[name]["max_abs_diff"] <= 1e-4 and parity[name]["top1_agreement"] == 1.0
        assert parity[name]["images"] == 48
    card = json.loads((exported / "model_card.json").read_text())
    assert card["params"] == sum(p.numel() for p in load_run(retrained).net.parameters())  # no auxiliary head
    assert card["macs"] > 0 and card["macs_input_shape"] == [1, 3, 8, 8]
    assert set(card["latency"]["ms"]) == {"eager", "torch.jit", "onnxruntime"}
    assert all(set(v) == {"batch_1", "batch_64"} for v in card["latency"]["ms"].values())
    assert card["latency"]["threads"] == 1 and card["latency"]["load_average_1min"] >= 0 and card["classes"] == [str(d) for d in range(10)]
    assert card["data"]["images"] == {"train": 48, "test": 48}
    summary = json.loads((retrained / "summary.json").read_text())
    assert card["test_accuracy"] == summary["test_accuracy"] == pytest.approx(parity["onnx"]["accuracy"], abs=1e-6)
    markdown = (exported / "model_card.md").read_text()
    assert "Genotype(" in markdown and "onnxruntime" in markdown and "multiply-adds" in markdown


def test_exported_files_load_without_nni(exported, tmp_path):
    images = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", load_run(exported.parent).net(torch.from_numpy(images)).numpy())
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("nni", "nni_darts_ext"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        for name in ("nni", "nni_darts_ext"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(name + " importable")
        import numpy as np, onnxruntime, torch
        images, expected = np.load({str(tmp_path / 'images.npy')!r}), np.load({str(tmp_path / 'expected.npy')!r})
        session = onnxruntime.InferenceSession({str(exported / 'model.onnx')!r}, providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {{"image": images}})[0]
        ts_logits = torch.jit.load({str(exported / 'model.ts')!r})(torch.from_numpy(images)).detach().numpy()
        assert abs(onnx_logits - expected).max() <= 1e-4 and abs(ts_logits - expected).max() <= 1e-4
        assert not any(m.split(".")[0] in ("nni", "nni_darts_ext") for m in sys.modules)
        print("loaded")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("loaded")


@pytest.mark.parametrize("model", ["model.onnx", "model.ts", "", "RUN"])
def test_predict_prints_the_class(exported, digit_png, capsys, model):
    path, expected = digit_png
    target = exported.parent if model == "RUN" else exported / model
    code, out, err = run(["predict", target, path, "--top-k", "2"], capsys)
    assert code == 0, err
    line = out.strip()
    assert line.startswith(f"{path}: {expected} ") and len(line.split(", ")) == 2
    code, out, _ = run(["predict", target, path.parent, "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and rows[0]["top"][0]["class"] == expected and 0 < rows[0]["top"][0]["probability"] <= 1


def test_evaluate_model_equals_pytorch_accuracy(exported, retrained, capsys):
    code, out, _ = run(["evaluate", "--arch", retrained / "arch.json", "--weights", retrained / "model.pt",
                        "--quiet", *THREADS], capsys)
    assert code == 0
    pytorch = out.split("test accuracy ")[1].split()[0]
    for name in ("model.onnx", "model.ts"):
        code, out, _ = run(["evaluate", "--model", exported / name, *THREADS], capsys)
        assert code == 0 and out.startswith(f"test accuracy {pytorch} ")


def test_include_preprocessing_takes_pixels(retrained, digit_png, tmp_path, capsys):
    out = tmp_path / "pre"
    code, _, err = run(["export", retrained, "--format", "onnx", "--out", out, "--include-preprocessing",
                        "--latency-repeats", "1", "--quiet", *THREADS], capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "parity.json"} and not (out / "model.ts").exists()
    card = json.loads((out / "model_card.json").read_text())
    assert card["preprocessing"]["included"] and card["input"]["values"] == "pixels 0..255"
    path, expected = digit_png
    code, printed, _ = run(["predict", out / "model.onnx", path], capsys)
    assert code == 0 and printed.startswith(f"{path}: {expected} ")


@pytest.mark.parametrize("damage", ["truncate", "tamper", "no-card"])
def test_damaged_export_is_one_line_exit_2(exported, digit_png, tmp_path, capsys, damage):
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    model = copy / "model.onnx"
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "tamper":
        model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        (copy / "model_card.json").unlink()
    for argv in (["predict", model, digit_png[0]], ["evaluate", "--model", model]):
        code, out, err = run(argv, capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "model.onnx" in err


def test_mismatched_weights_are_one_line_exit_2(retrained, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(retrained, run_dir, ignore=shutil.ignore_patterns("export", "checkpoints", "tensorboard"))
    (run_dir / "arch.json").write_text((run_dir / "arch.json").read_text().replace("sep_conv_3x3", "max_pool_3x3"))
    code, out, err = run(["export", run_dir, "--latency-repeats", "1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "do not fit" in err
    assert not (run_dir / "export").exists() and not list(run_dir.glob(".export*"))


def test_parity_failure_is_exit_1_and_writes_nothing(retrained, tmp_path, capsys, monkeypatch):
    onnx_format = formats_module.FORMATS["onnx"]
    load = onnx_format.load

    def off_by_a_little(path, *, threads):
        runner = load(path, threads=threads)
        return lambda images: runner(images) + 1e-3

    monkeypatch.setattr(onnx_format, "load", off_by_a_little)
    out = tmp_path / "export"
    code, _, err = run(["export", retrained, "--out", out, "--latency-repeats", "1", "--quiet"], capsys)
    assert code == 1 and "parity check failed" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["--format", "tflite"], ["--latency-repeats", "0"]])
def test_export_bad_option_is_exit_2(retrained, tmp_path, capsys, argv):
    code, out, err = run(["export", retrained, "--out", tmp_path / "x", *argv], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
