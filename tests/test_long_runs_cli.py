"""Long-run guarantees through the ``nni-darts`` command: one run per output folder, a failing write, and SIGTERM
under 2-process DDP. (The pieces are tested on their own in test_run_lock, test_write_failure,
test_timed_checkpoint and test_distributed_signal; exact resume in test_exact_resume.)"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nni_darts_ext.checkpoint import read_checkpoint
from nni_darts_ext.cli import main
from nni_darts_ext.io import EXIT_OUTPUT_WRITE_FAILED

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
TINY = ["dataset.image_size=8", "dataset.max_samples=64", "search.width=4", "search.cells=3", "search.epochs=2",
        "search.batch_size=16", "retrain.width=4", "retrain.cells=3", "retrain.epochs=2", "retrain.batch_size=16"]
WAIT_S = 600


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, HOME=str(tmp_path), NNI_HOME=str(tmp_path / "nni"), OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def _popen(argv, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "nni_darts_ext", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert process.poll() is None, f"ended before {path} appeared:\n{process.stderr.read()}"
        assert time.monotonic() < deadline, f"no {path} after {WAIT_S} s"
        time.sleep(0.05)


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_killed_holder_is_taken_over(tmp_path, env, capsys):
    out = tmp_path / "run"
    holder = _popen(["search", "--out", out, "--quiet", "--threads", "1", "--set", *TINY, "search.epochs=50"], env)
    try:
        _wait_for(out / ".nni-darts.lock", holder)
        for extra in ([], ["--resume"]):
            code = main(["search", "--out", str(out), "--quiet", "--threads", "1", *extra, "--set", *TINY])
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
            assert "in use" in err and f"pid {holder.pid}" in err and socket.gethostname() in err
        _wait_for(out / "checkpoints" / "last.ckpt", holder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    # The holder is dead: its lock is stale, taken over by the resume (and removed when it ends).
    code = main(["search", "--out", str(out), "--quiet", "--threads", "1", "--resume", "--set", *TINY])
    assert code == 0 and (out / "arch.json").is_file() and not (out / ".nni-darts.lock").exists()


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one_and_the_run_resumes(tmp_path, env):
    out = tmp_path / "run"
    argv = ["retrain", "--arch", "darts-v2", "--out", out, "--quiet", "--threads", "1", "--set", *TINY]
    first = _popen([*argv[:-len(TINY) - 1], "--set", *TINY[:-2], "retrain.epochs=1", "retrain.batch_size=16"], env)
    assert first.wait(timeout=WAIT_S) == 0, first.stderr.read()
    last = out / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    # --resume to 2 epochs under a file-size limit below the checkpoint's size: the new last.ckpt cannot be written.
    limited = _popen([*argv, "--resume"], env, preexec_fn=_limit_file_size(len(before) // 2))
    _, err = limited.communicate(timeout=WAIT_S)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[nni-darts]")]
    assert limited.returncode == EXIT_OUTPUT_WRITE_FAILED, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err and "File too large" in lines[0] and ".ckpt" in lines[0]
    assert last.read_bytes() == before  # the previous checkpoint is whole
    assert not list(out.rglob(".*.tmp"))
    # Space is back: --resume finishes the run.
    again = _popen([*argv, "--resume"], env)
    assert again.wait(timeout=WAIT_S) == 0, again.stderr.read()
    assert read_checkpoint(last)["epoch"] == 1 and json.loads((out / "summary.json").read_text())["epochs"] == 2


@pytest.mark.xdist_group("ddp")  # never beside another 2-process launch (see test_distributed.py)
def test_sigterm_under_two_process_ddp_stops_every_rank_saves_once_and_resumes(tmp_path, env):
    out = tmp_path / "run"
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--threads", "1"]
    argv = ["search", "--out", out, "--quiet", *ddp, "--set", *TINY, "search.epochs=30"]
    run = _popen(argv, env, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    _wait_for(last, run)
    first_step = read_checkpoint(last)["global_step"]
    run.send_signal(signal.SIGTERM)  # to rank 0 (Lightning started rank 1 as its child)
    _, err = run.communicate(timeout=WAIT_S)
    assert run.returncode == 143, err[-3000:]
    saved = read_checkpoint(last)
    assert saved["global_step"] >= first_step and any("_arch_alpha" in k for k in saved["state_dict"])
    ranks = saved["callbacks"]["ExactResume"]["rng_states"]
    assert len(ranks) == 2  # both ranks' random states, written once by rank 0
    resumed = _popen([*argv[:-1], "search.epochs=" + str(saved["epoch"] + 2), "--resume"], env)
    assert resumed.wait(timeout=WAIT_S) == 0, resumed.stderr.read()[-3000:]
    assert read_checkpoint(last)["global_step"] > saved["global_step"]
