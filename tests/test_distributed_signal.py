"""DistributedSignalStop on 2 CPU processes (Lightning DDP, gloo): SIGTERM to one rank stops both at the same step,
rank 0 writes one last.ckpt, both exit 143, and a resume on 2 processes ends where the uninterrupted run ends.

This file doubles as the per-rank script (``python tests/test_distributed_signal.py OUT MODE``); Lightning re-runs
it for rank 1. MODE is ``full`` (uninterrupted), ``interrupt`` (rank 1 gets SIGTERM after step SIGNAL_AT_STEP) or
``resume`` (from OUT/ckpt/last.ckpt).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
EPOCHS = 2
SAMPLES, BATCH = 48, 4  # 6 batches per rank per epoch
STEPS = EPOCHS * SAMPLES // (BATCH * WORLD_SIZE)
SIGNAL_AT_STEP = 8  # mid-epoch 1
SIGNALLED_RANK = 1


def _worker(out: Path, mode: str) -> None:  # pragma: no cover - runs in the DDP subprocesses
    import pytorch_lightning as pl
    from torch import nn

    from nni_darts_ext.callbacks import AtomicCheckpointIO
    from nni_darts_ext.callbacks.distributed_signal import DistributedSignalStop
    from nni_darts_ext.callbacks.timed_checkpoint import TimedCheckpoint
    from nni_darts_ext.resumable_data import ExactResume, ResumableDataLoader

    torch.set_num_threads(1)

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
            self.alpha = nn.Parameter(torch.zeros(3))  # stands for architecture parameters

        def training_step(self, batch, batch_idx):
            x, y = batch
            x = x + 0.1 * torch.randn_like(x)
            return nn.functional.cross_entropy(self.net(x) + self.alpha, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if mode == "interrupt" and trainer.global_rank == SIGNALLED_RANK and trainer.global_step == SIGNAL_AT_STEP:
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal, to this rank only, before the stop check

        def on_train_end(self, trainer, module):
            torch.save({"params": {n: p.detach().clone() for n, p in module.named_parameters()},
                        "global_step": trainer.global_step}, out / f"{mode}.rank{trainer.global_rank}.pt")

        def on_exception(self, trainer, module, exception):
            torch.save({"exception": type(exception).__name__, "code": getattr(exception, "code", None),
                        "global_step": trainer.global_step}, out / f"{mode}.rank{trainer.global_rank}.stop.pt")

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(SAMPLES, 6, generator=generator),
                                          torch.randint(0, 3, (SAMPLES,), generator=generator))
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=WORLD_SIZE, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         plugins=[AtomicCheckpointIO()], default_root_dir=str(out),
                         callbacks=[Record(), ExactResume(), DistributedSignalStop(out / "ckpt"),
                                    TimedCheckpoint(3600, out / "timed")])  # its per-batch broadcast, never due
    ckpt = str(out / "ckpt" / "last.ckpt") if mode == "resume" else None
    trainer.fit(Net(), ResumableDataLoader(data, batch_size=BATCH, shuffle=True, seed=1), ckpt_path=ckpt)


def _launch(out: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(out)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out), mode], cwd=str(out), env=env,
                          capture_output=True, text=True, timeout=600)
    print(f"{mode}: exit {proc.returncode} in {time.perf_counter() - start:.1f}s")
    return proc


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


@pytest.mark.e2e  # a 2-process DDP launch
@pytest.mark.xdist_group("ddp")  # never beside another DDP launch (see test_distributed.py)
def test_sigterm_on_one_rank_stops_all_saves_once_and_resumes(tmp_path):
    full = _launch(tmp_path, "full")
    assert full.returncode == 0, full.stderr[-3000:]

    interrupted = _launch(tmp_path, "interrupt")
    assert interrupted.returncode == 128 + signal.SIGTERM, interrupted.stderr[-3000:]
    stops = [_load(tmp_path / f"interrupt.rank{r}.stop.pt") for r in range(WORLD_SIZE)]
    assert all(s["exception"] == "TrainingInterrupted" and s["code"] == 143 for s in stops)
    assert {s["global_step"] for s in stops} == {SIGNAL_AT_STEP}  # the same step on every rank
    assert not (tmp_path / "interrupt.rank0.pt").exists()  # training did not go on
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]  # one file, no temporaries
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == SIGNAL_AT_STEP and "alpha" in checkpoint["state_dict"]
    assert len(checkpoint["callbacks"]["ExactResume"]["rng_states"]) == WORLD_SIZE

    resumed = _launch(tmp_path, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in range(WORLD_SIZE):
        expected, got = _load(tmp_path / f"full.rank{rank}.pt"), _load(tmp_path / f"resume.rank{rank}.pt")
        assert got["global_step"] == expected["global_step"] == STEPS
        for name, value in expected["params"].items():
            assert torch.equal(value, got["params"][name]), (rank, name)



def test_one_process_sigint_saves_and_exits_130(tmp_path):
    """Without DDP the callback is CheckpointOnSignal: a real SIGINT mid-epoch -> last.ckpt after that step, 130."""
    import pytorch_lightning as pl
    from torch import nn

    from nni_darts_ext.callbacks import AtomicCheckpointIO, TrainingInterrupted
    from nni_darts_ext.callbacks.distributed_signal import DistributedSignalStop

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(6, 3)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Interrupt(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    data = torch.utils.data.TensorDataset(torch.randn(40, 6), torch.randint(0, 3, (40,)))
    previous = signal.getsignal(signal.SIGINT)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                         callbacks=[Interrupt(), DistributedSignalStop(tmp_path)])
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=4))
    assert info.value.code == 130 and info.value.global_step == 3
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) == previous  # handlers given back


def test_argument_checks(tmp_path):
    from nni_darts_ext.callbacks.distributed_signal import DistributedSignalStop

    with pytest.raises(ValueError, match="signals"):
        DistributedSignalStop(tmp_path, signals=[signal.SIGHUP])
    with pytest.raises(ValueError, match="dirpath"):
        DistributedSignalStop("")


if __name__ == "__main__":  # pragma: no cover - the per-rank script
    _worker(Path(sys.argv[1]), sys.argv[2])
