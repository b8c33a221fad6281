"""RunLock: one run per output folder, checked with real processes (a live holder, a SIGKILLed one)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nni_darts_ext.errors import RunLockedError
from nni_darts_ext.run_lock import (
    LOCK_FILE_NAME,
    RunLock,
    holds_run_lock,
    read_lock_record,
)

REPO = Path(__file__).resolve().parents[1]

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from nni_darts_ext.run_lock import RunLock
    lock = RunLock(sys.argv[1], command=["nni-darts", "search", "--out", sys.argv[1]]).acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def _start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.e2e  # real holder processes
def test_second_run_is_refused_naming_pid_and_host(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        message = str(info.value)
        assert "\n" not in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "nni-darts search" in message
        assert info.value.pid == holder.pid and info.value.host == socket.gethostname()
        # Refused in another process too (what a second CLI run is).
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from nni_darts_ext.errors import RunLockedError\nfrom nni_darts_ext.run_lock import RunLock\n"
             "try:\n RunLock(sys.argv[1]).acquire()\nexcept RunLockedError as e:\n print(e); sys.exit(2)",
             str(tmp_path)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert probe.returncode == 2 and f"pid {holder.pid}" in probe.stdout
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.e2e  # real holder processes
def test_sigkilled_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path, caplog):
    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert read_lock_record(tmp_path / LOCK_FILE_NAME)["pid"] == holder.pid  # left behind
    with caplog.at_level(logging.WARNING, logger="nni_darts_ext.run_lock"):
        with RunLock(tmp_path) as lock:
            assert lock.held
            record = read_lock_record(tmp_path / LOCK_FILE_NAME)
            assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
            assert {"started", "command"} <= set(record)
    assert f"stale lock of pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert not (tmp_path / LOCK_FILE_NAME).exists()  # released
    assert not list(tmp_path.glob("*.tmp"))


def test_released_lock_can_be_taken_again_and_record_is_json(tmp_path):
    lock = RunLock(tmp_path / "new", command=["nni-darts", "demo"])
    lock.acquire()
    assert json.loads((tmp_path / "new" / LOCK_FILE_NAME).read_text())["command"] == "nni-darts demo"
    with pytest.raises(RunLockedError):  # a second lock object in the same process is another run
        RunLock(tmp_path / "new").acquire()
    lock.release()
    with RunLock(tmp_path / "new"):
        pass


def test_argument_checks():
    with pytest.raises(TypeError, match="out_dir"):
        RunLock(3)
    with pytest.raises(ValueError, match="out_dir"):
        RunLock("")


def test_only_the_first_process_of_a_run_takes_the_lock():
    assert holds_run_lock({})
    assert holds_run_lock({"LOCAL_RANK": "0", "NODE_RANK": "0", "SLURM_PROCID": "0"})
    assert not holds_run_lock({"LOCAL_RANK": "1"})  # Lightning's DDP launcher re-running the command for rank 1
    assert not holds_run_lock({"RANK": "3"})
    assert not holds_run_lock({"SLURM_PROCID": "2"})
    assert not holds_run_lock({"LOCAL_RANK": "0", "NODE_RANK": "1"})
