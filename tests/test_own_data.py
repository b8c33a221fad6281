"""Own datasets (nni_darts_ext.datasets): every kind from small real files, conversions, checks, statistics."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from nni_darts_ext.datasets import DataInfo, load_images
from nni_darts_ext.errors import BadImageError, DataFolderError, ImageSizeError, LabelError

FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "gif": "GIF", "tiff": "TIFF", "webp": "WEBP"}


def write_folder(root: Path, classes=("a", "b"), per_class=3, size=12, mode="L", suffix="png", splits=("train",
                 "test"), seed=0) -> Path:
    """``root/SPLIT/CLASS/i.suffix``: images whose mean brightness depends on the class."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = 40 + 150 * c / max(1, len(classes) - 1)
                shape = (size, size) if mode == "L" else (size, size, 3)
                pixels = np.clip(rng.normal(base, 20, shape), 0, 255).astype(np.uint8)
                options = {"lossless": True} if suffix == "webp" else {}  # lossy WebP tints gray pixels
                PIL.Image.fromarray(pixels, mode=mode).save(folder / f"{i}.{suffix}", FORMATS[suffix], **options)
    return root


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_imagefolder_reads_every_format(tmp_path, suffix):
    mode = "L" if suffix != "jpg" else "RGB"
    write_folder(tmp_path, suffix=suffix, mode=mode)
    images = load_images("imagefolder", tmp_path, seed=0)
    info = images.info
    assert info.classes == ["a", "b"] and info.num_classes == 2
    assert info.in_channels == (1 if mode == "L" else 3) and info.image_size == 12
    assert info.images == {"train": 6, "test": 6}
    assert info.per_class == {"train": {"a": 3, "b": 3}, "test": {"a": 3, "b": 3}}
    image, label = images.dataset(train=False)[4]
    assert image.shape == (info.in_channels, 12, 12) and label == 1


def test_statistics_are_those_of_the_training_split(tmp_path):
    write_folder(tmp_path)
    images = load_images("imagefolder", tmp_path, seed=0)
    pixels = torch.stack([images.train.get(i) for i in range(len(images.train))])
    assert images.info.mean == pytest.approx([pixels.mean().item()], abs=1e-5)
    assert images.info.std == pytest.approx([pixels.std(unbiased=False).item()], abs=1e-5)
    normalised = torch.stack([images.dataset(train=False)[i][0] for i in range(6)])
    assert normalised.mean().item() == pytest.approx(0.0, abs=0.5)


def test_given_statistics_win(tmp_path):
    write_folder(tmp_path)
    images = load_images("imagefolder", tmp_path, mean=[0.5], std=[0.25])
    assert images.info.mean == [0.5] and images.info.std == [0.25]


def test_modes_are_converted_to_the_run_channels(tmp_path):
    write_folder(tmp_path, mode="RGB", per_class=2)
    extra = tmp_path / "train" / "a"
    PIL.Image.fromarray(np.full((12, 12), 30000, np.uint16)).save(extra / "wide.png")  # 16-bit gray
    PIL.Image.fromarray(np.zeros((12, 12, 4), np.uint8), mode="RGBA").save(extra / "alpha.png")
    PIL.Image.fromarray(np.zeros((12, 12, 3), np.uint8)).convert("P").save(extra / "palette.gif")
    PIL.Image.fromarray(np.zeros((12, 12), np.uint8)).save(extra / "gray.png")
    for cache in ("memory", "none"):
        images = load_images("imagefolder", tmp_path, cache=cache)
        assert images.info.in_channels == 3
        wide = images.train.get(images.train.paths.index(extra / "wide.png")) if cache == "none" else None
        shapes = {images.train.get(i).shape for i in range(len(images.train))}
        assert shapes == {(3, 12, 12)}
        if wide is not None:
            assert wide.mean().item() == pytest.approx(30000 / 65535, abs=1e-4)
    assert load_images("imagefolder", tmp_path, in_channels=1).train.get(0).shape == (1, 12, 12)


def test_resize_and_non_images_ignored(tmp_path):
    write_folder(tmp_path, size=12)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "b" / ".DS_Store").write_bytes(b"\0\1")
    PIL.Image.fromarray(np.zeros((20, 9), np.uint8)).save(tmp_path / "test" / "b" / "odd.png")
    with pytest.raises(ImageSizeError, match=r"12x12.*9x20|9x20.*12x12"):
        load_images("imagefolder", tmp_path)
    images = load_images("imagefolder", tmp_path, image_size=16)
    assert images.info.ignored == 2 and images.info.image_size == 16
    assert images.dataset(train=True)[0][0].shape == (1, 16, 16)


def test_held_out_split_is_stratified_and_seeded(tmp_path):
    write_folder(tmp_path, per_class=10, splits=("train",))
    first = load_images("imagefolder", tmp_path, test_fraction=0.2, seed=3)
    again = load_images("imagefolder", tmp_path, test_fraction=0.2, seed=3)
    assert first.info.per_class == {"train": {"a": 8, "b": 8}, "test": {"a": 2, "b": 2}}
    assert torch.equal(first.test.get(0), again.test.get(0))


def test_bad_image_is_named_or_skipped(tmp_path):
    write_folder(tmp_path)
    bad = tmp_path / "train" / "b" / "broken.png"
    good = (tmp_path / "train" / "b" / "0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(BadImageError) as info:
        load_images("imagefolder", tmp_path)
    assert info.value.path == bad and "broken.png" in str(info.value)
    images = load_images("imagefolder", tmp_path, skip_bad_images=True)
    assert images.info.skipped == ["train/b/broken.png"] and images.info.images["train"] == 6


@pytest.mark.parametrize("problem", ["missing", "empty", "one-class", "differ", "no-image"])
def test_folder_problems(tmp_path, problem):
    data = tmp_path / "data"
    if problem == "missing":
        pass
    elif problem == "empty":
        (data / "train").mkdir(parents=True)
    elif problem == "one-class":
        write_folder(data, classes=("a",))
    elif problem == "differ":
        write_folder(data, classes=("a", "b"), splits=("train",))
        write_folder(data, classes=("a", "c"), splits=("test",))
    else:
        write_folder(data)
        for path in (data / "test" / "b").iterdir():
            path.unlink()
    with pytest.raises(DataFolderError) as info:
        load_images("imagefolder", data)
    text = str(info.value)
    assert "\n" not in text
    if problem == "differ":
        assert "only in train/: b" in text and "only in test/: c" in text
    if problem == "no-image":
        assert "'b'" in text and "test" in text


def test_npz_layouts_and_label_checks(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "set.npz"
    x = rng.integers(0, 255, (6, 3, 10, 10), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(path, x_train=x, y_train=y, x_test=x.transpose(0, 2, 3, 1), y_test=y)
    images = load_images("npz", path)
    assert images.info.in_channels == 3 and images.info.classes == ["0", "1", "2"]
    assert torch.equal(images.train.images[1], images.test.images[1])  # NCHW and NHWC read alike
    np.savez(path, x_train=x[:, 0].astype(np.float32) / 255, y_train=y, x_test=x[:, 0], y_test=np.array([0, 1, 5, 0, 1, 2]))
    with pytest.raises(LabelError, match="label 5 is out of range"):
        load_images("npz", path)
    np.savez(path, x_train=x, y_train=y[:5], x_test=x, y_test=y)
    with pytest.raises(LabelError, match="5 labels for 6 images"):
        load_images("npz", path)


def _idx(path: Path, array: np.ndarray) -> None:
    """An idx file as torchvision's MNIST reads it (big-endian dims, magic 0x0801 / 0x0803 for uint8)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_like_from_idx_files(tmp_path, name):
    folder = tmp_path / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as info:
        load_images(name, tmp_path)
    assert str(folder) in str(info.value)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    images = load_images(name, tmp_path, image_size=16)
    assert images.info.num_classes == 10 and images.info.in_channels == 1 and images.info.image_size == 16
    assert images.info.images == {"train": 20, "test": 10}


def test_cifar100_from_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    with pytest.raises(FileNotFoundError, match="meta"):
        load_images("cifar100", tmp_path)
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 100)):
        entry = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "fine_labels": list(np.arange(n) % 100)}
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    images = load_images("cifar100", tmp_path)
    assert images.info.num_classes == 100 and images.info.classes[3] == "c3" and images.info.in_channels == 3


def test_svhn_from_mat(tmp_path):
    from scipy.io import savemat

    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_images("svhn", tmp_path)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": rng.integers(0, 255, (32, 32, 3, n), dtype=np.uint8),
                                                  "y": (np.arange(n) % 10 + 1).reshape(-1, 1)})
    images = load_images("svhn", tmp_path)
    assert images.info.num_classes == 10 and images.info.per_class["train"]["0"] == 2


def test_data_info_round_trip(tmp_path):
    write_folder(tmp_path)
    info = load_images("imagefolder", tmp_path).info
    assert DataInfo.from_dict(info.to_dict()) == info
    assert {"name", "classes", "num_classes", "in_channels", "image_size", "mean", "std", "images", "per_class",
            "skipped"} <= set(info.to_dict())


def _example():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "own_images.py"
    spec = importlib.util.spec_from_file_location("example_own_images", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_writes_folders_the_loader_reads(tmp_path):
    example = _example()
    example.write_gray(tmp_path / "gray", classes=3, size=25, seed=0)
    example.write_rgb(tmp_path / "rgb", size=48, seed=0)
    gray = load_images("imagefolder", tmp_path / "gray").info
    rgb = load_images("imagefolder", tmp_path / "rgb").info
    assert (gray.num_classes, gray.in_channels, gray.image_size) == (3, 1, 25)
    assert (rgb.num_classes, rgb.in_channels, rgb.image_size) == (4, 3, 48)
    assert rgb.classes == ["china-left", "china-right", "flower-left", "flower-right"]
