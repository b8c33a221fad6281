"""count_macs / count_params (nni_darts_ext.profile) cross-checked against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nni_darts_ext.arch import build_model
from nni_darts_ext.errors import ArgumentValueError
from nni_darts_ext.profile import count_macs, count_params


def _torch_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of convolutions and matrix products by torch's FlopCounterMode (2 FLOPs each)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops() // 2


def _linear_bias_adds(model: nn.Module) -> int:
    return sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)


@pytest.mark.parametrize("arch,size", [("darts-v2", 8), ("darts-v1", 16)])
def test_count_macs_agrees_with_torch_flop_counter(arch, size):
    model = build_model(arch, width=4, num_cells=3, image_size=size)
    shape = (1, 3, size, size)
    reference = _torch_macs(model, shape)
    # Convolutions and linear layers only: torch's count plus one addition per linear output (the bias).
    assert count_macs(model, shape, weighted_layers_only=True) == reference + _linear_bias_adds(model)
    # The default adds BatchNorm, ReLU, pooling and sums: more, by less than the convolutions themselves here.
    total = count_macs(model, shape)
    assert reference < total < 2 * reference


def test_count_macs_scales_with_input_and_leaves_model_alone():
    model = build_model("darts-v2", width=4, num_cells=3, image_size=8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, large = count_macs(model, (1, 3, 8, 8)), count_macs(model, (1, 3, 16, 16))
    assert 3 * small < large < 5 * small  # 4x the pixels; the classifier does not grow
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm stats untouched


def test_count_macs_plain_conv_exact():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.Flatten(), nn.Linear(5 * 6 * 6, 4, bias=False))
    assert count_macs(model, (1, 3, 8, 8)) == 5 * 6 * 6 * 3 * 9 + 5 * 6 * 6 * 4 == _torch_macs(model, (1, 3, 8, 8))


def test_count_params():
    model = build_model("darts-v2", width=4, num_cells=3, auxiliary_loss=True, image_size=8)
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 0
    assert count_params(nn.Linear(3, 2)) == 8


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 3, 8, 8), (1, 3, 0, 8)])
def test_count_macs_rejects_bad_shape(shape):
    with pytest.raises(ArgumentValueError) as info:
        count_macs(nn.Linear(3, 2), shape)
    assert info.value.argument == "input_shape"
