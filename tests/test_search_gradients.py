"""Second-order (unrolled) DARTS: gradient against autograd, side effects, guards, a real search, resume.

Most tests search a tiny float64 ``ModelSpace`` (one LayerChoice, a BatchNorm) through the real code path, a
Lightning ``Trainer`` fitting the one-shot module that :class:`DartsSearch` (order 2) builds; the exact unrolled
hypergradient ``d/dalpha L_val(w - xi * grad_w L_train(w, alpha), alpha)`` is computed independently with
``torch.func.functional_call`` and double backward (``create_graph=True``).
"""

from __future__ import annotations

import copy
import logging
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchmetrics

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.search import DartsSearch, darts_strategy
from nni_darts_ext.search.gradients import UnrolledGradient
from nni_darts_ext.search.module import DartsSearchModule
from nni_darts_ext.search.presets import FIRST_ORDER_DEFAULTS

with import_nni_quietly():
    import nni
    import pytorch_lightning as pl
    from nni.nas.evaluator.pytorch import LightningModule
    from nni.nas.nn.pytorch import LayerChoice, ModelSpace
    from nni.nas.strategy import DARTS

IN_FEATURES, HIDDEN, CLASSES = 6, 5, 3
BATCH = 8
# Lightning accelerator of the tiny searches; set it to "gpu" on a CUDA machine to check the device path too.
ACCELERATOR = os.environ.get("NNI_DARTS_EXT_TEST_ACCELERATOR", "cpu")



# --------------------------------------------------------------------------------------------------- tiny space
class TinySpace(ModelSpace):
    """Linear -> BatchNorm -> tanh -> LayerChoice(3 smooth ops) -> tanh -> Linear (smooth, so finite differences are
    accurate; the BatchNorm gives running statistics to protect)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN)
        self.op = LayerChoice(
            [nn.Linear(HIDDEN, HIDDEN), nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh()), nn.Softplus()],
            label="op",
        )
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        return self.head(torch.tanh(self.op(torch.tanh(self.bn(self.fc(x))))))


def _weighted_loss(logits, y, weight):
    return (F.cross_entropy(logits, y, reduction="none") * weight).mean()


class TinyModule(LightningModule):
    """An evaluator module with SGD (momentum, weight decay), a dict return, epoch-summed logs and a metric.

    Batches are ``(x, y, per-sample weight)``; a zero weight makes the loss (and every gradient) zero.
    """

    def __init__(self, lr=0.1, momentum=0.0, weight_decay=0.0, lr_head=None):
        super().__init__()
        self.lr, self.momentum, self.weight_decay, self.lr_head = lr, momentum, weight_decay, lr_head
        self.calls = torchmetrics.SumMetric()  # counts training_step calls that were not virtual passes

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y, weight = batch
        loss = _weighted_loss(self(x), y, weight)
        self.calls.update(torch.ones((), dtype=loss.dtype))
        self.log("train_loss", loss, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("n_logged", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
        return {"loss": loss}

    def configure_optimizers(self):
        params = [p for n, p in self.named_parameters() if "_arch_alpha" not in n]
        if self.lr_head is None:
            groups = [{"params": params}]
        else:  # two param groups with different learning rates
            head = list(self.model.head.parameters())
            groups = [{"params": [p for p in params if all(p is not h for h in head)]},
                      {"params": head, "lr": self.lr_head}]
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


def _tiny_data(n_batches, seed=0, val_weight=1.0):
    gen = torch.Generator().manual_seed(seed)
    n = n_batches * BATCH

    def half():
        x = torch.randn(n, IN_FEATURES, generator=gen, dtype=torch.float64)
        y = torch.randint(0, CLASSES, (n,), generator=gen)
        return x, y

    (xt, yt), (xv, yv) = half(), half()
    train = torch.utils.data.TensorDataset(xt, yt, torch.ones(n, dtype=torch.float64))
    val = torch.utils.data.TensorDataset(xv, yv, torch.full((n,), val_weight, dtype=torch.float64))
    return [torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=False) for ds in (train, val)]


def _search(strategy, module, n_batches, *, max_epochs=1, callbacks=(), val_weight=1.0, seed=0, ckpt_path=None,
            trainer_kwargs=None):
    """Wire space, evaluator module and strategy like ``OneShotStrategy`` does, and fit (float64)."""
    torch.manual_seed(seed)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # build in float64: '64-true' would round a float32 resume otherwise
    try:
        space = strategy.mutate_model(TinySpace())
    finally:
        torch.set_default_dtype(dtype)
    module.set_model(space)
    oneshot = strategy.configure_oneshot_module(module)
    train, val = _tiny_data(n_batches, seed, val_weight)
    kwargs = dict(
        max_epochs=max_epochs, precision="64-true", accelerator=ACCELERATOR, devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks),
    )
    trainer = pl.Trainer(**{**kwargs, **(trainer_kwargs or {})})
    trainer.fit(oneshot, train_dataloaders=strategy.train_dataloader(lambda: train, lambda: val), ckpt_path=ckpt_path)
    return oneshot, trainer


class Recorder(pl.Callback):
    """Per batch: weights, alphas, buffers and momentum buffers before the step, and the arch optimizer's grads."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        model = pl_module.training_module.model
        weight_opt = trainer.optimizers[0]
        self.steps.append({
            "batch": batch,
            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
            "momentum": {n: weight_opt.state.get(p, {}).get("momentum_buffer") for n, p in model.named_parameters()},
            "momentum_copy": {n: (lambda b: None if b is None else b.clone())(weight_opt.state.get(p, {}).get(
                "momentum_buffer")) for n, p in model.named_parameters()},
            "lr": [g["lr"] for g in weight_opt.param_groups],
        })

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if getattr(optimizer, "is_arch_optimizer", False):
            names = {id(p): n for n, p in pl_module.training_module.model.named_parameters()}
            self.steps[-1]["arch_grads"] = {names[id(p)]: p.grad.detach().clone()
                                            for group in optimizer.param_groups for p in group["params"]}


def _is_alpha(name):
    return "_arch_alpha" in name


def _reference(model, record, *, lrs, momentum=0.0, weight_decay=0.0, lr_of=None):
    """Exact unrolled hypergradient and first-order gradient by double backward, at the recorded state."""
    from torch.func import functional_call

    params = {n: p.clone().requires_grad_() for n, p in record["params"].items()}
    weights = {n: p for n, p in params.items() if not _is_alpha(n)}
    alphas = {n: p for n, p in params.items() if _is_alpha(n)}
    trn, val = record["batch"]["train"], record["batch"]["val"]

    def loss(p, batch):
        x, y, w = batch
        buffers = {n: b.clone() for n, b in record["buffers"].items()}  # train-mode BN; stats land in copies
        return _weighted_loss(functional_call(model, (p, buffers), (x,)), y, w)

    grads = torch.autograd.grad(loss(params, trn), list(weights.values()), create_graph=True)
    unrolled = dict(alphas)
    for (name, w), g in zip(weights.items(), grads, strict=False):
        buf = record["momentum_copy"].get(name)
        step = g + weight_decay * w + (momentum * buf if buf is not None else 0.0)
        unrolled[name] = w - (lr_of(name) if lr_of else lrs[0]) * step
    exact = torch.autograd.grad(loss(unrolled, val), list(alphas.values()))
    first = torch.autograd.grad(loss(params, val), list(alphas.values()))
    return ({n: g for n, g in zip(alphas, exact, strict=False)}, {n: g for n, g in zip(alphas, first, strict=False)})


def _flat(grads):
    return torch.cat([grads[n].reshape(-1) for n in sorted(grads)])


# ------------------------------------------------------------------------------------------------------- tests
def test_preset_is_registered_with_first_order_defaults():
    strategy = darts_strategy("second-order", warmup_epochs=1, hessian_eps=0.02)
    assert isinstance(strategy, DartsSearch) and isinstance(strategy, DARTS) and strategy.order == 2
    assert strategy.gradient_clip_val == FIRST_ORDER_DEFAULTS["gradient_clip_val"] == 5.0
    assert strategy.arc_learning_rate == FIRST_ORDER_DEFAULTS["arc_learning_rate"] == 3e-4
    assert (strategy.warmup_epochs, strategy.hessian_eps) == (1, 0.02)
    assert darts_strategy("second-order", gradient_clip_val=None).gradient_clip_val == 5.0  # None keeps the preset
    assert nni.load(nni.dump(strategy)).order == 2  # traced: NNI can serialise it


@pytest.mark.parametrize("kwargs, error", [
    ({"hessian_eps": 0}, ValueError), ({"hessian_eps": -1.0}, ValueError), ({"hessian_eps": math.nan}, ValueError),
    ({"hessian_eps": "0.01"}, TypeError), ({"hessian_eps": True}, TypeError), ({"arc_learning_rate": 0}, ValueError),
    ({"gradient_clip_val": -5.0}, ValueError), ({"warmup_epochs": -1}, ValueError), ({"warmup_epochs": 1.5}, TypeError),
    ({"log_prob_every_n_step": 0}, ValueError),
])
def test_bad_arguments_are_rejected_naming_the_argument(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))) as raised:
        DartsSearch(order=2, **kwargs)
    assert raised.value.argument == next(iter(kwargs))


def test_unrolled_gradient_matches_double_backward_and_differs_from_first_order():
    """No momentum, no weight decay: the preset's gradient is the exact unrolled hypergradient, up to FD error.

    Tolerance: the central difference has error ~ r^2 / 6 * |third derivative| relative to the Hessian-vector
    product, with r = eps * ||v|| = 0.01, i.e. ~1e-5 of the correction; float64 rounding (~1e-16 / r) is far
    below. We allow 1e-3 of the correction ``|exact - first order|`` (100x margin), while the correction itself
    is required to be large (> 1e-2 of the gradient), so "matches" and "differs" are both meaningful.
    """
    recorder = Recorder()
    module = TinyModule(lr=0.5)
    oneshot, _ = _search(darts_strategy("second-order"), module, n_batches=2, callbacks=[recorder])
    assert isinstance(oneshot, DartsSearchModule) and isinstance(oneshot.gradient, UnrolledGradient)
    for record in recorder.steps:
        exact, first = _reference(module.model, record, lrs=record["lr"])
        got = record["arch_grads"]
        assert set(got) == set(exact) and len(got) == 1
        got, exact, first = _flat(got), _flat(exact), _flat(first)
        correction = (exact - first).norm()
        assert correction > 1e-2 * exact.norm()
        assert (got - exact).norm() <= 1e-3 * correction, (got, exact, first)
        assert (got - first).norm() > 0.5 * correction


def test_momentum_weight_decay_and_param_groups_match_hand_computed_reference():
    """w' = w - lr * (mu * momentum_buffer + g + lambda * w), per param group; step 1 has no buffer (zero
    momentum), steps 2-3 use the optimizer's buffers. Same tolerance argument as the test above."""
    recorder = Recorder()
    lr, lr_head, mu, lam = 0.3, 0.1, 0.9, 0.05
    module = TinyModule(lr=lr, momentum=mu, weight_decay=lam, lr_head=lr_head)
    _search(darts_strategy("second-order"), module, n_batches=3, callbacks=[recorder])
    head = {"head.weight", "head.bias"}
    assert recorder.steps[0]["momentum"]["fc.weight"] is None
    assert recorder.steps[1]["momentum"]["fc.weight"] is not None
    for record in recorder.steps:
        exact, first = _reference(module.model, record, lrs=record["lr"], momentum=mu, weight_decay=lam,
                                  lr_of=lambda n: lr_head if n in head else lr)
        got, exact, first = _flat(record["arch_grads"]), _flat(exact), _flat(first)
        correction = (exact - first).norm()
        assert correction > 1e-2 * exact.norm()
        assert (got - exact).norm() <= 1e-3 * correction


def test_extra_passes_leave_weights_buffers_grads_metrics_and_logs_untouched(monkeypatch):
    problems, calls = [], []
    original = UnrolledGradient.gradients

    def spy(gradient, self, trn_batch, val_batch, batch_idx, alphas):
        module = self.training_module
        params = {n: p.detach().clone() for n, p in self.named_parameters()}
        grads = {n: None if p.grad is None else p.grad.clone() for n, p in self.named_parameters()}
        buffers = {n: b.detach().clone() for n, b in self.named_buffers()}
        metric = module.calls.compute().clone() if batch_idx else None
        log = module.log
        result = original(gradient, self, trn_batch, val_batch, batch_idx, alphas)
        calls.append(batch_idx)
        for n, p in self.named_parameters():
            if not torch.equal(p.detach(), params[n]):  # bit-exact restore of w
                problems.append(("param", n))
            if not ((p.grad is None and grads[n] is None) or torch.equal(p.grad, grads[n])):
                problems.append(("grad", n))
        for n, b in self.named_buffers():  # BatchNorm running statistics and counters
            if not torch.equal(b, buffers[n]):
                problems.append(("buffer", n))
        if metric is not None and not torch.equal(module.calls.compute(), metric):
            problems.append(("metric", "calls"))
        if module.log != log:
            problems.append(("log", "not restored"))
        return result

    monkeypatch.setattr(UnrolledGradient, "gradients", spy)
    module = TinyModule(lr=0.2, momentum=0.9, weight_decay=1e-3)
    n_batches = 3
    oneshot, trainer = _search(darts_strategy("second-order"), module, n_batches=n_batches)
    assert calls == list(range(n_batches)) and problems == []
    buffers = dict(module.model.named_buffers())
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= set(buffers)
    assert int(buffers["bn.num_batches_tracked"]) == n_batches  # only the weight steps fed BatchNorm
    assert module.log == oneshot.log  # the evaluator's log redirection is back in place
    # Only the weight step reached the logger and the metric (first-order NNI logs the val pass too: 2 per batch).
    assert trainer.callback_metrics["n_logged"].item() == n_batches
    assert module.calls.compute().item() == n_batches


def test_zero_v_skips_the_correction_and_logs_it(caplog):
    """Validation weight 0 makes L_val == 0, hence v = 0: eps = 0.01 / ||v|| would be inf (NaN gradients)."""
    recorder = Recorder()
    with caplog.at_level(logging.WARNING, logger="nni_darts_ext.search.gradients"):
        oneshot, _ = _search(darts_strategy("second-order"), TinyModule(), n_batches=2, callbacks=[recorder],
                             val_weight=0.0)
    assert oneshot.gradient.skipped_corrections == 2 and oneshot.gradient.last_info["skipped"]
    assert sum("||v|| = 0" in r.getMessage() for r in caplog.records) == 2
    for record in recorder.steps:
        assert all(torch.equal(g, torch.zeros_like(g)) for g in record["arch_grads"].values())
    assert all(torch.isfinite(a).all() for a in oneshot.arch_parameters())


def test_warmup_epochs_have_no_architecture_step():
    recorder = Recorder()
    oneshot, _ = _search(darts_strategy("second-order", warmup_epochs=1), TinyModule(), n_batches=2, max_epochs=2,
                         callbacks=[recorder])
    assert [("arch_grads" in r) for r in recorder.steps] == [False, False, True, True]
    alpha = "op._arch_alpha"
    assert torch.equal(recorder.steps[0]["params"][alpha], recorder.steps[2]["params"][alpha])  # frozen in warm-up
    assert not torch.equal(recorder.steps[2]["params"][alpha], oneshot.training_module.model.op._arch_alpha)


def test_lightning_checkpoint_holds_alphas_and_both_optimizers_and_resumes(tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    strategy = darts_strategy("second-order")
    first, trainer = _search(strategy, TinyModule(momentum=0.9), n_batches=2, callbacks=[checkpoint],
                             trainer_kwargs={"enable_checkpointing": True})
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    alpha_keys = [k for k in ckpt["state_dict"] if k.endswith("_arch_alpha")]
    assert alpha_keys == ["training_module._model.op._arch_alpha"]
    assert torch.equal(ckpt["state_dict"][alpha_keys[0]], first.training_module.model.op._arch_alpha)
    sgd, adam = ckpt["optimizer_states"]
    n_weights = sum(1 for n, _ in first.training_module.model.named_parameters() if "_arch_alpha" not in n)
    assert len(sgd["state"]) == n_weights and all("momentum_buffer" in s for s in sgd["state"].values())
    assert set(adam["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and adam["state"][0]["step"] == 2

    class CheckRestored(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.restored = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]
            self.alpha = pl_module.training_module.model.op._arch_alpha.detach().clone()

    restored = CheckRestored()
    resumed, trainer2 = _search(darts_strategy("second-order"), TinyModule(momentum=0.9), n_batches=2, max_epochs=2,
                                callbacks=[restored], ckpt_path=str(tmp_path / "last.ckpt"), seed=1)
    assert torch.equal(restored.alpha, ckpt["state_dict"][alpha_keys[0]])
    for state, saved in zip(restored.restored, ckpt["optimizer_states"], strict=False):
        assert state["param_groups"] == saved["param_groups"]
        assert state["state"].keys() == saved["state"].keys()
        for key, values in state["state"].items():
            assert all(torch.equal(v, saved["state"][key][k]) for k, v in values.items())
    # The resumed search runs the second epoch only and keeps stepping the same optimizers.
    assert trainer2.current_epoch == 2 and trainer2.global_step == trainer.global_step * 2
    assert trainer2.optimizers[1].state_dict()["state"][0]["step"] == 4


@pytest.mark.e2e  # a whole search
def test_real_search_on_digits_exports_a_valid_darts_arch(nni_experiment_dir):
    """NNI DARTS space (width 4, 3 cells), 16x16 digits, 2 batches of 8, DartsClassificationModule, NasExperiment."""
    from sklearn.datasets import load_digits

    from nni_darts_ext.arch import normalize_arch
    from nni_darts_ext.evaluator import darts_evaluator

    with import_nni_quietly():
        from nni.nas.evaluator.pytorch import DataLoader
        from nni.nas.experiment import NasExperiment
        from nni.nas.hub.pytorch import DARTS as DartsSpace

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:32], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(y[:32])
    train = torch.utils.data.TensorDataset(x[:16], y[:16])
    val = torch.utils.data.TensorDataset(x[16:], y[16:])
    evaluator = darts_evaluator(  # our DartsClassificationModule: SGD momentum 0.9 + cosine
        DataLoader(train, batch_size=8), DataLoader(val, batch_size=8), max_epochs=1, learning_rate=0.025,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    strategy = darts_strategy("second-order")
    experiment = NasExperiment(DartsSpace(width=4, num_cells=3, dataset="cifar"), evaluator, strategy)
    experiment.config.experiment_working_directory = str(nni_experiment_dir)
    try:
        experiment.run()
        arch = experiment.export_top_models(formatter="dict")[0]
    finally:
        experiment.stop()  # run() leaves it to atexit, which would log into pytest's closed streams
        # NNI binds its manifest path (~/nni-experiments/.experiment) at import, before the fixture moves HOME:
        # remove our entry with NNI's own locked API.
        from nni.tools.nnictl.config_utils import Experiments

        Experiments().remove_experiment(experiment.id)
    assert normalize_arch(arch)
    module = strategy.oneshot_module
    assert isinstance(module, DartsSearchModule)
    assert module.gradient.last_info["v_norm"] > 0 and module.gradient.skipped_corrections == 0


def test_fp16_grad_scaler_is_refused_before_training():
    """A GradScaler would unscale the unrolled (unscaled) gradients once more; bf16 and 32-bit have none."""
    import types

    with import_nni_quietly():
        from nni.nas.evaluator.pytorch import ClassificationModule

    from pytorch_lightning.plugins.precision import MixedPrecision

    module = DartsSearchModule(ClassificationModule(num_classes=10), gradient=UnrolledGradient())
    module.trainer = types.SimpleNamespace(precision="16-mixed", precision_plugin=MixedPrecision("16-mixed", "cpu"))
    with pytest.raises(ValueError, match="16-mixed") as error:
        module.on_fit_start()
    assert error.value.argument == "precision"
    UnrolledGradient().check_trainer(types.SimpleNamespace(precision="bf16-mixed",
                                                           precision_plugin=MixedPrecision("bf16-mixed", "cpu")))
