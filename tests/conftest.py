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


class SubprocessInUnitTestError(RuntimeError):
    """A test without ``@pytest.mark.e2e`` tried to start a process."""


# Programs a unit test may start: graphviz's renderer (cell plots) and fontconfig's fc-list (matplotlib builds its
# font cache with it in a fresh HOME). Python, shells and the CLIs are e2e only.
UNIT_TEST_PROGRAMS = frozenset({"dot", "fc-list"})


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
    """Unit tests (no ``e2e`` marker) start no process: ``pytest -m "not e2e"`` stays fast and starts no training.

    In a test without the marker, ``subprocess.Popen`` (hence ``subprocess.run``) of anything but graphviz's
    ``dot`` (and ``fc-list``) and every ``multiprocessing`` process start (hence ``torch.multiprocessing.spawn``, DataLoader workers)
    raise :class:`SubprocessInUnitTestError`.
    """
    if request.node.get_closest_marker("e2e") is not None:
        return
    import multiprocessing.process
    import subprocess

    popen = subprocess.Popen
    nodeid = request.node.nodeid

    def refuse(what):
        raise SubprocessInUnitTestError(
            f"{nodeid} starts {what}: mark it @pytest.mark.e2e (unit tests run in-process only)")

    class GuardedPopen(popen):
        def __init__(self, args, *rest, **kwargs):
            program = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
            if kwargs.get("shell") or os.path.basename(os.fsdecode(program)) not in UNIT_TEST_PROGRAMS:
                refuse(f"a process ({os.fsdecode(program)})")
            super().__init__(args, *rest, **kwargs)

    def refuse_start(process):
        refuse(f"a multiprocessing process ({process!r})")

    monkeypatch.setattr(subprocess, "Popen", GuardedPopen)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse_start)


def pytest_collection_modifyitems(config, items):
    """A ``slow`` test (torch.compile: inductor runs the C++ compiler in subprocesses, minutes each) is end-to-end
    too, so ``-m "not e2e"`` (which replaces the default ``-m 'not slow'``) leaves it out as well."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def nni_home(tmp_path_factory):
    """NNI's experiment manifest (~/nni-experiments/.experiment) of in-process searches in a temporary folder."""
    import functools

    from nni_darts_ext._compat import import_nni_quietly

    with import_nni_quietly():
        from nni.nas.experiment import experiment as nni_experiment

    home = tmp_path_factory.mktemp("nni-experiments")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nni_experiment, "Experiments", functools.partial(nni_experiment.Experiments, home_dir=str(home)))
        yield home
