"""DartsClassificationModule: losses, logging, optimiser, drop-path ramp, search and retrain."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

from nni_darts_ext._compat import import_nni_quietly, resolve_gpus
from nni_darts_ext.evaluator import darts_evaluator, darts_trainer
from nni_darts_ext.training_module import DartsClassificationModule

with import_nni_quietly():
    from nni.nas.evaluator.pytorch import DataLoader
    from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni.nas.hub.pytorch.utils.nn import DropPath


def _tiny_fixed_net(arch, auxiliary_loss=False, drop_path_prob=0.0):
    return DartsSpace.frozen_factory(arch)(
        width=4, num_cells=3, dataset="cifar", auxiliary_loss=auxiliary_loss, drop_path_prob=drop_path_prob
    )


def _loader(n=8, size=32, batch_size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    dataset = TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(dataset, batch_size=batch_size)


def _quiet_trainer(**kwargs):
    return pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )


class _Recorder(pl.Callback):
    def __init__(self):
        self.drop_path = []
        self.lr = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx:  # record once per epoch, after the module's own epoch-start hook ran
            return
        probs = {m.drop_prob for m in module.model.modules() if isinstance(m, DropPath)}
        assert len(probs) == 1
        self.drop_path.append(probs.pop())
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_aux_loss_is_main_plus_weighted_aux(darts_v2_arch):
    torch.manual_seed(0)
    module = DartsClassificationModule(auxiliary_loss_weight=0.4)
    module.set_model(_tiny_fixed_net(darts_v2_arch, auxiliary_loss=True))
    module.train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    torch.manual_seed(1)
    loss = module.training_step((x, y), 0)
    torch.manual_seed(1)
    logits, aux = module.model(x)
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(loss, ce(logits, y) + 0.4 * ce(aux, y))
    assert torch.allclose(logged["train_loss_main"], ce(logits, y))
    assert torch.allclose(logged["train_loss_aux"], ce(aux, y))
    assert {"train_loss", "train_acc"} <= set(logged)


def test_plain_logits_have_no_aux_term(darts_v2_arch):
    module = DartsClassificationModule()
    module.set_model(_tiny_fixed_net(darts_v2_arch))
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 4])
    loss = module.training_step((x, y), 0)
    assert torch.allclose(loss, logged["train_loss_main"])
    assert "train_loss_aux" not in logged


def test_sgd_cosine_configuration():
    module = DartsClassificationModule(learning_rate=0.1, weight_decay=1e-4, momentum=0.8, max_epochs=10, eta_min=0.01)
    module.set_model(torch.nn.Linear(2, 10))
    [optimizer], [scheduler] = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.8, 1e-4)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert (scheduler.T_max, scheduler.eta_min) == (10, 0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"drop_path_prob": 1.0}, "drop_path_prob"),
        ({"auxiliary_loss_weight": "0.4"}, "auxiliary_loss_weight"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        DartsClassificationModule(**kwargs)


def test_retrain_drop_path_ramp_is_linear_and_lr_is_cosine(darts_v2_arch):
    """A real fixed-arch retrain with aux loss: p0 * epoch / max_epochs at every epoch start, never compounding."""
    torch.manual_seed(0)
    max_epochs = 4
    module = DartsClassificationModule(max_epochs=max_epochs, learning_rate=0.1, eta_min=0.0)
    net = _tiny_fixed_net(darts_v2_arch, auxiliary_loss=True, drop_path_prob=0.2)
    recorder = _Recorder()
    evaluator_trainer = _quiet_trainer(max_epochs=max_epochs, callbacks=[recorder], gradient_clip_val=5.0)
    module.set_model(net)
    evaluator_trainer.fit(module, _loader(), _loader(seed=1))
    assert recorder.drop_path == pytest.approx([0.2 * e / max_epochs for e in range(max_epochs)])
    expected_lr = [0.05 * (1 + torch.cos(torch.tensor(e * torch.pi / max_epochs)).item()) for e in range(max_epochs)]
    assert recorder.lr == pytest.approx(expected_lr, rel=1e-6)
    metrics = evaluator_trainer.callback_metrics
    assert {"train_loss", "train_loss_main", "train_loss_aux", "train_acc", "lr", "val_loss", "val_acc"} <= set(metrics)
    test = evaluator_trainer.test(module, _loader(seed=2), verbose=False)[0]
    assert 0.0 <= test["test_acc"] <= 1.0


def test_explicit_drop_path_prob_overrides_net_attribute(darts_v2_arch):
    module = DartsClassificationModule(max_epochs=10, drop_path_prob=0.3)
    module.set_model(_tiny_fixed_net(darts_v2_arch, drop_path_prob=0.1))
    assert module.drop_path_prob_at(5) == pytest.approx(0.15)
    assert module.drop_path_prob_at(10) == pytest.approx(0.3)
    assert module.drop_path_prob_at(20) == pytest.approx(0.3)


@pytest.mark.e2e  # a whole search
def test_works_as_evaluator_module_of_a_darts_search(nni_experiment_dir):
    """NNI's one-shot wrapper drives training_step under manual optimisation; weights and alphas both move."""
    from nni_darts_ext.search import darts_strategy

    torch.manual_seed(0)
    space = DartsSpace(width=4, num_cells=3, dataset="cifar")
    strategy = darts_strategy("first-order")
    strategy.mutate_model(space)
    module = DartsClassificationModule(max_epochs=2, learning_rate=0.05)
    module.set_model(space)
    oneshot = strategy.configure_oneshot_module(module)
    alphas_before = [p.detach().clone() for p in oneshot.arch_parameters()]
    trainer = _quiet_trainer(max_epochs=2, use_distributed_sampler=False)
    loaders = strategy.train_dataloader(lambda: _loader(size=16), lambda: _loader(size=16, seed=1))
    trainer.fit(oneshot, loaders)
    alphas_after = list(oneshot.arch_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(alphas_before, alphas_after, strict=False))
    assert trainer.global_step > 0
    # cosine over the module's max_epochs, stepped by NNI's manual scheduler advance
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    exported = oneshot.export()
    assert set(k.split("/")[0] for k in exported) == {"normal", "reduce"}


def test_gpus_keyword_is_mapped_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="gpus"):
        assert resolve_gpus({"gpus": 2, "max_epochs": 1}) == {"max_epochs": 1, "accelerator": "gpu", "devices": 2}
    with pytest.warns(DeprecationWarning):
        assert resolve_gpus({"gpus": 0}) == {"accelerator": "cpu", "devices": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_gpus({"max_epochs": 1}) == {"max_epochs": 1}
    with pytest.warns(DeprecationWarning):
        trainer = darts_trainer(gpus=0, max_epochs=1, logger=False, enable_progress_bar=False)
    assert trainer.max_epochs == 1


def test_darts_evaluator_splits_module_and_trainer_arguments():
    import nni

    # Loaders over untraced TensorDatasets cannot be dumped; tests/test_data.py covers traced datasets.
    evaluator = darts_evaluator(
        learning_rate=0.1, auxiliary_loss_weight=0.0, max_epochs=3,
        logger=False, enable_progress_bar=False,
    )
    assert evaluator.module.hparams.learning_rate == 0.1
    assert evaluator.module.max_epochs == 3 and evaluator.trainer.max_epochs == 3
    restored = nni.load(nni.dump(evaluator))
    assert isinstance(restored.module, DartsClassificationModule)
    assert restored.module.max_epochs == 3 and restored.module.hparams.learning_rate == 0.1


def test_epoch_log_shows_epoch_means_not_the_last_batch(caplog):
    """A net that always predicts class 0 (learning rate 0: it never changes) on batches of 4, 4 and 2 images whose
    accuracies are 1, 1/2 and 0: the epoch line says 6/10 = 0.6, not the last batch's 0."""
    import math

    from nni_darts_ext.callbacks import EpochLog

    net = torch.nn.Linear(2, 3)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    module = DartsClassificationModule(learning_rate=0.0, weight_decay=0.0, momentum=0.0, max_epochs=1,
                                       auxiliary_loss_weight=0.0, num_classes=3)
    module.set_model(net)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 1, 2])
    loader = DataLoader(TensorDataset(torch.randn(10, 2), labels), batch_size=4, shuffle=False)
    log = EpochLog("retrain", validation="test set")
    with caplog.at_level("INFO", logger="nni_darts_ext.pipeline"):
        _quiet_trainer(max_epochs=1, callbacks=[log]).fit(module, loader, loader)
    # Cross-entropy of logits (1, 0, 0): log(e + 2) - 1 for label 0 (6 images), log(e + 2) otherwise (4 images).
    mean_loss = math.log(math.e + 2) - 0.6
    [row] = log.curve
    assert row["epoch"] == 1 and row["train_acc"] == pytest.approx(0.6) and row["val_acc"] == pytest.approx(0.6)
    assert row["train_loss"] == pytest.approx(mean_loss, abs=1e-5)
    assert row["val_loss"] == pytest.approx(mean_loss, abs=1e-5)
    [line] = [r.getMessage() for r in caplog.records if "retrain epoch 1/1" in r.getMessage()]
    assert "train_acc 0.6000" in line and "validation on the test set: " in line and "val_acc 0.6000" in line
