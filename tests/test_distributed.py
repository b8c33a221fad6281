"""Issue 6: DARTS search and retrain on 2 CPU processes (Lightning DDP, gloo), tiny space.

The DDP runs use Lightning's own launcher: this file doubles as the per-rank script (``python
tests/test_distributed.py OUT``); Lightning re-runs it for rank 1. One launch runs the three presets' searches
(first-order, second-order, pc-darts; a few steps each) and a short retrain, and each rank writes what it ended
with to ``OUT/<stage>.rank<r>.pt``; the tests compare the ranks. Then the retrain checkpoint is evaluated here, in
a single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# One xdist worker for every 2-process launch (here, in test_distributed_signal.py, test_long_runs_cli.py and
# test_perturbation_selection.py): two launches never share the 2 cores, and the module's DDP run (ddp_run) happens
# once.
pytestmark = pytest.mark.xdist_group("ddp")

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("first-order", "second-order", "pc-darts")
WORLD_SIZE = 2
IMAGE_SIZE = 16  # tiny: digits at 16x16, DARTS width 4, 3 cells (CONTRIBUTING.md)
SEARCH_STEPS = 3
RETRAIN_STEPS = 2
BATCH_SIZE = 8


# ------------------------------------------------------------------------------------------ per-rank worker
def _worker(out: Path) -> None:  # pragma: no cover - runs in the DDP subprocesses
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    import nni_darts_ext as nde
    from nni_darts_ext._compat import import_nni_quietly
    from nni_darts_ext.distributed import all_gather_max_abs_diff

    with import_nni_quietly():
        from nni.nas.evaluator.pytorch import DataLoader
        from nni.nas.experiment import NasExperiment
        from nni.nas.hub.pytorch import DARTS as DartsSpace

    torch.set_num_threads(1)

    class Record(pl.Callback):
        """Each rank's samplers, first batch labels and final parameters, saved at train end."""

        def __init__(self, stage: str):
            self.stage, self.first, self.start = stage, None, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if self.first is None:
                # Before the first step (and after the strategy synced the ranks): what the search starts from.
                self.start = {n: p.detach().clone() for n, p in module.named_parameters() if "_arch_" in n}
                self.first = {k: v[1].tolist() for k, v in batch.items()} if isinstance(batch, dict) else batch[1].tolist()

        def on_train_end(self, trainer, module):
            loaders = trainer.train_dataloader
            loaders = loaders.values() if isinstance(loaders, dict) else [loaders]
            record = {
                "samplers": [type(dl.sampler).__name__ for dl in loaders],
                "first_batch": self.first,
                "start_arch_params": self.start,
                "world_size": trainer.world_size,
                "params": {n: p.detach().clone() for n, p in module.named_parameters()},
                "weights_diff": all_gather_max_abs_diff(list(module.parameters())),
            }
            if hasattr(module, "arch_parameters"):
                order = {id(p): i for i, p in enumerate(module.parameters())}
                arch = sorted(module.arch_parameters(), key=lambda p: order[id(p)])
                arch_ids = {id(p) for p in arch}
                record["report"] = {  # the same collectives as DistributedArchSync.consistency_report, for any module
                    "world_size": trainer.world_size,
                    "alpha_max_abs_diff_across_ranks": all_gather_max_abs_diff(arch),
                    "weight_max_abs_diff_across_ranks": all_gather_max_abs_diff(
                        [p for p in module.parameters() if id(p) not in arch_ids]),
                }
                record["synced_by_us"] = hasattr(module, "consistency_report")
                record["arch"] = module.export()
            torch.save(record, out / f"{self.stage}.rank{trainer.global_rank}.pt")

    ddp = dict(accelerator="cpu", devices=WORLD_SIZE, strategy="ddp", logger=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=str(out))
    train_set = nde.digits(train=True, image_size=IMAGE_SIZE)
    for preset in PRESETS:
        pl.seed_everything(0, verbose=False)
        train_loader, val_loader = nde.search_dataloaders(train_set, batch_size=BATCH_SIZE)
        evaluator = nde.darts_evaluator(
            train_loader, val_loader, max_epochs=1, learning_rate=0.05, auxiliary_loss_weight=0.0,
            limit_train_batches=SEARCH_STEPS, enable_checkpointing=False, callbacks=[Record(preset)], **ddp)
        # Different alphas on each rank before the search: the strategy must start every rank from rank 0's.
        torch.manual_seed(int(os.environ.get("LOCAL_RANK", "0")))
        # PC-DARTS with channels-last (its CPU default) crashes the DDP processes with heap corruption on this stack
        # ("corrupted double-linked list", gloo, torch 2.14); without it the run is clean.
        strategy = nde.darts_strategy(preset, **({"channels_last": False} if preset == "pc-darts" else {}))
        experiment = NasExperiment(DartsSpace(width=4, num_cells=3, dataset="cifar"), evaluator, strategy)
        experiment.config.experiment_working_directory = str(out / "nni" / os.environ.get("LOCAL_RANK", "0"))
        experiment.run()
        experiment.stop()
        if preset == "first-order":
            arch = nde.normalize_arch(strategy.oneshot_module.export())

    # Retrain the first-order arch for RETRAIN_STEPS steps; Lightning's ModelCheckpoint writes on rank 0 only.
    pl.seed_everything(0, verbose=False)
    net = nde.build_model(arch, width=4, num_cells=3, image_size=IMAGE_SIZE)
    module = nde.DartsClassificationModule(max_epochs=1, learning_rate=0.05, auxiliary_loss_weight=0.0)
    module.set_model(net)
    trainer = nde.darts_trainer(max_epochs=1, limit_train_batches=RETRAIN_STEPS, gradient_clip_val=5.0,
                                callbacks=[Record("retrain"), ModelCheckpoint(dirpath=str(out / "ckpt"))], **ddp)
    trainer.fit(module, DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True))
    if trainer.global_rank == 0:
        nde.save_arch(arch, out / "arch.json")


# -------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NNI_HOME": str(out / "nni-home"), "HOME": str(out)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out)], cwd=str(out), env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"2-process DDP run: {seconds:.1f}s")
    return out


def _ranks(out: Path, stage: str) -> list:
    return [torch.load(out / f"{stage}.rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.e2e
def test_ddp_search_same_architecture_on_every_rank(ddp_run, preset):
    ranks = _ranks(ddp_run, preset)
    # Each rank read its own shard of both halves of the search split.
    # Lightning wraps the resumable (seed, epoch) sampler in its DistributedSamplerWrapper: one shard per rank.
    assert all(r["samplers"] == ["DistributedSamplerWrapper", "DistributedSamplerWrapper"] for r in ranks)
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]
    # All-gathered alphas (and betas) identical; the same exported arch; weights identical too.
    for r in ranks:
        assert r["world_size"] == WORLD_SIZE
        assert r["report"]["world_size"] == WORLD_SIZE
        assert r["report"]["alpha_max_abs_diff_across_ranks"] <= 1e-6
        assert r["report"]["weight_max_abs_diff_across_ranks"] <= 1e-6
    arch_names = [n for n in ranks[0]["params"] if "_arch_" in n]
    assert arch_names, "no architecture parameters found"
    if preset == "pc-darts":
        assert any("beta" in n for n in arch_names), arch_names
    for name in arch_names:
        torch.testing.assert_close(ranks[0]["params"][name], ranks[1]["params"][name], rtol=0, atol=1e-6)
    assert ranks[0]["arch"] == ranks[1]["arch"]
    assert all(r["synced_by_us"] for r in ranks), "the preset's module does not mix in DistributedArchSync"
    # Every rank started from the same alphas (rank 0's), and the search moved every one of them from there.
    for name in arch_names:
        torch.testing.assert_close(ranks[0]["start_arch_params"][name], ranks[1]["start_arch_params"][name],
                                   rtol=0, atol=0)
    moved = [n for n in arch_names if not torch.equal(ranks[0]["params"][n], ranks[0]["start_arch_params"][n])]
    assert moved == arch_names, f"the search left these at their start values: {sorted(set(arch_names) - set(moved))}"


@pytest.mark.e2e
def test_ddp_retrain_then_single_process_evaluate(ddp_run):
    from nni.nas.evaluator.pytorch import DataLoader

    import nni_darts_ext as nde

    ranks = _ranks(ddp_run, "retrain")
    assert all(r["samplers"] == ["DistributedSampler"] for r in ranks)
    assert ranks[0]["weights_diff"] == 0.0
    checkpoints = sorted((ddp_run / "ckpt").glob("*.ckpt"))
    assert len(checkpoints) == 1  # rank 0 only
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("module.") for k in state)  # no DDP wrapper prefix
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)

    arch = nde.load_arch(ddp_run / "arch.json")
    net = nde.build_model(arch, width=4, num_cells=3, image_size=IMAGE_SIZE)
    module = nde.DartsClassificationModule(max_epochs=1)
    module.set_model(net)
    module.load_state_dict(state)
    trainer = nde.darts_trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=str(ddp_run))
    test_set = nde.get_dataset("digits", train=False, image_size=IMAGE_SIZE)
    result = trainer.test(module, DataLoader(test_set, batch_size=64), verbose=False)[0]
    assert 0.0 <= result["test_acc"] <= 1.0
    assert torch.isfinite(torch.tensor(result["test_loss"]))


# ------------------------------------------------------------------------------------------ command line
TINY = ["dataset.image_size=8", "dataset.max_samples=64", "search.width=4", "search.cells=3", "search.epochs=1",
        "search.batch_size=16", "retrain.width=4", "retrain.cells=3", "retrain.epochs=1", "retrain.batch_size=16"]


def _nni_darts(args: list, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path), "NNI_HOME": str(tmp_path / "nni-home")}
    return subprocess.run([sys.executable, "-m", "nni_darts_ext", *args], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_cli_ddp_search_retrain_then_single_process_evaluate(tmp_path):
    import json

    ddp = ["--accelerator", "cpu", "--devices", str(WORLD_SIZE), "--strategy", "ddp", "--threads", "1"]
    done = _nni_darts(["search", "--out", str(tmp_path / "s"), *ddp, "--set", *TINY], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["world_size"] == WORLD_SIZE
    assert summary["alpha_max_abs_diff_across_ranks"] <= 1e-6
    assert not list(tmp_path.glob("nni-darts-rank*"))  # rank 1 wrote nothing of its own

    done = _nni_darts(["retrain", "--arch", str(tmp_path / "s" / "arch.json"), "--out", str(tmp_path / "r"), *ddp,
                       "--set", *TINY], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["world_size"], summary["global_batch_size"], summary["per_device_batch_size"]) == (2, 16, 8)
    assert "global batch 16 = 8 per device x 2" in done.stderr + done.stdout

    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    done = _nni_darts(["evaluate", "--arch", str(tmp_path / "r" / "arch.json"), "--weights", str(last),
                       "--accelerator", "cpu", "--threads", "1", "--set", *TINY], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    # An odd global batch cannot be split over 2 processes: one line, exit 2, nothing written.
    done = _nni_darts(["retrain", "--arch", str(tmp_path / "s" / "arch.json"), "--out", str(tmp_path / "odd"), *ddp,
                       "--set", *TINY, "retrain.batch_size=15"], tmp_path)
    assert done.returncode == 2 and "not divisible" in done.stderr and not (tmp_path / "odd").exists()


@pytest.mark.e2e
def test_cli_ddp_nni_retrain_loads_the_per_device_batch(tmp_path):
    """`retrain --nni` on 2 processes: the loaders really yield retrain.batch_size / 2 (the steps per epoch say so),
    and the summary reports that batch."""
    import json
    import math

    from nni_darts_ext.checkpoint import read_checkpoint
    from nni_darts_ext.data import search_split
    from nni_darts_ext.nni_trial import TRIAL_VALIDATION_FRACTION

    ddp = ["--accelerator", "cpu", "--devices", str(WORLD_SIZE), "--strategy", "ddp", "--threads", "1"]
    done = _nni_darts(["retrain", "--nni", "--arch", "darts-v2", "--out", str(tmp_path / "r"), *ddp, "--set", *TINY],
                      tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["world_size"], summary["global_batch_size"], summary["per_device_batch_size"]) == (2, 16, 8)
    assert summary["nni_trial"] is True and summary["validation"].startswith("held-out")
    # 64 images, 10% held out: each of the 2 ranks trains on half of the rest, in batches of 8 (not 16).
    samples = 64
    train_images = len(search_split(range(samples), 1.0 - TRIAL_VALIDATION_FRACTION, seed=0)[0])
    steps = math.ceil(math.ceil(train_images / WORLD_SIZE) / 8)
    assert steps != math.ceil(math.ceil(train_images / WORLD_SIZE) / 16)  # the check tells the two batches apart
    assert read_checkpoint(tmp_path / "r" / "checkpoints" / "last.ckpt")["global_step"] == steps


# ----------------------------------------------------------------------------------- helpers, one process
def test_helpers_are_no_ops_in_one_process():
    from nni_darts_ext.distributed import all_gather_max_abs_diff, all_reduce_gradients, is_distributed, world_size

    assert not is_distributed() and world_size() == 1
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    all_reduce_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert all_gather_max_abs_diff([p]) == 0.0
    with pytest.raises(TypeError, match="params"):
        all_reduce_gradients(p)
    with pytest.raises(TypeError, match="tensors"):
        all_gather_max_abs_diff([1.0])


def _gloo_worker(rank: int, port: int, out: str) -> None:  # pragma: no cover - spawned
    import torch.distributed as dist

    from nni_darts_ext.distributed import all_gather_max_abs_diff, all_reduce_gradients

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    a = torch.nn.Parameter(torch.zeros(2, 3))
    b = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    c = torch.nn.Parameter(torch.zeros(1))  # no gradient on any rank
    a.grad = torch.full((2, 3), float(rank + 1))  # 1 and 2 -> 1.5
    if rank == 0:
        b.grad = torch.full((4,), 4.0, dtype=torch.float64)  # None on rank 1 -> (4 + 0) / 2
    all_reduce_gradients([a, b, c])
    diff = all_gather_max_abs_diff([torch.tensor([0.0, float(rank) * 3])])
    torch.save({"a": a.grad, "b": b.grad, "c": c.grad, "diff": diff}, os.path.join(out, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.e2e
def test_all_reduce_gradients_and_gather_diff_on_two_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(got["a"], torch.full((2, 3), 1.5))
        assert torch.equal(got["b"], torch.full((4,), 2.0, dtype=torch.float64))
        assert got["c"] is None
        assert got["diff"] == 3.0


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
