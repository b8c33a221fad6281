"""Runs side by side as processes: failures named with folder, exit code and log; signals passed on; the flags."""

from __future__ import annotations

import signal
import sys

import pytest

from nni_darts_ext.errors import RunInterrupted, RunsFailed
from nni_darts_ext.pipeline import parallel
from nni_darts_ext.pipeline.options import RunOptions
from nni_darts_ext.pipeline.parallel import Job, child_threads, common_argv, run_in_processes


@pytest.mark.e2e
def test_a_failed_run_is_named_with_its_folder_exit_code_and_log_and_the_others_finish(tmp_path):
    jobs = [Job("bad", tmp_path / "bad", ("plot", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png"))),
            Job("ok", tmp_path / "ok", ("recipes",))]
    finished = []
    with pytest.raises(RunsFailed) as err:
        run_in_processes(jobs, parallel=2, log_dir=tmp_path / "logs", threads=1,
                         on_done=lambda job: finished.append(job.name))
    assert err.value.failures == [(tmp_path / "bad", 2, tmp_path / "logs" / "bad.log")]
    assert str(tmp_path / "bad") in str(err.value) and "exit code 2" in str(err.value) and "\n" not in str(err.value)
    assert finished == ["ok"]
    assert "missing.json" in (tmp_path / "logs" / "bad.log").read_text()  # the run's own one-line error
    assert "paper" in (tmp_path / "logs" / "ok.log").read_text()  # `nni-darts recipes` lists them


class _FakeProcess:
    """Stands in for subprocess.Popen: runs until a signal reaches it; the first poll raises SIGINT here."""

    started: list[_FakeProcess] = []
    interrupted = False

    def __init__(self, args, *, stdout, stderr, env, start_new_session):
        self.args, self.env, self.new_session = args, env, start_new_session
        self.signals: list[int] = []
        self.returncode = None
        self.pid = 1000 + len(self.started)
        self.started.append(self)

    def poll(self):
        if not _FakeProcess.interrupted:
            _FakeProcess.interrupted = True
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C reached the parent
        return self.returncode

    def send_signal(self, signum):
        self.signals.append(signum)
        self.returncode = -signum

    def wait(self):
        return self.returncode


def test_a_signal_is_passed_on_to_the_running_runs_and_no_new_run_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel.subprocess, "Popen", _FakeProcess)
    monkeypatch.setattr(_FakeProcess, "started", [])
    monkeypatch.setattr(_FakeProcess, "interrupted", False)
    jobs = [Job(f"run-{i}", tmp_path / f"run-{i}", ("retrain", "--out", str(tmp_path / f"run-{i}"))) for i in range(4)]
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted, match="stopped by SIGINT.*--resume"):
        run_in_processes(jobs, parallel=2, log_dir=tmp_path / "logs", threads=1)
    started = _FakeProcess.started
    assert len(started) == 2  # the other two never start
    assert [p.signals for p in started] == [[signal.SIGINT], [signal.SIGINT]]  # each told once
    assert started[0].args[:3] == [sys.executable, "-m", "nni_darts_ext"] and started[0].args[3:] == list(jobs[0].argv)
    assert started[0].env["OMP_NUM_THREADS"] == "1" and started[0].new_session
    assert signal.getsignal(signal.SIGINT) is before  # our handler is gone


def test_children_get_the_run_options_as_flags_and_one_thread_on_a_cpu():
    options = RunOptions(accelerator="cpu", devices=1, precision="bf16-mixed", compile=True, checkpoint_every=90.0)
    assert child_threads(options, None) == 1 and child_threads(options, 3) == 3
    assert common_argv(options, 1) == ("--accelerator", "cpu", "--devices", "1", "--precision", "bf16-mixed",
                                       "--compile", "--checkpoint-every", "90s", "--threads", "1")
    assert common_argv(RunOptions(accelerator="gpu"), None) == ("--accelerator", "gpu")
