"""``nni-darts`` end to end at tiny sizes (in-process ``main(argv)``), resume, and bad input → one line, exit 2.

Sizes: digits at 8x8, 64 images per split, width 4, 3 cells, batch 16, one epoch, one torch thread (tiny nets run
fastest on one thread; see CONTRIBUTING.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from nni_darts_ext.arch import build_model, count_parameters, load_arch, normalize_arch
from nni_darts_ext.cli import main
from nni_darts_ext.pipeline import pretrained
from nni_darts_ext.recipe_data import RecipeData

# e2e: runs searches, retrains or the CLI. One xdist worker: the module's search and retrain fixtures run once.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_cli")]

TINY_DATA = ["dataset.image_size=8", "dataset.max_samples=64"]
TINY_SEARCH = ["search.width=4", "search.cells=3", "search.epochs=1", "search.batch_size=16",
               "search.arc_learning_rate=0.05"]
TINY_RETRAIN = ["retrain.width=4", "retrain.cells=3", "retrain.epochs=1", "retrain.batch_size=16",
                "retrain.cutout=4", "retrain.drop_path_prob=0.2", "retrain.auxiliary_weight=0.4"]
THREADS = ["--threads", "1"]



def run(argv, capsys=None):
    code = main([str(a) for a in argv])
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def searched(tmp_path_factory, nni_home):
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--out", str(out), "--quiet", *THREADS, "--set", *TINY_DATA, *TINY_SEARCH]) == 0
    return out


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, searched):
    out = tmp_path_factory.mktemp("retrain") / "run"
    assert main(["retrain", "--arch", str(searched / "arch.json"), "--out", str(out), "--quiet", *THREADS,
                 "--set", *TINY_DATA, *TINY_RETRAIN]) == 0
    return out


def _last_ckpt(folder: Path) -> dict:
    return torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------------------------------------------
# Commands end to end
# ----------------------------------------------------------------------------------------------------------------


def test_search_writes_arch_plots_logs_checkpoints_and_summary(searched, nni_home):
    for name in ("arch.json", "genotype.txt", "cells.png", "alphas.png", "alphas.json", "config.yaml",
                 "summary.json", "checkpoints/last.ckpt"):
        assert (searched / name).is_file(), name
    assert list((searched / "tensorboard" / "search").glob("events.out.tfevents.*"))
    arch = json.loads((searched / "arch.json").read_text())
    assert arch == normalize_arch(arch) and isinstance(arch["normal/input_2_0"], list)  # NNI form
    assert "Genotype(normal=" in (searched / "genotype.txt").read_text()
    assert (searched / "cells.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((searched / "alphas.json").read_text())
    # softmax over the 7 ops and NNI's extra "none" logit per edge: the 7 shown sum to less than 1
    assert len(history) == 1 and len(history[0]) == 28  # 14 edges per cell
    assert all(len(ops) == 7 and 0 < sum(ops.values()) <= 1 + 1e-6 for ops in history[0].values())
    summary = json.loads((searched / "summary.json").read_text())
    for key in ("recipe", "dataset", "params", "search_seconds", "arch", "device", "seed", "torch_threads"):
        assert key in summary, key
    assert (summary["recipe"], summary["dataset"], summary["arch"], summary["epochs"]) == ("demo", "digits",
                                                                                          "arch.json", 1)
    assert summary["torch_threads"] == 1 and summary["device"] == "cpu"
    # NNI's experiment folder is inside the run folder, and its manifest entry points there
    experiment = searched / summary["nni_experiment"]
    assert (experiment / "log" / "experiment.log").is_file()
    manifest = json.loads((nni_home / ".experiment").read_text())
    assert manifest[summary["nni_experiment"]]["logDir"] == str(searched.resolve())
    assert "--quiet" not in (searched / "config.yaml").read_text()
    assert "max_samples: 64" in (searched / "config.yaml").read_text()


def test_compile_flag_compiles_the_search_cells_and_the_retrain_net(tmp_path, nni_home, monkeypatch):
    """``--compile``: the search compiles each supernet cell (not the NNI wrapper), retrain and evaluate the net."""
    compiled = []

    def recording_compile(fn, **kwargs):  # stands in for torch.compile: records what is compiled, runs eagerly
        compiled.append(type(fn.__self__).__name__)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    search = tmp_path / "search"
    assert main(["search", "--out", str(search), "--quiet", "--compile", *THREADS, "--set", *TINY_DATA,
                 *TINY_SEARCH]) == 0
    assert compiled == ["MixedCell"] * 3  # search.cells=3
    compiled.clear()
    retrain = tmp_path / "retrain"
    assert main(["retrain", "--arch", str(search), "--out", str(retrain), "--quiet", "--compile", *THREADS,
                 "--set", *TINY_DATA, *TINY_RETRAIN]) == 0
    assert compiled == ["DARTS"]  # NNI's fixed DARTS network, as one module
    compiled.clear()
    assert main(["evaluate", "--arch", str(retrain), "--weights", str(retrain / "model.pt"), "--compile", *THREADS,
                 "--set", *TINY_DATA, *TINY_RETRAIN]) == 0
    assert compiled == ["DARTS"]


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_search_resume_continues_epochs_and_restores_architecture_state(searched, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(searched, out)
    first = _last_ckpt(out)
    first_history = json.loads((out / "alphas.json").read_text())
    # --resume with no --recipe reads DIR/config.yaml; one more epoch
    code, stdout, stderr = run(["search", "--out", out, "--resume", *THREADS, "--set", "search.epochs=2"], capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["resumed_from"].endswith("last.ckpt")
    second = _last_ckpt(out)
    assert second["global_step"] == 2 * first["global_step"] and second["epoch"] == 1
    # the alpha history recorded before the interruption came back through the checkpoint
    history = json.loads((out / "alphas.json").read_text())
    assert len(history) == 2 and history[0] == first_history[0]
    # architecture optimizer (Adam, betas 0.5/0.999) state restored: its step count doubled
    def adam_steps(ckpt):
        for state in ckpt["optimizer_states"]:
            if tuple(state["param_groups"][0].get("betas", ())) == (0.5, 0.999):
                return {int(s["step"]) for s in state["state"].values()}
        raise AssertionError("no architecture optimizer state")
    assert adam_steps(first) == {first["global_step"] // 2}
    assert adam_steps(second) == {second["global_step"] // 2}
    # architecture weights moved on from the restored ones (a fresh start would end where run 1 ended)
    alphas = [k for k in first["state_dict"] if "_arch_alpha" in k]
    assert alphas
    assert any(not torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in alphas)
    assert "search epoch 2/2" in stderr and "search epoch 1/2" not in stderr


@pytest.mark.filterwarnings("ignore:.*Running trial code without runtime")
def test_retrain_as_nni_trial_outside_nni(searched, tmp_path, monkeypatch, capsys):
    """--nni outside an experiment (NNI's standalone mode): validates on held-out training images each epoch."""
    import nni.trial

    # as in a fresh process: the in-process search above left its model as NNI's "current parameter"
    monkeypatch.setattr(nni.trial, "_params", None)
    out = tmp_path / "trial"
    code, _, stderr = run(["retrain", "--nni", "--arch", searched, "--out", out, *THREADS, "--set", *TINY_DATA,
                           *TINY_RETRAIN], capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nni_trial"] is True and 0.0 <= summary["test_accuracy"] <= 1.0
    assert list((out / "tensorboard" / "retrain").glob("events.out.tfevents.*"))


def test_retrain_writes_model_and_tests_it(retrained, searched):
    summary = json.loads((retrained / "summary.json").read_text())
    for key in ("recipe", "dataset", "test_accuracy", "params", "retrain_seconds", "arch", "device", "seed",
                "torch_threads"):
        assert key in summary, key
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert load_arch(retrained / "arch.json") == load_arch(searched / "arch.json")
    model = build_model(load_arch(searched / "arch.json"), width=4, num_cells=3, auxiliary_loss=True,
                        drop_path_prob=0.2, image_size=8)
    assert summary["trained_params"] == count_parameters(model)
    assert summary["params"] == count_parameters(build_model(load_arch(searched / "arch.json"), width=4, num_cells=3,
                                                             image_size=8))  # as deployed: no auxiliary head
    assert summary["macs"] > 0 and summary["latency_ms"] > 0
    state = torch.load(retrained / "model.pt", weights_only=True)
    model.load_state_dict(state)  # a plain state dict of the net


def test_evaluate_raw_state_dict_and_lightning_checkpoint(retrained, tmp_path, capsys):
    expected = json.loads((retrained / "summary.json").read_text())["test_accuracy"]
    code, stdout, _ = run(["evaluate", "--arch", retrained, "--weights", retrained / "model.pt", *THREADS,
                           "--out", tmp_path / "e"], capsys)
    assert code == 0 and f"test accuracy {expected:.4f}" in stdout
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["test_accuracy"] == expected and (summary["width"], summary["cells"]) == (4, 3)
    code, stdout, _ = run(["evaluate", "--arch", retrained / "arch.json", "--weights",
                           retrained / "checkpoints" / "last.ckpt", *THREADS], capsys)
    assert code == 0 and f"test accuracy {expected:.4f}" in stdout


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_retrain_resume_continues_the_epoch_counter(retrained, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(retrained, out)
    first = _last_ckpt(out)
    code, _, stderr = run(["retrain", "--arch", out, "--out", out, "--resume", *THREADS,
                           "--set", "retrain.epochs=2"], capsys)
    assert code == 0, stderr
    second = _last_ckpt(out)
    assert second["global_step"] == 2 * first["global_step"] and second["epoch"] == 1
    momentum = [s["momentum_buffer"] for s in second["optimizer_states"][0]["state"].values()]
    assert momentum and all(m is not None for m in momentum)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["resumed_from"].endswith("last.ckpt")


def test_ctrl_c_during_retrain_exits_130_and_resume_finishes(searched, tmp_path, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt inside fit) at the start of epoch 2: Lightning stops gracefully, the CLI exits 130
    naming --resume, epoch 1's checkpoint is kept, and --resume runs the remaining epoch."""
    import signal

    from nni_darts_ext.callbacks import epoch_log

    handler = signal.getsignal(signal.SIGINT)
    original = epoch_log.EpochLog.on_train_epoch_start
    fired = []

    def interrupt_once(self, trainer, pl_module):
        if trainer.current_epoch == 1 and not fired:
            fired.append(True)
            raise KeyboardInterrupt
        original(self, trainer, pl_module)

    monkeypatch.setattr(epoch_log.EpochLog, "on_train_epoch_start", interrupt_once)
    out = tmp_path / "r"
    argv = ["retrain", "--arch", searched, "--out", out, *THREADS, "--set", *TINY_DATA, *TINY_RETRAIN,
            "retrain.epochs=2"]
    code, _, stderr = run(argv, capsys)
    assert code == 130 and "--resume" in stderr.splitlines()[-1], stderr
    assert signal.getsignal(signal.SIGINT) is handler
    assert _last_ckpt(out)["epoch"] == 0 and not (out / "model.pt").exists()
    code, _, stderr = run(argv[:5] + ["--resume"] + argv[5:], capsys)
    assert code == 0, stderr
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_demo_with_random_baseline(tmp_path, nni_home, capsys):
    out = tmp_path / "demo"
    code, stdout, stderr = run(["demo", "--out", out, "--baseline", "random", *THREADS,
                                "--set", *TINY_DATA, *TINY_SEARCH, *TINY_RETRAIN], capsys)
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in ("recipe", "dataset", "test_accuracy", "params", "search_seconds", "retrain_seconds", "arch",
                "device", "seed", "torch_threads", "random_arch_test_accuracy"):
        assert key in summary, key
    assert summary["arch"] == "search/arch.json" and (out / summary["arch"]).is_file()
    assert (out / "search" / "cells.png").is_file() and (out / "retrain" / "model.pt").is_file()
    assert (out / "random" / "model.pt").is_file()
    assert "test accuracy" in stdout and "random cell" in stdout
    # a second demo into the same folder is refused; --resume reuses the finished stages
    code, _, stderr = run(["demo", "--out", out, *THREADS, "--set", *TINY_DATA], capsys)
    assert code == 2 and "--resume" in stderr
    code, stdout, _ = run(["demo", "--out", out, "--resume", "--baseline", "random", *THREADS,
                           "--set", *TINY_DATA, *TINY_SEARCH, *TINY_RETRAIN], capsys)
    assert code == 0 and json.loads((out / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_plot_and_convert(searched, tmp_path, capsys):
    code, stdout, _ = run(["convert", searched / "arch.json", "--to", "genotype"], capsys)
    assert code == 0 and stdout.strip() == (searched / "genotype.txt").read_text().strip()
    (tmp_path / "cell.txt").write_text(stdout)
    code, _, _ = run(["convert", tmp_path / "cell.txt", "--to", "arch", "-o", tmp_path / "back.json"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "back.json").read_text()) == load_arch(searched / "arch.json")
    code, stdout, _ = run(["convert", tmp_path / "cell.txt", "--to", "arch"], capsys)
    assert json.loads(stdout) == load_arch(searched / "arch.json")
    code, _, _ = run(["plot", tmp_path / "cell.txt", "-o", tmp_path / "cells.svg"], capsys)
    assert code == 0 and b"<svg" in (tmp_path / "cells.svg").read_bytes()[:2000]


def test_recipes_command(capsys):
    code, stdout, _ = run(["recipes"], capsys)
    assert code == 0 and {line.split()[0] for line in stdout.splitlines()} >= {"paper", "tutorial", "pc-darts", "demo"}
    code, stdout, _ = run(["recipes", "show", "paper"], capsys)
    assert code == 0 and "arc_betas: [0.5, 0.999]" in stdout and "quark0/darts" in stdout
    code, stdout, _ = run(["recipes", "show", "paper", "--set", "retrain.epochs=10"], capsys)
    assert code == 0 and "epochs: 10" in stdout
    code, _, stderr = run(["recipes", "show", "nope"], capsys)
    assert code == 2 and "unknown recipe 'nope'" in stderr


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2, no traceback, nothing written
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "bad.json").write_text('{"normal/op_2_0": "conv_9x9"}')
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    return tmp_path


def _bad_cases(out, files, searched, retrained):
    no_gpu = not torch.cuda.is_available()
    cases = [
        (["search", "--out", out, "--set", "search.widht=3"], "search.widht"),
        (["search", "--out", out, "--set", "search.epochs=1.5"], "search.epochs"),
        (["search", "--out", out, "--set", "retrain.drop_path_prob=1"], "retrain.drop_path_prob"),
        (["search", "--out", out, "--set", "search.epochs"], "KEY=VALUE"),
        (["search", "--out", out, "--recipe", files / "nope.yaml"], "no such file"),
        (["search", "--out", out, "--recipe", "paper", "--data-dir", files / "no-cifar"], "cifar-10-batches-py"),
        (["search", "--out", out, "--accelerator", "cpu", "--devices", "9999"], "--devices"),
        (["search", "--out", out, "--precision", "bogus", "--set", *TINY_DATA], "--precision"),
        (["search", "--out", out, "--resume"], "--resume"),
        (["search", "--out", searched, "--set", *TINY_DATA], "--resume"),
        (["search"], "--out"),
        (["retrain", "--out", out, "--arch", files / "bad.json"], "bad.json"),
        (["retrain", "--out", out, "--arch", files / "missing.json"], "missing.json"),
        (["plot", files / "bad.json", "-o", out / "x.png"], "bad.json"),
        (["plot", searched / "arch.json", "-o", out / "x.gif"], ".gif"),
        (["convert", files / "bad.json", "--to", "arch", "-o", out / "x.json"], "bad.json"),
        (["evaluate", "--arch", searched, "--weights", files / "garbage.pt", "--out", out], "garbage.pt"),
        (["evaluate", "--arch", "darts-v2", "--weights", retrained / "model.pt", "--out", out], "do not fit"),
        (["evaluate", "--weights", retrained / "model.pt"], "--arch"),
    ]
    if no_gpu:
        cases.append((["search", "--out", out, "--accelerator", "gpu"], "no CUDA GPU"))
    return cases


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, bad_files, searched, retrained, capsys):
    out = tmp_path / "out"
    before = sorted(p.name for p in searched.iterdir())
    for argv, words in _bad_cases(out, bad_files, searched, retrained):
        code, stdout, stderr = run(argv, capsys)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2, (argv, stderr)
        assert len(lines) == 1 and words in lines[0], (argv, stderr)
        assert "Traceback" not in stderr
        assert not out.exists(), argv
    assert sorted(p.name for p in searched.iterdir()) == before


def test_pretrained_offline_says_where_to_put_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NNI_HOME", str(tmp_path / "nni-home"))
    tiny = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.arange(4))
    monkeypatch.setattr(RecipeData, "_build", lambda self, train, cutout=None: tiny)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", offline)
    code, _, stderr = run(["evaluate", "--pretrained", "darts-v2", "--out", tmp_path / "out"], capsys)
    target = tmp_path / "nni-home" / "nashub"
    assert code == 2 and "darts-v2-5465b0d2.pth" in stderr and str(target) in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    # a file with the wrong hash is refused
    target.mkdir(parents=True)
    (target / "darts-v2-5465b0d2.pth").write_bytes(b"corrupt")
    code, _, stderr = run(["evaluate", "--pretrained", "darts-v2"], capsys)
    assert code == 2 and "sha256" in stderr and "5465b0d2" in stderr, stderr


def test_console_script_runs_with_one_line_errors(tmp_path):
    """The installed entry point (subprocess): help works, a bad recipe is one line and exit 2."""
    script = Path(sys.executable).with_name("nni-darts")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "nni_darts_ext.cli"]
    done = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "retrain" in done.stdout
    done = subprocess.run(command + ["recipes", "show", "paper", "--set", "search.epochs=zero"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "search.epochs" in done.stderr
