"""nni_darts_ext.compile: in-place torch.compile with one-warning eager fallback, cells of a supernet, Lightning
callback; and bf16-mixed precision through NNI's manual-optimization search step (tiny sizes)."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import nni_darts_ext.compile as compile_mod
from nni_darts_ext import darts_strategy, list_strategies
from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.compile import CompileModel, compile_cells, compile_mode_for, compile_module, is_compiled

with import_nni_quietly():
    from nni.nas.hub.pytorch import DARTS as DartsSpace

LOGGER = "nni_darts_ext.compile"


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))


def _warnings(caplog) -> list:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_mode_selection_picks_cuda_graphs_on_cuda_only():
    assert compile_mode_for("cuda") == "reduce-overhead"
    assert compile_mode_for(torch.device("cuda", 0)) == "reduce-overhead"
    assert compile_mode_for("cpu") is None and compile_mode_for(None) is None
    assert compile_mode_for("cuda", "max-autotune") == "max-autotune"
    with pytest.raises(ValueError, match="mode"):
        compile_mode_for("cpu", "fastest")


@pytest.mark.parametrize("kwargs, error", [({"fullgraph": 1}, TypeError), ({"mode": "turbo"}, ValueError),
                                           ({"dynamic": "yes"}, TypeError)])
def test_compile_module_checks_arguments(kwargs, error):
    with pytest.raises(error):
        compile_module(_small_net(), **kwargs)
    with pytest.raises(TypeError, match="module"):
        compile_module(lambda x: x)


def test_unavailable_compiler_leaves_module_eager_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(compile_mod, "compile_unavailable_reason", lambda device=None: "no C++ compiler on PATH")
    net = _small_net()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert compile_module(net) is net
    assert not is_compiled(net)
    [record] = _warnings(caplog)
    assert "no C++ compiler" in record.getMessage()


def test_failed_compiled_call_falls_back_to_eager_once(monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("inductor exploded\nlong trace")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    net = _small_net().eval()
    x = torch.randn(2, 3, 4, 4)
    expected = net(x)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        compile_module(net)
        assert is_compiled(net)
        first = net(x)
        second = net(x)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    assert not is_compiled(net)
    [record] = _warnings(caplog)
    assert "inductor exploded" in record.getMessage() and "long trace" not in record.getMessage()


def test_real_errors_still_raise_after_fallback(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    net = compile_module(_small_net())
    with pytest.raises(RuntimeError):
        net(torch.randn(2, 5, 4, 4))  # wrong channel count: eager raises too


def _supernet(preset: str) -> nn.Module:
    torch.manual_seed(0)
    return darts_strategy(preset).mutate_model(DartsSpace(width=4, num_cells=3, dataset="cifar"))


def test_compile_cells_compiles_each_mixed_cell_in_place(monkeypatch):
    calls = []

    def recording_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    supernet = _supernet("first-order")
    cells = [m for m in supernet.modules() if type(m).__name__.endswith("MixedCell")]
    keys = list(supernet.state_dict())
    assert compile_cells(supernet, device="cuda") == len(cells) == 3
    assert all(is_compiled(c) for c in cells) and not is_compiled(supernet)
    assert [c["mode"] for c in calls] == ["reduce-overhead"] * 3
    assert list(supernet.state_dict()) == keys
    assert compile_cells(supernet, is_cell=lambda m: False) == 0


def test_compile_model_callback_respects_enabled(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    with pytest.raises(TypeError, match="enabled"):
        CompileModel(enabled="yes")

    class Holder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _small_net()

    trainer = pl.Trainer(accelerator="cpu", logger=False)
    off, on = Holder(), Holder()
    CompileModel(enabled=False).setup(trainer, off, "fit")
    CompileModel(enabled=True).setup(trainer, on, "fit")
    assert not is_compiled(off.model) and is_compiled(on.model)


@pytest.mark.slow
def test_compiled_net_matches_eager_forward_and_gradients():
    torch.set_num_threads(1)
    eager, compiled = _small_net(), compile_module(_small_net())
    x = torch.randn(2, 3, 4, 4)
    out_e, out_c = eager(x), compiled(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    for pe, pc in zip(eager.parameters(), compiled.parameters(), strict=False):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-4, atol=1e-5)
    assert is_compiled(compiled)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["first-order", "pc-darts"])
def test_compiled_cells_match_eager_supernet(preset):
    torch.set_num_threads(1)
    eager, compiled = _supernet(preset), _supernet(preset)
    compiled.load_state_dict(eager.state_dict())
    compile_cells(compiled)
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(1)
    out_e = eager(x)
    torch.manual_seed(1)
    out_c = compiled(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-3, atol=1e-4)
    out_c.sum().backward()
    assert all(p.grad is not None for p in compiled.parameters() if p.requires_grad)


PRESETS = sorted(list_strategies())


def _tiny_search_fit(preset: str, precision: str, steps: int = 2, compiled: bool = False):
    from nni.nas.evaluator.pytorch import ClassificationModule

    torch.manual_seed(0)
    strategy = darts_strategy(preset, warmup_epochs=0)  # p-darts warms up for 10 epochs by default
    supernet = strategy.mutate_model(DartsSpace(width=4, num_cells=3, dataset="cifar"))
    if compiled:
        assert compile_cells(supernet) == 3
    module = ClassificationModule(learning_rate=1e-3, weight_decay=1e-4, num_classes=10, export_onnx=False)
    module.set_model(supernet)
    oneshot = strategy.configure_oneshot_module(module)
    initial = [p.detach().clone() for p in oneshot.arch_parameters()]
    data = torch.utils.data.TensorDataset(torch.randn(4 * steps, 3, 8, 8), torch.randint(0, 10, (4 * steps,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(oneshot, strategy.train_dataloader(lambda: loader, lambda: loader))
    moved = [not torch.equal(p.detach(), p0) for p, p0 in zip(oneshot.arch_parameters(), initial, strict=True)]
    assert any(moved), "no architecture parameter changed"
    return oneshot, trainer


@pytest.mark.e2e  # a search fit of every preset
@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_mixed_keeps_arch_parameters_and_adam_states_fp32(preset):
    torch.set_num_threads(1)
    oneshot, trainer = _tiny_search_fit(preset, "bf16-mixed")
    arch = oneshot.arch_parameters()
    assert arch and all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in arch)
    assert all(p.dtype == torch.float32 for p in oneshot.parameters())
    arch_optimizer = oneshot.architecture_optimizers()
    states = [s for s in arch_optimizer.state.values() if s]
    assert states, "the architecture optimizer never stepped"
    for state in states:
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    assert oneshot.export()  # a valid architecture comes out


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_compiled_cells_run_every_preset(preset):
    """Compiled cells under each preset's step (second order perturbs weights in place, masks, partial channels,
    hard sampling): the fit runs, the cells stay compiled (no eager fallback) and the architecture moves."""
    torch.set_num_threads(1)
    oneshot, _ = _tiny_search_fit(preset, "32-true", compiled=True)
    cells = [m for m in oneshot.model.modules() if type(m).__name__.endswith("MixedCell")]
    assert cells and all(is_compiled(c) for c in cells)
    assert oneshot.export()
