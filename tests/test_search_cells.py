"""The supernet cell (full and PC-DARTS) and its presets: shapes, shuffle, edge weights, export, optimizers, equality with
NNI's cell and strategy step, and a short real search through NasExperiment."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.constants import PC_PARTIAL_CHANNELS, PRIMITIVES
from nni_darts_ext.search import DartsSearch, darts_strategy, list_strategies
from nni_darts_ext.search.cells import MixedCell, PartialChannels
from nni_darts_ext.search.layers import channel_shuffle, narrow_op_factory
from nni_darts_ext.search.module import DartsSearchModule
from nni_darts_ext.training_module import DartsClassificationModule

with import_nni_quietly():
    import nni
    import pytorch_lightning as pl
    from nni.nas.evaluator.pytorch import ClassificationModule, Lightning
    from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell
    from nni.nas.strategy import DARTS

# Tiny sizes (CONTRIBUTING.md). Width 8: cells have C = 8, 16, 32 channels, all divisible by K = 4, and C/K is
# even in the reduction cells (FactorizedReduce of skip_connect needs an even width).
WIDTH, CELLS, IMAGE, BATCH = 8, 3, 16, 4
K = PC_PARTIAL_CHANNELS
QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)



def _space(seed: int = 0, width: int = WIDTH):
    torch.manual_seed(seed)
    return DartsSpace(width=width, num_cells=CELLS, dataset="cifar")


def _cells(net):
    return [m for m in net.modules() if isinstance(m, DifferentiableMixedCell)]


def _randomize_arch(net, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "_arch_alpha" in name or "_arch_beta" in name:
                p.copy_(torch.randn(p.shape, generator=gen))


def _images(n: int = BATCH, seed: int = 2):
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------ shuffle
def test_channel_shuffle_interleaves_groups():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    out = channel_shuffle(x, 4).flatten().tolist()
    # 4 groups of 3 channels: output channel i*4+g is input channel g*3+i.
    assert out == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    assert torch.equal(channel_shuffle(x, 1), x)


def test_channel_shuffle_rejects_bad_groups():
    with pytest.raises(ValueError, match="divisor"):
        channel_shuffle(torch.zeros(1, 6, 2, 2), 4)
    with pytest.raises(ValueError, match="4-d"):
        channel_shuffle(torch.zeros(6, 2, 2), 2)


@pytest.mark.parametrize("channels_last", [False, True])
def test_shuffled_concat_equals_cat_then_shuffle(channels_last):
    from nni_darts_ext.search.layers import shuffled_concat as _shuffled_concat

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a = torch.randn(2, 3, 5, 4).contiguous(memory_format=fmt).requires_grad_()
    b = torch.randn(2, 9, 5, 4).contiguous(memory_format=fmt).requires_grad_()
    out = _shuffled_concat(a, b, 4)
    expected = channel_shuffle(torch.cat([a, b], 1), 4)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=fmt)
    grad = torch.randn_like(expected)
    ga, gb = torch.autograd.grad(out, (a, b), grad)
    ea, eb = torch.autograd.grad(expected, (a, b), grad)
    assert torch.equal(ga, ea) and torch.equal(gb, eb)


# ------------------------------------------------------------------------------------------------------ factory
def test_narrow_op_factory_divides_channels_and_validates():
    def build(node, op_index, chosen, *, op, channels):
        return (op, channels)

    factory = {"a": functools.partial(build, op="a", channels=16)}
    narrowed = narrow_op_factory(factory, 4)
    assert narrowed["a"](2, 0, 0) == ("a", 4)
    assert narrow_op_factory(factory, 1) is factory
    with pytest.raises(ValueError, match="divisible by 3"):
        narrow_op_factory(factory, 3)
    with pytest.raises(TypeError, match="functools.partial"):
        narrow_op_factory({"a": lambda *args: None}, 4)


def test_pc_darts_rejects_bad_arguments_and_widths():
    with pytest.raises(TypeError, match="partial_channels"):
        darts_strategy("pc-darts", partial_channels=2.0)
    with pytest.raises(ValueError, match="partial_channels"):
        darts_strategy("pc-darts", partial_channels=0)
    with pytest.raises(TypeError, match="edge_normalization"):
        darts_strategy("pc-darts", edge_normalization="yes")
    with pytest.raises(TypeError, match="channels_last"):
        darts_strategy("first-order", channels_last=1)
    with pytest.raises(ValueError, match="divisible by 3"):
        darts_strategy("pc-darts", partial_channels=3).mutate_model(_space())


# ------------------------------------------------------------------------------------------------ cell and shapes
def test_pc_cell_shapes_normal_and_reduction():
    net = darts_strategy("pc-darts").mutate_model(_space())
    cells = _cells(net)
    assert [type(c) for c in cells] == [MixedCell] * CELLS
    assert [c.label for c in cells] == ["normal", "reduce", "reduce"]
    shapes = {}

    def record(cell, inputs, output):
        shapes.setdefault(cell.label, []).append((tuple(inputs[0][0].shape), tuple(output[1].shape)))

    for c in cells:
        c.register_forward_hook(record)
    net(_images())
    # Normal cell: C = 8, output 4 nodes x 8 channels at the input resolution.
    assert shapes["normal"][0][1] == (BATCH, 4 * WIDTH, IMAGE, IMAGE)
    # Reduction cells halve the resolution and double C.
    assert shapes["reduce"][0][1] == (BATCH, 4 * 2 * WIDTH, IMAGE // 2, IMAGE // 2)
    assert shapes["reduce"][1][1] == (BATCH, 4 * 4 * WIDTH, IMAGE // 4, IMAGE // 4)
    # Candidate ops are built at C / K: the first conv of sep_conv_3x3 on edge 0 -> node 2.
    for cell, width in zip(cells, (WIDTH, 2 * WIDTH, 4 * WIDTH), strict=False):
        sep = cell.ops[0][0]["sep_conv_3x3"]
        convs = [m for m in sep.modules() if isinstance(m, nn.Conv2d)]
        assert convs[0].in_channels == convs[-1].out_channels == width // K
        # The preprocessed cell inputs keep the full width.
        assert cell.preprocessor.pre1[1].out_channels == width


def _reference_pc_cell_forward(cell, inputs):
    """PC-DARTS model_search.py, spelled out: per edge mix -> cat with bypass -> shuffle, scaled by beta."""
    states = cell.preprocessor(list(inputs))
    n_ops = len(cell.op_names)
    for pos, i in enumerate(range(cell.num_predecessors, cell.num_predecessors + cell.num_nodes)):
        beta = torch.softmax(cell._arch_beta[f"{cell.label}/{i}"], -1)
        node = 0
        for j in range(i):
            x = states[j]
            cp = x.shape[1] // cell.partial_channels
            alpha = torch.softmax(cell._arch_alpha[f"{cell.label}/{i}_{j}"], -1)
            assert alpha.numel() == n_ops + 1  # the last entry is `none`, a zero op
            mix = sum(alpha[k] * op(x[:, :cp]) for k, op in enumerate(cell.ops[pos][j].values()))
            bypass = x[:, cp:]
            if mix.shape[2] != x.shape[2]:
                bypass = F.max_pool2d(bypass, 2, 2)
            node = node + beta[j] * channel_shuffle(torch.cat([mix, bypass], 1), cell.partial_channels)
        states.append(node)
    return torch.cat(states[cell.num_predecessors:], 1)


def _captured_cell_inputs(net, x=None):
    """The real inputs of every cell during one forward of ``net`` (so shapes are right for each cell)."""
    captured = []
    hooks = [c.register_forward_pre_hook(lambda m, args: captured.append([t.detach().clone() for t in args[0]]))
             for c in _cells(net)]
    with torch.no_grad():
        net(_images() if x is None else x)
    for h in hooks:
        h.remove()
    return captured


@pytest.mark.parametrize("cell_index", [0, 1, 2])  # normal, reduction after normal, reduction after reduction
def test_pc_cell_forward_matches_the_reference_formulation(cell_index):
    net = darts_strategy("pc-darts").mutate_model(_space())
    _randomize_arch(net)
    net.eval()  # BatchNorm with running statistics: both formulations see the same normalisation
    cell = _cells(net)[cell_index]
    inputs = _captured_cell_inputs(net)[cell_index]
    with torch.no_grad():
        ours = cell(inputs)[1]
        ref = _reference_pc_cell_forward(cell, inputs)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def _first_conv(module):
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def test_beta_is_softmaxed_over_each_nodes_edges():
    net = darts_strategy("pc-darts").mutate_model(_space())
    cell = _cells(net)[0]
    _randomize_arch(net)
    for pos, i in enumerate(range(2, 6)):
        beta = cell._arch_beta[f"normal/{i}"]
        assert beta.shape == (i,)  # one beta per incoming edge
        weights = cell.edge_weights(pos)
        alphas = torch.stack([cell._arch_alpha[f"normal/{i}_{j}"] for j in range(i)])
        expected = torch.softmax(alphas, -1)[:, :7] * torch.softmax(beta, -1)[:, None]
        torch.testing.assert_close(weights, expected)
        # Summed over ops and `none`, each edge's weight is its softmax(beta): the node's edges sum to 1.
        torch.testing.assert_close(weights.sum(1) / torch.softmax(alphas, -1)[:, :7].sum(1), torch.softmax(beta, -1))
    # Betas are shared by every cell of the same type, like alphas.
    reduce_cells = _cells(net)[1:]
    assert reduce_cells[0]._arch_beta["reduce/3"] is reduce_cells[1]._arch_beta["reduce/3"]


def test_large_beta_selects_one_edge():
    net = darts_strategy("pc-darts").mutate_model(_space())
    net.eval()
    cell = _cells(net)[0]
    with torch.no_grad():
        cell._arch_beta["normal/2"].copy_(torch.tensor([0.0, 60.0]))  # node 2 listens to input 1 only
    s0, s1 = _captured_cell_inputs(net)[0]
    with torch.no_grad():
        states = cell.preprocessor([s0, s1])
        x = states[1]
        cp = x.shape[1] // K
        alpha = torch.softmax(cell._arch_alpha["normal/2_1"], -1)
        mix = sum(alpha[k] * op(x[:, :cp]) for k, op in enumerate(cell.ops[0][1].values()))
        expected = channel_shuffle(torch.cat([mix, x[:, cp:]], 1), K)
        node2 = cell([s0, s1])[1][:, :WIDTH]
    torch.testing.assert_close(node2, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------- export
def _set_alpha(cell, i, j, op_logits: dict, none: float = 0.0):
    alpha = cell._arch_alpha[f"{cell.label}/{i}_{j}"]
    with torch.no_grad():
        alpha.zero_()
        for op, value in op_logits.items():
            alpha[cell.op_names.index(op)] = value
        alpha[-1] = none


def test_export_ranks_edges_by_alpha_times_beta():
    net = darts_strategy("pc-darts").mutate_model(_space())
    cell = _cells(net)[0]
    with torch.no_grad():
        for p in cell._arch_alpha.values():
            p.zero_()
        for p in cell._arch_beta.values():
            p.zero_()
    # Node 3 (inputs 0, 1, 2). By alpha alone edge 0 wins (sep_conv_3x3 dominant), then edge 1.
    _set_alpha(cell, 3, 0, {"sep_conv_3x3": 3.0})
    _set_alpha(cell, 3, 1, {"max_pool_3x3": 2.0})
    _set_alpha(cell, 3, 2, {"skip_connect": 1.5})
    # ... but beta makes edge 0 nearly silent: alpha x beta ranks edge 2 first, then edge 1.
    with torch.no_grad():
        cell._arch_beta["normal/3"].copy_(torch.tensor([-4.0, 0.0, 1.0]))
    # Node 4: `none` is the largest alpha on edge 3. It takes its share of the softmax but is never exported:
    # edge 3 is ranked (second) by its best real op, dil_conv_5x5.
    _set_alpha(cell, 4, 3, {"dil_conv_5x5": 1.0}, none=6.0)
    _set_alpha(cell, 4, 0, {"avg_pool_3x3": 0.5})
    with torch.no_grad():
        cell._arch_beta["normal/4"].copy_(torch.tensor([0.0, -5.0, -5.0, 2.0]))

    arch = cell.export({})
    assert arch["normal/op_3_0"] == "skip_connect" and arch["normal/input_3_0"] == [2]
    assert arch["normal/op_3_1"] == "max_pool_3x3" and arch["normal/input_3_1"] == [1]
    assert arch["normal/op_4_0"] == "avg_pool_3x3" and arch["normal/input_4_0"] == [0]
    assert arch["normal/op_4_1"] == "dil_conv_5x5" and arch["normal/input_4_1"] == [3]
    # Without betas (the same alphas), NNI's raw-alpha ranking would keep edge 0 of node 3.
    assert DifferentiableMixedCell.export(cell, {})["normal/input_3_0"] == [0]
    # The full NNI-form dict: 4 nodes x 2 inputs x (op, input) per cell type, ops from the 7 primitives.
    full = darts_strategy("pc-darts").mutate_model(_space())
    exported = {}
    for c in _cells(full):
        exported.update(c.export(exported))
    _assert_valid_arch(exported)



def test_fair_darts_export_fills_a_node_below_the_threshold_with_its_best_ranked_others():
    """FairDARTS keeps an input only if its sigmoid weight reaches 0.85; NNI's space needs two per node, so a node
    with fewer is filled with its best-ranked other inputs (and a node with two keeps its own)."""
    net, oneshot = _oneshot(darts_strategy("fair-darts"))
    oneshot.apply_cell_settings()  # the preset's export threshold, as at the start of a fit
    cell = _cells(net)[0]
    assert cell.export_threshold == pytest.approx(0.85)
    with torch.no_grad():
        for p in cell._arch_alpha.values():
            p.fill_(-5.0)  # sigmoid ~0.007: nothing reaches the threshold
    # Node 2: both inputs above the threshold (sigmoid(3) = 0.95): kept as they are.
    _set_alpha(cell, 2, 0, {"sep_conv_3x3": 3.0}, none=-5.0)
    _set_alpha(cell, 2, 1, {"max_pool_3x3": 3.0}, none=-5.0)
    # Node 3: one input above (edge 2, sigmoid(3)); edge 1 ranks next (sigmoid(1) = 0.73 < 0.85), edge 0 last.
    _set_alpha(cell, 3, 2, {"skip_connect": 3.0}, none=-5.0)
    _set_alpha(cell, 3, 1, {"dil_conv_3x3": 1.0}, none=-5.0)
    _set_alpha(cell, 3, 0, {"avg_pool_3x3": 0.0}, none=-5.0)
    # Node 4: no input above; the two best-ranked (edges 3 and 0) fill in.
    _set_alpha(cell, 4, 3, {"sep_conv_5x5": 1.5}, none=-5.0)
    _set_alpha(cell, 4, 0, {"max_pool_3x3": 0.5}, none=-5.0)
    arch = oneshot.export()  # through the module: the arch dict a search writes
    assert (arch["normal/op_2_0"], arch["normal/input_2_0"], arch["normal/op_2_1"], arch["normal/input_2_1"]) == (
        "sep_conv_3x3", [0], "max_pool_3x3", [1])
    assert (arch["normal/op_3_0"], arch["normal/input_3_0"], arch["normal/op_3_1"], arch["normal/input_3_1"]) == (
        "skip_connect", [2], "dil_conv_3x3", [1])
    assert {(arch["normal/op_4_0"], arch["normal/input_4_0"][0]), (arch["normal/op_4_1"], arch["normal/input_4_1"][0])} \
        == {("sep_conv_5x5", 3), ("max_pool_3x3", 0)}

def _assert_valid_arch(arch):
    expected_keys = {f"{t}/{kind}_{i}_{k}" for t in ("normal", "reduce") for kind in ("op", "input")
                     for i in range(2, 6) for k in range(2)}
    assert set(arch) == expected_keys
    for t in ("normal", "reduce"):
        for i in range(2, 6):
            inputs = [arch[f"{t}/input_{i}_{k}"] for k in range(2)]
            assert all(isinstance(v, list) and len(v) == 1 and 0 <= v[0] < i for v in inputs)
            assert inputs[0] != inputs[1]
            assert all(arch[f"{t}/op_{i}_{k}"] in PRIMITIVES for k in range(2))


# ------------------------------------------------------------------------------------------------------ optimizers
def _oneshot(strategy, module=None, seed=0):
    net = strategy.mutate_model(_space(seed))
    module = module or ClassificationModule(num_classes=10, export_onnx=False)
    module.set_model(net)
    return net, strategy.configure_oneshot_module(module)


def test_beta_is_an_architecture_parameter_only():
    net, oneshot = _oneshot(darts_strategy("pc-darts"))
    assert isinstance(oneshot, DartsSearchModule)
    betas = {id(p) for n, p in net.named_parameters() if "_arch_beta" in n}
    alphas = {id(p) for n, p in net.named_parameters() if "_arch_alpha" in n}
    assert len(betas) == 2 * 4  # one vector per node, shared by the cells of each type
    arch = {id(p) for p in oneshot.arch_parameters()}
    assert betas | alphas == arch
    weight_opt, arch_opt = oneshot.configure_optimizers()
    in_weight_opt = {id(p) for g in weight_opt.param_groups for p in g["params"]}
    in_arch_opt = {id(p) for g in arch_opt.param_groups for p in g["params"]}
    assert betas <= in_arch_opt and not betas & in_weight_opt
    assert arch_opt.defaults["lr"] == pytest.approx(6e-4)
    # Betas are saved with the model (checkpoints carry them).
    assert any("_arch_beta" in k for k in oneshot.state_dict())


def test_presets_are_registered_with_their_defaults():
    assert {"first-order", "pc-darts"} <= set(list_strategies())
    pc = darts_strategy("pc-darts", warmup_epochs=15)
    assert isinstance(pc, DartsSearch) and isinstance(pc, DARTS)
    assert (pc.partial_channels, pc.edge_normalization, pc.gradient_clip_val, pc.warmup_epochs) == (4, True, 5.0, 15)
    first = darts_strategy("first-order")
    assert isinstance(first, DartsSearch) and (first.partial_channels, first.edge_normalization, first.order) == (1, False, 1)
    assert (first.arc_learning_rate, first.gradient_clip_val) == (3e-4, 5.0)
    restored = nni.load(nni.dump(pc))
    assert type(restored) is DartsSearch and restored.warmup_epochs == 15 and restored.partial_channels == 4


# ---------------------------------------------------------------------------------------------- lean == NNI (math)
@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_cell_equals_nni_cell_forward_backward_and_export(channels_last):
    space = _space()
    stock = DARTS().mutate_model(copy.deepcopy(space))
    lean = darts_strategy("first-order").mutate_model(copy.deepcopy(space))
    assert all(type(c) is MixedCell for c in _cells(lean))
    _randomize_arch(stock)
    lean.load_state_dict(stock.state_dict())
    if channels_last:
        lean = lean.to(memory_format=torch.channels_last)
    x = _images()
    out_stock, out_lean = stock(x), lean(x)
    torch.testing.assert_close(out_lean, out_stock, rtol=1e-6, atol=1e-6 if not channels_last else 1e-5)
    # Gradients to 1e-6, in float64: in float32 the two nets sum the same terms in another order, and the
    # rounding differences of a width-4 net's weight gradients reach ~1e-5 (float noise, not a difference in math);
    # in float64 that noise is ~1e-14, so 1e-6 tells a wrong gradient from rounding.
    stock64, lean64, x64 = copy.deepcopy(stock).double(), copy.deepcopy(lean).double(), x.double()
    stock64(x64).square().sum().backward()
    lean64(x64).square().sum().backward()
    for (name, a), (_, b) in zip(stock64.named_parameters(), lean64.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-6, msg=name)
    out_stock.square().sum().backward()
    out_lean.square().sum().backward()
    for (name, a), (_, b) in zip(stock.named_parameters(), lean.named_parameters(), strict=False):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)  # float32: rounding only
    inputs = _captured_cell_inputs(stock, x)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for cs, cl, args in zip(_cells(stock), _cells(lean), inputs, strict=False):
        expected = cs(args)[1]
        got = cl([t.contiguous(memory_format=fmt) for t in args])[1]
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6 if not channels_last else 1e-5)
    exported_stock, exported_lean = {}, {}
    for cs, cl in zip(_cells(stock), _cells(lean), strict=False):
        exported_stock.update(cs.export(exported_stock))
        exported_lean.update(cl.export(exported_lean))
    assert exported_lean == exported_stock


def _digit_batches(n_batches: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen))
            for _ in range(n_batches)]


def _fit(strategy, steps: int = 2):
    torch.manual_seed(0)
    net = strategy.mutate_model(_space())
    # SGD for the weights: Adam's first steps move every weight by ~lr whatever its gradient's size, so float
    # noise in near-zero gradients would show up as lr-sized differences (the architecture optimizer is Adam).
    module = ClassificationModule(learning_rate=0.1, weight_decay=1e-4, optimizer=torch.optim.SGD, num_classes=10,
                                  export_onnx=False)
    module.set_model(net)
    oneshot = strategy.configure_oneshot_module(module)
    train = torch.utils.data.DataLoader(_digit_batches(steps, 0), batch_size=None)
    val = torch.utils.data.DataLoader(_digit_batches(steps, 1), batch_size=None)
    trainer = pl.Trainer(max_epochs=1, **QUIET)
    initial = copy.deepcopy(net.state_dict())
    trainer.fit(oneshot, train_dataloaders=strategy.train_dataloader(lambda: train, lambda: val))
    return net, initial


@pytest.mark.parametrize("channels_last", [False, True])
def test_first_order_steps_equal_nni_darts_steps(channels_last):
    """Two real search steps (arch + weight, Adam, clipping): same parameters and export as NNI's DARTS."""
    stock, initial = _fit(DARTS(gradient_clip_val=5.0))
    lean, initial_lean = _fit(darts_strategy("first-order", channels_last=channels_last))
    for name, value in initial.items():
        assert torch.equal(initial_lean[name], value), name  # same start
    for (name, a), (_, b) in zip(stock.named_parameters(), lean.named_parameters(), strict=False):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    lean_state = lean.state_dict()  # persistent buffers (the cells' op masks are saved only once pruned)
    for name, a in stock.state_dict().items():
        torch.testing.assert_close(lean_state[name], a, rtol=1e-4, atol=1e-5, msg=name)
    # The steps did change the architecture and the weights.
    changed = {n for n, p in stock.named_parameters() if not torch.equal(p.detach(), initial[n])}
    assert any("_arch_alpha" in n for n in changed) and any("_arch_alpha" not in n for n in changed)
    exported_stock, exported_lean = {}, {}
    for cs, cl in zip(_cells(stock), _cells(lean), strict=False):
        exported_stock.update(cs.export(exported_stock))
        exported_lean.update(cl.export(exported_lean))
    assert exported_lean == exported_stock


def test_skipped_gradients_are_restored_after_each_step():
    strategy = darts_strategy("pc-darts", warmup_epochs=0)
    net, _ = _fit(strategy, steps=1)
    assert all(p.requires_grad for p in net.parameters())


def test_gradients_nobody_reads_are_not_computed():
    """By effect: in one first-order search step the weights' gradient is accumulated once (the weight step, not
    the architecture step) and the alphas' once (the architecture step, not the weight step)."""
    strategy = darts_strategy("first-order")
    assert strategy.skip_unused_gradients
    net = strategy.mutate_model(_space())
    weight = next(p for n, p in net.named_parameters() if "_arch_" not in n and p.dim() == 4)
    alpha = next(p for n, p in net.named_parameters() if "_arch_alpha" in n)
    calls = {"weight": 0, "alpha": 0}
    weight.register_post_accumulate_grad_hook(lambda p: calls.__setitem__("weight", calls["weight"] + 1))
    alpha.register_post_accumulate_grad_hook(lambda p: calls.__setitem__("alpha", calls["alpha"] + 1))
    module = ClassificationModule(learning_rate=0.1, optimizer=torch.optim.SGD, num_classes=10, export_onnx=False)
    module.set_model(net)
    oneshot = strategy.configure_oneshot_module(module)
    train = torch.utils.data.DataLoader(_digit_batches(1, 0), batch_size=None)
    val = torch.utils.data.DataLoader(_digit_batches(1, 1), batch_size=None)
    pl.Trainer(max_epochs=1, **QUIET).fit(oneshot, train_dataloaders=strategy.train_dataloader(lambda: train,
                                                                                               lambda: val))
    assert calls == {"weight": 1, "alpha": 1}


# ------------------------------------------------------------------------------------------------ real search
@pytest.fixture
def private_manifest(nni_experiment_dir, monkeypatch):
    """``nni_experiment_dir`` with NNI's experiment manifest in it too (NNI binds ``~/nni-experiments`` at import
    time, before HOME is redirected; same fixture as tests/test_nni_integration.py)."""
    from nni.tools.nnictl import config_utils

    monkeypatch.setattr(config_utils.Experiments.__init__, "__defaults__", (str(nni_experiment_dir),))
    return nni_experiment_dir


@pytest.mark.e2e  # a whole search
def test_short_pc_darts_search_through_nas_experiment(private_manifest):
    with import_nni_quietly():
        from nni.nas.evaluator.pytorch import Trainer
        from nni.nas.experiment import NasExperiment

    from nni_darts_ext.data import digits, search_dataloaders

    torch.manual_seed(0)
    space = DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar")
    train, val = search_dataloaders(digits(train=True, image_size=IMAGE), batch_size=BATCH)
    module = DartsClassificationModule(learning_rate=0.1, max_epochs=1)
    trainer = Trainer(max_epochs=1, limit_train_batches=3, **QUIET)
    evaluator = Lightning(module, trainer, train_dataloaders=train, val_dataloaders=val)
    strategy = darts_strategy("pc-darts")
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(private_manifest)
    try:
        experiment.run()
        arch = experiment.export_top_models(formatter="dict")[0]
    finally:
        experiment.stop()
    _assert_valid_arch(arch)
    assert isinstance(strategy.oneshot_module, DartsSearchModule)
    # The architecture optimizer stepped the betas on each of the 3 batches.
    betas = [p for n, p in strategy.supernet.named_parameters() if "_arch_beta" in n]
    opt = strategy.oneshot_module.architecture_optimizers().optimizer
    assert all(int(opt.state[p]["step"]) == 3 for p in betas)
    assert (private_manifest / experiment.id).is_dir()


# ------------------------------------------------------------------------------------------- presets and checks
def test_darts_strategy_refuses_what_the_preset_does_not_take_by_name():
    from nni_darts_ext.errors import ArgumentTypeError, ArgumentValueError

    with pytest.raises(ArgumentTypeError) as error:
        darts_strategy("pc-darts", partial_chanels=4)  # a typo
    assert error.value.argument == "partial_chanels" and "pc-darts" in str(error.value)
    with pytest.raises(ArgumentTypeError) as error:
        darts_strategy("first-order", stages=())  # only p-darts takes stages
    assert error.value.argument == "stages"
    with pytest.raises(ArgumentValueError) as error:
        darts_strategy("no-such-darts")
    assert error.value.argument == "name"
    for name, value in (("hessian_eps", -1.0), ("arc_betas", (0.5, 1.5)), ("arc_betas", 0.5),
                        ("arc_weight_decay", -1e-3), ("export_threshold", 2.0), ("max_skip_connects", -1)):
        with pytest.raises((ArgumentTypeError, ArgumentValueError)) as error:
            darts_strategy("drnas", **{name: value})
        assert error.value.argument == name
    assert darts_strategy("p-darts", stages=darts_strategy("p-darts").stages[:2]).num_stages() == 2


@pytest.mark.parametrize("name", list_strategies())
def test_partial_channels_work_on_every_preset(name):
    strategy = darts_strategy(name, partial_channels=K)
    strategy.check_space(_space())
    net = strategy.mutate_model(_space())
    assert {c.partial_channels for c in _cells(net)} == {K}
    assert isinstance(_cells(net)[0].channels, PartialChannels)


def test_check_space_refuses_partial_channels_that_do_not_divide_before_building_anything(monkeypatch):
    from nni_darts_ext.errors import ArgumentValueError

    built = []
    monkeypatch.setattr(MixedCell, "__init__", lambda *args, **kwargs: built.append(args))
    for name in ("pc-darts", "drnas", "gdas"):
        with pytest.raises(ArgumentValueError, match="divisible by 4") as error:
            darts_strategy(name, partial_channels=K).check_space(_space(width=6))  # C = 6: 6 % 4 != 0
        assert error.value.argument == "partial_channels"
    assert built == []  # inspected, not built
    darts_strategy("pc-darts", partial_channels=2).check_space(_space(width=6))


def test_each_edge_can_run_under_activation_checkpointing():
    """EdgeOps is a function of tensors: wrapped in torch.utils.checkpoint, outputs and gradients are unchanged."""
    from torch.utils.checkpoint import checkpoint

    net = darts_strategy("pc-darts", auxiliary_skip=True).mutate_model(_space())
    for cell in _cells(net):
        cell.auxiliary_skip_weight = 0.5
    _randomize_arch(net)
    x = _images()
    plain = net(x)
    plain.square().sum().backward()
    expected = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()

    class Checkpointed:
        def __init__(self, edge):
            self.edge, self.op_indices = edge, edge.op_indices

        def __call__(self, *args):
            return checkpoint(self.edge, *args, use_reentrant=False)

    for cell in _cells(net):
        for node in cell._node_plans():
            node.edges[:] = [Checkpointed(edge) for edge in node.edges]
    wrapped = net(x)
    torch.testing.assert_close(wrapped, plain, rtol=0, atol=0)
    wrapped.square().sum().backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-6, atol=1e-7, msg=name)


def test_cells_turn_nni_softmax_into_softmax_mixing_and_refuse_other_modules():
    from nni.nas.oneshot.pytorch.supermodule.differentiable import GumbelSoftmax

    from nni_darts_ext.errors import ArgumentTypeError
    from nni_darts_ext.search.mixing import SoftmaxMixing

    hook = functools.partial(MixedCell.mutate)
    net = DARTS(mutation_hooks=[hook]).mutate_model(_space())  # NNI's own strategy hands in nn.Softmax(-1)
    assert {type(c.mixing) for c in _cells(net)} == {SoftmaxMixing}
    with pytest.raises(ArgumentTypeError) as error:
        MixedCell.mutate(next(m for m in _space().modules() if MixedCell.replaces(m)), "cell", {},
                         {"softmax": GumbelSoftmax()})
    assert error.value.argument == "mixing"


def test_a_mixing_decides_its_node_weights_without_the_cell_knowing():
    """A new mixing overrides node_weights only: the cell runs it as it is (here: all weight on one op)."""
    from nni_darts_ext.search.mixing import SoftmaxMixing

    class OnlySkip(SoftmaxMixing):
        def node_weights(self, alphas, n_ops, mask=None, *, deterministic=False):
            weights = torch.zeros(len(alphas), n_ops)
            weights[:, PRIMITIVES.index("skip_connect")] = 1.0
            return weights

    net = DartsSearch(mixing=OnlySkip()).mutate_model(_space()).eval()
    cell = _cells(net)[0]  # normal cell: skip_connect is the identity
    s0, s1 = _captured_cell_inputs(net)[0]
    with torch.no_grad():
        states = cell.preprocessor([s0, s1])
        for _ in range(cell.num_nodes):
            states.append(sum(states))  # every edge is identity x 1
        torch.testing.assert_close(cell([s0, s1])[1], torch.cat(states[2:], 1))
