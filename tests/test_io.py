"""Atomic writers: all or nothing, ordinary file permissions."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from nni_darts_ext.io import atomic_open, atomic_torch_save, atomic_write_json, atomic_write_text


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"good": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b'{"trunc')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "good": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_files_get_umask_permissions_and_parents_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "note.txt"
    atomic_write_text(target, "hi")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert target.read_text() == "hi"


def test_torch_save_round_trips(tmp_path):
    state = {"w": torch.arange(3.0)}
    atomic_torch_save(state, tmp_path / "model.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], state["w"])
