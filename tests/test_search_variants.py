"""The robust variants as presets of the one engine: a tiny search of each on NNI's DARTS space and on a space
without DARTS cells, and the engine-side behaviour each relies on (GDAS computes one op per edge, the DARTS-
auxiliary skip, SDARTS restores the logits, P-DARTS grows and prunes, the skip-connect limit on every preset).
The defining math of each part is tested against hand computations in tests/test_variants_math.py."""

from __future__ import annotations

import collections
import json

import pytest
import torch
import torch.nn as nn

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.arch import normalize_arch
from nni_darts_ext.search import darts_strategy, list_strategies
from nni_darts_ext.search.cells import MixedCell
from nni_darts_ext.search.schedules import darts_minus_skip_weight
from nni_darts_ext.training_module import DartsClassificationModule

with import_nni_quietly():
    import pytorch_lightning as pl
    from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni.nas.space import RawFormatModelSpace

from test_search_spaces import LayerChoiceSpace, _evaluator  # noqa: E402 (tiny non-DARTS space and evaluator)

VARIANTS = ["drnas", "beta-darts", "darts-minus", "sdarts-rs", "sdarts-adv", "fair-darts", "gdas", "p-darts"]
NEED_DARTS_CELLS = {"darts-minus": "auxiliary_skip", "p-darts": "num_cells"}
WIDTH, CELLS, IMAGE, BATCH = 4, 3, 8, 8


def _darts_loader(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * BATCH, 3, IMAGE, IMAGE, generator=gen)
    return DataLoader(torch.utils.data.TensorDataset(x, torch.randint(0, 10, (2 * BATCH,), generator=gen)),
                      batch_size=BATCH)


def _darts_search(strategy, callbacks=()):
    torch.manual_seed(0)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, callbacks=list(callbacks))
    evaluator = Lightning(DartsClassificationModule(learning_rate=0.05, max_epochs=1), trainer,
                          train_dataloaders=_darts_loader(0), val_dataloaders=_darts_loader(1))
    strategy(RawFormatModelSpace(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"), evaluator),
             SequentialExecutionEngine())
    return strategy


def _normal_skips(arch):
    return sum(1 for k, v in arch.items() if k.startswith("normal/op_") and v == "skip_connect")


def test_every_variant_is_a_preset():
    assert set(VARIANTS) | {"first-order", "second-order", "pc-darts"} <= set(list_strategies())


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_searches_the_darts_space_and_exports_a_valid_arch(name):
    strategy = _darts_search(darts_strategy(name, warmup_epochs=0))
    arch = normalize_arch(next(iter(strategy.list_models())).sample)
    assert len(arch) == 32  # 2 cells x 4 nodes x 2 inputs x (op, input)
    if name == "p-darts":
        assert _normal_skips(arch) <= 2


@pytest.mark.parametrize("name", [n for n in VARIANTS if n not in NEED_DARTS_CELLS])
def test_variant_runs_on_a_space_without_darts_cells(name, tmp_path):
    torch.manual_seed(0)
    strategy = darts_strategy(name)
    strategy(RawFormatModelSpace(LayerChoiceSpace(), _evaluator(tmp_path, 1)), SequentialExecutionEngine())
    assert set(next(iter(strategy.list_models())).sample) == {"op"}


@pytest.mark.parametrize("name", sorted(NEED_DARTS_CELLS))
def test_cell_variants_say_what_they_need_on_other_spaces(name, tmp_path):
    with pytest.raises(ValueError, match=NEED_DARTS_CELLS[name]) as error:
        darts_strategy(name)(RawFormatModelSpace(LayerChoiceSpace(), _evaluator(tmp_path, 1)),
                             SequentialExecutionEngine())
    assert "\n" not in str(error.value)


def _supernet(name, **overrides):
    torch.manual_seed(0)
    return darts_strategy(name, **overrides).mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"))


def _count_op_calls(net):
    calls = collections.Counter()
    for cell in (m for m in net.modules() if isinstance(m, MixedCell)):
        for pos, node_ops in enumerate(cell.ops):
            for j, edge in enumerate(node_ops):
                for op in edge.values():
                    # The cell runs ReLU-first ops (sep/dil convs) from their second module on a shared ReLU.
                    entry = op[1] if isinstance(op, nn.Sequential) and isinstance(op[0], nn.ReLU) else op
                    key = (id(cell), pos, j)
                    entry.register_forward_pre_hook(lambda m, a, key=key: calls.update([key]))
    return calls


def test_gdas_computes_one_op_per_edge_and_reaches_every_alpha():
    net = _supernet("gdas")
    calls = _count_op_calls(net)
    net(torch.randn(2, 3, IMAGE, IMAGE)).sum().backward()
    n_edges = sum(len(node) for m in net.modules() if isinstance(m, MixedCell) for node in m.ops)
    assert len(calls) == n_edges and set(calls.values()) == {1}  # exactly one candidate ran on every edge
    for name, p in net.named_parameters():
        if "_arch_alpha" in name:
            assert p.grad is not None and bool((p.grad[:-1] != 0).all()), name  # straight-through: every op


def test_darts_minus_adds_the_weighted_auxiliary_skip_outside_the_mixing():
    net = _supernet("darts-minus").eval()
    cell = next(m for m in net.modules() if isinstance(m, MixedCell) and m.label == "normal")
    captured = []
    handle = cell.register_forward_pre_hook(lambda m, args: captured.append(args))
    with torch.no_grad():
        net(torch.randn(2, 3, IMAGE, IMAGE))
    handle.remove()
    inputs = captured[0]

    def first_node(weight):
        cell.auxiliary_skip_weight = weight
        out = cell(*inputs)
        return out[-1] if isinstance(out, (tuple, list)) else out  # (previous output, this cell)

    with torch.no_grad():
        s0, s1 = cell.preprocessor(list(inputs[0]) if len(inputs) == 1 else list(inputs))
        c = s0.shape[1]
        plain, skipped = first_node(0.0)[:, :c], first_node(0.3)[:, :c]
    # The first intermediate node reads only the two inputs: it gains exactly 0.3 * (s0 + s1).
    torch.testing.assert_close(skipped - plain, 0.3 * (s0 + s1), rtol=1e-5, atol=1e-5)


def test_darts_minus_schedule_sets_the_skip_weight_every_epoch():
    strategy = darts_strategy("darts-minus")
    net = strategy.mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"))
    module = DartsClassificationModule(max_epochs=4)
    module.set_model(net)
    oneshot = strategy.configure_oneshot_module(module)
    for epoch in range(4):
        oneshot.set_progress(epoch, 4)
        weights = {m.auxiliary_skip_weight for m in net.modules() if isinstance(m, MixedCell)}
        assert weights == {darts_minus_skip_weight(epoch, max_epochs=4)}
    assert darts_minus_skip_weight(0, max_epochs=4) == 1.0 and darts_minus_skip_weight(3, max_epochs=4) == 0.25


class _ArchAfterStep(pl.Callback):
    """Compares the alphas at the end of each batch with their values right after the architecture step."""

    def __init__(self):
        self.after_arch, self.mismatches, self.held_weights = None, [], []

    def on_train_start(self, trainer, pl_module):
        arch_opt = pl_module.architecture_optimizers().optimizer

        def capture(optimizer, args, kwargs):
            self.after_arch = [p.detach().clone() for p in pl_module.op_alphas()]

        arch_opt.register_step_post_hook(capture)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not getattr(optimizer, "is_arch_optimizer", False):  # the weight step: alphas hold weights in [0, 1]
            self.held_weights.append(all(bool(((p >= 0) & (p <= 1)).all()) for p in pl_module.op_alphas()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = pl_module.op_alphas()
        self.mismatches += [i for i, (a, b) in enumerate(zip(now, self.after_arch, strict=False)) if not torch.equal(a, b)]


@pytest.mark.parametrize("name", ["sdarts-rs", "sdarts-adv"])
def test_sdarts_perturbs_weights_during_the_weight_step_and_restores_the_logits(name):
    recorder = _ArchAfterStep()
    _darts_search(darts_strategy(name), callbacks=[recorder])
    assert recorder.held_weights == [True, True] and recorder.mismatches == []


@pytest.mark.parametrize("name", ["first-order", "drnas", "fair-darts", "gdas"])
def test_max_skip_connects_limits_every_presets_normal_cell(name):
    net = _supernet(name)
    with torch.no_grad():
        for pname, p in net.named_parameters():
            if "_arch_alpha" in pname:
                p.zero_()
                p[2] = 5.0  # skip_connect (PRIMITIVES order) dominates every edge
    cells = [m for m in net.modules() if isinstance(m, MixedCell)]

    def export(limit):
        arch = {}
        for cell in cells:
            cell.max_skip_connects = limit
            arch.update(cell.export(arch))
        return arch

    assert _normal_skips(export(None)) == 8
    assert _normal_skips(export(2)) == 2 and _normal_skips(export(0)) == 0


def test_p_darts_grows_the_supernet_and_prunes_between_stages():
    sizes, masks = [], []

    class Stages(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            cells = [m for m in pl_module.training_module.model.modules() if isinstance(m, MixedCell)]
            sizes.append(len(cells))
            masks.append({int(cell.op_mask(i).sum(-1).max()) for cell in cells for i in cell._node_indices})

    strategy = _darts_search(darts_strategy("p-darts", warmup_epochs=0), callbacks=[Stages()])
    assert sizes == [CELLS, CELLS + 6, CELLS + 12]  # 5 -> 11 -> 17 in the paper: +0, +6, +12 cells
    assert masks == [{7}, {5}, {3}]  # all 7 ops, then the 5 and 3 strongest of each edge
    calls = _count_op_calls(strategy.supernet)
    strategy.supernet(torch.randn(2, 3, IMAGE, IMAGE))
    n_edges = sum(len(node) for m in strategy.supernet.modules() if isinstance(m, MixedCell) for node in m.ops)
    assert len(calls) == n_edges and set(calls.values()) == {3}  # pruned candidates are not computed


@pytest.mark.e2e
@pytest.mark.parametrize("name", VARIANTS)
def test_cli_search_of_every_variant_from_the_demo_recipe(name, tmp_path, monkeypatch):
    """``nni-darts search --recipe demo --set search.strategy=NAME search.epochs=2`` exports a valid arch."""
    from test_cli import TINY_DATA, run

    from nni_darts_ext.arch import load_arch

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, _, _ = run(["search", "--recipe", "demo", "--out", out, "--threads", "1", "--set",
                      f"search.strategy={name}", "search.epochs=2", *TINY_DATA])
    assert code == 0
    arch = normalize_arch(load_arch(out / "arch.json"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == name and len(arch) == 32


def test_every_variant_recipe_names_its_own_preset():
    from nni_darts_ext.recipes import list_recipes, load_recipe

    for name in ("p-darts", "drnas", "fair-darts", "gdas"):
        assert name in list_recipes() and load_recipe(name).search.strategy == name
    assert load_recipe("p-darts").export.max_skip_connects == 2
