"""Out of memory explains itself: a step that raises ``torch.OutOfMemoryError`` (as CUDA does) ends the CLI with one
line naming the stage, the batch and what to try, exit 75, and the last checkpoint whole."""

from __future__ import annotations

import pytest
import torch

from nni_darts_ext.callbacks.search_health import SearchHealthMonitor
from nni_darts_ext.checkpoint import read_checkpoint
from nni_darts_ext.cli import EXIT_OUT_OF_MEMORY, main
from nni_darts_ext.search.module import DartsSearchModule
from nni_darts_ext.training_module import DartsClassificationModule

pytestmark = pytest.mark.e2e

TINY = ["dataset.max_samples=32", "search.width=4", "search.cells=3", "search.epochs=2", "search.batch_size=8",
        "retrain.width=4", "retrain.cells=3", "retrain.epochs=2", "retrain.batch_size=16"]


def _raise_in_second_epoch(method):
    def step(self, *args, **kwargs):
        if self.trainer.current_epoch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return method(self, *args, **kwargs)
    return step


def _second_epoch_eigenvalue(method):
    def compute(self, pl_module):
        if pl_module.trainer.current_epoch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return method(self, pl_module)
    return compute


@pytest.mark.parametrize("stage, target, patch, command, extra, batch", [
    ("search step", DartsSearchModule, "training_step", "search", [], 8),
    ("eigenvalue", SearchHealthMonitor, "compute_eigenvalue", "search", ["search.hessian_every=1",
                                                                          "search.hessian_batch_size=4"], 4),
    ("retrain", DartsClassificationModule, "training_step", "retrain", [], 16),
])
def test_out_of_memory_names_the_stage_the_batch_and_what_to_try(stage, target, patch, command, extra, batch,
                                                                 tmp_path, monkeypatch, capsys):
    original = getattr(target, patch)
    wrap = _raise_in_second_epoch if patch == "training_step" else _second_epoch_eigenvalue
    monkeypatch.setattr(target, patch, wrap(original))
    out = tmp_path / "run"
    argv = [command, *(["--arch", "darts-v2"] if command == "retrain" else []), "--out", str(out), "--recipe", "demo",
            "--quiet", "--threads", "1", "--set", *TINY, *extra]
    assert main(argv) == EXIT_OUT_OF_MEMORY
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors  # one line (warnings of the run itself may come before it)
    err = errors[0]
    assert f"out of memory in the {stage} at batch {batch}" in err
    assert "checkpointing" in err and "--resume" in err
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 0  # the first epoch's, whole

