"""Deploy building blocks without training: inference form, both export formats with parity for several archs
(named genotypes and random cells of the space every preset searches), auxiliary head on/off, DDP-style weights,
a run folder's data description (its dataset.json, or derived for older runs), a net of other classes and
channels, parity failure, latency and broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nni_darts_ext.arch import build_model, random_arch, save_arch
from nni_darts_ext.deploy.dataset_info import run_dataset_info
from nni_darts_ext.deploy.formats import FORMATS, INPUT_NAME, format_of_file
from nni_darts_ext.deploy.inference import Named, Preprocessed, inference_form, load_run, to_pixels
from nni_darts_ext.deploy.latency import measure_latency
from nni_darts_ext.deploy.parity import check_parity
from nni_darts_ext.errors import ExportError, ParityError, UsageError
from nni_darts_ext.recipe_data import RecipeData
from nni_darts_ext.recipes import load_recipe

SIZE = 8
TINY = {"dataset.image_size": SIZE, "dataset.max_samples": 32, "retrain.width": 4, "retrain.cells": 3}


def _fake_run(folder: Path, arch, *, aux: bool, drop_path: float, prefix: str = "", seed: int = 0,
              dataset: dict | None = None):
    """A retrain folder as `retrain` leaves it (config.yaml, arch.json, model.pt, and ``dataset`` as
    dataset.json when given), weights random, no training."""
    recipe = load_recipe("demo", {**TINY, "retrain.auxiliary_weight": 0.4 if aux else 0.0,
                                  "retrain.drop_path_prob": drop_path})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(recipe.to_yaml())
    save_arch(arch, folder / "arch.json")
    torch.manual_seed(seed)
    shape = {}
    if dataset is not None:
        (folder / "dataset.json").write_text(json.dumps(dataset))
        shape = {"num_classes": dataset["num_classes"], "in_channels": dataset["in_channels"]}
    net = build_model(arch, width=4, num_cells=3, auxiliary_loss=aux, drop_path_prob=drop_path, image_size=SIZE,
                      **shape)
    for module in net.modules():  # BatchNorm statistics other than the initial ones, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, folder / "model.pt")
    return net, recipe


@pytest.mark.parametrize("arch,aux,drop_path", [
    ("darts-v1", True, 0.2),
    (random_arch(1), False, 0.0),
    (random_arch(2), True, 0.0),
])
def test_both_formats_match_pytorch(tmp_path, arch, aux, drop_path):
    trained, _ = _fake_run(tmp_path / "run", arch, aux=aux, drop_path=drop_path)
    run = load_run(tmp_path / "run")
    assert not run.net.training and not run.net.auxiliary_loss and not hasattr(run.net, "auxiliary_head")
    images = torch.randn(20, 3, SIZE, SIZE)
    trained.eval()
    with torch.no_grad():
        assert torch.allclose(run.net(images), trained(images))  # the weights went into the arch's net
    labels = torch.zeros(20, dtype=torch.long)
    module = Named(run.net).eval()
    for fmt in FORMATS.values():
        path = fmt.export(module, images[:2], tmp_path)
        report = check_parity(module, fmt.load(path, threads=1), images, labels, name=path.name)
        assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0 and report["images"] == 20
        assert fmt.load(path, threads=1)(images[:1].numpy()).shape == (1, 10)  # batch axis is dynamic


def test_onnx_input_is_named_image_with_dynamic_batch(tmp_path):
    import onnx

    net = inference_form(build_model("darts-v2", width=4, num_cells=3, image_size=SIZE))
    path = FORMATS["onnx"].export(Named(net).eval(), torch.randn(2, 3, SIZE, SIZE), tmp_path)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file


def test_ddp_prefixed_weights_load(tmp_path):
    trained, _ = _fake_run(tmp_path / "run", "darts-v2", aux=False, drop_path=0.0, prefix="module.")
    images = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(load_run(tmp_path / "run").net(images), trained.eval()(images))


def test_weights_of_another_arch_are_refused(tmp_path):
    _fake_run(tmp_path / "run", "darts-v2", aux=False, drop_path=0.0)
    save_arch(random_arch(3), tmp_path / "run" / "arch.json")
    with pytest.raises(UsageError, match="do not fit"):
        load_run(tmp_path / "run")


def test_preprocessing_in_graph_equals_normalised_input():
    net = inference_form(build_model("darts-v2", width=4, num_cells=3, image_size=SIZE))
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
    images = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(Preprocessed(net, mean, std)(to_pixels(images, mean, std)), net(images), atol=1e-5)


def test_parity_failure_is_reported():
    net = Named(inference_form(build_model("darts-v2", width=4, num_cells=3, image_size=SIZE))).eval()
    images = torch.randn(6, 3, SIZE, SIZE)

    def off(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy() + 1e-3

    with pytest.raises(ParityError, match="max .logit difference. 0.001"):
        check_parity(net, off, images, torch.zeros(6, dtype=torch.long), name="model.onnx")


def test_dataset_info_derived_and_read(tmp_path):
    recipe = load_recipe("demo", TINY)
    info = run_dataset_info(tmp_path, RecipeData(recipe))
    assert info["classes"] == [str(d) for d in range(10)] and info["in_channels"] == 3
    assert info["image_size"] == SIZE and len(info["mean"]) == 3 and info["images"] == {"train": 32, "test": 32}
    own = {**info, "name": "flowers", "classes": list("abcdefghij")}
    (tmp_path / "dataset.json").write_text(json.dumps(own))
    assert run_dataset_info(tmp_path, None)["classes"] == list("abcdefghij")
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(UsageError, match="missing key"):
        run_dataset_info(tmp_path, None)


def test_latency_figures_per_runtime_and_batch():
    net = Named(inference_form(build_model("darts-v2", width=4, num_cells=3, image_size=SIZE))).eval()

    def eager(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    figures = measure_latency({"eager": eager}, (3, SIZE, SIZE), threads=1, repeats=2)
    assert set(figures["eager"]) == {"batch_1", "batch_64"} and all(v > 0 for v in figures["eager"].values())


@pytest.mark.parametrize("name", ["model.onnx", "model.ts"])
def test_unloadable_file_is_export_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x08\x01garbage")
    with pytest.raises(ExportError, match=name):
        format_of_file(path).load(path, threads=1)
    with pytest.raises(ExportError):
        format_of_file(tmp_path / "model.h5")


def test_demo_folder_means_its_retrain(tmp_path):
    trained, _ = _fake_run(tmp_path / "demo" / "retrain", "darts-v2", aux=False, drop_path=0.0)
    run = load_run(tmp_path / "demo")
    assert run.folder == tmp_path / "demo" / "retrain"
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(run.net(images), trained.eval()(images))


def test_onnx_falls_back_to_torchscript_exporter(tmp_path, monkeypatch, caplog):
    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo cannot trace this")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    net = Named(inference_form(build_model("darts-v2", width=4, num_cells=3, image_size=SIZE))).eval()
    images = torch.randn(6, 3, SIZE, SIZE)
    with caplog.at_level("WARNING"):
        path = FORMATS["onnx"].export(net, images[:2], tmp_path)
    assert "dynamo cannot trace this" in caplog.text
    report = check_parity(net, FORMATS["onnx"].load(path, threads=1), images, torch.zeros(6, dtype=torch.long),
                          name=path.name)
    assert report["max_abs_diff"] <= 1e-4
    assert FORMATS["onnx"].load(path, threads=1)(images[:1].numpy()).shape == (1, 10)


def test_net_of_own_data_classes_and_channels(tmp_path):
    from nni_darts_ext.deploy.predict import load_image

    own = {"name": "imagefolder", "classes": ["cat", "dog", "owl"], "num_classes": 3, "in_channels": 1,
           "image_size": SIZE, "mean": [0.4], "std": [0.2], "images": {"train": 30, "test": 9}}
    trained, _ = _fake_run(tmp_path / "run", "darts-v2", aux=True, drop_path=0.0, dataset=own)
    run = load_run(tmp_path / "run")
    images = torch.randn(4, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(run.net(images), trained.eval()(images))
    module = Named(run.net).eval()
    path = FORMATS["onnx"].export(module, images[:2], tmp_path)
    report = check_parity(module, FORMATS["onnx"].load(path, threads=1), images, torch.zeros(4, dtype=torch.long),
                          name=path.name)
    assert report["max_abs_diff"] <= 1e-4
    from PIL import Image

    Image.new("RGB", (20, 12), (102, 102, 102)).save(tmp_path / "gray.png")
    tensor = load_image(tmp_path / "gray.png", {"image_size": SIZE, "in_channels": 1, "mean": [0.4], "std": [0.2]})
    assert tensor.shape == (1, SIZE, SIZE) and torch.allclose(tensor, torch.zeros_like(tensor), atol=1e-6)
