"""Shared fixtures: tiny sizes only (see CONTRIBUTING.md)."""

from __future__ import annotations

import os
import shutil
import tempfile

# Before anything imports NNI (it fixes ~/nni-experiments at import): a private home for the whole session, so
# neither in-process runs nor the CLI subprocesses write to the user's ~/nni-experiments manifest or caches.
_SESSION_HOME = tempfile.mkdtemp(prefix="nni-darts-ext-tests-home-")
os.environ["HOME"] = _SESSION_HOME
# Tiny nets are dominated by per-op overhead; with two OpenMP threads on two busy cores torch spin-waits and a step
# runs several times slower. One thread per process, subprocesses included.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)

# The NNI darts-v2 cell (nni/nas/hub/pytorch/nasnet.py DARTS.load_searched_model), NNI 3.0 export form.
DARTS_V2_NNI = {
    "normal/op_2_0": "sep_conv_3x3", "normal/input_2_0": [0],
    "normal/op_2_1": "sep_conv_3x3", "normal/input_2_1": [1],
    "normal/op_3_0": "sep_conv_3x3", "normal/input_3_0": [0],
    "normal/op_3_1": "sep_conv_3x3", "normal/input_3_1": [1],
    "normal/op_4_0": "sep_conv_3x3", "normal/input_4_0": [1],
    "normal/op_4_1": "skip_connect", "normal/input_4_1": [0],
    "normal/op_5_0": "skip_connect", "normal/input_5_0": [0],
    "normal/op_5_1": "dil_conv_3x3", "normal/input_5_1": [2],
    "reduce/op_2_0": "max_pool_3x3", "reduce/input_2_0": [0],
    "reduce/op_2_1": "max_pool_3x3", "reduce/input_2_1": [1],
    "reduce/op_3_0": "skip_connect", "reduce/input_3_0": [2],
    "reduce/op_3_1": "max_pool_3x3", "reduce/input_3_1": [1],
    "reduce/op_4_0": "max_pool_3x3", "reduce/input_4_0": [0],
    "reduce/op_4_1": "skip_connect", "reduce/input_4_1": [2],
    "reduce/op_5_0": "skip_connect", "reduce/input_5_0": [2],
    "reduce/op_5_1": "max_pool_3x3", "reduce/input_5_1": [1],
}


@pytest.fixture
def darts_v2_arch() -> dict:
    """A copy of NNI's darts-v2 arch dict (inputs as one-element lists)."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in DARTS_V2_NNI.items()}


@pytest.fixture
def nni_experiment_dir(tmp_path, monkeypatch):
    """A private home folder, so NNI's experiments and its ~/nni-experiments/.experiment manifest land in tmp_path.

    Point ``experiment.config.experiment_working_directory`` at the returned folder as well.
    """
    from nni.tools.nnictl import config_utils

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NNI_HOME", str(home / ".nni"))
    # NNI computed its manifest folder when first imported; point the manifest class at this test's home.
    monkeypatch.setattr(config_utils.Experiments.__init__, "__defaults__", (str(home / "nni-experiments"),))
    return home / "nni-experiments"
