"""NNI integration: serialisation, multi-trial NAS with our evaluator, trial parameters and reports."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import pytorch_lightning as pl
import torch

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.arch import build_model, normalize_arch
from nni_darts_ext.data import digits, search_dataloaders
from nni_darts_ext.evaluator import DartsLightning, darts_evaluator
from nni_darts_ext.nni_trial import (
    NNI_PARAMETERS,
    NniReportCallback,
    apply_trial_overrides,
    is_nni_trial,
    overrides_as_set_args,
    report_final_result,
    trial_overrides,
)
from nni_darts_ext.strategies import darts_strategy, list_strategies
from nni_darts_ext.training_module import DartsClassificationModule
from nni_darts_ext.transforms import Cutout

with import_nni_quietly():
    import nni
    import nni.runtime.trial_command_channel as trial_command_channel
    import nni.trial
    from nni.nas.evaluator.pytorch import DataLoader, Lightning
    from nni.runtime.trial_command_channel import ParameterRecord, TrialCommandChannel

# Tiny sizes (docs/HELPERS.md): DARTS width 4, 3 cells, 16x16 digits, batches of 16, a few steps.
WIDTH, CELLS, IMAGE, BATCH = 4, 3, 16, 16
QUIET = dict(
    accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two torch threads on two busy, shared cores made a training step of these tiny nets ~8x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ fake NNI runtime


class _RecordingChannel(TrialCommandChannel):
    """Stands in for the channel a training service gives a trial: one parameter set in, metrics recorded."""

    def __init__(self, parameters):
        self.parameters = parameters
        self.received = 0
        self.metrics: list[tuple[str, float]] = []

    def receive_parameter(self):
        self.received += 1
        return ParameterRecord(parameter_id=0, parameters=self.parameters)

    def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002 (NNI's name)
        self.metrics.append((type, value))

    def of_type(self, kind):
        return [value for metric_type, value in self.metrics if metric_type == kind]


@pytest.fixture
def nni_runtime(monkeypatch):
    """Make this process look like an NNI trial; returns a factory ``(parameters) -> _RecordingChannel``."""

    def start(parameters):
        channel = _RecordingChannel(parameters)
        monkeypatch.setattr(trial_command_channel, "_channel", channel)
        return channel

    # nni.trial keeps the received parameters in module globals: restore them after the test.
    monkeypatch.setattr(nni.trial, "_params", None)
    monkeypatch.setattr(nni.trial, "_intermediate_seq", 0)
    monkeypatch.delenv("NNI_PLATFORM", raising=False)
    return start


@pytest.fixture
def private_manifest(nni_experiment_dir, monkeypatch):
    """``nni_experiment_dir``, with NNI's experiment manifest really in it.

    ``nni.tools.nnictl.config_utils.Experiments(home_dir=NNI_HOME_DIR)`` binds ``~/nni-experiments`` when NNI is
    first imported, before any fixture changes HOME, so redirecting HOME alone leaves the manifest in the real home.
    """
    from nni.tools.nnictl import config_utils

    monkeypatch.setattr(config_utils.Experiments.__init__, "__defaults__", (str(nni_experiment_dir),))
    return nni_experiment_dir


# ------------------------------------------------------------------------------------------------------- helpers


def _digits_loaders(seed=0, cutout=None, batch_size=BATCH):
    train_set = digits(train=True, image_size=IMAGE, transform=Cutout(cutout) if cutout else None)
    return search_dataloaders(train_set, batch_size=batch_size, seed=seed)


def _test_loader():
    return DataLoader(dataset=digits(train=False, image_size=IMAGE), batch_size=BATCH)


def _tiny_net(arch, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(arch, width=WIDTH, num_cells=CELLS, image_size=IMAGE, **kwargs)


def _params_after_one_step(evaluator, arch):
    """Train a fresh seeded net for exactly one step with ``evaluator``; return its weights."""
    net = _tiny_net(arch)
    torch.manual_seed(123)  # loader shuffling and Cutout draw from the global RNG
    evaluator.evaluate(net)
    return [p.detach().clone() for p in net.parameters()]


# --------------------------------------------------------------------------------------------------- serialising


def test_evaluator_with_cutout_round_trips_and_trains_identically(darts_v2_arch):
    train_loader, val_loader = _digits_loaders(cutout=4)
    kwargs = dict(max_epochs=1, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0, learning_rate=0.1, **QUIET)
    evaluator = darts_evaluator(train_loader, val_loader, **kwargs)
    assert isinstance(evaluator, Lightning)

    dumped = nni.dump(evaluator)
    assert "nni_darts_ext.data.DigitsDataset" in dumped and "nni_darts_ext.transforms.Cutout" in dumped
    restored = nni.load(dumped)
    assert isinstance(restored, DartsLightning) and isinstance(restored.module, DartsClassificationModule)
    transform = restored.train_dataloaders.dataset.dataset.transform
    assert isinstance(transform, Cutout) and transform.length == 4
    assert nni.dump(restored) == dumped

    before = [p.detach().clone() for p in _tiny_net(darts_v2_arch).parameters()]
    original = _params_after_one_step(evaluator, darts_v2_arch)
    reloaded = _params_after_one_step(restored, darts_v2_arch)
    assert any(not torch.equal(a, b) for a, b in zip(before, original))  # the step did train
    assert all(torch.equal(a, b) for a, b in zip(original, reloaded))


@pytest.mark.parametrize("name", list_strategies())
def test_strategy_presets_dump_and_load(name):
    strategy = darts_strategy(name)
    restored = nni.load(nni.dump(strategy))
    assert type(restored) is type(strategy)
    assert nni.dump(restored) == nni.dump(strategy)


def test_evaluator_can_evaluate_twice(darts_v2_arch):
    """NNI's sequential engine reuses one evaluator: the second model must train too (a Trainer fits once)."""
    train_loader, val_loader = _digits_loaders()
    evaluator = darts_evaluator(train_loader, val_loader, max_epochs=1, max_steps=1, limit_val_batches=1,
                                num_sanity_val_steps=0, **QUIET)
    first_trainer = evaluator.trainer
    for seed in (0, 1):
        evaluator.evaluate(_tiny_net(darts_v2_arch, seed=seed))
        assert evaluator.trainer.global_step == 1
    assert evaluator.trainer is not first_trainer


# ---------------------------------------------------------------------------------------------- multi-trial NAS


@contextlib.contextmanager
def _nni_checkpoint_globals():
    """Let ``torch.load(weights_only=True)`` (the default since torch 2.6) read NNI 3.0's experiment checkpoint.

    NNI saves strategy state with ``torch.save`` and resumes with a plain ``torch.load``
    (``nni/nas/utils/serializer.py``): the Random strategy's numpy RNG state and its dedup history need these.
    """
    import numpy as np
    from nni.mutable.utils import label

    with torch.serialization.safe_globals([
        np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), frozenset, label,
    ]):
        yield


def _multi_trial_experiment(experiment_dir, max_trials, experiment_id=None):
    with import_nni_quietly():
        from nni.nas.experiment import NasExperiment, NasExperimentConfig
        from nni.nas.hub.pytorch import DARTS as DartsSpace
        from nni.nas.strategy import Random

    train_loader, val_loader = _digits_loaders()
    evaluator = darts_evaluator(train_loader, val_loader, max_epochs=1, limit_train_batches=2,
                                limit_val_batches=2, num_sanity_val_steps=0, **QUIET)
    space = DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar")
    config = NasExperimentConfig("sequential", "simplified", max_trial_number=max_trials)
    config.experiment_working_directory = str(experiment_dir)
    return NasExperiment(space, evaluator, Random(dedup=True, seed=0), config=config, id=experiment_id)


def test_multi_trial_random_search_with_sequential_engine_and_resume(private_manifest):
    nni_experiment_dir = private_manifest
    torch.manual_seed(0)
    experiment = _multi_trial_experiment(nni_experiment_dir, max_trials=2)
    try:
        experiment.run()
    finally:
        experiment.stop()  # run() leaves that to atexit; stop() saves the checkpoint and marks the manifest

    models = list(experiment.strategy.list_models(limit=5))
    assert len(models) == 2
    assert all(str(m.status) == "ModelStatus.Trained" for m in models)
    assert all(isinstance(m.metric, float) and 0.0 <= m.metric <= 1.0 for m in models)
    [best] = experiment.export_top_models(top_k=1, formatter="dict")
    assert normalize_arch(best) == normalize_arch(models[0].sample)
    assert (nni_experiment_dir / experiment.id / "checkpoint" / "state.ckpt.torch").is_file()
    manifest = json.loads((nni_experiment_dir / ".experiment").read_text())  # the manifest stayed in tmp_path
    assert manifest[experiment.id]["status"] == "STOPPED"

    # Resume the stopped experiment with a budget of 3: one more model, not one of the first two (dedup restored).
    resumed = _multi_trial_experiment(nni_experiment_dir, max_trials=3, experiment_id=experiment.id)
    assert resumed.has_checkpoint()
    try:
        with _nni_checkpoint_globals():
            resumed.resume()
    finally:
        resumed.stop()
    [third] = list(resumed.strategy.list_models())  # NNI's sequential engine does not restore the model history
    assert str(third.status) == "ModelStatus.Trained" and isinstance(third.metric, float)
    assert normalize_arch(third.sample) not in [normalize_arch(m.sample) for m in models]
    assert resumed._engine.state_dict()["model_count"] == 3


# --------------------------------------------------------------------------------------------- trial parameters


def test_trial_overrides_maps_and_validates():
    parameters = {
        "learning_rate": 0.05, "weight_decay": 3e-4, "drop_path_prob": 0.2, "cutout": 8.0,
        "auxiliary_weight": 0.4, "epochs": 3,
    }
    overrides = trial_overrides(parameters)
    assert overrides == {
        "retrain.learning_rate": 0.05, "retrain.weight_decay": 3e-4, "retrain.drop_path_prob": 0.2,
        "retrain.cutout": 8, "retrain.auxiliary_weight": 0.4, "retrain.epochs": 3,
    }
    assert type(overrides["retrain.cutout"]) is int
    assert set(NNI_PARAMETERS) == set(parameters)
    assert overrides_as_set_args({"retrain.epochs": 3, "retrain.learning_rate": 0.05}) == [
        "retrain.epochs=3", "retrain.learning_rate=0.05"
    ]
    assert trial_overrides({}) == {}


@pytest.mark.parametrize(
    "parameters, error, message",
    [
        ({"lr": 0.1}, ValueError, "unknown NNI parameter.*'lr'.*learning_rate"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate.*> 0"),
        ({"learning_rate": "0.1"}, TypeError, "learning_rate"),
        ({"weight_decay": -1e-4}, ValueError, "weight_decay"),
        ({"drop_path_prob": 1.0}, ValueError, "drop_path_prob"),
        ({"epochs": 2.5}, TypeError, "epochs"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"cutout": True}, TypeError, "cutout"),
        ({"auxiliary_weight": math.nan}, ValueError, "auxiliary_weight"),
        (["learning_rate"], TypeError, "dict"),
    ],
)
def test_trial_overrides_rejects_bad_parameters(parameters, error, message):
    with pytest.raises(error, match=message):
        trial_overrides(parameters)


def test_trial_overrides_asks_nni_once(nni_runtime):
    assert not is_nni_trial()
    channel = nni_runtime({"learning_rate": 0.01, "epochs": 2})
    assert trial_overrides() == {"retrain.learning_rate": 0.01, "retrain.epochs": 2}
    assert is_nni_trial()
    assert trial_overrides() == {"retrain.learning_rate": 0.01, "retrain.epochs": 2}
    assert channel.received == 1


def test_is_nni_trial_reads_the_platform(monkeypatch):
    monkeypatch.setattr(nni.trial, "_params", None)
    monkeypatch.setenv("NNI_PLATFORM", "local")
    assert is_nni_trial()
    monkeypatch.setenv("NNI_PLATFORM", "unittest")
    assert not is_nni_trial()


# ------------------------------------------------------------------------------------------------------- reports


def _tiny_retrain(arch, callbacks, epochs=2):
    module = DartsClassificationModule(max_epochs=epochs, learning_rate=0.05)
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=2, limit_test_batches=2,
                         num_sanity_val_steps=1, callbacks=callbacks, **QUIET)
    train_loader, val_loader = _digits_loaders(batch_size=8)
    module.set_model(_tiny_net(arch))
    trainer.fit(module, train_loader, val_loader)
    return module, trainer


def test_retrain_trial_reports_val_acc_per_epoch_and_test_acc_once(nni_runtime, darts_v2_arch):
    channel = nni_runtime({"learning_rate": 0.05})
    trial_overrides()
    val_accs = []

    class _ValAcc(pl.Callback):
        def on_validation_epoch_end(self, trainer, module):
            if not trainer.sanity_checking:
                val_accs.append(trainer.callback_metrics["val_acc"].item())

    module, trainer = _tiny_retrain(darts_v2_arch, [NniReportCallback(), _ValAcc()])
    assert module.report_to_nni  # restored after fit
    [test_metrics] = trainer.test(module, _test_loader(), verbose=False)
    assert channel.of_type("FINAL") == []
    assert report_final_result(test_metrics)
    assert channel.of_type("PERIODICAL") == pytest.approx(val_accs) and len(val_accs) == 2
    assert channel.of_type("FINAL") == [pytest.approx(test_metrics["test_acc"])]


def test_without_the_callback_the_module_reports_like_nni(nni_runtime, darts_v2_arch):
    """Multi-trial NAS relies on NNI's own reports: val_acc per epoch, and the last val_acc as the final result."""
    channel = nni_runtime({})
    nni.get_next_parameter()
    _tiny_retrain(darts_v2_arch, [])
    periodical = channel.of_type("PERIODICAL")
    assert len(periodical) == 2
    assert channel.of_type("FINAL") == [pytest.approx(periodical[-1])]


def test_outside_nni_nothing_is_reported(nni_runtime, darts_v2_arch):
    channel = nni_runtime({"learning_rate": 0.1})  # a channel, but no parameters received: not a trial
    assert not report_final_result({"test_acc": 0.5})
    _tiny_retrain(darts_v2_arch, [NniReportCallback()], epochs=1)
    assert channel.metrics == [] and channel.received == 0


def test_callback_warns_when_a_trial_fit_has_no_validation(nni_runtime, darts_v2_arch, caplog):
    channel = nni_runtime({})
    nni.get_next_parameter()
    module = DartsClassificationModule(max_epochs=1)
    module.set_model(_tiny_net(darts_v2_arch))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, callbacks=[NniReportCallback()], **QUIET)
    train_loader, _ = _digits_loaders(batch_size=8)
    with caplog.at_level("WARNING", logger="nni_darts_ext.callbacks.nni_report"):
        trainer.fit(module, train_loader)
    assert "no val_acc reported to NNI" in caplog.text
    assert channel.metrics == []  # and the module's own end-of-fit report stayed off


def test_report_final_result_argument_checks():
    with pytest.raises(KeyError):
        report_final_result({"val_acc": 0.5})
    with pytest.raises(ValueError, match="finite"):
        report_final_result(float("nan"))
    with pytest.raises(TypeError, match="monitor"):
        NniReportCallback(monitor="")


def test_apply_trial_overrides_goes_through_the_recipe_checks():
    from nni_darts_ext.recipes import RecipeError, load_recipe

    recipe = load_recipe("demo")
    tuned = apply_trial_overrides(recipe, {"learning_rate": 0.1, "cutout": 0, "epochs": 3.0, "drop_path_prob": 0.1})
    r = tuned.retrain
    assert (r.learning_rate, r.cutout, r.epochs, r.drop_path_prob) == (0.1, None, 3, 0.1)
    assert apply_trial_overrides(recipe, {}) is recipe
    size = recipe.image_size  # the demo recipe's own image size (tuned; not fixed by this test)
    with pytest.raises(RecipeError, match=rf"retrain.cutout.*{size}x{size}.*NNI parameter cutout"):
        apply_trial_overrides(recipe, {"cutout": size + 4})
    with pytest.raises(RecipeError, match=r"NNI parameters: unknown NNI parameter.*'lr'"):
        apply_trial_overrides(recipe, {"lr": 0.1})
    with pytest.raises(RecipeError, match=r"NNI parameters: .*'epochs' must be an integer"):
        apply_trial_overrides(recipe, {"epochs": 2.5})


# ----------------------------------------------------------------------------------------------- from a recipe


def test_darts_evaluator_from_a_recipe_name():
    evaluator = darts_evaluator("demo", **QUIET)
    from nni_darts_ext.recipes import load_recipe

    r = load_recipe("demo").retrain
    assert isinstance(evaluator, DartsLightning)
    module, trainer = evaluator.module, evaluator.trainer
    assert module.hparams.learning_rate == r.learning_rate and module.max_epochs == r.epochs == trainer.max_epochs
    assert module.auxiliary_loss_weight == r.auxiliary_weight and module.drop_path_prob == r.drop_path_prob
    assert trainer.gradient_clip_val == r.gradient_clip
    assert evaluator.train_dataloaders.batch_size == r.batch_size
    assert len(evaluator.train_dataloaders.dataset) == 1437 and len(evaluator.val_dataloaders.dataset) == 360
    restored = nni.load(nni.dump(evaluator))
    assert len(restored.val_dataloaders.dataset) == 360 and restored.module.max_epochs == r.epochs


def test_darts_evaluator_from_a_recipe_with_held_out_validation(darts_v2_arch):
    from nni_darts_ext.recipes import load_recipe

    recipe = load_recipe("demo", ["retrain.cutout=4", "dataset.max_samples=100", "retrain.batch_size=16"])
    evaluator = darts_evaluator(recipe, validation=0.2, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                                num_sanity_val_steps=0, **QUIET)
    train_set, val_set = evaluator.train_dataloaders.dataset, evaluator.val_dataloaders.dataset
    assert (len(train_set), len(val_set)) == (80, 20)
    assert set(train_set.indices).isdisjoint(val_set.indices)
    assert isinstance(train_set.dataset.dataset.transform, Cutout) and val_set.dataset.dataset.transform is None
    evaluator.evaluate(_tiny_net(darts_v2_arch))
    assert evaluator.trainer.global_step == 1 and "val_acc" in evaluator.trainer.callback_metrics


def test_darts_evaluator_argument_errors():
    from nni_darts_ext.recipes import RecipeError

    with pytest.raises(ValueError, match="validation"):
        darts_evaluator("demo", validation=1.5)
    with pytest.raises(TypeError, match="validation"):
        darts_evaluator(validation=0.1)
    with pytest.raises(TypeError, match="val_dataloaders"):
        darts_evaluator("demo", val_dataloaders=[])
    with pytest.raises(RecipeError, match="unknown recipe"):
        darts_evaluator("no-such-recipe")
