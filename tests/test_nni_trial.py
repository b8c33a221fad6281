"""NNI trial integration of the retrain: tuner parameters in, one report per epoch and one final result out."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from nni_helpers import (
    QUIET,
    digits_loaders,
    digits_test_loader,
    fake_nni_runtime,
    tiny_net,
)

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.callbacks import NniReportCallback
from nni_darts_ext.nni_trial import (
    NNI_PARAMETERS,
    apply_trial_overrides,
    is_nni_trial,
    metric_value,
    overrides_as_set_args,
    report_final_result,
    trial_overrides,
)
from nni_darts_ext.training_module import DartsClassificationModule

with import_nni_quietly():
    import nni
    import nni.trial


@pytest.fixture
def nni_runtime(monkeypatch):
    """Make this process look like an NNI trial; returns a factory ``(parameters) -> RecordingChannel``."""
    return fake_nni_runtime(monkeypatch)


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
    train_loader, val_loader = digits_loaders(batch_size=8)
    module.set_model(tiny_net(arch))
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
    [test_metrics] = trainer.test(module, digits_test_loader(), verbose=False)
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
    module.set_model(tiny_net(darts_v2_arch))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, callbacks=[NniReportCallback()], **QUIET)
    train_loader, _ = digits_loaders(batch_size=8)
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


# ---------------------------------------------------------------------------------------------------- helpers


def test_metric_value_reads_numbers_tensors_and_dicts():
    assert metric_value(0.25, "x") == 0.25
    assert metric_value({"val_acc": torch.tensor(0.5)}, "val_acc") == 0.5
    with pytest.raises(TypeError, match="'flag'"):
        metric_value(True, "flag")
    with pytest.raises(ValueError, match="finite"):
        metric_value(torch.tensor(math.nan), "val_acc")
    with pytest.raises(KeyError):
        metric_value({"val_acc": 0.5}, "test_acc")


def test_integral_floats_and_zero_cutout():
    """quniform hands over 16.0 for an int parameter; cutout 0 means no Cutout (null in the recipe)."""
    assert trial_overrides({"epochs": 16.0, "cutout": 0}) == {"retrain.epochs": 16, "retrain.cutout": None}
    assert trial_overrides({"cutout": 8.0}) == {"retrain.cutout": 8}
