"""A real NNI one-shot DARTS search (its module gets a CombinedLoader of {'train', 'val'} and optimises by hand),
stopped after a mid-epoch timed checkpoint and resumed from it, ends with the weights and architecture parameters
of the uninterrupted search. Tiny: width 4, 3 cells, 8x8 digits."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

import nni_darts_ext as nde
from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.callbacks import AtomicCheckpointIO
from nni_darts_ext.callbacks.timed_checkpoint import TimedCheckpoint
from nni_darts_ext.resumable_data import ExactResume, ResumableDataLoader

with import_nni_quietly():
    import nni
    from nni.nas.experiment import NasExperiment
    from nni.nas.hub.pytorch import DARTS as DartsSpace

EPOCHS, BATCHES, BATCH = 2, 4, 8
SAVE_AFTER_BATCHES = 6  # fake clock ticks per batch -> a save in epoch 1, 2 batches in
KILL_AFTER_BATCHES = 7


class Tick(pl.Callback):
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def on_train_batch_start(self, *args):
        self.now += 1.0


class Kill(RuntimeError):
    pass


class KillAfter(pl.Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, *args):
        self.batches += 1
        if self.batches == KILL_AFTER_BATCHES:
            raise Kill()


def _search(tmp_path, name, callbacks, ckpt_path=None):
    train_set = nde.get_dataset("digits", train=True, image_size=8)
    train_idx, val_idx = nde.search_split(train_set, seed=0)
    Loader = nni.trace(ResumableDataLoader)
    subset = torch.utils.data.Subset
    train = Loader(subset(train_set, train_idx[: BATCHES * BATCH]), batch_size=BATCH, shuffle=True, seed=1)
    val = Loader(subset(train_set, val_idx[: BATCHES * BATCH]), batch_size=BATCH, shuffle=True, seed=2)
    pl.seed_everything(0, verbose=False)
    evaluator = nde.darts_evaluator(
        train, val, max_epochs=EPOCHS, learning_rate=0.05, auxiliary_loss_weight=0.0, accelerator="cpu",
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        limit_val_batches=0, plugins=[AtomicCheckpointIO()], callbacks=[ExactResume(), *callbacks],
        default_root_dir=str(tmp_path), fit_kwargs={"ckpt_path": ckpt_path} if ckpt_path else None)
    strategy = nde.darts_strategy("first-order")
    experiment = NasExperiment(DartsSpace(width=4, num_cells=3, dataset="cifar"), evaluator, strategy)
    experiment.config.experiment_working_directory = str(tmp_path / "nni" / name)
    try:
        experiment.run()
    finally:
        experiment.stop()
    return {n: p.detach().clone() for n, p in strategy.oneshot_module.named_parameters()}


@pytest.mark.e2e  # a whole search
def test_nni_search_resumed_mid_epoch_is_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("NNI_HOME", str(tmp_path / "nni-home"))
    torch.set_num_threads(1)
    reference = _search(tmp_path, "reference", [])
    clock = Tick()
    timed = TimedCheckpoint(SAVE_AFTER_BATCHES, tmp_path / "ckpt", clock=clock)
    with pytest.raises(Exception) as info:
        _search(tmp_path, "interrupted", [clock, timed, KillAfter()])
    assert isinstance(info.value, Kill) or isinstance(info.value.__cause__ or info.value.__context__, Kill)
    assert timed.saves == 1
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert [s["batches"] for s in checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]] == [2, 2]
    resumed = _search(tmp_path, "resumed", [], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    arch = [n for n in reference if "arch" in n]
    assert arch and set(resumed) == set(reference)
    for name, value in reference.items():
        assert torch.equal(value, resumed[name]), name
