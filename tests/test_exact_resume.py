"""Exact resume through the CLI: a run killed with SIGKILL and rerun with ``--resume`` ends bit-identical (CPU) to
the run that was never interrupted: the same architecture parameters, network weights, optimizer states and
``arch.json``. Killed after the first epoch's checkpoint (the kill lands in epoch 2), and killed right after a
mid-epoch checkpoint (``--checkpoint-every``); searches with deterministic and with sampled mixings, and a retrain
with cutout and drop path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from nni_darts_ext.checkpoint import read_checkpoint
from nni_darts_ext.cli import main
from nni_darts_ext.pipeline import assemble
from nni_darts_ext.search import list_strategies
from nni_darts_ext.search.progressive import Stage

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
TINY = ["dataset.image_size=8", "dataset.max_samples=64", "search.width=4", "search.cells=3", "search.epochs=3",
        "search.batch_size=16", "search.arc_learning_rate=0.05", "retrain.width=4", "retrain.cells=3",
        "retrain.epochs=3", "retrain.batch_size=16", "retrain.cutout=4", "retrain.drop_path_prob=0.2",
        "retrain.auxiliary_weight=0.4"]
BATCHES = 2  # 64 images, half for each search split, batch 16; the retrain's 64 in 4 batches
WAIT_S = 600


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return dict(os.environ, HOME=str(home), NNI_HOME=str(home / ".nni"), OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def _argv(command, out, name, *extra, settings=()):
    argv = [command, "--out", out, "--recipe", "demo", "--quiet", "--threads", "1", *extra, "--set", *TINY,
            f"search.strategy={name}", *settings]
    return [str(a) for a in argv]


def _killed(argv, env, last: Path, *, mid_epoch_steps: int | None = None, after_step: int = 0) -> dict:
    """Run ``argv`` in a subprocess and SIGKILL it once ``last`` holds a checkpoint to resume from.

    ``mid_epoch_steps``: wait for one whose global step is not a multiple of it (a mid-epoch save); the process is
    stopped (SIGSTOP) while the file is read, so the checkpoint read is the one the resume starts from.
    ``after_step``: and a global step above it.
    """
    process = subprocess.Popen([sys.executable, "-m", "nni_darts_ext", *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the run ended before it was killed:\n{process.stderr.read()}")
            if last.is_file():
                process.send_signal(signal.SIGSTOP)
                checkpoint = read_checkpoint(last)
                step = checkpoint["global_step"]
                if (mid_epoch_steps is None or step % mid_epoch_steps) and step > after_step:
                    process.send_signal(signal.SIGKILL)
                    process.communicate(timeout=60)
                    return checkpoint
                process.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        raise AssertionError(f"no checkpoint to kill at within {WAIT_S} s")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)


def _assert_identical(a: Path, b: Path) -> None:
    left, right = read_checkpoint(a / "checkpoints" / "last.ckpt"), read_checkpoint(b / "checkpoints" / "last.ckpt")
    assert left["global_step"] == right["global_step"]
    # The learning-rate schedulers too (cosine position, last LRs): a resume that restarted one would differ here.
    assert left["lr_schedulers"] and left["lr_schedulers"] == right["lr_schedulers"]
    assert list(left["state_dict"]) == list(right["state_dict"])
    for key, value in left["state_dict"].items():
        assert torch.equal(value, right["state_dict"][key]), key
    for opt_left, opt_right in zip(left["optimizer_states"], right["optimizer_states"], strict=True):
        for index, state in opt_left["state"].items():
            for name, value in state.items():
                other = opt_right["state"][index][name]
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (index, name)
    assert (a / "arch.json").read_bytes() == (b / "arch.json").read_bytes()


@pytest.mark.parametrize("name, settings", [("first-order", ()), ("drnas", ()), ("drnas", ("search.checkpointing=cells",))],
                         ids=["first-order", "drnas", "drnas-checkpointing"])
def test_search_killed_in_its_second_epoch_resumes_bit_identical(name, settings, tmp_path, env):
    """SIGKILL, then --resume in a fresh process (another order of NNI's architecture parameters, nothing kept in
    memory), with a deterministic and a sampled mixing; every preset's own state is checked by the in-process
    mid-epoch test below."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(_argv("search", straight, name, settings=settings)) == 0
    at_kill = _killed(_argv("search", killed, name, settings=settings), env, killed / "checkpoints" / "last.ckpt")
    assert at_kill["global_step"] < 3 * BATCHES * 2  # the kill came before the end
    assert main(_argv("search", killed, name, "--resume", settings=settings)) == 0
    _assert_identical(straight, killed)


def test_a_checkpointed_search_ends_bit_identical_to_one_without(tmp_path):
    """Activation checkpointing changes memory only: the same weights, optimizer states and arch.json (CPU)."""
    plain, edges = tmp_path / "plain", tmp_path / "edges"
    assert main(_argv("search", plain, "drnas")) == 0
    assert main(_argv("search", edges, "drnas", settings=["search.checkpointing=edges"])) == 0
    _assert_identical(plain, edges)


def test_search_killed_after_a_mid_epoch_checkpoint_resumes_bit_identical(tmp_path, env):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # 2 epochs of 8 batches: room for mid-epoch saves
    more = ["dataset.max_samples=128", "search.batch_size=8", "search.epochs=2"]

    def argv(out, *extra):
        return _argv("search", out, "drnas", *extra) + more

    assert main(argv(straight)) == 0
    at_kill = _killed(argv(killed, "--checkpoint-every", "1s"), env, killed / "checkpoints" / "last.ckpt",
                      mid_epoch_steps=8 * 2)
    assert at_kill["global_step"] % 16  # a mid-epoch checkpoint
    assert main(argv(killed, "--resume")) == 0
    _assert_identical(straight, killed)


def test_retrain_killed_in_its_second_epoch_resumes_bit_identical(tmp_path, env):
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    def argv(out, *extra):
        return _argv("retrain", out, "first-order", "--arch", "darts-v2", *extra)

    assert main(argv(straight)) == 0
    at_kill = _killed(argv(killed), env, killed / "checkpoints" / "last.ckpt")
    assert at_kill["epoch"] < 2
    assert main(argv(killed, "--resume")) == 0
    _assert_identical(straight, killed)


def test_retrain_killed_after_a_mid_epoch_checkpoint_resumes_bit_identical(tmp_path, env):
    """Mid-epoch: Lightning skips on_train_epoch_start on such a resume; drop path must still be this epoch's."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    more = ["dataset.max_samples=256", "retrain.batch_size=8"]  # 32 batches per epoch

    def argv(out, *extra):
        return _argv("retrain", out, "first-order", "--arch", "darts-v2", *extra) + more

    assert main(argv(straight)) == 0
    at_kill = _killed(argv(killed, "--checkpoint-every", "1s"), env, killed / "checkpoints" / "last.ckpt",
                      mid_epoch_steps=32, after_step=32)
    assert at_kill["global_step"] % 32 and at_kill["global_step"] > 32  # inside epoch 2, drop path > 0
    assert main(argv(killed, "--resume")) == 0
    _assert_identical(straight, killed)


class _SigintAfter(pl.Callback):
    """Sends this process SIGINT after ``batches`` training batches: the run saves last.ckpt after that step, 130."""

    def __init__(self, batches: int):
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, *args):
        self.seen += 1
        if self.seen == self.batches:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("name", list_strategies())
def test_every_preset_stopped_mid_epoch_resumes_bit_identical(name, tmp_path, monkeypatch):
    """Every registered preset (a new one is covered by default), in-process: a search stopped by SIGINT inside
    its second epoch and resumed with ``--resume`` ends with the uninterrupted run's weights, architecture
    parameters, optimizer and learning-rate scheduler states and ``arch.json``."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    # After the --set list of _argv: 2 epochs of BATCHES batches. SIGINT at the end of epoch 1's last batch; the run
    # stops after the next batch, epoch 2's first, so the rest of epoch 2 is left for the resume to draw and load.
    tiny = ["search.epochs=2"]
    batches = BATCHES
    if name == "p-darts":  # two shallow stages (3 then 4 cells) instead of 3, 9 and 15 cells: the same stage hooks
        overrides = assemble.strategy_overrides
        shallow = (Stage(num_cells=5, ops_kept=5, skip_dropout=0.1), Stage(num_cells=6, ops_kept=3, skip_dropout=0.4))
        monkeypatch.setattr(assemble, "strategy_overrides", lambda recipe: {**overrides(recipe), "stages": shallow})
    assert main(_argv("search", straight, name) + tiny) == 0

    run_callbacks = assemble._run_callbacks

    def with_sigint(*args, **kwargs):
        callbacks, epoch_log, logger = run_callbacks(*args, **kwargs)
        return [*callbacks, _SigintAfter(batches)], epoch_log, logger

    with monkeypatch.context() as patch:
        patch.setattr(assemble, "_run_callbacks", with_sigint)
        assert main(_argv("search", stopped, name) + tiny) == 130
    at_stop = read_checkpoint(stopped / "checkpoints" / "last.ckpt")
    assert at_stop["epoch"] == 1 and not (stopped / "arch.json").exists()  # stopped inside epoch 2
    loaders = at_stop["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert {loader["epoch"] for loader in loaders} == {1}
    assert all(0 < loader["batches"] < batches for loader in loaders)  # batches left: RNG and data order matter
    assert main(_argv("search", stopped, name, "--resume") + tiny) == 0
    _assert_identical(straight, stopped)
