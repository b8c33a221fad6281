"""Checkpoint and weight files: the one weights-only allow-list, state-dict reading, fitting and mismatch reports.

The atomic plugin (AtomicCheckpointIO) and the resume checks are exercised in a real fit in test_callbacks.py.
"""

from __future__ import annotations

import pytest
import torch

from nni_darts_ext.arch import DARTS_V2, build_model
from nni_darts_ext.checkpoint import (
    checkpoint_safe_globals,
    load_weights,
    read_state_dict,
    shape_of_weights,
    state_dict_mismatch,
    strip_prefix,
)
from nni_darts_ext.errors import CheckpointError

WIDTH, CELLS, IMAGE = 4, 3, 8


def _net(**kwargs):
    torch.manual_seed(0)
    return build_model(DARTS_V2, width=WIDTH, num_cells=CELLS, image_size=IMAGE, **kwargs)


def test_the_allow_list_holds_losses_and_optimizers_only():
    allowed = set(checkpoint_safe_globals())
    assert {torch.nn.CrossEntropyLoss, torch.optim.SGD, torch.optim.Adam} <= allowed
    assert all(issubclass(c, (torch.nn.modules.loss._Loss, torch.optim.Optimizer)) for c in allowed)
    assert torch.nn.Linear not in allowed


def test_read_state_dict_reads_raw_and_lightning_files(tmp_path):
    state = {"w": torch.arange(3.0)}
    torch.save(state, tmp_path / "raw.pt")
    torch.save({"state_dict": state, "hyper_parameters": {"criterion": torch.nn.CrossEntropyLoss}}, tmp_path / "l.ckpt")
    for name in ("raw.pt", "l.ckpt"):
        assert torch.equal(read_state_dict(tmp_path / name)["w"], state["w"])


@pytest.mark.parametrize("content, match", [
    (None, "no such file"),
    (b"not a torch file", "cannot be read as PyTorch weights"),
    ({"w": [1, 2]}, "not a state dict"),
])
def test_read_state_dict_names_the_file_and_the_problem(tmp_path, content, match):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match) as error:
        read_state_dict(path)
    assert str(path) in str(error.value)


def test_state_dict_mismatch_by_hand():
    expected = {"a": torch.zeros(2), "b": torch.zeros(2, 3)}
    assert state_dict_mismatch(expected, {"a": torch.ones(2), "b": torch.ones(2, 3)}) is None
    found = {"b": torch.zeros(4, 3), "c": torch.zeros(1)}
    assert state_dict_mismatch(expected, found) == (
        "1 missing key(s) (a); 1 unexpected key(s) (c); 1 shape mismatch(es) (b: checkpoint [4, 3] vs net [2, 3])"
    )


def test_strip_prefix_picks_the_prefix_that_fits():
    state = {"model.stem.0.weight": 1, "model.head.bias": 2, "other": 3}
    assert strip_prefix(state, {"stem.0.weight", "head.bias"}) == {"stem.0.weight": 1, "head.bias": 2}
    assert strip_prefix({"x": 1}, {"x"}) == {"x": 1}


def test_weights_load_under_any_prefix_and_tell_their_shape():
    source = _net(auxiliary_loss=True)
    wrapped = {f"model.{k}": v for k, v in source.state_dict().items()}
    assert shape_of_weights(wrapped) == (WIDTH, CELLS, True)
    target = build_model(DARTS_V2, width=WIDTH, num_cells=CELLS, image_size=IMAGE, auxiliary_loss=True)
    load_weights(target, wrapped, "test")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=False))


def test_weights_of_another_width_are_refused_in_one_line():
    narrow = build_model(DARTS_V2, width=WIDTH * 2, num_cells=CELLS, image_size=IMAGE)
    with pytest.raises(CheckpointError, match=r"^--weights x: weights do not fit the net: .*shape mismatch") as err:
        load_weights(_net(), narrow.state_dict(), "--weights x")
    assert "\n" not in str(err.value) and "file [" in str(err.value)
