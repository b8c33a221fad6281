"""Reliability of the ``nni-darts`` command: killed runs resume, outputs are atomic, bad input is exit 2.

* Faults (real processes): a search killed with SIGKILL mid-epoch resumes with ``--resume`` (weights, architecture
  weights and their optimizers, scheduler, epoch counter) and ends with as many epochs and steps as an
  uninterrupted run; a retrain survives SIGTERM (exit 143, checkpoint of the last finished step) and then SIGKILL.
* Divergence: a non-finite loss stops the run (exit 1) naming epoch and batch, keeps the last good checkpoint,
  and ``--resume --set`` continues with the changed settings.
* Atomic outputs: a failure in the middle of writing ``last.ckpt``, ``model.pt`` or ``summary.json`` leaves the
  previous file whole and no temporary file behind.
* Bad input not covered by tests/test_cli.py: one line on stderr, exit code 2, no traceback, nothing written.

Sizes: digits at 16x16, width 4, 3 cells, a few batches; one torch thread. Subprocess runs pay the import time
(several seconds each), so there are only a few of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from nni_darts_ext import checkpoint as checkpoint_module
from nni_darts_ext import io as atomic_io
from nni_darts_ext.checkpoint import read_checkpoint
from nni_darts_ext.cli import main

# e2e: runs searches, retrains or the CLI. One xdist worker: the module's killed and finished runs happen once.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_reliability")]

REPO = Path(__file__).resolve().parents[1]
THREADS = ["--threads", "1"]
# Search: 32 images split 16/16, batch 4: 4 batches (8 optimizer steps: architecture + weights) per epoch.
SEARCH_EPOCHS, SEARCH_BATCHES = 2, 4
SEARCH = ["dataset.image_size=16", "dataset.max_samples=32", "search.width=4", "search.cells=3",
          f"search.epochs={SEARCH_EPOCHS}", "search.batch_size=4"]
# Retrain: 240 images, batch 8: 30 steps per epoch (a few seconds), so a signal lands inside an epoch.
RETRAIN_EPOCHS, RETRAIN_BATCHES = 3, 30
RETRAIN = ["dataset.image_size=16", "dataset.max_samples=240", "retrain.width=4", "retrain.cells=3",
           f"retrain.epochs={RETRAIN_EPOCHS}", "retrain.batch_size=8"]
# In-process retrain for divergence and atomic writes: 64 images, batch 16, 4 steps per epoch.
SMALL = ["dataset.image_size=16", "dataset.max_samples=64", "retrain.width=4", "retrain.cells=3",
         "retrain.batch_size=16"]
WAIT_S = 300  # for a subprocess to reach a checkpoint or finish


@pytest.fixture(autouse=True)
def one_thread_and_own_signals():
    """One torch thread, and the test process's SIGINT/SIGTERM handlers back after each test."""
    threads = torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    torch.set_num_threads(threads)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the subprocess runs: this checkout, one thread, NNI's home and manifest in a temp folder."""
    home = tmp_path_factory.mktemp("home")
    environ = dict(os.environ, HOME=str(home), NNI_HOME=str(home / ".nni"), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return environ


def _command(*args):
    return [sys.executable, "-m", "nni_darts_ext", *map(str, args)]


def _start(argv, env):
    return subprocess.Popen(_command(*argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.is_file():
        if process.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {path} after {WAIT_S} s")
        time.sleep(0.05)


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(stderr: str, *, logs: bool = False) -> str:
    """The only line of ``stderr`` (with ``logs``: the only one that is not a ``[nni-darts]`` log line)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not (logs and line.startswith("[nni-darts]"))]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list:
    return [p.name for p in folder.rglob(".*.tmp")]


def _adam_steps(checkpoint: dict) -> set:
    """Step counts of the architecture optimizer (NNI's Adam, betas 0.5/0.999) in a search checkpoint."""
    for state in checkpoint["optimizer_states"]:
        if tuple(state["param_groups"][0].get("betas", ())) == (0.5, 0.999):
            return {int(s["step"]) for s in state["state"].values()}
    raise AssertionError("no architecture optimizer state")


# ---------------------------------------------------------------------------------------------------- faults

def _kill_when(path: Path, process: subprocess.Popen) -> None:
    """SIGKILL ``process`` as soon as ``path`` exists."""
    _wait_for(path, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _signal_self_when(path: Path, signum: int) -> threading.Thread:
    """From a thread: send ``signum`` to this process as soon as ``path`` exists (the handler runs in main)."""
    deadline = time.monotonic() + WAIT_S

    def watch():
        while not path.is_file() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def killed_search(tmp_path_factory, env, nni_home):
    """A tiny search (subprocess) killed with SIGKILL inside epoch 1, then resumed: (folder, checkpoint at the kill,
    exit code and stderr of the resume)."""
    out = tmp_path_factory.mktemp("killed-search") / "run"
    last = out / "checkpoints" / "last.ckpt"
    _kill_when(last, _start(["search", "--out", out, "--quiet", *THREADS, "--set", *SEARCH], env))
    at_kill = read_checkpoint(last)  # whole, though the kill may have come during a save
    code = main([str(a) for a in ["search", "--out", out, "--resume", "--quiet", *THREADS]])
    return out, at_kill, code


def test_search_killed_mid_epoch_resumes_with_architecture_state(killed_search):
    out, at_kill, code = killed_search
    assert at_kill["epoch"] == 0, "the kill did not land in epoch 1: nothing was tested"
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == SEARCH_EPOCHS and summary["resumed_from"] == str(out / "checkpoints" / "last.ckpt")
    final = read_checkpoint(out / "checkpoints" / "last.ckpt")
    # as many steps as an uninterrupted run: epochs x batches x (architecture step + weight step)
    assert (final["epoch"], final["global_step"]) == (SEARCH_EPOCHS - 1, SEARCH_EPOCHS * SEARCH_BATCHES * 2)
    # the architecture optimizer's state came back: one Adam step per batch over all epochs
    assert _adam_steps(at_kill) == {SEARCH_BATCHES}
    assert _adam_steps(final) == {SEARCH_EPOCHS * SEARCH_BATCHES}
    alphas = [key for key in final["state_dict"] if "_arch_alpha" in key]
    assert alphas and all(torch.isfinite(final["state_dict"][key]).all() for key in alphas)
    assert any(not torch.equal(at_kill["state_dict"][key], final["state_dict"][key]) for key in alphas)
    # the alpha history of the epoch before the kill came back through the checkpoint
    history = json.loads((out / "alphas.json").read_text())
    before = at_kill["callbacks"]["AlphaHistory"]["history"]
    assert len(history) == SEARCH_EPOCHS and len(before) == 1 and history[0] == before[0]
    assert (out / "arch.json").is_file() and not _temporaries(out)


def test_retrain_survives_sigterm_then_sigkill(tmp_path, env, capsys):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    argv = ["retrain", "--arch", "darts-v2", "--out", out, "--quiet", *THREADS]

    # 1. SIGTERM inside epoch 1 (in this process): the step in flight finishes, last.ckpt is saved there, 128 + 15.
    signal.signal(signal.SIGTERM, lambda *_: None)  # should the signal come late, it must not end pytest
    _signal_self_when(last, signal.SIGTERM)
    code, _, stderr = _run([*argv, "--set", *RETRAIN], capsys)
    assert code == 143, stderr
    line = _one_line(stderr, logs=True)
    assert line.startswith("nni-darts retrain: stopped by SIGTERM in epoch 1 at global step ") and line.endswith(
        f"resumable checkpoint saved to {last}; continue it with --resume"), line
    at_term = read_checkpoint(last)
    assert RETRAIN_BATCHES < at_term["global_step"] < 2 * RETRAIN_BATCHES  # inside epoch 1, not at its end
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()

    # 2. --resume in a subprocess, SIGKILL as soon as epoch 1's checkpoint file is written.
    _kill_when(out / "checkpoints" / f"epoch=1-step={2 * RETRAIN_BATCHES}.ckpt", _start([*argv, "--resume"], env))
    assert read_checkpoint(last)["global_step"] >= at_term["global_step"]

    # 3. --resume again: the run ends as an uninterrupted one would.
    code, _, stderr = _run([*argv, "--resume"], capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == RETRAIN_EPOCHS and summary["resumed_from"] == str(last)
    final = read_checkpoint(last)
    assert (final["epoch"], final["global_step"]) == (RETRAIN_EPOCHS - 1, RETRAIN_EPOCHS * RETRAIN_BATCHES)
    assert final["lr_schedulers"][0]["last_epoch"] == RETRAIN_EPOCHS
    assert torch.load(out / "model.pt", weights_only=True)
    assert not _temporaries(out)  # what the SIGKILL may have left mid-save is gone


def test_divergence_stops_keeps_the_last_good_checkpoint_and_resumes_with_new_settings(tmp_path, capsys):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    base = ["retrain", "--arch", "darts-v2", "--out", out, "--quiet", *THREADS]
    code, _, stderr = _run([*base, "--set", *SMALL, "retrain.epochs=2"], capsys)
    assert code == 0, stderr
    good = last.read_bytes()

    # Continue for two more epochs with an absurd learning rate: the loss turns NaN in epoch 2.
    code, _, stderr = _run([*base, "--resume", "--set", "retrain.epochs=4", "retrain.learning_rate=1e9",
                            "retrain.gradient_clip=null"], capsys)
    assert code == 1, stderr
    line = _one_line(stderr, logs=True)
    assert line.startswith("nni-darts retrain: error: non-finite training loss (nan) at epoch 2, batch "), line
    assert f"the last good checkpoint ({last}) is kept" in line
    assert "--resume and changed settings, e.g. --set retrain.learning_rate=5e+08" in line
    assert last.read_bytes() == good  # nothing of the diverged state was saved

    # --resume with a sane learning rate finishes the four epochs.
    code, _, stderr = _run([*base, "--resume", "--set", "retrain.learning_rate=0.025", "retrain.gradient_clip=5"],
                           capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["test_accuracy"] >= 0
    final = read_checkpoint(last)
    assert final["global_step"] == 4 * 4
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values() if torch.is_floating_point(v))


# ------------------------------------------------------------------------------------------------ atomic outputs
class _Killed(BaseException):
    """Stands for the process dying in the middle of a write."""


@pytest.fixture(scope="module")
def finished_retrain(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    code = main([str(a) for a in ["retrain", "--arch", "darts-v2", "--out", out, "--quiet", *THREADS,
                                  "--set", *SMALL, "retrain.epochs=1"]])
    assert code == 0
    return out


@pytest.mark.parametrize("target", ["checkpoints/last.ckpt", "model.pt", "summary.json"])
def test_a_write_that_dies_midway_leaves_the_previous_file_whole(finished_retrain, tmp_path, monkeypatch, target):
    out = tmp_path / "run"
    shutil.copytree(finished_retrain, out)
    before = (out / target).read_bytes()
    real_open = atomic_io.atomic_open

    @contextlib.contextmanager
    def dying_open(path):  # every output goes through nni_darts_ext.io.atomic_open
        with real_open(path) as handle:
            yield handle
            if Path(path).name == Path(target).name:  # all bytes written to the temporary file: keep half, die
                handle.flush()
                handle.truncate(len(before) // 2)
                raise _Killed(target)

    monkeypatch.setattr(atomic_io, "atomic_open", dying_open)
    monkeypatch.setattr(checkpoint_module, "atomic_open", dying_open)  # AtomicCheckpointIO's reference
    with pytest.raises(_Killed):
        main([str(a) for a in ["retrain", "--arch", "darts-v2", "--out", out, "--resume", "--quiet", *THREADS,
                               "--set", "retrain.epochs=2"]])
    monkeypatch.undo()

    assert (out / target).read_bytes() == before
    assert not _temporaries(out)
    if target.endswith(".ckpt"):
        assert read_checkpoint(out / target)["epoch"] == 0
    elif target.endswith(".pt"):
        assert torch.load(out / target, weights_only=True)
    else:
        assert json.loads((out / target).read_text())["epochs"] == 1


# --------------------------------------------------------------------------------------------------- bad input
GOOD_ARCH = {
    f"{cell}/{kind}_{node}_{k}": ("sep_conv_3x3" if kind == "op" else [k])
    for cell in ("normal", "reduce") for node in range(2, 6) for k in range(2) for kind in ("op", "input")
}


def _arch_text(**changes) -> str:
    arch = dict(GOOD_ARCH)
    for key, value in changes.items():
        key = key.replace("__", "/")
        if value is None:
            arch.pop(key)
        else:
            arch[key] = value
    return json.dumps(arch)


ARCH_FILES = {
    "empty": ("", "file is empty"),
    "text": ("a normal cell of sep convs", "neither a JSON arch dict nor Genotype(...) text"),
    "broken-json": ('{"normal/op_2_0": ', "not valid JSON"),
    "list": (json.dumps(list(GOOD_ARCH)), "list"),
    "missing-input": (_arch_text(normal__input_5_1=None), "normal/input_5_1"),
    "missing-node": (_arch_text(**{f"reduce__{kind}_5_{k}": None for kind in ("op", "input") for k in range(2)}),
                     "reduce/op_5_0"),
    "unknown-op": (_arch_text(normal__op_3_1="conv_9x9"), "conv_9x9"),
    "input-out-of-range": (_arch_text(reduce__input_2_0=[7]), "reduce/input_2_0"),
    "input-forward": (_arch_text(normal__input_3_0=[3]), "normal/input_3_0"),
    "cell-name": (_arch_text().replace('"reduce/', '"reduction/'), "reduction/"),
    "duplicate-key": (_arch_text()[:-1] + ', "normal/op_2_0": "max_pool_3x3"}', "duplicate"),
    "genotype-bad-op": (f"Genotype(normal={[('conv_9x9', 0)] + [('sep_conv_3x3', 1)] * 7}, normal_concat=range(2, 6), "
                        f"reduce={[('max_pool_3x3', 0), ('max_pool_3x3', 1)] * 4}, reduce_concat=range(2, 6))",
                        "conv_9x9"),
}


@pytest.mark.parametrize("name", list(ARCH_FILES))
def test_bad_arch_files(name, tmp_path, capsys):
    text, words = ARCH_FILES[name]
    arch = tmp_path / "arch.json"
    arch.write_text(text)
    out = tmp_path / "out"
    code, stdout, stderr = _run(["retrain", "--arch", arch, "--out", out, *THREADS], capsys)
    line = _one_line(stderr)
    assert code == 2 and line.startswith(f"nni-darts retrain: error: {arch}") and words in line, line
    assert not out.exists() and not stdout


SETTINGS = {
    "wrong-type": (["search.batch_size=abc"], "search.batch_size"),
    "zero-epochs": (["retrain.epochs=0"], "retrain.epochs"),
    "negative-epochs": (["search.epochs=-3"], "search.epochs"),
    "zero-batch": (["retrain.batch_size=0"], "retrain.batch_size"),
    "negative-batch": (["search.batch_size=-8"], "search.batch_size"),
    "train-fraction-one": (["search.train_fraction=1"], "search.train_fraction"),
    "train-fraction-zero": (["search.train_fraction=0"], "search.train_fraction"),
    "cutout-longer-than-image": (["dataset.image_size=16", "retrain.cutout=17"], "retrain.cutout"),
    "negative-drop-path": (["retrain.drop_path_prob=-0.1"], "retrain.drop_path_prob"),
    "unknown-section": (["training.epochs=3"], "training"),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_bad_settings(name, tmp_path, capsys):
    overrides, words = SETTINGS[name]
    out = tmp_path / "out"
    code, _, stderr = _run(["search", "--out", out, *THREADS, "--set", *overrides], capsys)
    line = _one_line(stderr)
    assert code == 2 and words in line, line
    assert not out.exists()


def test_bad_recipe_file(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("extends: demo\nsearch:\n  epochs: 2\n  epohcs: 3\n")
    code, _, stderr = _run(["search", "--recipe", recipe, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "search.epohcs" in _one_line(stderr)
    assert not (tmp_path / "out").exists()


def test_cifar_missing_says_which_folder_files_and_how_to_get_them(tmp_path, capsys):
    code, _, stderr = _run(["search", "--recipe", "paper", "--data-dir", tmp_path / "data", "--out", tmp_path / "out"],
                           capsys)
    line = _one_line(stderr)
    assert code == 2 and str(tmp_path / "data" / "cifar-10-batches-py") in line, line
    assert "data_batch_1" in line and "test_batch" in line and "batches.meta" in line
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in line
    assert not (tmp_path / "out").exists()


def test_cifar_corrupt_batch_file_is_named(tmp_path, capsys):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"]:
        (folder / name).write_bytes(b"\x80\x04truncated")
    code, _, stderr = _run(["search", "--recipe", "paper", "--data-dir", tmp_path / "data", "--out", tmp_path / "out"],
                           capsys)
    line = _one_line(stderr)
    assert code == 2 and str(folder / "data_batch_1") in line and "corrupt" in line, line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- bad resumes
def _bad_resume(folder: Path, argv, capsys):
    before = _snapshot(folder)
    code, _, stderr = _run(argv, capsys)
    line = _one_line(stderr)
    assert code == 2, stderr
    assert _snapshot(folder) == before  # nothing written, config.yaml included
    return line


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda path: path.write_bytes(path.read_bytes()[:1000]), "cannot be read as a checkpoint, it is corrupt"),
        (lambda path: path.write_bytes(b""), "cannot be read as a checkpoint"),
        (lambda path: torch.save({"model.weight": torch.ones(2)}, path), "not a resumable training checkpoint"),
    ],
    ids=["truncated", "empty", "weights-only"],
)
def test_resume_from_a_damaged_checkpoint(finished_retrain, tmp_path, capsys, damage, words):
    out = tmp_path / "run"
    shutil.copytree(finished_retrain, out)
    damage(out / "checkpoints" / "last.ckpt")
    line = _bad_resume(out, ["retrain", "--arch", out, "--out", out, "--resume", *THREADS], capsys)
    assert line.startswith(f"nni-darts retrain: error: --resume: {out / 'checkpoints' / 'last.ckpt'}: ") and words in line


def test_resume_retrain_with_another_width_or_arch_names_shapes_and_keys(finished_retrain, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_retrain, out)
    line = _bad_resume(out, ["retrain", "--arch", out, "--out", out, "--resume", *THREADS,
                             "--set", "retrain.width=8"], capsys)
    assert "does not fit this run's net" in line and "stem.0.weight: checkpoint [12, 3, 3, 3] vs net [24, 3, 3, 3]" \
        in line, line
    line = _bad_resume(out, ["retrain", "--arch", "darts-v1", "--out", out, "--resume", *THREADS], capsys)
    assert "does not fit this run's net" in line and "missing key(s)" in line, line


def test_resume_search_with_another_supernet(killed_search, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(killed_search[0], out)
    line = _bad_resume(out, ["search", "--out", out, "--resume", *THREADS, "--set", "search.width=8"], capsys)
    assert line == (f"nni-darts search: error: --resume: search.width is 8 but the run in {out} was started with 4; "
                    "its checkpoint only fits the same supernet")
