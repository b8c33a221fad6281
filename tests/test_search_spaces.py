"""Every preset that needs no DARTS cells runs on every kind of NNI model space, through NNI's strategy protocol.

``strategy(RawFormatModelSpace(model, evaluator), SequentialExecutionEngine())``, one model from ``list_models()``,
``state_dict()['ckpt_path']`` set, and resume: ``state_dict()`` -> fresh strategy, ``initialize``,
``load_state_dict``, ``run()`` with ``max_epochs + 1``. Spaces: LayerChoice, InputChoice, ``nni.choice`` in
``MutableLinear``, ``Repeat``, ``Cell`` (op candidates, not factories), with and without BatchNorm.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.search import darts_strategy

with import_nni_quietly():
    import nni
    from nni.nas.evaluator.pytorch import ClassificationModule, DataLoader, Lightning, Trainer
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.nn.pytorch import Cell, InputChoice, LayerChoice, ModelSpace, MutableLinear, Repeat
    from nni.nas.space import RawFormatModelSpace
    from nni.nas.strategy import DARTS
    from pytorch_lightning.callbacks import ModelCheckpoint

FEATURES, CLASSES, BATCH, BATCHES = 6, 3, 8, 2
PRESETS_ON_ANY_SPACE = ["first-order", "second-order"]


class LayerChoiceSpace(ModelSpace):
    """Linear -> BatchNorm -> LayerChoice -> head (buffers: BatchNorm statistics)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(FEATURES, 8)
        self.bn = nn.BatchNorm1d(8)
        self.op = LayerChoice([nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Identity()], label="op")
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.head(torch.relu(self.op(self.bn(self.fc(x)))))


class MixedKindsSpace(ModelSpace):
    """LayerChoice between two layers, InputChoice and an ``nni.choice`` hidden size; no BatchNorm, no buffers."""

    def __init__(self):
        super().__init__()
        hidden = nni.choice("hidden", [4, 8])
        self.fc1 = MutableLinear(FEATURES, hidden)
        self.op = LayerChoice([nn.Tanh(), nn.ReLU(), nn.Sigmoid()], label="act")
        self.fc2 = MutableLinear(hidden, 8)
        self.skip = nn.Linear(FEATURES, 8)
        self.pick = InputChoice(2, 1, label="pick")
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.head(self.pick([self.fc2(self.op(self.fc1(x))), self.skip(x)]))


class RepeatSpace(ModelSpace):
    """``Repeat`` of a block 1-3 times (a differentiable depth)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(FEATURES, 8)
        self.blocks = Repeat(lambda index: nn.Sequential(nn.Linear(8, 8), nn.Tanh()), (1, 3), label="depth")
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.head(self.blocks(self.fc(x)))


class CellSpace(ModelSpace):
    """An NNI ``Cell`` from op candidates (not factories): NNI's own differentiable cell handles it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(FEATURES, 8)
        self.cell = Cell([nn.Linear(8, 8), nn.Tanh()], num_nodes=2, num_ops_per_node=1, num_predecessors=1,
                         merge_op="all", label="cell")
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.head(self.cell(self.fc(x)))


SPACES = [LayerChoiceSpace, MixedKindsSpace, RepeatSpace, CellSpace]


class UniformSpace(ModelSpace):
    """A continuous ``nni.uniform`` value: no differentiable strategy can search it."""

    def __init__(self):
        super().__init__()
        self.scale = self.add_mutable(nni.uniform("scale", 0.0, 1.0))
        self.op = LayerChoice([nn.Linear(FEATURES, CLASSES), nn.Linear(FEATURES, CLASSES)], label="op")

    def forward(self, x):
        return self.op(x)


def _loader(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH * BATCHES, FEATURES, generator=gen)
    y = torch.randint(0, CLASSES, (BATCH * BATCHES,), generator=gen)
    return DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


def _evaluator(tmp_path, max_epochs):
    trainer = Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path),
                      callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)])
    module = ClassificationModule(learning_rate=0.05, num_classes=CLASSES, export_onnx=False)
    return Lightning(module, trainer, train_dataloaders=_loader(0), val_dataloaders=_loader(1))


def _search(space_cls, strategy, tmp_path, max_epochs=1):
    torch.manual_seed(0)
    model_space = RawFormatModelSpace(space_cls(), _evaluator(tmp_path, max_epochs))
    strategy(model_space, SequentialExecutionEngine())
    return strategy


@pytest.mark.parametrize("space_cls", SPACES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("preset", PRESETS_ON_ANY_SPACE)
def test_preset_searches_exports_and_resumes_on_any_space(space_cls, preset, tmp_path):
    strategy = _search(space_cls, darts_strategy(preset), tmp_path)
    models = list(strategy.list_models())
    assert len(models) == 1
    sample = models[0].sample
    assert sample and set(sample) == set(space_cls().simplify())
    state = strategy.state_dict()
    assert state["ckpt_path"].endswith("last.ckpt")

    # Resume one more epoch from the checkpoint in a fresh strategy.
    arch_before = {n: p.detach().clone() for n, p in strategy.oneshot_module.named_arch_parameters()}
    resumed = darts_strategy(preset)
    torch.manual_seed(0)
    resumed.initialize(RawFormatModelSpace(space_cls(), _evaluator(tmp_path, 2)), SequentialExecutionEngine())
    resumed.load_state_dict(state)
    resumed.run()
    module = resumed.oneshot_module
    assert module.trainer.current_epoch == 2
    after = dict(module.named_arch_parameters())
    assert list(after) == list(arch_before)  # the same names, in the same order
    assert any(not torch.equal(after[n].detach(), a) for n, a in arch_before.items())  # it searched on
    # The architecture optimizer's state followed each parameter by name: step count 2 epochs x BATCHES.
    optimizer = module.architecture_optimizers().optimizer
    for name, p in module.named_arch_parameters():
        assert optimizer.state[p]["exp_avg"].shape == p.shape, name
        assert int(optimizer.state[p]["step"]) == 2 * BATCHES, name


def test_resume_gives_every_alpha_its_own_adam_moments(tmp_path):
    """Alphas of equal shape must not trade Adam moments after resume (NNI's arch_parameters() is a set)."""
    strategy = _search(LayerChoiceSpace, darts_strategy("first-order"), tmp_path)
    ckpt = torch.load(strategy.state_dict()["ckpt_path"], weights_only=False)
    module = strategy.oneshot_module
    saved = ckpt["optimizer_states"][-1]  # the architecture Adam comes last
    names = [n for n, _ in module.named_arch_parameters()]
    for index, (name, p) in enumerate(module.named_arch_parameters()):
        torch.testing.assert_close(saved["state"][index]["exp_avg"],
                                   module.architecture_optimizers().optimizer.state[p]["exp_avg"], msg=name)
    assert len(names) == len(saved["param_groups"][0]["params"])


@pytest.mark.parametrize("preset", PRESETS_ON_ANY_SPACE + ["pc-darts"])
def test_non_categorical_values_are_refused_as_nni_refuses_them(preset, tmp_path):
    with pytest.raises(TypeError, match="only support categorical") as ours:
        _search(UniformSpace, darts_strategy(preset), tmp_path)
    with pytest.raises(TypeError) as stock:
        _search(UniformSpace, DARTS(), tmp_path)
    assert str(ours.value) == str(stock.value)


@pytest.mark.parametrize("option", [{"partial_channels": 4}, {"edge_normalization": True}])
def test_cell_options_on_a_space_without_darts_cells_stop_with_one_line(option, tmp_path):
    with pytest.raises(ValueError, match="DARTS-style cells") as error:
        _search(LayerChoiceSpace, darts_strategy("first-order", **option), tmp_path)
    assert "\n" not in str(error.value) and error.value.argument == next(iter(option))
    with pytest.raises(ValueError, match="DARTS-style cells"):
        _search(MixedKindsSpace, darts_strategy("pc-darts"), tmp_path)
