"""Search split and loaders, CIFAR-10 loading and its errors, digits, get_dataset."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.constants import DIGITS_MEAN, DIGITS_STD
from nni_darts_ext.data import (
    DATASETS,
    CIFAR10Dataset,
    DatasetError,
    DigitsDataset,
    cifar10,
    digits,
    get_dataset,
    search_dataloaders,
    search_split,
)
from nni_darts_ext.transforms import Cutout

with import_nni_quietly():
    import nni
    from nni.nas.evaluator.pytorch import DataLoader

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------------------------------------------- search split


def test_split_disjoint_covering_and_fraction():
    train, val = search_split(range(101), 0.5, seed=0)
    assert len(train) == 50 and len(val) == 51  # floor(101 * 0.5) to train
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(101))
    assert all(type(i) is int for i in train + val)
    assert len(search_split(range(100), 0.29)[0]) == 29  # the decimal 0.29, not floor(28.999999999999996)
    assert len(search_split(range(10), 0.75)[0]) == 7


def test_split_is_seeded_and_shuffled():
    a = search_split(range(50), seed=1)
    assert a == search_split(range(50), seed=1)
    assert a != search_split(range(50), seed=2)
    assert a[0] != list(range(25))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_split_rejects_fractions_outside_open_interval(fraction):
    with pytest.raises(ValueError, match="train_fraction"):
        search_split(range(10), fraction)


def test_split_rejects_empty_sides_and_bad_types():
    with pytest.raises(ValueError, match="training side empty"):
        search_split(range(3), 0.2)
    with pytest.raises(ValueError, match="training side empty"):
        search_split([], 0.5)
    assert [len(side) for side in search_split(range(3), 0.99)] == [2, 1]  # floor keeps one for validation
    with pytest.raises(TypeError, match="train_fraction"):
        search_split(range(10), "0.5")
    with pytest.raises(TypeError, match="seed"):
        search_split(range(10), 0.5, seed=1.0)
    with pytest.raises(TypeError, match="length"):
        search_split(iter(range(10)))


def _tensor_dataset(n=20, size=8):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.arange(n))


def test_search_dataloaders_halves_and_batches():
    train_loader, val_loader = search_dataloaders(_tensor_dataset(), batch_size=4, seed=3)
    train_idx, val_idx = search_split(range(20), 0.5, seed=3)
    for loader, indices in ((train_loader, train_idx), (val_loader, val_idx)):
        assert isinstance(loader.dataset, Subset) and loader.dataset.indices == indices
        assert loader.drop_last is False
        assert loader.shuffle is True  # DDP replaces the sampler with a DistributedSampler (shuffled)
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [4, 4, 2]
        assert batches[0][0].shape == (4, 3, 8, 8)
        assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(indices)


def test_search_dataloaders_validation():
    with pytest.raises(ValueError, match="batch_size"):
        search_dataloaders(_tensor_dataset(), batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        search_dataloaders(_tensor_dataset(), batch_size=2.0)
    with pytest.raises(TypeError, match="shuffle"):
        search_dataloaders(_tensor_dataset(), batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match="num_workers"):
        search_dataloaders(_tensor_dataset(), batch_size=2, num_workers=-1)


def test_search_dataloaders_dump_round_trip():
    train_loader, _ = search_dataloaders(digits(True, image_size=8), batch_size=4, seed=5, pin_memory=False)
    dumped = nni.dump(train_loader)
    assert "nni_darts_ext.data.DigitsDataset" in dumped and "Subset" in dumped
    loaded = nni.load(dumped)
    assert loaded.dataset.indices == train_loader.dataset.indices and loaded.batch_size == 4
    torch.manual_seed(0)
    expected = next(iter(train_loader))
    torch.manual_seed(0)
    got = next(iter(loaded))
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


# ---------------------------------------------------------------------------------------------------- CIFAR-10


def _py2_dict_pickle(entries: dict) -> bytes:
    """A dict pickled like CIFAR-10's own files: protocol 2 with Python 2 ``str`` keys (SHORT_BINSTRING)."""
    out = bytearray(b"\x80\x02}")  # PROTO 2, EMPTY_DICT
    for key, value in entries.items():
        raw = key.encode("latin1")
        out += b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING: loads as str under encoding="latin1"
        out += pickle.dumps(value, protocol=2)[2:-1]  # the value without its PROTO header and STOP
        out += b"s"  # SETITEM
    return bytes(out + b".")


def _write_cifar(root, n=4, seed=0):
    """Seven small files in CIFAR-10's layout; returns {file name: (data, labels)}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in CIFAR_FILES[:-1]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        filenames = [f"{i}.png" for i in range(n)]
        entry = {"batch_label": f"{name} of 5", "labels": labels, "data": data, "filenames": filenames}
        (folder / name).write_bytes(_py2_dict_pickle(entry))
        written[name] = (data, labels)
    meta = {"num_cases_per_batch": n, "label_names": LABEL_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(_py2_dict_pickle(meta))
    return written


def test_fixture_pickle_uses_python2_str_keys():
    blob = _py2_dict_pickle({"data": 1})
    assert pickle.loads(blob, encoding="latin1") == {"data": 1}
    assert pickle.loads(blob, encoding="bytes") == {b"data": 1}  # as the CIFAR website's unpickle() shows them


def test_cifar10_loads_files_in_cifar_format(tmp_path):
    written = _write_cifar(tmp_path, n=4)
    train = cifar10(tmp_path, train=True, verify=False)
    assert isinstance(train, CIFAR10Dataset) and len(train) == 20
    assert train.data.shape == (20, 32, 32, 3)
    assert train.targets == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.classes == LABEL_NAMES
    # Row layout: 1024 red, then green, then blue values, row-major (https://www.cs.toronto.edu/~kriz/cifar.html).
    data, labels = written["data_batch_1"]
    image, label = train[0]
    assert label == labels[0]
    assert np.array_equal(np.asarray(image), data[0].reshape(3, 32, 32).transpose(1, 2, 0))

    test = cifar10(tmp_path, train=False, transform=lambda img: torch.tensor(np.asarray(img)), verify=False)
    assert len(test) == 4 and test[1][1] == written["test_batch"][1][1] and test[1][0].shape == (32, 32, 3)


def test_cifar10_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        cifar10(tmp_path, train=True)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    for name in CIFAR_FILES:
        assert name in message
    assert "download=True" in message and "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message

    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_4;"):
        cifar10(tmp_path, train=False, verify=False)  # torchvision wants all seven files for either split


def test_cifar10_verify_rejects_unofficial_files(tmp_path):
    _write_cifar(tmp_path)
    with pytest.raises(DatasetError, match=r"data_batch_1 fails its md5 check .*verify=False"):
        cifar10(tmp_path, train=True)
    with pytest.raises(DatasetError, match="test_batch fails its md5 check"):
        cifar10(tmp_path, train=False, verify=True)


def _corrupt_truncated(path):
    path.write_bytes(path.read_bytes()[:1000])


def _corrupt_garbage(path):
    path.write_bytes(b"not a pickle at all")


def _corrupt_shape(path):
    path.write_bytes(_py2_dict_pickle({"data": np.zeros((4, 3000), np.uint8), "labels": [0, 1, 2, 3]}))


def _corrupt_label_count(path):
    path.write_bytes(_py2_dict_pickle({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2]}))


def _corrupt_label_range(path):
    path.write_bytes(_py2_dict_pickle({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}))


def _corrupt_bytes_keys(path):
    # What `pickle.dump({b"data": ..., b"labels": ...})` in Python 3 writes: keys load as bytes, not str.
    path.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}))


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_corrupt_truncated, "cannot be unpickled"),
        (_corrupt_garbage, "cannot be unpickled"),
        (_corrupt_shape, r"shape \(N, 3072\), got uint8 array of shape \(4, 3000\)"),
        (_corrupt_label_count, "one label per image"),
        (_corrupt_label_range, "ints in 0..9"),
        (_corrupt_bytes_keys, "keys: .*b'data'"),
    ],
)
def test_cifar10_corrupt_batch_names_the_file(tmp_path, corrupt, reason):
    _write_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    corrupt(bad)
    with pytest.raises(DatasetError, match=rf"corrupt CIFAR-10 file {re.escape(str(bad))}: .*{reason}"):
        cifar10(tmp_path, train=True, verify=False)
    assert len(cifar10(tmp_path, train=False, verify=False)) == 4  # the test split does not read it


def test_cifar10_corrupt_meta_names_the_file(tmp_path):
    _write_cifar(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(_py2_dict_pickle({"num_vis": 3072}))
    with pytest.raises(DatasetError, match=rf"{re.escape(str(meta))}: has no list of 10 'label_names'"):
        cifar10(tmp_path, train=False, verify=False)
    assert issubclass(DatasetError, ValueError)


def test_cifar10_argument_types(tmp_path):
    with pytest.raises(TypeError, match="root"):
        cifar10(None, train=True)
    with pytest.raises(TypeError, match="train"):
        cifar10(tmp_path, train="yes")
    with pytest.raises(TypeError, match="verify"):
        cifar10(tmp_path, train=True, verify=0)


def test_get_dataset_cifar10_applies_darts_transforms(tmp_path):
    _write_cifar(tmp_path)
    train = get_dataset("cifar10", train=True, root=tmp_path, cutout=16, verify=False)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(train.transform.transforms[-1], Cutout)
    test = get_dataset("cifar10", train=False, root=tmp_path, cutout=16, verify=False)
    assert not any(isinstance(t, Cutout) for t in test.transform.transforms)
    with pytest.raises(TypeError, match="root"):
        get_dataset("cifar10", train=True)
    with pytest.raises(ValueError, match="image_size"):
        get_dataset("cifar10", train=True, root=tmp_path, image_size=16)
    with pytest.raises(ValueError, match=r"`cutout`=40 .*32x32"):
        get_dataset("cifar10", train=True, root=tmp_path, cutout=40)


# ---------------------------------------------------------------------------------------------------- digits


def test_digits_split_sizes_and_tensors():
    train, test = digits(True, image_size=16), digits(False, image_size=16)
    assert len(train) + len(test) == 1797
    assert (len(train), len(test)) == (1437, 360)
    assert set(train.indices).isdisjoint(test.indices)
    image, label = train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and type(label) is int
    assert set(train.targets) == set(range(10)) and set(test.targets) == set(range(10))
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    # Stratified: each class keeps its share of the test split (e.g. 36 of 178 zeros).
    assert all(35 <= test.targets.count(c) <= 37 for c in range(10))
    # Normalised with the train statistics (computed at 8x8; upsampling keeps the mean, shrinks the std).
    assert abs(train.images.mean().item()) < 1e-4
    assert digits(True, image_size=8).images.std().item() == pytest.approx(1.0, abs=1e-3)


def test_digits_values_come_from_load_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train = digits(True, image_size=8)
    row = train.indices[7]
    expected = (torch.tensor(bunch.data[row] / 16.0, dtype=torch.float32).reshape(8, 8) - DIGITS_MEAN) / DIGITS_STD
    assert torch.allclose(train[7][0][1], expected, atol=1e-6)
    assert train[7][1] == int(bunch.target[row])


def test_digits_deterministic_and_seeded():
    a, b = digits(True, image_size=16), digits(True, image_size=16)
    assert a.indices == b.indices and torch.equal(a.images, b.images)
    assert digits(True, image_size=16, seed=1).indices != a.indices
    assert len(digits(True, image_size=16, seed=1)) == 1437


def test_digits_transform_runs_on_a_copy():
    train = digits(True, transform=Cutout(8, generator=torch.Generator().manual_seed(0)), image_size=16)
    before = train.images[0].clone()
    image, _ = train[0]
    assert (image == 0).any() and torch.equal(train.images[0], before)


def test_digits_loader_dump_round_trip():
    dataset = DigitsDataset(train=True, transform=Cutout(4), image_size=16)
    loader = DataLoader(dataset=dataset, batch_size=8, shuffle=False)
    loaded = nni.load(nni.dump(loader))
    assert isinstance(loaded.dataset, DigitsDataset) and loaded.dataset.transform.length == 4
    torch.manual_seed(0)
    expected = next(iter(loader))
    torch.manual_seed(0)
    got = next(iter(loaded))
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_digits_argument_validation():
    with pytest.raises(ValueError, match="image_size"):
        digits(True, image_size=0)
    with pytest.raises(TypeError, match="train"):
        digits(1)
    with pytest.raises(TypeError, match="transform"):
        digits(True, transform=3)


# ---------------------------------------------------------------------------------------------------- by name


def test_get_dataset_digits():
    assert DATASETS == ("cifar10", "digits")
    train = get_dataset("digits", train=True, cutout=8)
    assert train[0][0].shape == (3, 16, 16) and isinstance(train.transform, Cutout)
    assert train.transform.length == 8
    test = get_dataset("digits", train=False, image_size=8, cutout=8)
    assert test.transform is None and test[0][0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"`cutout`=20 .*16x16.*`image_size`=16"):
        get_dataset("digits", train=True, cutout=20)


def test_get_dataset_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*cifar10, digits"):
        get_dataset("imagenet", train=True)


def test_cifar10_download_only_when_files_are_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename, md5):
        calls.append((url, download_root, filename, md5))
        _write_cifar(tmp_path)

    monkeypatch.setattr("nni_darts_ext.data.download_and_extract_archive", fake_download)
    assert len(cifar10(tmp_path, train=False, download=True, verify=False)) == 4
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(tmp_path),
                      "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]
    cifar10(tmp_path, train=False, download=True, verify=False)
    assert len(calls) == 1  # present: not fetched again


def test_cifar10_dataset_dump_round_trip(tmp_path):
    _write_cifar(tmp_path)
    train = get_dataset("cifar10", train=True, root=tmp_path, cutout=8, verify=False)
    loaded = nni.load(nni.dump(train))
    assert isinstance(loaded, CIFAR10Dataset) and len(loaded) == 20 and loaded.verify is False
    assert isinstance(loaded.transform.transforms[-1], Cutout) and loaded.transform.transforms[-1].length == 8
    assert np.array_equal(loaded.data, train.data)
