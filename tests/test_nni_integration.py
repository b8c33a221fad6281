"""NNI integration: the strategy presets serialise, multi-trial NAS runs with our evaluator and resumes.

The evaluator factories are tested in test_evaluator.py, the trial parameters and reports in test_nni_trial.py.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from nni_helpers import CELLS, QUIET, WIDTH, digits_loaders

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.arch import normalize_arch
from nni_darts_ext.evaluator import darts_evaluator
from nni_darts_ext.search import darts_strategy, list_strategies

with import_nni_quietly():
    import nni
    import nni.trial


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two torch threads on two busy, shared cores made a training step of these tiny nets ~8x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def private_manifest(nni_experiment_dir, monkeypatch):
    """``nni_experiment_dir``, with NNI's experiment manifest really in it.

    ``nni.tools.nnictl.config_utils.Experiments(home_dir=NNI_HOME_DIR)`` binds ``~/nni-experiments`` when NNI is
    first imported, before any fixture changes HOME, so redirecting HOME alone leaves the manifest in the real home.
    """
    from nni.tools.nnictl import config_utils

    monkeypatch.setattr(config_utils.Experiments.__init__, "__defaults__", (str(nni_experiment_dir),))
    return nni_experiment_dir


@pytest.mark.parametrize("name", list_strategies())
def test_strategy_presets_dump_and_load(name):
    strategy = darts_strategy(name)
    restored = nni.load(nni.dump(strategy))
    assert type(restored) is type(strategy)
    assert nni.dump(restored) == nni.dump(strategy)


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

    train_loader, val_loader = digits_loaders()
    evaluator = darts_evaluator(train_loader, val_loader, max_epochs=1, limit_train_batches=2,
                                limit_val_batches=2, num_sanity_val_steps=0, **QUIET)
    space = DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar")
    config = NasExperimentConfig("sequential", "simplified", max_trial_number=max_trials)
    config.experiment_working_directory = str(experiment_dir)
    return NasExperiment(space, evaluator, Random(dedup=True, seed=0), config=config, id=experiment_id)


@pytest.mark.e2e
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
