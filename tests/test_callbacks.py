"""NonFiniteLossGuard, CheckpointOnSignal and AtomicCheckpointIO on tiny models (a few seconds each)."""

from __future__ import annotations

import math
import os
import pickle
import signal

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from nni_darts_ext.callbacks import (
    LAST_CHECKPOINT_NAME,
    ApplySettingsOnResume,
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointOnSignal,
    CheckResumeCheckpoint,
    NonFiniteLossError,
    NonFiniteLossGuard,
    TrainingInterrupted,
    read_checkpoint,
)
from nni_darts_ext.training_module import DartsClassificationModule

EPOCHS = 3
SAMPLES, BATCH = 32, 8
BATCHES = SAMPLES // BATCH  # per epoch


@pytest.fixture(autouse=True)
def one_thread_and_own_signals():
    """One torch thread (tiny nets: several threads only spin-wait), and the test's signal handlers back."""
    threads = torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    torch.set_num_threads(1)
    yield handlers
    torch.set_num_threads(threads)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _module(**kwargs) -> DartsClassificationModule:
    torch.manual_seed(0)
    module = DartsClassificationModule(**{"max_epochs": EPOCHS, "num_classes": 10, **kwargs})
    module.set_model(nn.Linear(4, 10))
    return module


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(SAMPLES, 4, generator=generator), torch.randint(0, 10, (SAMPLES,), generator=generator))
    return DataLoader(data, batch_size=BATCH)


def _trainer(callbacks, max_epochs: int = EPOCHS) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )


class _At(Callback):
    """Runs ``action(trainer, module)`` at the start of training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int, action):
        self.epoch, self.batch, self.action = epoch, batch, action

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self.action(trainer, pl_module)


class _CountBatches(Callback):
    def __init__(self):
        self.count = 0

    def on_train_batch_end(self, *args):
        self.count += 1


def _poison(trainer, module):
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))


def _load(path):
    return AtomicCheckpointIO().load_checkpoint(path)


def _finite(state_dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if torch.is_floating_point(v))


# --------------------------------------------------------------------------------------------------- NaN guard
@pytest.mark.parametrize("every_n_train_steps", [None, 1], ids=["epoch-end-checkpoints", "checkpoint-every-step"])
def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_last_good_checkpoint(tmp_path, every_n_train_steps):
    checkpoint = ModelCheckpoint(tmp_path, save_last=True, every_n_train_steps=every_n_train_steps)
    trainer = _trainer([NonFiniteLossGuard(), _At(1, 2, _poison), checkpoint])

    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit(_module(), _loader())

    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert "non-finite training loss (nan) at epoch 1, batch 2 (global step 7)" in message
    assert f"last good checkpoint ({tmp_path / LAST_CHECKPOINT_NAME}) is kept" in message
    assert "ckpt_path" in message  # says how to resume
    assert (error.epoch, error.batch_idx, error.global_step) == (1, 2, BATCHES + 3)
    saved = _load(tmp_path / LAST_CHECKPOINT_NAME)
    assert _finite(saved["state_dict"])
    if every_n_train_steps == 1:  # saved after every good step, never after the bad one
        assert (saved["epoch"], saved["global_step"]) == (1, BATCHES + 2)
    else:  # the epoch-end checkpoint of epoch 0; epoch 1 never ended
        assert (saved["epoch"], saved["global_step"]) == (0, BATCHES)


def test_nan_loss_before_any_checkpoint_says_so_and_uses_the_hint(tmp_path):
    trainer = _trainer([NonFiniteLossGuard(resume_hint="rerun with --resume"), _At(0, 1, _poison)])
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, batch 1 .*no checkpoint of an earlier state .*--resume$"):
        trainer.fit(_module(), _loader())


def test_nan_loss_on_another_process_stops_this_one_too(tmp_path, monkeypatch):
    """Under DDP the decision is all-reduced: a finite local loss still stops when another rank's is not."""
    trainer = _trainer([NonFiniteLossGuard()])
    decisions = []

    def reduce(decision, all=True):  # noqa: A002 (Lightning's name)
        decisions.append(decision)
        return decision and len(decisions) < 3  # the other rank diverges at the third batch

    monkeypatch.setattr(trainer.strategy, "reduce_boolean_decision", reduce)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite training loss \(another process's\) at epoch 0, batch 2 "):
        trainer.fit(_module(), _loader())
    assert decisions == [True, True, True]


@pytest.mark.e2e  # a whole search
def test_nan_guard_sees_the_weight_step_loss_of_nni_darts_search(tmp_path):
    """NNI's one-shot DARTS (manual optimisation) passes its training_step's loss dict to on_train_batch_end."""
    from nni_darts_ext._compat import import_nni_quietly
    from nni_darts_ext.data import search_dataloaders
    from nni_darts_ext.evaluator import darts_evaluator

    with import_nni_quietly():
        from nni.nas.hub.pytorch import DARTS as DartsSpace
        from nni.nas.strategy import DARTS

    class Images(torch.utils.data.Dataset):
        def __init__(self):
            generator = torch.Generator().manual_seed(0)
            self.x = torch.randn(16, 3, 16, 16, generator=generator)
            self.y = torch.randint(0, 10, (16,), generator=generator)

        def __len__(self):
            return len(self.y)

        def __getitem__(self, index):
            return self.x[index], self.y[index]

    torch.manual_seed(0)
    train_loader, val_loader = search_dataloaders(Images(), batch_size=4)  # 2 batches per epoch
    evaluator = darts_evaluator(
        train_loader, val_loader, max_epochs=2,
        callbacks=[NonFiniteLossGuard(), _At(1, 0, _poison), ModelCheckpoint(tmp_path, save_last=True)],
        plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False, enable_model_summary=False,
    )
    strategy = DARTS()
    model = strategy.mutate_model(DartsSpace(width=4, num_cells=3, dataset="cifar"))
    search = strategy.mutate_evaluator(evaluator)

    with pytest.raises(NonFiniteLossError, match=r"at epoch 1, batch 0 .*last good checkpoint"):
        search.fit(model)

    saved = _load(tmp_path / LAST_CHECKPOINT_NAME)
    assert saved["epoch"] == 0
    alphas = {k: v for k, v in saved["state_dict"].items() if "_arch_alpha" in k}
    assert alphas and _finite(alphas) and _finite(saved["state_dict"])


# ---------------------------------------------------------------------------------------- signal checkpoints
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_fit_saves_resumable_last_ckpt_and_stops(tmp_path, signum, one_thread_and_own_signals):
    send = _At(1, 1, lambda trainer, module: os.kill(os.getpid(), signum))  # arrives inside batch 1 of epoch 1
    saver = CheckpointOnSignal(tmp_path)
    trainer = _trainer([NonFiniteLossGuard(), saver, send, ModelCheckpoint(tmp_path, save_last=True)])

    with pytest.raises(TrainingInterrupted) as caught:
        trainer.fit(_module(), _loader())

    stopped = caught.value
    assert stopped.code == 128 + signum and stopped.signum == signum
    assert stopped.checkpoint == tmp_path / LAST_CHECKPOINT_NAME == saver.path
    assert str(stopped) == (
        f"stopped by {signal.Signals(signum).name} in epoch 1 at global step {BATCHES + 2}; "
        f"resumable checkpoint saved to {saver.path}"
    )
    assert saver.received_signal == signum
    for restored, original in one_thread_and_own_signals.items():
        assert signal.getsignal(restored) == original
    saved = _load(saver.path)
    assert (saved["epoch"], saved["global_step"]) == (1, BATCHES + 2)  # the step in flight was finished
    assert saved["optimizer_states"] and saved["lr_schedulers"]
    assert saved["lr_schedulers"][0]["last_epoch"] == 1  # stepped once, at the end of epoch 0

    counter = _CountBatches()
    resumed = _trainer([NonFiniteLossGuard(), CheckpointOnSignal(tmp_path), counter])
    resumed.fit(_module(), _loader(), ckpt_path=saver.path)
    assert resumed.current_epoch == EPOCHS
    assert resumed.global_step == EPOCHS * BATCHES  # as many steps as an uninterrupted run
    assert counter.count == EPOCHS * BATCHES - (BATCHES + 2)


def test_without_a_signal_fit_finishes_and_handlers_come_back(tmp_path, one_thread_and_own_signals):
    saver = CheckpointOnSignal(tmp_path)
    trainer = _trainer([saver], max_epochs=1)
    trainer.fit(_module(), _loader())
    assert saver.received_signal is None
    assert not (tmp_path / LAST_CHECKPOINT_NAME).exists()
    for restored, original in one_thread_and_own_signals.items():
        assert signal.getsignal(restored) == original


def test_handlers_come_back_after_a_failed_fit(tmp_path, one_thread_and_own_signals):
    trainer = _trainer([NonFiniteLossGuard(), CheckpointOnSignal(tmp_path), _At(0, 0, _poison)])
    with pytest.raises(NonFiniteLossError):
        trainer.fit(_module(), _loader())
    for restored, original in one_thread_and_own_signals.items():
        assert signal.getsignal(restored) == original


def test_signal_on_a_non_finite_step_saves_nothing(tmp_path):
    def poison_and_signal(trainer, module):
        _poison(trainer, module)
        os.kill(os.getpid(), signal.SIGTERM)

    # CheckpointOnSignal before the guard on purpose: it must still refuse to save the bad state.
    trainer = _trainer([CheckpointOnSignal(tmp_path), NonFiniteLossGuard(), _At(0, 1, poison_and_signal)])
    with pytest.raises(NonFiniteLossError):
        trainer.fit(_module(), _loader())
    assert not (tmp_path / LAST_CHECKPOINT_NAME).exists()


def test_second_signal_interrupts_at_once_without_a_new_checkpoint(tmp_path):
    def signal_twice(trainer, module):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    checkpoint = ModelCheckpoint(tmp_path, save_last=True)
    trainer = _trainer([CheckpointOnSignal(tmp_path), _At(1, 1, signal_twice), checkpoint])
    # Lightning turns the KeyboardInterrupt into "graceful shutdown" and sys.exit(1).
    with pytest.raises(SystemExit) as caught:
        trainer.fit(_module(), _loader())
    assert not isinstance(caught.value, TrainingInterrupted) and caught.value.code == 1
    assert _load(tmp_path / LAST_CHECKPOINT_NAME)["epoch"] == 0  # ModelCheckpoint's epoch-0 file, untouched



# ------------------------------------------------------------------------------------- resume, changed settings
class _Probe(Callback):
    """Records (lr, weight_decay, has momentum buffers) at the first batch of each epoch."""

    def __init__(self):
        self.seen = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            optimizer = trainer.optimizers[0]
            group = optimizer.param_groups[0]
            self.seen[trainer.current_epoch] = (group["lr"], group["weight_decay"], bool(optimizer.state))


@pytest.mark.parametrize("apply", [True, False], ids=["applied", "lightning-default"])
def test_resume_uses_this_runs_learning_rate_schedule_and_weight_decay(tmp_path, apply):
    first = _trainer([ModelCheckpoint(tmp_path, save_last=True)], max_epochs=1)
    first.fit(_module(learning_rate=0.1, weight_decay=3e-4, max_epochs=2), _loader())

    probe, settings = _Probe(), ApplySettingsOnResume()
    resumed = _trainer([probe] + ([settings] if apply else []), max_epochs=4)
    resumed.fit(_module(learning_rate=0.01, weight_decay=1e-3, max_epochs=4), _loader(),
                ckpt_path=tmp_path / LAST_CHECKPOINT_NAME)

    lr, weight_decay, has_momentum = probe.seen[1]
    assert has_momentum  # the optimizer's progress is kept either way
    if apply:  # cosine over 4 epochs from 0.01, at epoch 1
        assert lr == pytest.approx(0.01 * (1 + math.cos(math.pi * 1 / 4)) / 2)
        assert weight_decay == 1e-3
        assert probe.seen[3][0] == pytest.approx(0.01 * (1 + math.cos(math.pi * 3 / 4)) / 2)
        assert any("base lr: 0.1 -> 0.01" in line for line in settings.applied)
        assert any("T_max: 2 -> 4" in line for line in settings.applied)
    else:  # Lightning restores the old settings: cosine over 2 epochs from 0.1
        assert lr == pytest.approx(0.1 * (1 + math.cos(math.pi * 1 / 2)) / 2)
        assert weight_decay == 3e-4


def test_a_fresh_fit_is_left_alone(tmp_path):
    probe, settings = _Probe(), ApplySettingsOnResume()
    _trainer([probe, settings], max_epochs=1).fit(_module(learning_rate=0.05), _loader())
    assert probe.seen[0][0] == 0.05 and settings.applied == []



# ---------------------------------------------------------------------------------------------- resume checks
@pytest.fixture
def one_epoch_checkpoint(tmp_path):
    _trainer([ModelCheckpoint(tmp_path, save_last=True)], max_epochs=1).fit(_module(), _loader())
    return tmp_path / LAST_CHECKPOINT_NAME


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda path: path.write_bytes(path.read_bytes()[:200]), "cannot be read as a checkpoint, it is corrupt"),
        (lambda path: path.write_bytes(b""), "cannot be read as a checkpoint"),
        (lambda path: path.write_text("not a checkpoint"), "cannot be read as a checkpoint"),
        (lambda path: torch.save(_module().state_dict(), path), r"not a resumable training checkpoint \(no "
                                                                r"state_dict, optimizer_states, lr_schedulers"),
        (lambda path: path.unlink(), "no such checkpoint file"),
    ],
    ids=["truncated", "empty", "text", "weights-only", "missing"],
)
def test_read_checkpoint_names_the_problem(one_epoch_checkpoint, damage, match):
    assert read_checkpoint(one_epoch_checkpoint)["epoch"] == 0
    damage(one_epoch_checkpoint)
    with pytest.raises(CheckpointError, match=match) as caught:
        read_checkpoint(one_epoch_checkpoint)
    assert str(caught.value).startswith(str(one_epoch_checkpoint)) and "\n" not in str(caught.value)


def test_resuming_another_net_names_keys_and_shapes(one_epoch_checkpoint):
    module = DartsClassificationModule(max_epochs=EPOCHS, num_classes=10)
    module.set_model(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 10)))
    trainer = _trainer([CheckResumeCheckpoint(one_epoch_checkpoint)])
    with pytest.raises(CheckpointError) as caught:
        trainer.fit(module, _loader(), ckpt_path=one_epoch_checkpoint)
    message = str(caught.value)
    assert "does not fit this run's net" in message
    assert "4 missing key(s) (_model.0.weight, _model.0.bias, _model.1.weight, ...)" in message
    assert "2 unexpected key(s) (_model.weight, _model.bias)" in message


def test_resuming_a_net_of_another_width_names_the_shape(one_epoch_checkpoint):
    module = DartsClassificationModule(max_epochs=EPOCHS, num_classes=10)
    module.set_model(nn.Linear(5, 10))
    with pytest.raises(CheckpointError, match=r"1 shape mismatch\(es\) \(_model.weight: checkpoint \[10, 4\] vs net "
                                              r"\[10, 5\]\)"):
        _trainer([CheckResumeCheckpoint(one_epoch_checkpoint)]).fit(module, _loader(), ckpt_path=one_epoch_checkpoint)


# ------------------------------------------------------------------------------------------- checkpoint plugin
class _Boom(Exception):
    pass


@pytest.mark.parametrize("failure", [_Boom, KeyboardInterrupt], ids=["error", "interrupt"])
def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path, monkeypatch, failure):
    path = tmp_path / "ckpt" / LAST_CHECKPOINT_NAME
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 0, "weight": torch.ones(3)}, path)
    good = path.read_bytes()

    real_save = torch.save

    def half_then_fail(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(len(good) // 2)  # a partial file on disk ...
        raise failure("killed mid-save")  # ... then the process dies

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(failure):
        io.save_checkpoint({"epoch": 1, "weight": torch.zeros(3)}, path)

    assert path.read_bytes() == good
    assert os.listdir(path.parent) == [LAST_CHECKPOINT_NAME]  # no temporary file left behind
    monkeypatch.setattr(torch, "save", real_save)
    assert _load(path)["epoch"] == 0


def test_the_next_save_removes_what_a_killed_save_left(tmp_path):
    path = tmp_path / LAST_CHECKPOINT_NAME
    stale = tmp_path / f".{LAST_CHECKPOINT_NAME}.k1ll3d.tmp"  # atomic_open's name for its temporary file
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".model.pt.k1ll3d.tmp"
    other.write_bytes(b"another file's")
    AtomicCheckpointIO().save_checkpoint({"epoch": 3}, path)
    assert _load(path)["epoch"] == 3
    assert not stale.exists() and other.exists()


def test_model_checkpoint_saves_through_the_plugin(tmp_path, monkeypatch):
    """A failure while ModelCheckpoint writes epoch 1 leaves epoch 0's last.ckpt whole."""
    real_save = torch.save
    saves = []

    def fail_in_epoch_1(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            handle.write(b"partial")
            raise _Boom("disk full")
        saves.append(obj.get("epoch"))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_in_epoch_1)
    trainer = _trainer([ModelCheckpoint(tmp_path, save_last=True)])
    with pytest.raises(_Boom):
        trainer.fit(_module(), _loader())
    monkeypatch.setattr(torch, "save", real_save)
    assert saves == [0, 0]  # epoch=0-step=4.ckpt and last.ckpt
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=4.ckpt", LAST_CHECKPOINT_NAME]
    assert _load(tmp_path / LAST_CHECKPOINT_NAME)["epoch"] == 0


class _RunsCode:
    def __reduce__(self):
        return (os.getpid, ())


def test_load_checkpoint_is_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)
    # NNI's ClassificationModule stores its loss and optimizer classes as hyper-parameters: those load.
    torch.save({"hyper_parameters": {"criterion": nn.CrossEntropyLoss, "optimizer": torch.optim.SGD}}, path)
    assert _load(path)["hyper_parameters"]["optimizer"] is torch.optim.SGD


def test_trusted_checkpoints_can_opt_out_of_weights_only(tmp_path):
    path = tmp_path / "trusted.ckpt"
    torch.save({"payload": _RunsCode()}, path)
    assert AtomicCheckpointIO(weights_only=False).load_checkpoint(path)["payload"] == os.getpid()
    assert AtomicCheckpointIO().load_checkpoint(path, weights_only=False)["payload"] == os.getpid()


# --------------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: NonFiniteLossGuard(resume_hint=3), TypeError, "resume_hint must be a str"),
        (lambda: NonFiniteLossGuard(resume_hint=" "), ValueError, "resume_hint must not be empty"),
        (lambda: CheckpointOnSignal(3), TypeError, "dirpath must be a str or os.PathLike"),
        (lambda: CheckpointOnSignal(""), ValueError, "dirpath must not be empty"),
        (lambda: CheckpointOnSignal("d", filename=1), TypeError, "filename must be a str"),
        (lambda: CheckpointOnSignal("d", filename="a/b.ckpt"), ValueError, "plain file name"),
        (lambda: CheckpointOnSignal("d", signals=signal.SIGTERM), TypeError, "sequence of signal numbers"),
        (lambda: CheckpointOnSignal("d", signals=()), ValueError, "must not be empty"),
        (lambda: CheckpointOnSignal("d", signals=["SIGTERM"]), TypeError, "signal numbers"),
        (lambda: CheckpointOnSignal("d", signals=[signal.SIGKILL]), ValueError, "SIGINT and SIGTERM only"),
        (lambda: AtomicCheckpointIO(weights_only=1), TypeError, "weights_only must be a bool"),
        (lambda: CheckResumeCheckpoint(1.5), TypeError, "ckpt_path must be a str or os.PathLike"),
    ],
)
def test_arguments_are_checked(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_storage_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


def test_interrupted_exits_like_a_killed_process():
    stopped = TrainingInterrupted(signal.SIGTERM, "runs/x/checkpoints/last.ckpt", epoch=2, global_step=10)
    assert isinstance(stopped, SystemExit) and stopped.code == 143
    assert str(stopped) == (
        "stopped by SIGTERM in epoch 2 at global step 10; resumable checkpoint saved to runs/x/checkpoints/last.ckpt"
    )
