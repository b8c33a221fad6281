"""Cutout (kernel and transform) and the DARTS CIFAR-10 pipeline."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import transforms as T
from torchvision import tv_tensors

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.constants import CIFAR10_MEAN, CIFAR10_STD
from nni_darts_ext.transforms import Cutout, cifar10_transforms, cutout

with import_nni_quietly():
    import nni


def _reference_cutout(img: torch.Tensor, y: int, x: int, length: int) -> torch.Tensor:
    """quark0/darts cnn/utils.py Cutout.__call__ with the centre given instead of drawn."""
    h, w = img.size(1), img.size(2)
    mask = np.ones((h, w), np.float32)
    y1, y2 = np.clip(y - length // 2, 0, h), np.clip(y + length // 2, 0, h)
    x1, x2 = np.clip(x - length // 2, 0, w), np.clip(x + length // 2, 0, w)
    mask[y1:y2, x1:x2] = 0.0
    return img * torch.from_numpy(mask).expand_as(img)


def _expected_zero_fraction(height: int, width: int, length: int) -> float:
    """Exact E[zeroed fraction] over uniform integer centres: rows and columns are independent."""
    half = length // 2

    def mean_span(size: int) -> float:
        return sum(min(c + half, size) - max(c - half, 0) for c in range(size)) / size

    return mean_span(height) * mean_span(width) / (height * width)


def _zero_rectangle(plane: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(y1, y2, x1, x2) if the zeros of a 2-D plane form exactly one axis-aligned rectangle, else None."""
    zeros = plane == 0
    rows = torch.nonzero(zeros.any(dim=1)).flatten()
    cols = torch.nonzero(zeros.any(dim=0)).flatten()
    if len(rows) == 0:
        return None
    y1, y2, x1, x2 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    expected = torch.zeros_like(zeros)
    expected[y1:y2, x1:x2] = True
    return (y1, y2, x1, x2) if torch.equal(zeros, expected) else None


# ---------------------------------------------------------------------------------------------------- kernel


def test_kernel_zeroes_the_expected_square():
    out = cutout(torch.ones(2, 6, 6), torch.tensor([3, 2]), 4)
    expected = torch.ones(2, 6, 6)
    expected[:, 1:5, 0:4] = 0
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    ("centre", "rows", "cols"),
    [
        ((0, 0), slice(0, 2), slice(0, 2)),  # top-left corner: clipped to 2x2
        ((7, 7), slice(5, 8), slice(5, 8)),  # bottom-right: y + 2 = 9 clipped to 8
        ((0, 5), slice(0, 2), slice(3, 7)),  # top edge only
        ((-3, 4), slice(0, 0), slice(2, 6)),  # centre above the image: nothing left inside
    ],
)
def test_kernel_clips_at_borders(centre, rows, cols):
    out = cutout(torch.ones(1, 8, 8), torch.tensor(centre), 4)
    expected = torch.ones(1, 8, 8)
    expected[:, rows, cols] = 0
    assert torch.equal(out, expected)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 16, 40])
def test_kernel_matches_quark0_darts_for_every_centre(length):
    img = torch.arange(1, 3 * 9 * 7 + 1, dtype=torch.float32).reshape(3, 9, 7)
    ys, xs = torch.meshgrid(torch.arange(-2, 11), torch.arange(-2, 9), indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    batch = img.expand(len(centres), -1, -1, -1)
    out = cutout(batch, centres, length)
    for i, (y, x) in enumerate(centres.tolist()):
        expected = _reference_cutout(img, y, x, length)
        assert torch.equal(out[i], expected), (y, x)  # batched mask
        assert torch.equal(cutout(img, (y, x), length), expected), (y, x)  # single image, sliced
        assert torch.equal(cutout(img, torch.tensor([[y, x]]), length), expected), (y, x)


def test_kernel_batch_uses_one_centre_per_image_and_keeps_input():
    images = torch.ones(3, 2, 5, 5)
    out = cutout(images, torch.tensor([[0, 0], [2, 2], [4, 4]]), 2)
    assert torch.equal(images, torch.ones(3, 2, 5, 5))  # not modified in place
    assert [_zero_rectangle(out[i, 0]) for i in range(3)] == [(0, 1, 0, 1), (1, 3, 1, 3), (3, 5, 3, 5)]
    assert torch.equal(out[:, 0], out[:, 1])  # one square for all channels


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float16, torch.bfloat16, torch.float64])
def test_kernel_keeps_dtype(dtype):
    img = torch.full((2, 1, 4, 4), 7, dtype=dtype)
    expected = img.clone()
    expected[0, :, 0:2, 0:2] = 0
    expected[1, :, 2:4, 1:3] = 0
    out = cutout(img, torch.tensor([[1, 1], [3, 2]]), 2)
    assert out.dtype == dtype and torch.equal(out, expected)
    assert torch.equal(cutout(img[1], (3, 2), 2), expected[1])


def test_kernel_multiplies_like_the_original():
    # quark0/darts does `img *= mask`: NaN and inf inside the square become NaN, outside they stay.
    img = torch.tensor([[[float("nan"), float("inf")], [1.0, float("-inf")]]])
    for out in (cutout(img, (0, 1), 2), cutout(img[None], torch.tensor([[0, 1]]), 2)[0]):
        assert torch.isnan(out[0, 0]).all() and torch.equal(out[0, 1, :1], torch.tensor([1.0]))
        assert out[0, 1, 1] == float("-inf")
        ref = _reference_cutout(img, 0, 1, 2)
        assert torch.equal(torch.isnan(out), torch.isnan(ref))


def test_kernel_rejects_bad_centres_and_shapes():
    with pytest.raises(TypeError, match="centres"):
        cutout(torch.ones(1, 4, 4), torch.tensor([1.0, 1.0]), 2)
    with pytest.raises(ValueError, match="centres"):
        cutout(torch.ones(2, 1, 4, 4), torch.tensor([1, 1]), 2)
    with pytest.raises(ValueError, match="CHW"):
        cutout(torch.ones(4, 4), torch.tensor([1, 1]), 2)
    with pytest.raises(TypeError, match="tensor"):
        cutout(np.ones((1, 4, 4)), torch.tensor([1, 1]), 2)
    with pytest.raises(TypeError, match="centres"):
        cutout(torch.ones(1, 4, 4), (1.5, 2), 2)
    with pytest.raises(ValueError, match="centres"):
        cutout(torch.ones(1, 4, 4), (1, 2, 3), 2)


# ---------------------------------------------------------------------------------------------------- transform


def test_batch_gets_one_rectangle_per_image_and_independent_centres():
    length = 8
    out = Cutout(length, generator=torch.Generator().manual_seed(0))(torch.ones(64, 3, 32, 32))
    assert out.shape == (64, 3, 32, 32)
    squares = []
    for image in out:
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        rect = _zero_rectangle(image[0])
        assert rect is not None  # exactly one rectangle (length >= 2 always leaves one pixel inside)
        y1, y2, x1, x2 = rect
        assert (y2 - y1) * (x2 - x1) <= length * length
        assert y2 - y1 <= length and x2 - x1 <= length
        squares.append(rect)
    # 1024 possible centres: 64 independent draws give ~2 collisions; a shared centre would give 1 square.
    assert len(set(squares)) >= 56


def test_mean_zeroed_fraction_matches_exact_expectation():
    height, width, length = 12, 10, 6
    out = Cutout(length, generator=torch.Generator().manual_seed(1))(torch.ones(20000, 1, height, width))
    fractions = (out == 0).float().mean(dim=(1, 2, 3))
    expected = _expected_zero_fraction(height, width, length)
    assert expected == pytest.approx(5.25 * 5.1 / 120)  # by hand: mean spans of 5.25 rows and 5.1 columns
    tolerance = 5 * fractions.std().item() / len(fractions) ** 0.5
    assert abs(fractions.mean().item() - expected) < tolerance


def test_centres_cover_the_whole_image_uniformly():
    # length 2 zeroes rows y-1..y and columns x-1..x: the bottom-right zero pixel is the centre itself.
    out = Cutout(2, generator=torch.Generator().manual_seed(2))(torch.ones(6000, 1, 3, 4))
    zeros = (out[:, 0] == 0).flatten(1)  # (N, 12): a rectangle's last zero in row-major order is its corner
    last = zeros.shape[1] - 1 - zeros.flip(1).int().argmax(dim=1)
    counts = torch.bincount(last, minlength=12)
    assert counts.min() > 0.7 * 500 and counts.max() < 1.3 * 500  # 6000 / 12 = 500 each


def test_chw_input_and_labels_pass_through():
    t = Cutout(4, generator=torch.Generator().manual_seed(0))
    out = t(torch.ones(3, 8, 8))
    assert out.shape == (3, 8, 8) and _zero_rectangle(out[0]) is not None
    image, label = t((torch.ones(3, 8, 8), 7))
    assert label == 7 and _zero_rectangle(image[0]) is not None
    img = t(tv_tensors.Image(torch.ones(3, 8, 8)))
    assert isinstance(img, tv_tensors.Image)


def test_same_seed_same_output_and_matches_kernel():
    x = torch.randn(5, 3, 9, 9)
    a = Cutout(4, generator=torch.Generator().manual_seed(3))(x)
    b = Cutout(4, generator=torch.Generator().manual_seed(3))(x)
    c = Cutout(4, generator=torch.Generator().manual_seed(4))(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    pixel = torch.randint(0, 81, (5,), generator=torch.Generator().manual_seed(3))  # one draw per image
    assert torch.equal(a, cutout(x, torch.stack([pixel // 9, pixel % 9], dim=1), 4))


def test_single_image_paths_agree():
    # The CHW fast path (Python ints, slicing), the v2 path of a tv_tensor and a batch of one draw and cut alike.
    x = torch.randn(3, 11, 13)
    outs = [
        Cutout(6, generator=torch.Generator().manual_seed(9))(x),
        Cutout(6, generator=torch.Generator().manual_seed(9))(tv_tensors.Image(x)).as_subclass(torch.Tensor),
        Cutout(6, generator=torch.Generator().manual_seed(9))(x[None])[0],
        Cutout(6, generator=torch.Generator().manual_seed(9))((x, 0))[0],
    ]
    assert (outs[0] == 0).any()
    assert all(torch.equal(outs[0], out) for out in outs[1:])


def test_global_rng_when_no_generator():
    x = torch.ones(4, 1, 16, 16)
    torch.manual_seed(5)
    a = Cutout(8)(x)
    torch.manual_seed(5)
    assert torch.equal(a, Cutout(8)(x))


def test_output_on_input_device():
    # "meta" tensors have a device but no data: a hard-coded CPU tensor anywhere in the path would fail here.
    out = Cutout(4)(torch.ones(2, 3, 8, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3, 8, 8)
    out = Cutout(4, generator=torch.Generator().manual_seed(0))(torch.ones(3, 8, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (3, 8, 8)
    out = Cutout(4, generator=torch.Generator().manual_seed(0))(torch.ones(2, 3, 8, 8, device="meta"))
    assert out.device.type == "meta"
    assert Cutout(4)(torch.ones(2, 3, 8, 8)).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_output_on_cuda_with_cpu_generator():
    x = torch.ones(4, 3, 8, 8, device="cuda")
    out = Cutout(4, generator=torch.Generator().manual_seed(0))(x)
    ref = Cutout(4, generator=torch.Generator().manual_seed(0))(x.cpu())
    assert out.device == x.device and torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("bad", [1.5, "16", None, True, False, torch.tensor(4)])
def test_length_type_rejected(bad):
    with pytest.raises(TypeError, match="length"):
        Cutout(bad)


@pytest.mark.parametrize("bad", [0, -3])
def test_length_range_rejected(bad):
    with pytest.raises(ValueError, match="length"):
        Cutout(bad)


def test_other_bad_inputs():
    with pytest.raises(TypeError, match="generator"):
        Cutout(4, generator=0)
    with pytest.raises(TypeError, match="ToTensor"):
        Cutout(4)(PIL.Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="NCHW"):
        Cutout(4)(torch.ones(8, 8))


def test_repr_and_nni_dump_round_trip():
    assert repr(Cutout()) == "Cutout(length=16)"
    assert repr(Cutout(8, generator=torch.Generator())) == "Cutout(length=8)"
    loaded = nni.load(nni.dump(Cutout(8)))
    assert isinstance(loaded, Cutout) and loaded.length == 8


# ---------------------------------------------------------------------------------------------------- pipeline


def _pil(color=(10, 200, 30), size=32):
    return PIL.Image.new("RGB", (size, size), color)


def test_test_pipeline_is_totensor_normalize():
    tf = cifar10_transforms(train=False)
    assert [type(t).__name__ for t in tf.transforms] == ["ToTensor", "Normalize"]
    assert isinstance(tf, T.Compose) and isinstance(tf.transforms[1], T.Normalize)
    out = tf(_pil())
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    expected = (torch.tensor([10, 200, 30], dtype=torch.float32)[:, None, None] / 255 - mean) / std
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, expected.expand(3, 32, 32))


def test_train_pipeline_order_and_cutout():
    tf = cifar10_transforms(train=True)
    kinds = [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize, Cutout]
    assert len(tf.transforms) == len(kinds) and all(isinstance(t, k) for t, k in zip(tf.transforms, kinds, strict=False))
    assert tf.transforms[0].padding == 4 and tf.transforms[-1].length == 16
    assert isinstance(cifar10_transforms(True, cutout=None).transforms[-1], T.Normalize)
    loaded = nni.load(nni.dump(tf))
    assert repr(loaded) == repr(tf) and isinstance(loaded.transforms[-1], Cutout)
    # An image of the CIFAR mean normalises to 0 (padding pixels aside); Cutout zeroes a square of it too.
    mean_rgb = tuple(round(255 * m) for m in CIFAR10_MEAN)
    out = cifar10_transforms(True, cutout=8)(_pil(mean_rgb))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.median().abs() < 0.01


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (33, ValueError), (1.5, TypeError), (True, TypeError)])
def test_pipeline_validates_cutout(bad, error):
    with pytest.raises(error, match="cutout"):
        cifar10_transforms(True, cutout=bad)


def test_pipeline_validates_train():
    with pytest.raises(TypeError, match="train"):
        cifar10_transforms("yes")
