"""A failing write (here a real one: a child process under a file-size limit) keeps the previous file whole.

The child ignores nothing itself: ``atomic_open`` turns SIGXFSZ into EFBIG. Each child overwrites a small good file
with a bigger one that exceeds ``RLIMIT_FSIZE``, prints the error line and exits with EXIT_OUTPUT_WRITE_FAILED.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nni_darts_ext.errors import OutputWriteError
from nni_darts_ext.io import (
    EXIT_OUTPUT_WRITE_FAILED,
    atomic_open,
    atomic_write_text,
)

REPO = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 64 * 1024  # the file-size limit of the child; the good files are far smaller, the new ones bigger
BIG_ELEMENTS = LIMIT_BYTES  # float32: 4x the limit

_CHILD = textwrap.dedent(
    """
    import resource, sys, torch
    from nni_darts_ext.errors import OutputWriteError
    from nni_darts_ext.io import EXIT_OUTPUT_WRITE_FAILED, atomic_torch_save, atomic_write_json
    from nni_darts_ext.callbacks import AtomicCheckpointIO
    kind, target, limit, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    big = torch.arange(size, dtype=torch.float32)
    try:
        if kind == "model":
            atomic_torch_save({"w": big}, target)
        elif kind == "checkpoint":
            AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": big}, "epoch": 1}, target)
        else:
            atomic_write_json(target, {"values": big.tolist()})
    except OutputWriteError as error:
        print(error)
        sys.exit(EXIT_OUTPUT_WRITE_FAILED)
    print("written")
    """
)


def _good(kind: str, target: Path) -> bytes:
    if kind == "json":
        atomic_write_text(target, '{"good": true}\n')
    else:
        torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 0} if kind == "checkpoint" else {"w": torch.ones(3)},
                   target)
    return target.read_bytes()


@pytest.mark.e2e  # a child process under RLIMIT_FSIZE
@pytest.mark.parametrize("kind, name", [("model", "model.pt"), ("checkpoint", "last.ckpt"), ("json", "summary.json")])
def test_write_over_file_size_limit_keeps_previous_file(tmp_path, kind, name):
    target = tmp_path / name
    before = _good(kind, target)
    assert len(before) < LIMIT_BYTES
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(target), str(LIMIT_BYTES), str(BIG_ELEMENTS)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == EXIT_OUTPUT_WRITE_FAILED, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    line = proc.stdout.strip()
    assert "\n" not in line
    assert line.startswith(f"cannot write {target}: File too large") and "EFBIG" in line
    assert target.read_bytes() == before  # the previous file whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


@pytest.mark.e2e  # a child process
def test_write_succeeds_again_once_space_is_back(tmp_path):
    target = tmp_path / "model.pt"
    _good("model", target)
    proc = subprocess.run([sys.executable, "-c", _CHILD, "model", str(target), str(16 * LIMIT_BYTES), str(BIG_ELEMENTS)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "written", proc.stderr[-2000:]
    assert torch.load(target)["w"].numel() == BIG_ELEMENTS


def test_error_is_an_oserror_with_one_line(tmp_path):
    error = OutputWriteError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "arch.json"))
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(error) == (f"cannot write {tmp_path / 'arch.json'}: No space left on device (errno {errno.ENOSPC}, "
                          "ENOSPC); the previous file, if any, is kept whole")


def test_unwritable_folder_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputWriteError, match=r"cannot write .*file/summary.json: File exists \(errno \d+, EEXIST\)"):
        atomic_write_text(blocker / "summary.json", "{}")


def test_a_network_error_inside_the_block_is_not_reported_as_a_write_error(tmp_path):
    target = tmp_path / "weights.pt"
    atomic_write_text(target, "good")
    with pytest.raises(ConnectionResetError):
        with atomic_open(target) as handle:
            handle.write(b"partial")
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert target.read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]
