"""nnictl: the smoke HPO experiment of examples/nnictl_retrain runs, reports, stops and leaves no process behind.

Each experiment runs on a free port with HOME (NNI's manifest) and experimentWorkingDirectory in tmp_path. Every
process it starts inherits the private HOME: that marker finds leftovers, which are killed (by pid) in a finally.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e  # runs searches, retrains or the CLI

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nnictl_retrain"
VENV_BIN = Path(sys.executable).parent
NNICTL = VENV_BIN / "nnictl"
# Generous: the smoke config budgets about 2 minutes on a small idle CPU; shared CI machines are slower.
EXPERIMENT_TIMEOUT_S = 400
# The smoke trials must learn: 10 digit classes make 0.1 chance; the shipped settings reach ~0.9.
MIN_SMOKE_ACCURACY = 0.5
POLL_S = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_with_env(marker: str) -> dict[int, str]:
    """pid -> command line of every readable process whose environment contains ``marker`` (``KEY=value``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours
            continue
        if marker.encode() in environ:
            found[int(entry.name)] = cmdline.strip()
    return found


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/{path}", timeout=10) as response:
        return json.loads(response.read())


def _final_metric(trial: dict) -> float | None:
    data = trial.get("finalMetricData") or []
    if not data:
        return None
    value = json.loads(data[0]["data"])  # NNI stores the metric as JSON text inside a JSON string
    value = json.loads(value) if isinstance(value, str) else value
    return value["default"] if isinstance(value, dict) else float(value)


def _nnictl(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(NNICTL), *args], env=env, capture_output=True, text=True, timeout=timeout)


# NNI's manager gives the tuner process 10 s to connect (nni_node/core/tuner_command_channel.js, hard-coded), then
# the experiment goes to ERROR. On a busy machine importing NNI's TPE can take longer: one more try then.
_TUNER_TIMEOUT = "Tuner did not connect"
ATTEMPTS = 2


class _TunerDidNotConnect(Exception):
    pass


def _run_smoke_experiment(tmp_path: Path, trial_command: str | None = None) -> dict:
    """Start config_smoke.yml (optionally with another trialCommand), wait for 2 trials, stop; returns facts."""
    config = yaml.safe_load((EXAMPLE / "config_smoke.yml").read_text())
    config["trialCodeDirectory"] = str(EXAMPLE)
    if trial_command is not None:
        config["trialCommand"] = trial_command
    for attempt in range(1, ATTEMPTS + 1):
        folder = tmp_path / f"attempt{attempt}"
        folder.mkdir()
        try:
            return _run_once(folder, config)
        except _TunerDidNotConnect as exc:
            if attempt == ATTEMPTS:
                pytest.fail(f"NNI's tuner did not connect within NNI's 10 s, {ATTEMPTS} times: {exc}")
    raise AssertionError("unreachable")


def _run_once(folder: Path, config: dict) -> dict:
    config = dict(config, experimentWorkingDirectory=str(folder / "experiments"))
    config_file = folder / "config.yml"
    config_file.write_text(yaml.safe_dump(config))
    home = folder / "home"
    home.mkdir()
    marker = f"HOME={home}"
    env = {**os.environ, "HOME": str(home), "NNI_HOME": str(home / ".nni"),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    port = _free_port()
    started = time.monotonic()
    experiment_id = None
    try:
        created = _nnictl(["create", "--config", str(config_file), "--port", str(port)], env)
        assert created.returncode == 0, created.stdout + created.stderr
        experiment_id = re.search(r"Experiment ID: (?:\x1b\[\d+m)?(\w+)", created.stdout + created.stderr).group(1)

        deadline = started + EXPERIMENT_TIMEOUT_S
        trials: list = []
        while time.monotonic() < deadline:
            status = _get(port, "check-status")
            if status["status"] == "ERROR":
                errors = json.dumps(status.get("errors"))
                if _TUNER_TIMEOUT in errors:
                    raise _TunerDidNotConnect(errors)
                pytest.fail(f"experiment failed: {errors}\n{_manager_log(folder)}")
            trials = _get(port, "trial-jobs")
            finished = [t for t in trials if t["status"] == "SUCCEEDED" and _final_metric(t) is not None]
            failed = [t for t in trials if t["status"] in ("FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")]
            assert not failed, _trial_logs(failed)
            if len(finished) == 2:
                break
            time.sleep(POLL_S)
        else:
            pytest.fail(f"trials not done in {EXPERIMENT_TIMEOUT_S} s: {[t['status'] for t in trials]}\n"
                        f"{_manager_log(folder)}")
        wall = time.monotonic() - started
        metrics = _get(port, "metric-data")
        listed = _nnictl(["trial", "ls", experiment_id], env)
        assert listed.returncode == 0 and all(t["trialJobId"] in listed.stdout for t in trials)

        stopped = _nnictl(["stop", experiment_id], env)
        assert stopped.returncode == 0 and "Stop experiment success" in stopped.stdout + stopped.stderr
        experiment_id = None
        # nnictl stop kills the manager; its dispatcher and trials go with it, give them a moment.
        deadline = time.monotonic() + 30
        while _processes_with_env(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = _processes_with_env(marker)
        assert not leftovers, f"processes left behind: {leftovers}"
        manifest = json.loads((home / "nni-experiments" / ".experiment").read_text())
        return {"trials": trials, "metrics": metrics, "wall_s": wall, "manifest": manifest}
    finally:
        if experiment_id is not None:
            _nnictl(["stop", experiment_id], env, timeout=60)
        _kill(_processes_with_env(marker))


def _manager_log(folder: Path) -> str:
    logs = sorted((folder / "experiments").glob("*/log/nnimanager.log"))
    return logs[0].read_text()[-3000:] if logs else "(no nnimanager.log)"


def _trial_logs(trials: list) -> str:
    text = []
    for trial in trials:
        folder = Path(trial.get("logPath", ""))
        for name in ("trial.stderr", "trial.stdout"):
            if (folder / name).is_file():
                text.append(f"--- {trial['trialJobId']} {name}\n" + (folder / name).read_text()[-3000:])
    return "\n".join(text) or str(trials)


def _check_reports(facts: dict, epochs: int) -> None:
    trials = facts["trials"]
    assert len(trials) == 2 and all(t["status"] == "SUCCEEDED" for t in trials)
    for trial in trials:
        parameters = json.loads(trial["hyperParameters"][0])["parameters"]
        assert set(parameters) == {"learning_rate", "weight_decay", "drop_path_prob", "cutout", "auxiliary_weight"}
        reports = [m for m in facts["metrics"] if m["trialJobId"] == trial["trialJobId"]]
        assert sorted(m["type"] for m in reports) == ["FINAL"] + ["PERIODICAL"] * epochs  # one per epoch, one final
        assert MIN_SMOKE_ACCURACY <= _final_metric(trial) <= 1.0, (parameters, _final_metric(trial))
    [entry] = facts["manifest"].values()
    assert entry["status"] == "STOPPED"


def test_nnictl_help_works():
    """nnictl imports pkg_resources: it needs setuptools<82 (pinned in pyproject.toml)."""
    done = subprocess.run([str(NNICTL), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "create" in done.stdout and "stop" in done.stdout


def test_smoke_experiment_with_nni_darts_retrain(tmp_path):
    """config_smoke.yml exactly as shipped: trials run `nni-darts retrain --nni` through run_trial.sh."""
    config = yaml.safe_load((EXAMPLE / "config_smoke.yml").read_text())
    epochs = int(re.search(r"retrain\.epochs=(\d+)", config["trialCommand"]).group(1))
    facts = _run_smoke_experiment(tmp_path)
    _check_reports(facts, epochs=epochs)
    accuracies = ", ".join(f"{_final_metric(t):.3f}" for t in facts["trials"])
    print(f"smoke experiment (nni-darts retrain --nni): {facts['wall_s']:.0f} s, test accuracies {accuracies}")
