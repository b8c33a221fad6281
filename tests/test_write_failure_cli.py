"""Through the CLI: a write of ``arch.json``, ``summary.json`` (search) or ``model.pt`` (retrain) that fails keeps
the previous file whole and exits 74 with one line on stderr (README, "Reliability").

The failure is injected at the operating-system call that would put the new file in place (``os.replace`` of the
atomic write, for that one file name) as ENOSPC, the error a full disk gives; every other write is real. The previous
file comes from a finished one-epoch run, resumed to two epochs (which rewrites the file at its end).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from nni_darts_ext import io as nde_io
from nni_darts_ext.cli import main
from nni_darts_ext.io import EXIT_OUTPUT_WRITE_FAILED

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_write_failure_cli")]

TINY = ["dataset.image_size=8", "dataset.max_samples=64", "search.width=4", "search.cells=3",
        "search.batch_size=16", "retrain.width=4", "retrain.cells=3", "retrain.batch_size=16"]
THREADS = ["--threads", "1"]


def _search(out: Path, *extra: str, epochs: int) -> int:
    return main(["search", "--out", str(out), "--quiet", *THREADS, *extra, "--set", *TINY, f"search.epochs={epochs}"])


def _retrain(out: Path, *extra: str, epochs: int) -> int:
    return main(["retrain", "--arch", "darts-v2", "--out", str(out), "--quiet", *THREADS, *extra, "--set", *TINY,
                 f"retrain.epochs={epochs}"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One-epoch search and retrain folders, finished."""
    root = tmp_path_factory.mktemp("finished")
    assert _search(root / "search", epochs=1) == 0
    assert _retrain(root / "retrain", epochs=1) == 0
    return root


@pytest.fixture
def disk_full_for(monkeypatch):
    """``disk_full_for(name)``: putting a file called ``name`` in place fails with ENOSPC."""
    real_replace = os.replace

    def fail_for(name: str) -> None:
        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == name:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(nde_io.os, "replace", replace)

    return fail_for


@pytest.mark.parametrize("stage, name", [("search", "arch.json"), ("search", "summary.json"),
                                         ("retrain", "model.pt")])
def test_a_failed_write_keeps_the_previous_file_and_exits_74(stage, name, finished, tmp_path, disk_full_for,
                                                             capsys):
    out = tmp_path / stage
    shutil.copytree(finished / stage, out)
    before = (out / name).read_bytes()
    capsys.readouterr()
    disk_full_for(name)
    run = _search if stage == "search" else _retrain
    assert run(out, "--resume", epochs=2) == EXIT_OUTPUT_WRITE_FAILED
    # One error line (besides the run's own "[nni-darts]" log lines, e.g. a search-health warning).
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("[nni-darts]")]
    assert len(err) == 1 and name in err[0] and "No space left on device" in err[0], err
    assert (out / name).read_bytes() == before  # the previous file, whole
    assert not list(out.rglob(f".{name}.*.tmp"))  # no temporary file left behind
