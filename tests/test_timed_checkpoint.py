"""TimedCheckpoint + ExactResume + ResumableDataLoader: a run stopped mid-epoch after a timed checkpoint and resumed
from it ends bit-identical to the uninterrupted run (SGD with momentum, a step LR schedule, dropout, noise drawn
from torch's global RNG in the training step and random augmentation in the dataset)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import Dataset

from nni_darts_ext.callbacks import AtomicCheckpointIO, read_checkpoint
from nni_darts_ext.callbacks.timed_checkpoint import TimedCheckpoint
from nni_darts_ext.durations import parse_duration
from nni_darts_ext.resumable_data import (
    ExactResume,
    ResumableDataLoader,
    ResumableSampler,
    data_seed,
)

FEATURES, CLASSES, HIDDEN = 6, 3, 16
EPOCHS = 3
SAVE_EVERY = 19  # fake seconds; the clock ticks one per batch -> a save after global step 19 (epoch 1, 9 batches in)
STOP_AT_STEP = 23  # the "kill": four steps after the save, mid-epoch 2


class NoisyData(Dataset):
    """Random tensors whose items get random augmentation drawn from the global RNG (as torchvision does)."""

    def __init__(self, size: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, FEATURES, generator=generator)
        self.y = torch.randint(0, CLASSES, (size,), generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index] + 0.05 * torch.randn(FEATURES), self.y[index]


class Net(pl.LightningModule):
    def __init__(self, paired: bool = False):
        super().__init__()
        self.paired = paired
        self.net = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Dropout(0.3), nn.Linear(HIDDEN, CLASSES))

    def _loss(self, batch):
        x, y = batch
        x = x + 0.1 * torch.randn_like(x)  # augmentation inside the step, global RNG
        return nn.functional.cross_entropy(self.net(x), y)

    def training_step(self, batch, batch_idx):
        if self.paired:  # a dict of loaders, as NNI's one-shot modules get
            return self._loss(batch["train"]) + 0.5 * self._loss(batch["val"])
        return self._loss(batch)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


class Tick(pl.Callback):
    """A fake wall clock: one second per training batch."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def on_train_batch_start(self, *args):
        self.now += 1.0


class Kill(RuntimeError):
    pass


class KillAt(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == STOP_AT_STEP:
            raise Kill()


def _loaders(paired: bool):
    train = ResumableDataLoader(NoisyData(40, 1), batch_size=4, shuffle=True, seed=7)  # 10 batches
    if not paired:
        return train
    return {"train": train, "val": ResumableDataLoader(NoisyData(28, 2), batch_size=4, shuffle=True, seed=8)}  # 7


def _fit(paired, callbacks, ckpt_path=None, model_seed=0):
    torch.manual_seed(model_seed)
    module = Net(paired)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                         callbacks=[ExactResume(), *callbacks])
    torch.manual_seed(123)  # the global RNG at the start of training
    trainer.fit(module, _loaders(paired), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("paired", [False, True], ids=["one-loader", "dict-of-loaders"])
def test_resume_from_timed_checkpoint_is_bit_identical(tmp_path, paired):
    reference, ref_trainer = _fit(paired, [])
    assert ref_trainer.global_step == EPOCHS * 10

    clock = Tick()
    timed = TimedCheckpoint(SAVE_EVERY, tmp_path, clock=clock)
    with pytest.raises(Kill):
        _fit(paired, [clock, timed, KillAt()])
    assert timed.saves == 1
    checkpoint = read_checkpoint(tmp_path / "last.ckpt")
    assert checkpoint["global_step"] == SAVE_EVERY and checkpoint["epoch"] == 1  # mid-epoch: epoch 1, 9 batches in
    assert [s["batches"] for s in checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]] == \
        ([9] if not paired else [9, 2])  # the 7-batch 'val' loader cycled once

    resumed, trainer = _fit(paired, [], ckpt_path=str(tmp_path / "last.ckpt"), model_seed=99)
    assert trainer.global_step == EPOCHS * 10
    for (name, expected), (_, got) in zip(reference.named_parameters(), resumed.named_parameters(), strict=False):
        assert torch.equal(expected, got), name
    for expected, got in zip(ref_trainer.optimizers[0].state.values(), trainer.optimizers[0].state.values(), strict=False):
        assert torch.equal(expected["momentum_buffer"], got["momentum_buffer"])


def test_resume_without_exact_resume_pieces_differs(tmp_path):
    """The check has teeth: a plain shuffled DataLoader resumed mid-epoch does not reproduce the run."""
    torch.manual_seed(0)
    data = NoisyData(40, 1)
    plain = lambda: torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)

    def fit(callbacks, ckpt_path=None):
        torch.manual_seed(0)
        module = Net()
        trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
        torch.manual_seed(123)
        trainer.fit(module, plain(), ckpt_path=ckpt_path)
        return module

    reference = fit([])
    clock = Tick()
    with pytest.raises(Kill):
        fit([clock, TimedCheckpoint(SAVE_EVERY, tmp_path, clock=clock), KillAt()])
    resumed = fit([], ckpt_path=str(tmp_path / "last.ckpt"))
    assert not all(torch.equal(a, b) for a, b in zip(reference.parameters(), resumed.parameters(), strict=False))


def test_sampler_order_depends_only_on_seed_and_epoch():
    data = list(range(50))
    a, b = ResumableSampler(data, seed=3), ResumableSampler(data, seed=3)
    torch.manual_seed(1)
    first = list(a)
    torch.manual_seed(2)
    assert list(b) == first and sorted(first) == data
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == data
    assert list(ResumableSampler(data, seed=3, shuffle=False)) == data


def test_loader_skips_to_the_saved_batch_without_touching_the_global_rng():
    loader = ResumableDataLoader(NoisyData(20, 0), batch_size=4, shuffle=True, seed=5)
    full = [batch[1].tolist() for batch in loader]
    loader.load_state_dict({"epoch": 0, "batches": 2})
    state = torch.get_rng_state()
    rest = [batch for batch in loader]
    assert torch.equal(torch.get_rng_state(), state)
    assert [b[1].tolist() for b in rest] == full[2:]
    assert loader.state_dict() == {"epoch": 0, "batches": 5}
    again = list(loader)  # the next iteration starts at the first batch, augmentation as before
    assert torch.equal(again[2][0], rest[0][0])
    assert data_seed(0, 0, 1) != data_seed(0, 1, 0)


def test_timed_checkpoint_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="every_seconds"):
        TimedCheckpoint(0, tmp_path)
    with pytest.raises(TypeError, match="every_seconds"):
        TimedCheckpoint("10m", tmp_path)
    assert TimedCheckpoint(parse_duration("10m"), tmp_path).every_seconds == 600.0
