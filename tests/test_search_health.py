"""Search health: Hessian eigenvalue, DARTS-ES rule, records, warnings, the Lightning monitor and ``inspect``."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import pytorch_lightning as pl
import torch

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.callbacks.search_health import SearchHealthMonitor
from nni_darts_ext.errors import InspectError
from nni_darts_ext.health import (
    RECORD_KEYS,
    DartsEarlyStopping,
    append_health_record,
    dominant_hessian_eigenvalue,
    health_record,
    health_warnings,
    hessian_power_iteration,
    plot_health,
    read_health_records,
)
from nni_darts_ext.inspect_run import format_report, inspect_run

WIDTH, CELLS, IMAGE, BATCH = 4, 3, 8, 8


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ eigenvalue


def test_eigenvalue_of_a_quadratic_is_the_largest_of_its_matrix():
    # loss = 1/2 x^T A x has Hessian A; A = Q diag(5, 2, -1) Q^T, so the dominant eigenvalue is 5.
    q, _ = torch.linalg.qr(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 3.0]], dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([5.0, 2.0, -1.0], dtype=torch.float64)) @ q.T
    x = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    estimate = hessian_power_iteration(lambda: 0.5 * x @ a @ x, [x], iterations=200, tol=1e-12)
    assert estimate.value == pytest.approx(5.0, rel=1e-6)
    assert x.grad is None  # .grad untouched


class _TinyMixedNet(torch.nn.Module):
    """Two DARTS-like edges mixing three ops with softmax(alpha) weights, then a linear classifier."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.alpha = torch.nn.Parameter(torch.randn(2, 3, generator=gen, dtype=torch.float64))
        self.ops = torch.nn.Parameter(torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64))
        self.head = torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64))

    def forward(self, x, alpha=None):
        alpha = self.alpha if alpha is None else alpha
        for edge in range(2):
            weights = torch.softmax(alpha[edge], dim=-1)
            x = torch.tanh(sum(w * x @ op for w, op in zip(weights, self.ops[edge], strict=False)))
        return x @ self.head


def test_eigenvalue_matches_the_exact_autograd_hessian_within_1e3():
    net = _TinyMixedNet()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    criterion = torch.nn.CrossEntropyLoss()

    flat_alpha = net.alpha.detach().reshape(-1)
    exact = torch.autograd.functional.hessian(lambda a: criterion(net(x, a.view(2, 3)), y), flat_alpha)
    eigenvalues = torch.linalg.eigvalsh(exact)
    dominant = eigenvalues[eigenvalues.abs().argmax()].item()
    second = sorted(eigenvalues.abs().tolist())[-2]
    assert abs(dominant) > 1.2 * second  # a spectral gap, so power iteration converges

    value = dominant_hessian_eigenvalue(lambda: criterion(net(x), y), [net.alpha], iterations=300, tol=1e-9)
    assert value == pytest.approx(dominant, rel=1e-3)
    # The default budget (20 products, tol 1e-3) lands close as well on this tiny problem.
    default = hessian_power_iteration(lambda: criterion(net(x), y), [net.alpha])
    assert default.iterations <= 20
    assert default.value == pytest.approx(dominant, rel=2e-2)
    assert net.alpha.grad is None


def test_eigenvalue_argument_checks():
    a = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="params"):
        dominant_hessian_eigenvalue(lambda: a.sum(), [])
    with pytest.raises(ValueError, match="iterations"):
        dominant_hessian_eigenvalue(lambda: a.sum(), [a], iterations=0)
    with pytest.raises(TypeError, match="scalar"):
        dominant_hessian_eigenvalue(lambda: a * 2, [a])
    assert dominant_hessian_eigenvalue(lambda: (a * 3).sum(), [a]) == 0.0  # linear: the Hessian is zero


# ------------------------------------------------------------------------------------------------ DARTS-ES


def test_early_stop_fires_on_a_scripted_jump_and_goes_back_to_the_reference_epoch():
    # Eigenvalue 1.0 for epochs 0..14, then 3.0. Local averages (window 5) are centred two epochs back; the rule
    # compares the latest with the one 4 evaluations earlier, allowed once that earlier centre is >= epoch 10.
    # At epoch 16: latest = mean(ev[12..16]) = (1+1+1+3+3)/5 = 1.8 (centre 14), reference = mean(ev[8..12]) = 1.0
    # (centre 10); 1.8 > 1.3 * 1.0 -> stop, go back to epoch 10. At epoch 15 the reference centre is 9 (< 10).
    rule = DartsEarlyStopping()
    fired = [epoch for epoch in range(30) if rule.update(epoch, 1.0 if epoch < 15 else 3.0)]
    assert fired == [16]
    assert (rule.stop_epoch, rule.go_back_epoch) == (16, 10)
    assert rule.local_averages[-1] == (27, pytest.approx(3.0))


def test_early_stop_with_eigenvalues_every_second_epoch():
    # Evaluations at epochs 0, 2, 4, ...: centres lag 4 epochs, the reference 8 more; first allowed at epoch 22.
    # A jump to 3.0 from epoch 16: at epoch 22 the latest average is mean(ev at 14..22) = (1+3+3+3+3)/5 = 2.6.
    rule = DartsEarlyStopping()
    fired = [epoch for epoch in range(0, 40, 2) if rule.update(epoch, 1.0 if epoch < 16 else 3.0)]
    assert fired == [22]
    assert rule.go_back_epoch == 10


@pytest.mark.parametrize("series", [
    [1.0] * 30,                                   # flat
    [1.05 ** e for e in range(30)],               # 4 epochs of 5% growth: 1.216 < 1.3
    [1.0 if e < 8 else 5.0 for e in range(14)],   # jumps, but the reference epoch never reaches 10
])
def test_early_stop_stays_quiet(series):
    rule = DartsEarlyStopping()
    assert not any(rule.update(epoch, ev) for epoch, ev in enumerate(series))
    assert rule.go_back_epoch is None


def test_early_stop_never_fires_on_the_final_epoch_and_checks_arguments():
    rule = DartsEarlyStopping(window=1, delta=1, factor=1.5, start_epoch=0)
    assert not rule.update(0, 1.0)
    assert not rule.update(1, 2.0, final=True)
    with pytest.raises(ValueError, match="epoch must increase"):
        rule.update(1, 1.0)
    with pytest.raises(ValueError, match="eigenvalue"):
        rule.update(2, float("nan"))
    with pytest.raises(ValueError, match="factor"):
        DartsEarlyStopping(factor=0)


# ------------------------------------------------------------------------------------------------ records


def test_health_record_on_hand_made_darts_archs(darts_v2_arch):
    changed = dict(darts_v2_arch, **{"normal/op_2_0": "skip_connect", "reduce/input_5_1": [0]})
    probs = {"normal/2_0": {"a": 0.5, "b": 0.5}, "normal/2_1": torch.tensor([1.0, 0.0])}
    record = health_record(3, changed, darts_v2_arch, probs, hessian_eigenvalue=0.25)
    assert set(RECORD_KEYS) <= set(record)
    assert record["epoch"] == 3
    assert record["genotype"].startswith("Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1)")
    assert record["changed_edges"] == 2
    assert record["skip_connects_normal"] == 3  # darts-v2 has 2 in the normal cell, plus the changed edge
    assert record["skip_connects_reduce"] == 3
    assert record["mean_entropy"] == pytest.approx((math.log(2) + 0.0) / 2)
    assert record["max_weight"] == 1.0
    assert record["hessian_eigenvalue"] == 0.25
    first = health_record(0, darts_v2_arch, None, {})
    assert first["changed_edges"] is None and first["mean_entropy"] is None and first["hessian_eigenvalue"] is None
    json.dumps(record)  # JSON-ready


def test_health_record_on_a_foreign_arch_falls_back_to_json_text():
    record = health_record(1, {"b": 2, "a": [1]}, {"a": [1], "b": 3}, {"b": [0.25, 0.75]})
    assert record["genotype"] == '{"a": [1], "b": 2}'
    assert record["changed_edges"] == 1
    assert (record["skip_connects_normal"], record["skip_connects_reduce"]) == (0, 0)
    with pytest.raises(ValueError, match="epoch"):
        health_record(-1, {}, None, {})
    with pytest.raises(TypeError, match="probs"):
        health_record(0, {}, None, [0.5, 0.5])


def _records(skips, changed):
    return [{"epoch": e, "skip_connects_normal": s, "skip_connects_reduce": 0, "changed_edges": c,
             "mean_entropy": 1.0, "hessian_eigenvalue": None} for e, (s, c) in enumerate(zip(skips, changed, strict=False))]


def test_health_warnings():
    assert health_warnings([]) == []
    assert health_warnings(_records([2], [None])) == []
    (line,) = health_warnings(_records([1, 3], [None, 1]))
    assert "3 skip connections" in line and "epoch 1" in line
    stalled = _records([0] * 11, [None] + [0] * 10)
    (line,) = health_warnings(stalled)
    assert "not changed for 10 epochs" in line
    assert health_warnings(stalled[:-1]) == []  # 9 unchanged epochs
    assert health_warnings(stalled, stall_epochs=5)


def test_append_is_atomic_and_replaces_later_epochs(tmp_path):
    path = tmp_path / "search_health.json"
    for epoch in (0, 1, 2):
        append_health_record(path, {"epoch": epoch})
    append_health_record(path, {"epoch": 1, "resumed": True})
    assert read_health_records(path) == [{"epoch": 0}, {"epoch": 1, "resumed": True}]
    assert [p.name for p in tmp_path.iterdir()] == ["search_health.json"]  # no temporaries left
    assert plot_health(_records([0, 1], [None, 2]), tmp_path / "health.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------------ monitor + inspect


class _FiresAtEpochOne(DartsEarlyStopping):
    """A scripted rule: fires at epoch 1 and goes back to epoch 0."""

    def update(self, epoch, eigenvalue, *, final=False):
        super().update(epoch, eigenvalue, final=True)
        if epoch == 1:
            self.stopped, self.stop_epoch, self.go_back_epoch = True, 1, 0
            return True
        return False


class _Experiment:
    def __init__(self):
        self.scalars, self.images = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.images.append((tag, image.shape, step, dataformats))


class _RecordingLogger(pl.loggers.Logger):
    def __init__(self):
        super().__init__()
        self._experiment = _Experiment()

    @property
    def experiment(self):
        return self._experiment

    name, version = "recording", 0

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        pass


class _ProbeWhileRunning(pl.Callback):
    """At the start of epoch 1: inspect the folder of the running search, and keep a copy of what is on disk."""

    def __init__(self, out, snapshot):
        self.out, self.snapshot, self.report = out, snapshot, None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.report = inspect_run(self.out)
            shutil.copytree(self.out, self.snapshot)


def _tiny_search(out, callbacks, logger, max_epochs):
    with import_nni_quietly():
        from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni_darts_ext.search import darts_strategy
    from nni_darts_ext.training_module import DartsClassificationModule

    torch.manual_seed(0)
    strategy = darts_strategy("first-order")
    module = DartsClassificationModule(max_epochs=max_epochs)
    module.set_model(strategy.mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar")))
    oneshot = strategy.configure_oneshot_module(module)
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(2 * BATCH, 3, IMAGE, IMAGE, generator=gen),
                                          torch.randint(0, 10, (2 * BATCH,), generator=gen))
    train, val = (torch.utils.data.DataLoader(torch.utils.data.Subset(data, idx), batch_size=BATCH)
                  for idx in (range(BATCH), range(BATCH, 2 * BATCH)))
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=callbacks, default_root_dir=str(out),
                         log_every_n_steps=1)
    trainer.fit(oneshot, train_dataloaders=strategy.train_dataloader(lambda: train, lambda: val))
    return oneshot, trainer


def _write_search_files(out, epochs, summary=None):
    (out / "config.yaml").write_text(
        f"name: demo\ndataset:\n  name: digits\nsearch:\n  strategy: first-order\n  epochs: {epochs}\n"
        "  hessian_every: 1\n")
    if summary is not None:
        (out / "summary.json").write_text(json.dumps(summary))


@pytest.mark.e2e  # a whole search
def test_tiny_search_writes_one_record_per_epoch_early_stops_and_inspect_reports(tmp_path, caplog):
    out, snapshot = tmp_path / "run", tmp_path / "killed"
    out.mkdir()
    _write_search_files(out, epochs=3)
    monitor = SearchHealthMonitor(out, hessian_every=1, early_stop="hessian", rule=_FiresAtEpochOne(),
                                  power_iterations=2, max_normal_skips=0)
    probe = _ProbeWhileRunning(out, snapshot)
    logger = _RecordingLogger()
    oneshot, trainer = _tiny_search(out, [monitor, probe], logger, max_epochs=3)

    # One record per epoch, stopped after epoch 1 of 3 by the (scripted) rule.
    records = read_health_records(out / "search_health.json")
    assert [r["epoch"] for r in records] == [0, 1]
    for record in records:
        assert set(RECORD_KEYS) <= set(record)
        assert record["genotype"].startswith("Genotype(")
        assert record["hessian_eigenvalue"] is not None and math.isfinite(record["hessian_eigenvalue"])
        assert record["hessian_iterations"] == 2
        assert 0 < record["max_weight"] <= 1 and record["mean_entropy"] > 0
    assert records[0]["changed_edges"] is None and isinstance(records[1]["changed_edges"], int)
    assert records[1]["arch"] == oneshot.export()
    assert monitor.stopped_early and trainer.current_epoch == 2
    assert monitor.go_back_epoch == 0 and monitor.go_back_arch == records[0]["arch"]
    assert monitor.early_stop_summary()["go_back_epoch"] == 0
    assert (out / "health.png").stat().st_size > 0
    assert {tag for tag, _, _ in logger.experiment.scalars} >= {"search/hessian_eigenvalue", "search/mean_entropy",
                                                                "search/skip_connects_normal"}
    assert [(tag, shape[-1], step) for tag, shape, step, _ in logger.experiment.images] == [
        ("search/cells", 3, 0), ("search/cells", 3, 1)]
    assert any("search health" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert any("DARTS-ES" in r.getMessage() for r in caplog.records)

    # Finished (summary written as the pipeline does at the end).
    _write_search_files(out, epochs=3, summary={"command": "search", "epochs": 2, "genotype": records[1]["genotype"],
                                                 "early_stop": monitor.early_stop_summary()})
    report = inspect_run(out)
    assert report["status"] == "finished" and report["epochs_done"] == 2 and report["epochs_planned"] == 3
    assert [row["epoch"] for row in report["epochs"]] == [0, 1]
    assert report["epochs"][1]["hessian_eigenvalue"] == records[1]["hessian_eigenvalue"]
    assert report["early_stop"]["go_back_epoch"] == 0
    text = format_report(report)
    assert "finished" in text and "recipe demo, preset first-order" in text and "epochs done: 2 of 3" in text
    assert "architecture of epoch 0" in text and "health.png" in text
    assert f"{records[1]['hessian_eigenvalue']:.4f}" in text
    json.dumps(report)

    # Still going: what inspect saw at the start of epoch 1, while the trainer ran.
    running = probe.report
    assert running["status"] == "incomplete" and running["epochs_done"] == 1
    assert "still running" in format_report(running)

    # Killed midway: the files on disk at that moment, plus a temporary a kill left behind mid-write.
    (snapshot / ".search_health.json.abc123.tmp").write_text('[{"epoch": 0, "geno')
    killed = inspect_run(snapshot)
    assert killed["status"] == "incomplete" and [r["epoch"] for r in killed["epochs"]] == [0]
    assert killed["checkpoint"] is None and killed["notes"] == []


def test_eigenvalue_leaves_the_supernet_as_it_was():
    with import_nni_quietly():
        from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni_darts_ext.search import darts_strategy
    from nni_darts_ext.training_module import DartsClassificationModule

    torch.manual_seed(0)
    strategy = darts_strategy("first-order")
    module = DartsClassificationModule(max_epochs=1)
    module.set_model(strategy.mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar")))
    oneshot = strategy.configure_oneshot_module(module)
    oneshot.train()
    for p in oneshot.parameters():
        p.grad = torch.full_like(p, 0.5)
    monitor = SearchHealthMonitor("unused", hessian_every=1, power_iterations=2, hessian_batch_size=BATCH // 2)
    batch = {"train": None, "val": (torch.randn(BATCH, 3, IMAGE, IMAGE), torch.randint(0, 10, (BATCH,)))}
    monitor.on_train_batch_start(None, oneshot, batch, 0)
    monitor.on_train_batch_start(None, oneshot, {"val": (batch["val"][0] + 1, batch["val"][1])}, 1)
    assert torch.equal(monitor.val_batch[0], batch["val"][0])  # the first batch kept (evaluated in two chunks)
    before = {k: v.clone() for k, v in oneshot.state_dict().items()}
    assert any("running_mean" in k for k in before)
    rng = torch.get_rng_state()
    value, iterations, seconds = monitor.compute_eigenvalue(oneshot)
    assert math.isfinite(value) and iterations == 2 and seconds > 0
    after = oneshot.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in oneshot.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no such folder"),
    (lambda d: d.write_text("x"), "not a folder"),
    (lambda d: (d.mkdir(), (d / "notes.txt").write_text("x")), "not an nni-darts search folder"),
    (lambda d: (d.mkdir(), (d / "config.yaml").write_text("a: 1\n")), "not an nni-darts recipe"),
    (lambda d: (d.mkdir(), (d / "summary.json").write_text('{"command": "retrain"}')), "retrain run, not a search"),
])
def test_inspect_refuses_bad_or_foreign_folders_in_one_line(tmp_path, setup, message):
    folder = tmp_path / "dir"
    setup(folder)
    with pytest.raises(InspectError, match=message) as info:
        inspect_run(folder)
    assert "\n" not in str(info.value)


def test_inspect_notes_unreadable_files_and_reports_what_it_can(tmp_path):
    _write_search_files(tmp_path, epochs=5)
    (tmp_path / "search_health.json").write_text('[{"epoch": 0, "genoty')  # written by something else, cut off
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    report = inspect_run(tmp_path)
    assert report["status"] == "incomplete" and report["epochs"] == [] and report["epochs_planned"] == 5
    assert report["checkpoint"].endswith("last.ckpt")
    assert len(report["notes"]) == 1 and "search_health.json unreadable" in report["notes"][0]
    assert "no search_health.json records yet" in format_report(report)


def test_monitor_state_round_trips_and_replays_the_rule():
    records = [{"epoch": e, "hessian_eigenvalue": (1.0 if e < 15 else 3.0) if e % 2 == 0 else None,
                "arch": {"e": e}} for e in range(16)]
    monitor = SearchHealthMonitor("unused", hessian_every=2, early_stop="hessian")
    monitor.records = records
    restored = SearchHealthMonitor("unused", hessian_every=2, early_stop="hessian")
    restored.load_state_dict(monitor.state_dict())
    assert restored.records == records and not restored.stopped_early
    assert restored.rule.epochs == list(range(0, 16, 2))
    fresh = DartsEarlyStopping()
    for e in range(0, 16, 2):
        fresh.update(e, records[e]["hessian_eigenvalue"])
    assert restored.rule.local_averages == fresh.local_averages


@pytest.mark.parametrize("kwargs, error, message", [
    ({"early_stop": "hessian"}, ValueError, "needs hessian_every"),
    ({"early_stop": "loss", "hessian_every": 1}, ValueError, "early_stop must be"),
    ({"hessian_every": -1}, ValueError, "hessian_every"),
    ({"hessian_batch_size": 0}, ValueError, "hessian_batch_size"),
    ({"rule": object()}, TypeError, "rule"),
])
def test_monitor_argument_checks(kwargs, error, message):
    with pytest.raises(error, match=message):
        SearchHealthMonitor("out", **kwargs)


@pytest.mark.e2e  # a fresh interpreter
def test_inspect_reads_records_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys, nni_darts_ext.inspect_run, nni_darts_ext.health; "
            "sys.exit(1 if 'torch' in sys.modules or 'nni' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.e2e
def test_cli_search_writes_health_and_inspect_reports_it(tmp_path, monkeypatch, capsys):
    """`nni-darts search` writes one record per epoch, health.png and the summary keys; `inspect` reports them."""
    import json as json_module

    from test_cli import TINY_DATA, TINY_SEARCH, run

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, _, _ = run(["search", "--recipe", "demo", "--out", out, "--threads", "1", "--set", *TINY_DATA,
                      *TINY_SEARCH, "search.epochs=2", "search.hessian_every=1"], capsys)
    assert code == 0
    records = json_module.loads((out / "search_health.json").read_text())
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["hessian_eigenvalue"] is not None for r in records)
    assert (out / "health.png").stat().st_size > 0
    summary = json_module.loads((out / "summary.json").read_text())
    assert summary["health"] == "search_health.json" and summary["early_stop"] is None

    code, text, _ = run(["inspect", out], capsys)
    assert code == 0 and "demo" in text and "first-order" in text
    code, text, _ = run(["inspect", out, "--json"], capsys)
    report = json_module.loads(text)
    assert code == 0 and report["status"] == "finished" and report["epochs_done"] == 2 and len(report["epochs"]) == 2

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not a run")
    code, _, err = run(["inspect", tmp_path / "foreign"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["first-order", "drnas"])
def test_chunked_eigenvalue_equals_the_whole_batch_one(name):
    """Hessian-vector products over chunks of the validation batch (``hessian_batch_size``) give the whole batch's
    eigenvalue: float64, eval-mode BatchNorm (per-sample), a fixed number of products; relative difference 1e-9.
    DrNAS samples its architecture: every chunk must see the same sample."""
    with import_nni_quietly():
        from nni.nas.hub.pytorch import DARTS as DartsSpace
    from nni_darts_ext.search import darts_strategy
    from nni_darts_ext.training_module import DartsClassificationModule

    torch.manual_seed(0)
    strategy = darts_strategy(name)
    module = DartsClassificationModule(max_epochs=1)
    module.set_model(strategy.mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar")))
    oneshot = strategy.configure_oneshot_module(module).double().eval()
    batch = {"val": (torch.randn(BATCH, 3, IMAGE, IMAGE, dtype=torch.float64), torch.randint(0, 10, (BATCH,)))}
    values = []
    for chunk in (None, 3):  # 3 does not divide the batch: the chunks are weighted by their sizes
        monitor = SearchHealthMonitor("unused", hessian_every=1, power_iterations=3, power_tol=0.0,
                                      hessian_batch_size=chunk)
        monitor.on_train_batch_start(None, oneshot, batch, 0)
        value, iterations, _ = monitor.compute_eigenvalue(oneshot)
        assert iterations == 3 and value != 0.0
        values.append(value)
    assert values[1] == pytest.approx(values[0], rel=1e-9)


@pytest.mark.e2e  # a whole search through the CLI
def test_cli_search_stopped_by_darts_es_exports_the_architecture_of_the_go_back_epoch(tmp_path, monkeypatch,
                                                                                       nni_home):
    """DARTS-ES through ``nni-darts search``: arch.json, genotype.txt and summary.json hold the architecture of the
    epoch the rule goes back to (a scripted rule fires at epoch 1 and goes back to epoch 0), not the last one."""
    from nni_darts_ext.arch import load_arch, normalize_arch
    from nni_darts_ext.callbacks import search_health as search_health_module
    from nni_darts_ext.cli import main

    monkeypatch.setattr(search_health_module, "DartsEarlyStopping", _FiresAtEpochOne)
    out = tmp_path / "search"
    tiny = ["dataset.image_size=8", "dataset.max_samples=64", "search.width=4", "search.cells=3", "search.epochs=3",
            "search.batch_size=16", "search.arc_learning_rate=3.0", "search.hessian_every=1",
            "search.early_stop=hessian"]
    assert main(["search", "--recipe", "demo", "--out", str(out), "--quiet", "--threads", "1", "--set", *tiny]) == 0
    records = read_health_records(out / "search_health.json")
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["arch"] != records[1]["arch"]  # the two epochs export different cells: the choice is visible
    assert load_arch(out / "arch.json") == normalize_arch(records[0]["arch"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["early_stop"]["go_back_epoch"] == 0 and summary["early_stop"]["stop_epoch"] == 1
    assert summary["genotype"] == records[0]["genotype"]
