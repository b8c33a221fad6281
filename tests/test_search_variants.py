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
from nni_darts_ext.checkpoint import allow_checkpoint_globals, read_checkpoint
from nni_darts_ext.constants import PRIMITIVES
from nni_darts_ext.search import darts_strategy, list_strategies
from nni_darts_ext.search.cells import MixedCell
from nni_darts_ext.search.progressive import Stage
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


@pytest.mark.e2e  # a whole search
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


def test_a_loss_term_reads_the_supernet_cells_and_joins_the_architecture_loss():
    """An ArchLossTerm gets the search module: here the expected number of skip connections of the supernet."""
    import types

    class ExpectedSkips:
        def arch_loss(self, search, *, epoch, max_epochs):
            return sum(cell.mixing_weights(pos)[:, cell.op_names.index("skip_connect")].sum()
                       for cell in search.mixed_cells() for pos in range(len(cell.node_indices)))

    strategy = darts_strategy("first-order", regularizers=[ExpectedSkips()])
    net = strategy.mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "_arch_alpha" in name:
                p.zero_()
    module = DartsClassificationModule(max_epochs=1)
    module.set_model(net)
    oneshot = strategy.configure_oneshot_module(module)
    oneshot.trainer = types.SimpleNamespace(current_epoch=0, max_epochs=1)
    loss = oneshot.architecture_loss_terms()
    # 3 cells (normal, reduce, reduce) x 14 edges, softmax over 7 ops + NNI's `none`: 1/8 each.
    assert float(loss) == pytest.approx(3 * 14 / 8)
    loss.backward()
    skip, p = PRIMITIVES.index("skip_connect"), 1 / 8
    for name, alpha in net.named_parameters():
        if "_arch_alpha" in name:
            cells = 1 if "normal" in name else 2  # the reduction cells share their alphas
            expected = torch.full_like(alpha, -p * p * cells)
            expected[skip] = p * (1 - p) * cells  # d softmax_skip / d alpha
            torch.testing.assert_close(alpha.grad, expected, msg=name)


def test_parts_are_checked_against_their_interfaces():
    from nni_darts_ext.errors import ArgumentError

    def old_style(alphas, mixing, *, epoch, max_epochs):
        return torch.zeros(())

    for kwargs, argument in (({"regularizers": [old_style]}, "regularizers"), ({"perturbation": object()},
                             "perturbation"), ({"cell_schedule": 3}, "cell_schedule"), ({"mixing": nn.ReLU()}, "mixing")):
        with pytest.raises(ArgumentError) as error:
            darts_strategy("first-order", **kwargs)
        assert error.value.argument == argument
    strategy = darts_strategy("first-order", cell_schedule=lambda epoch, max_epochs: {"skip_weight": 1.0})
    net = strategy.mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"))
    module = DartsClassificationModule(max_epochs=1)
    module.set_model(net)
    with pytest.raises(ArgumentError, match="skip_weight") as error:
        strategy.configure_oneshot_module(module).set_progress(0, 1)
    assert error.value.argument == "cell_schedule"


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


@pytest.mark.e2e  # a whole search
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


class _StageRecorder(pl.Callback):
    """Per trained supernet: its number of cells and every cell type's op masks; saves a checkpoint after it."""

    def __init__(self, ckpt_dir=None):
        self.sizes, self.masks, self.start_epochs, self.ckpt_dir = [], [], [], ckpt_dir

    def on_train_start(self, trainer, pl_module):
        cells = pl_module.mixed_cells()
        self.sizes.append(len(cells))
        self.start_epochs.append(trainer.current_epoch)
        self.masks.append({c.label: [c.op_mask(i).clone() for i in c.node_indices] for c in cells})

    def on_train_end(self, trainer, pl_module):
        if self.ckpt_dir is not None:
            trainer.save_checkpoint(self.ckpt_dir / f"stage{len(self.sizes) - 1}.ckpt")


# Three stages as P-DARTS' (5 -> 3 -> 1 ops kept, rising skip dropout), one cell deeper each: small and fast.
SMALL_STAGES = tuple(Stage(num_cells=CELLS + grow, ops_kept=kept, skip_dropout=rate)
                     for grow, kept, rate in ((0, 5, 0.1), (1, 3, 0.4), (2, 1, 0.7)))


def _p_darts_run(ckpt_dir, *, resume=None, max_epochs=1):
    torch.manual_seed(0)
    from nni_darts_ext.callbacks import CheckResumeCheckpoint

    recorder = _StageRecorder(ckpt_dir if resume is None else None)
    # As `nni-darts search --resume` does: the resume file is checked against the net of the (first) fit.
    trainer = Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      callbacks=[recorder, CheckResumeCheckpoint(resume)])
    evaluator = Lightning(DartsClassificationModule(learning_rate=0.05, max_epochs=max_epochs), trainer,
                          train_dataloaders=_darts_loader(0), val_dataloaders=_darts_loader(1),
                          fit_kwargs={"ckpt_path": str(resume)} if resume else None)
    strategy = darts_strategy("p-darts", warmup_epochs=0, stages=SMALL_STAGES)
    with allow_checkpoint_globals():  # NNI's module keeps its loss class as a hyper-parameter
        strategy(RawFormatModelSpace(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"), evaluator),
                 SequentialExecutionEngine())
    return strategy, recorder


def _same_masks(a, b):
    return a.keys() == b.keys() and all(torch.equal(x, y) for k in a for x, y in zip(a[k], b[k], strict=True))


@pytest.mark.e2e  # a whole search
def test_p_darts_resumes_in_the_stage_its_checkpoint_was_written_in(tmp_path):
    """A checkpoint of stage 1 (of 0, 1, 2) resumes the 4-cell stage with its op masks, then runs stage 2; one of
    stage 0 resumes stage 0 and builds stages 1 and 2 fresh (they do not load the 3-cell checkpoint)."""
    from nni_darts_ext.search.progressive_search import STAGE_KEY

    first, original = _p_darts_run(tmp_path / "first")
    assert original.sizes == [CELLS, CELLS + 1, CELLS + 2]
    with allow_checkpoint_globals():
        saved = {stage: read_checkpoint(tmp_path / "first" / f"stage{stage}.ckpt") for stage in (0, 1)}
    assert [saved[stage][STAGE_KEY]["stage"] for stage in (0, 1)] == [0, 1]

    resumed_strategy, resumed = _p_darts_run(tmp_path / "again", resume=tmp_path / "first" / "stage1.ckpt",
                                             max_epochs=2)
    assert resumed.sizes == [CELLS + 1, CELLS + 2]  # stage 1 again (one more epoch), then stage 2
    assert resumed.start_epochs == [1, 0]  # stage 1 continued after its saved epoch; stage 2 from the start
    assert _same_masks(resumed.masks[0], original.masks[1])  # stage 1's pruned ops, from the checkpoint
    assert resumed_strategy.stage_index == 2

    _, from_start = _p_darts_run(tmp_path / "zero", resume=tmp_path / "first" / "stage0.ckpt", max_epochs=2)
    assert from_start.sizes == [CELLS, CELLS + 1, CELLS + 2] and from_start.start_epochs == [1, 0, 0]
    assert _same_masks(from_start.masks[0], original.masks[0])


def test_p_darts_takes_no_cell_schedule_and_checks_its_space():
    from nni_darts_ext.errors import ArgumentError

    with pytest.raises(ArgumentError) as error:
        darts_strategy("p-darts", cell_schedule=lambda epoch, max_epochs: {})
    assert error.value.argument == "cell_schedule"
    with pytest.raises(ValueError, match="num_cells") as error:
        darts_strategy("p-darts").check_space(LayerChoiceSpace())
    assert error.value.argument == "space"
    darts_strategy("p-darts").check_space(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"))


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
