"""Perturbation-based selection (DARTS-PT) on tiny supernets: it avoids a harmful op magnitude picks, refuses
presets it cannot run after, and a resumed selection equals an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.errors import CheckpointError, SelectionUnsupportedError
from nni_darts_ext.search.perturbation_selection import perturbation_select
from nni_darts_ext.search.presets import darts_strategy

with import_nni_quietly():
    from nni.nas.evaluator.pytorch import ClassificationModule
    from nni.nas.hub.pytorch import DARTS as DartsSpace

HARMFUL_OP = "max_pool_3x3"
IMAGE, BATCH = 8, 4


class Noise(nn.Module):
    """A harmful candidate op: large random noise instead of its input."""

    def forward(self, x):
        return torch.randn_like(x) * 100.0


def _search_module(preset="first-order", seed=0):
    torch.manual_seed(seed)
    strategy = darts_strategy(preset)
    supernet = strategy.mutate_model(DartsSpace(width=4, num_cells=3, dataset="cifar"))
    module = ClassificationModule(learning_rate=1e-3, weight_decay=1e-4, num_classes=10, export_onnx=False)
    module.set_model(supernet)
    return strategy.configure_oneshot_module(module)


def _loaders(n_train=8, n_val=16, labels=None, seed=0, shuffle=False):
    g = torch.Generator().manual_seed(seed)
    x_val = torch.randn(n_val, 3, IMAGE, IMAGE, generator=g)
    y_val = torch.randint(0, 10, (n_val,), generator=g) if labels is None else labels
    x_trn = torch.randn(n_train, 3, IMAGE, IMAGE, generator=g)
    y_trn = torch.randint(0, 10, (n_train,), generator=g)
    trn = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_trn, y_trn), batch_size=BATCH, shuffle=shuffle)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_val, y_val), batch_size=n_val, shuffle=shuffle)
    return trn, val


def _select(search, trn, val, **kwargs):
    kwargs = {"preset": "first-order", "seed": 0, "learning_rate": 0.025, "eta_min": 0.001, "tune_epochs": 0,
              **kwargs}
    return perturbation_select(search, trn, val, **kwargs)


def _op_on(arch, label, node, j):
    """The op ``arch`` puts on input ``j`` of ``node`` (``None``: the node does not take that input)."""
    ops = [arch[f"{label}/op_{node}_{n}"] for n in range(2) if arch[f"{label}/input_{node}_{n}"] == [j]]
    return ops[0] if ops else None


def _keep_only(search, names, edge=None):
    """Prune every edge (or only ``edge``: label, node, input) to the ops ``names``, as P-DARTS' masks do."""
    for cell in search.mixed_cells():
        keep = torch.tensor([name in names for name in cell.op_names])
        for node in cell.node_indices:
            mask = keep.expand(node, -1).clone()
            if edge is not None:
                if (cell.label, node) != edge[:2]:
                    continue
                mask = cell.op_mask(node).clone()
                mask[edge[2]] = keep
            cell.set_op_mask(node, mask)


def _normal_cells(search):
    return [cell for cell in search.mixed_cells() if cell.label == "normal"]


def test_perturbation_avoids_a_harmful_op_that_magnitude_picks():
    torch.set_num_threads(1)
    search = _search_module()
    cells = _normal_cells(search)
    harmful = cells[0].op_names.index(HARMFUL_OP)
    pos, j = 0, 1  # node 2, input 1: node 2 keeps both its inputs under either rule
    for cell in cells:
        cell.ops[pos][j][HARMFUL_OP] = Noise()
    with torch.no_grad():  # the harmful op's weight forced highest on its edge
        for cell in cells:
            cell._arch_alpha[f"normal/2_{j}"][harmful] = 10.0
    kept = {HARMFUL_OP, "sep_conv_3x3", "skip_connect"}
    _keep_only(search, kept)
    # Labels: what the supernet predicts without the harmful op (train-mode BatchNorm, as selection measures),
    # its classifier's bias centred so that the predictions spread over the classes.
    _keep_only(search, kept - {HARMFUL_OP}, edge=("normal", 2, j))
    _, val = _loaders(n_val=32)
    with torch.no_grad():
        x = torch.cat([xb for xb, _ in val])
        search.training_module.train()
        logits = search.training_module(x)
        search.training_module.model.classifier.bias -= logits.mean(0)
        labels = (logits - logits.mean(0)).argmax(-1)
    assert len(set(labels.tolist())) >= 5
    _keep_only(search, kept, edge=("normal", 2, j))
    trn, val = _loaders(n_val=32, labels=labels)
    assert torch.equal(torch.cat([xb for xb, _ in val]), x)

    magnitude = search.export()
    assert _op_on(magnitude, "normal", 2, 1) == HARMFUL_OP

    result = _select(search, trn, val)
    decision = next(d for d in result.record["decisions"]
                    if d["kind"] == "op" and d["cell"] == "normal" and d["node"] == 2 and d["input"] == 1)
    assert decision["choice"] != HARMFUL_OP, str(decision)
    # Without the harmful op the supernet is far more accurate than without any other op of the edge.
    without = decision["accuracy_without"]
    assert without[HARMFUL_OP] > max(v for k, v in without.items() if k != HARMFUL_OP)
    assert _op_on(result.arch, "normal", 2, 1) not in (None, HARMFUL_OP)
    assert result.record["magnitude_arch"] == magnitude
    # A whole DARTS cell: every node two inputs, each with one op; every edge and node decided once, in order.
    for label in ("normal", "reduce"):
        for node in range(2, 6):
            inputs = [result.arch[f"{label}/input_{node}_{n}"][0] for n in range(2)]
            assert len(set(inputs)) == 2 and all(0 <= i < node for i in inputs)
    kinds = [(d["cell"], d["kind"]) for d in result.record["decisions"]]
    assert kinds.count(("normal", "op")) == 14 and kinds.count(("reduce", "input")) == 3
    assert [d["order"] for d in result.record["decisions"]] == list(range(len(kinds)))
    assert kinds.index(("normal", "input")) > max(i for i, k in enumerate(kinds) if k[1] == "op")


def test_presets_whose_mixing_cannot_lose_an_op_are_refused_by_name():
    trn, val = _loaders()
    with pytest.raises(SelectionUnsupportedError) as info:
        _select(_search_module("gdas"), trn, val, preset="gdas")
    assert info.value.preset == "gdas" and "gdas" in str(info.value)


class _Interrupt(Exception):
    pass


class _StopsAfter:
    """A loader that raises after ``n`` batches in all: a selection cut short mid-way."""

    def __init__(self, loader, n):
        self.loader, self.left = loader, n

    def __iter__(self):
        return self._batches(iter(self.loader))  # the loader's iterator made now, as iter(loader) does

    def _batches(self, batches):
        for batch in batches:
            if self.left == 0:
                raise _Interrupt
            self.left -= 1
            yield batch


def test_a_resumed_selection_equals_an_uninterrupted_one(tmp_path):
    torch.set_num_threads(1)
    kwargs = {"tune_epochs": 1}

    def run(state, val_wrapper=None):
        search = _search_module(seed=1)
        _keep_only(search, {"sep_conv_3x3", "skip_connect"})
        torch.manual_seed(5)
        trn, val = _loaders(n_train=2 * BATCH, n_val=BATCH, shuffle=True, seed=2)
        return search, _select(search, trn, val if val_wrapper is None else val_wrapper(val), state_path=state,
                               **kwargs)

    search_a, whole = run(tmp_path / "a.pt")
    state = tmp_path / "b.pt"
    with pytest.raises(_Interrupt):
        run(state, lambda val: _StopsAfter(val, 40))  # after some decisions
    assert state.exists()
    partial = torch.load(state, weights_only=True)
    assert 0 < partial["done"] < len(whole.record["decisions"])
    search_b, resumed = run(state)
    drop = {"selection_seconds"}
    for a, b in zip(whole.record["decisions"], resumed.record["decisions"], strict=True):
        assert a == b, f"{partial['done']} {a} {b}"
    assert {k: v for k, v in resumed.record.items() if k not in drop} == \
        {k: v for k, v in whole.record.items() if k not in drop}
    assert resumed.arch == whole.arch
    for (name, a), b in zip(search_a.state_dict().items(), search_b.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)

    with pytest.raises(CheckpointError):
        kwargs["tune_epochs"] = 2
        run(state)


def _ddp_worker(rank: int, port: int, out: str) -> None:  # pragma: no cover - spawned
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    search = _search_module(seed=1)  # the same supernet on both ranks
    _keep_only(search, {"sep_conv_3x3", "skip_connect"})
    trn, val = _loaders(n_train=BATCH, n_val=BATCH, seed=10 + rank)  # each rank its own shard
    result = _select(search, trn, val, tune_epochs=1)
    params = {n: p.detach().clone() for n, p in search.named_parameters()}
    torch.save({"decisions": result.record["decisions"], "arch": result.arch, "params": params},
               f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.e2e
@pytest.mark.xdist_group("ddp")  # never beside another 2-process launch (see test_distributed.py)
def test_under_ddp_every_rank_makes_the_same_decisions(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(2)]
    assert got[0]["decisions"] == got[1]["decisions"] and got[0]["arch"] == got[1]["arch"]
    accuracies = [v for d in got[0]["decisions"] if d["kind"] == "op" for v in d["accuracy_without"].values()]
    assert any(round(v * 2 * BATCH) % 2 for v in accuracies), "accuracies are over both shards (2 x BATCH samples)"
    for name, p in got[0]["params"].items():  # fine-tuned with averaged gradients: the same weights everywhere
        torch.testing.assert_close(p, got[1]["params"][name], msg=name)


@pytest.mark.parametrize("preset", ["drnas", "fair-darts", "pc-darts", "darts-minus"])
def test_every_soft_mixing_preset_gives_a_whole_cell(preset):
    torch.set_num_threads(1)
    search = _search_module(preset)
    search.set_progress(0, 2)  # the schedules of a running search (DARTS-' auxiliary skip weight)
    _keep_only(search, {"sep_conv_3x3", "skip_connect"})
    trn, val = _loaders(n_train=BATCH, n_val=BATCH)
    result = _select(search, trn, val, preset=preset, tune_epochs=1)
    for label in ("normal", "reduce"):
        for node in range(2, 6):
            inputs = sorted(result.arch[f"{label}/input_{node}_{n}"][0] for n in range(2))
            assert len(set(inputs)) == 2
            assert all(result.arch[f"{label}/op_{node}_{n}"] in {"sep_conv_3x3", "skip_connect"} for n in range(2))
    assert all(set(d["accuracy_without"]) == {"sep_conv_3x3", "skip_connect"}
               for d in result.record["decisions"] if d["kind"] == "op")
