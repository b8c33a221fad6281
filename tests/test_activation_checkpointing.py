"""Activation checkpointing changes memory, not math: one real search step of every preset (first and second order,
partial channels) with ``checkpointing`` ``cells`` and ``edges`` gives the weight and architecture gradients of the
step without it (1e-6 relative, float32), with random draws (Dirichlet, Gumbel, SDARTS noise, skip dropout, drop
path) replayed; the fixed net's ``cells`` likewise; BatchNorm running statistics are updated once."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.activation_checkpointing import checkpointed
from nni_darts_ext.arch import build_model
from nni_darts_ext.errors import ArgumentValueError
from nni_darts_ext.search import darts_strategy, list_strategies
from nni_darts_ext.search.cells import MixedCell
from nni_darts_ext.search.progressive import Stage
from nni_darts_ext.training_module import DartsClassificationModule

with import_nni_quietly():
    import pytorch_lightning as pl
    from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni.nas.space import RawFormatModelSpace

WIDTH, CELLS, IMAGE, BATCH = 4, 3, 8, 2
RTOL = 1e-6  # relative, per tensor: ||g - g_ref|| <= RTOL * ||g_ref|| (float32)


class GradientRecorder(pl.Callback):
    """Every optimizer step's gradients, by parameter name, in the order the steps happen."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []
        self.buffers: dict[str, torch.Tensor] = {}
        self.modes: set[str] = set()

    def on_train_start(self, trainer, pl_module):
        self.modes |= {cell.checkpointing for cell in pl_module.modules() if isinstance(cell, MixedCell)}
        names = {id(p): n for n, p in pl_module.named_parameters()}
        for optimizer in trainer.optimizers:
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.steps.append({
                names[id(p)]: p.grad.detach().clone() for group in opt.param_groups for p in group["params"]
                if p.grad is not None}))

    def on_train_end(self, trainer, pl_module):
        self.buffers.update({n: b.detach().clone() for n, b in pl_module.named_buffers()})


def _loader(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen)
    return DataLoader(torch.utils.data.TensorDataset(x, torch.randint(0, 10, (BATCH,), generator=gen)),
                      batch_size=BATCH)


def _search_step(name, checkpointing, **overrides):
    """One search step of preset ``name`` on a tiny DARTS space; the recorded gradients and final buffers."""
    torch.manual_seed(0)
    recorder = GradientRecorder()
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=[recorder])
    evaluator = Lightning(DartsClassificationModule(learning_rate=0.05, max_epochs=1), trainer,
                          train_dataloaders=_loader(0), val_dataloaders=_loader(1))
    if name == "p-darts":  # two short stages, skip dropout on from the start: a random draw inside the region
        overrides = {"stages": [Stage(num_cells=CELLS, ops_kept=kept, skip_dropout=0.5, epochs=1, warmup_epochs=0)
                                for kept in (4, 1)], **overrides}
    strategy = darts_strategy(name, warmup_epochs=0, checkpointing=checkpointing, **overrides)
    strategy(RawFormatModelSpace(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"), evaluator),
             SequentialExecutionEngine())
    return recorder


def _assert_same(reference, other, mode):
    assert reference.modes == {"none"} and other.modes == {mode}  # every stage's supernet cells ran in that mode
    assert len(other.steps) == len(reference.steps) > 0
    for step, (ref, got) in enumerate(zip(reference.steps, other.steps, strict=True)):
        assert ref.keys() == got.keys(), step
        for key in ref:
            err = float((got[key] - ref[key]).norm())
            assert err <= RTOL * float(ref[key].norm()), (step, key, err)
    assert reference.buffers.keys() == other.buffers.keys()
    for key, value in reference.buffers.items():
        assert torch.equal(other.buffers[key], value), key  # BatchNorm statistics updated once, not twice


CASES = [(name, {}) for name in list_strategies()] + [("pc-darts", {"order": 2})]


@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}{'-order2' if o else ''}" for n, o in CASES])
def test_checkpointed_search_step_has_the_same_gradients(name, overrides, monkeypatch):
    regions = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: regions.append(1) or checkpoint(*a, **k))
    reference = _search_step(name, "none", **overrides)
    assert not regions
    for mode in ("cells", "edges"):
        _assert_same(reference, _search_step(name, mode, **overrides), mode)
        assert regions  # regions really ran checkpointed
        regions.clear()


def test_fixed_net_cells_have_the_same_gradients_with_drop_path():
    grads, buffers = {}, {}
    for mode in ("none", "cells"):
        torch.manual_seed(0)
        model = build_model("darts-v2", width=WIDTH, num_cells=CELLS, auxiliary_loss=True, drop_path_prob=0.3,
                            image_size=IMAGE, checkpointing=mode)
        model.set_drop_path_prob(0.3)
        keys = list(model.state_dict())
        torch.manual_seed(1)
        logits, aux = model(torch.randn(BATCH, 3, IMAGE, IMAGE))
        (logits.square().sum() + aux.sum()).backward()
        grads[mode] = {n: p.grad for n, p in model.named_parameters()}
        buffers[mode] = dict(model.named_buffers())
        assert keys == list(build_model("darts-v2", width=WIDTH, num_cells=CELLS, auxiliary_loss=True,
                                        drop_path_prob=0.3, image_size=IMAGE).state_dict())  # same model.pt keys
    for key, ref in grads["none"].items():
        assert float((grads["cells"][key] - ref).norm()) <= RTOL * float(ref.norm()), key
    for key, ref in buffers["none"].items():
        assert torch.equal(buffers["cells"][key], ref), key


def test_a_checkpointed_region_replays_its_random_draws_and_updates_batch_norm_once():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)

    def region(x):
        return torch.nn.functional.dropout(bn(x), 0.5).sum(0)

    x = torch.randn(4, 3, requires_grad=True)
    torch.manual_seed(1)
    checkpointed(region, x, modules=[bn]).square().sum().backward()
    grad, stats = x.grad.clone(), (bn.running_mean.clone(), int(bn.num_batches_tracked))
    bn.reset_running_stats()
    x.grad = None
    torch.manual_seed(1)
    region(x).square().sum().backward()
    assert torch.equal(x.grad, grad)
    assert torch.equal(bn.running_mean, stats[0]) and int(bn.num_batches_tracked) == stats[1] == 1


def test_checkpointing_names_a_bad_mode():
    with pytest.raises(ArgumentValueError) as error:
        darts_strategy("first-order", checkpointing="layers")
    assert error.value.argument == "checkpointing"
    with pytest.raises(ArgumentValueError):
        build_model("darts-v2", width=WIDTH, num_cells=CELLS, checkpointing="edges")  # the fixed net has no edges


@pytest.mark.parametrize("name", ["first-order", "pc-darts"])
def test_checkpointing_under_bf16_autocast_gives_the_same_gradients(name):
    """bf16 mixed precision: the recomputation replays the autocast state of the first forward."""
    grads = {}
    for mode in ("none", "cells", "edges"):
        torch.manual_seed(0)
        net = darts_strategy(name, checkpointing=mode, partial_channels=2 if name == "pc-darts" else 1) \
            .mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"))
        for cell in (m for m in net.modules() if isinstance(m, MixedCell)):
            cell.apply_settings({"checkpointing": mode})
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(torch.randn(BATCH, 3, IMAGE, IMAGE)).float().square().sum()
        loss.backward()
        grads[mode] = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    for mode in ("cells", "edges"):
        assert grads[mode].keys() == grads["none"].keys()
        for key, ref in grads["none"].items():
            assert float((grads[mode][key].float() - ref.float()).norm()) <= RTOL * float(ref.float().norm()), key
