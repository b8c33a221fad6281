"""The search → retrain → evaluate pipeline behind ``nni-darts``, as library functions.

Each ``run_*`` function takes a validated :class:`~nni_darts_ext.recipes.Recipe` and :class:`RunOptions`, checks
everything it can (device, output folder, data, architecture, weights, trainer options) *before* it creates the
output folder or writes a file, then runs and returns the summary it wrote to ``DIR/summary.json``.

Known bad input raises :class:`UsageError` (or :class:`~nni_darts_ext.recipes.RecipeError` /
:class:`~nni_darts_ext.arch.ArchError`, both ``ValueError``), which the CLI turns into one line and exit code 2.
An interrupted run (Ctrl-C, Lightning's graceful stop) raises :class:`RunInterrupted` after its last
checkpoint is on disk; ``resume=True`` continues it from ``DIR/checkpoints/last.ckpt``.

Example::

    recipe = load_recipe("demo", ["search.epochs=1"])
    summary = run_search(recipe, RunOptions(out="runs/s"))
    run_retrain(recipe, "runs/s/arch.json", RunOptions(out="runs/r"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from .recipes import Recipe, RecipeError

__all__ = [
    "UsageError",
    "RunInterrupted",
    "RunOptions",
    "run_search",
    "run_retrain",
    "run_evaluate",
    "run_demo",
    "load_weights",
    "pretrained_weights_path",
    "resolve_arch",
    "CHECKPOINT_DIR",
    "LAST_CHECKPOINT",
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Output layout of a run folder.
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # Lightning ModelCheckpoint(save_last=True) file name
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
ARCH_FILE = "arch.json"
GENOTYPE_FILE = "genotype.txt"
CELLS_PLOT = "cells.png"
ALPHAS_PLOT = "alphas.png"
ALPHAS_FILE = "alphas.json"
MODEL_FILE = "model.pt"
# Files whose presence means DIR already holds a run (refused without --resume, so nothing is overwritten).
_RUN_MARKERS = (CHECKPOINT_DIR, SUMMARY_FILE, CONFIG_FILE, MODEL_FILE, ARCH_FILE)

# Lightning's default logging interval (Trainer(log_every_n_steps=50)); lowered to the epoch length on tiny data
# so that every epoch logs (and Lightning does not warn about it).
_LIGHTNING_LOG_EVERY_N_STEPS = 50
# NNI's DARTS stem is Conv2d(3, stem_multiplier * width, 3) with stem_multiplier 3 for CIFAR (nasnet.py NDS: C_curr =
# stem_multiplier * C, called by DARTS with stem_multiplier=3 through NDS defaults): used to read width from weights.
_STEM_MULTIPLIER = 3
_STEM_WEIGHT = "stem.0.weight"
_AUX_PREFIX = "auxiliary_head."
# Any drop-path probability > 0 gives NNI's DropPath-wrapped op layout (its value is irrelevant in eval mode).
_STRUCTURAL_DROP_PATH = 0.1
# Where a net's state dict may sit inside a checkpoint: a raw state dict (""), our retrain module ("model."; NNI's
# LightningModule keeps the net as `model`), a wrapped module ("module.").
_KEY_PREFIXES = ("", "model.", "_model.", "module.", "training_module.model.")
# Lightning checkpoints of DartsClassificationModule hold these classes in hyper_parameters (criterion, optimizer):
# plain class references, allowed for torch.load(weights_only=True).
_CHECKPOINT_SAFE_GLOBALS = ("torch.nn.modules.loss.CrossEntropyLoss", "torch.optim.sgd.SGD", "torch.optim.adam.Adam")

# NNI's published weights of the darts-v2 net (nni/nas/hub/pytorch/utils/pretrained.py PRETRAINED_WEIGHT_URLS;
# the file name ends with the first 8 hex digits of its sha256, checked by nni/common/blob_utils.py).
PRETRAINED = {"darts-v2": {"file": "darts-v2-5465b0d2.pth", "sha256_prefix": "5465b0d2", "width": 36, "num_cells": 20}}
_DOWNLOAD_TIMEOUT_S = 30
# An NNI trial validates on this fraction of the training split (the tuner must not see the test split), as
# examples/nnictl_retrain/trial_api.py does.
NNI_HOLD_OUT = 0.1
_HASH_CHUNK = 1 << 20


class UsageError(Exception):
    """Bad input the user can fix (options, files, devices, data); the CLI prints it on one line, exit code 2."""


class RunInterrupted(Exception):
    """Training stopped early (Ctrl-C / SIGTERM handled by Lightning); the last checkpoint allows ``--resume``."""


@dataclass
class RunOptions:
    """Options common to the run commands (the CLI's common flags).

    Attributes:
        out: run folder (created after validation).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``/``cuda``, ``mps``).
        devices: number of devices (``None``: 1).
        precision: Lightning precision string (``32-true``, ``bf16-mixed``, ...); ``None``: Lightning's default.
        resume: continue from ``out/checkpoints/last.ckpt``.
        progress_bar: Lightning's progress bars (the CLI enables them on a terminal); otherwise one log line per
            epoch at INFO.
        extra_trainer_kwargs: passed to every Trainer (tests use ``limit_train_batches``, ``max_steps``).
        nni: retrain as an NNI trial (:mod:`nni_darts_ext.nni_trial`): validate each epoch on a held-out
            fraction of the training split and report it to NNI, then report the test accuracy as the final result.
        strategy: Lightning strategy (``ddp``, ``ddp_spawn``, ...); ``None``: Lightning's choice. With several
            processes the search averages architecture gradients across ranks (:mod:`nni_darts_ext.distributed`)
            and only rank 0 writes files.
        num_nodes: machines (Lightning ``num_nodes``); the world size is ``devices * num_nodes``.
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm (retrain under DDP).
    """

    out: Optional[PathLike] = None
    accelerator: str = "auto"
    devices: Optional[int] = None
    precision: Optional[str] = None
    resume: bool = False
    progress_bar: bool = False
    extra_trainer_kwargs: dict = dataclasses.field(default_factory=dict)
    nni: bool = False
    strategy: Optional[str] = None
    num_nodes: int = 1
    sync_batchnorm: bool = False


# ----------------------------------------------------------------------------------------------------------------
# Checks that run before anything is written
# ----------------------------------------------------------------------------------------------------------------


def check_device(accelerator: str, devices: Optional[int], *, search: bool = False) -> tuple[str, int]:
    """Validate ``--accelerator`` / ``--devices`` against this machine; returns Lightning's (accelerator, devices).

    Raises:
        UsageError: GPU asked for but none present, more devices than available.
    """
    import torch

    accelerator = (accelerator or "auto").lower()
    if devices is None:
        devices = 1
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise UsageError(f"--devices: expected a positive int, got {devices!r}")
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise UsageError(f"--accelerator {accelerator}: no CUDA GPU is available on this machine "
                             "(torch.cuda.is_available() is False); use --accelerator cpu")
        if devices > available:
            raise UsageError(f"--devices {devices}: only {available} GPU(s) available")
    elif accelerator == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError("--accelerator mps: Apple MPS is not available on this machine")
        if devices > 1:
            raise UsageError(f"--devices {devices}: MPS has 1 device")
    elif accelerator == "cpu":
        if devices > (os.cpu_count() or 1):
            raise UsageError(f"--devices {devices}: only {os.cpu_count()} CPU(s) available")
    elif accelerator == "auto":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 1
        if devices > available:
            raise UsageError(f"--devices {devices}: only {available} device(s) available (--accelerator auto)")
    else:
        raise UsageError(f"--accelerator {accelerator}: expected one of auto, cpu, gpu, cuda, mps")
    # Several devices for a search are fine: the presets average architecture gradients across ranks
    # (nni_darts_ext.distributed), which fixes microsoft/nni#5013 (every DDP rank ending with another arch).
    return accelerator, devices


def check_out_dir(out: Optional[PathLike], resume: bool) -> tuple[Path, Optional[Path]]:
    """(folder, checkpoint to resume from or None). Refuses to overwrite a previous run without ``resume``."""
    if out is None:
        raise UsageError("--out: required")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    last = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume:
        if not last.is_file():
            raise UsageError(f"--resume: no checkpoint to resume from ({last} does not exist)")
        _check_resumable(last)
        return out, last
    existing = [name for name in _RUN_MARKERS if (out / name).exists()]
    if existing:
        raise UsageError(
            f"--out {out}: already holds a run ({existing[0]}); pass --resume to continue it or choose another folder"
        )
    return out, None


def _check_resumable(path: Path, module: Any = None) -> None:
    """A corrupt or weights-only checkpoint, or (given ``module``) one of another net, as UsageError naming the
    file and the keys or shapes that differ; called before anything is written."""
    from .callbacks import CheckpointError, read_checkpoint, state_dict_mismatch

    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(f"--resume: {exc}") from None
    if module is not None:
        problem = state_dict_mismatch(module.state_dict(), checkpoint["state_dict"])
        if problem is not None:
            raise UsageError(f"--resume: {path} does not fit this run's net: {problem}; resume with the settings "
                             "and --arch the run was started with")


#: Recipe keys that shape the search supernet: a search checkpoint only fits the values it was started with.
_SEARCH_SHAPE_KEYS = ("width", "cells", "strategy", "partial_channels")


def _check_search_resume(out: Path, recipe: Recipe) -> None:
    """--resume with another supernet than DIR/config.yaml's: UsageError, before anything is written."""
    from .recipes import load_recipe

    try:
        started = load_recipe(str(out / CONFIG_FILE)).search
    except RecipeError:  # no or unreadable config.yaml: the checkpoint check in the trainer still applies
        return
    for key in _SEARCH_SHAPE_KEYS:
        before, now = getattr(started, key), getattr(recipe.search, key)
        if before != now:
            raise UsageError(f"--resume: search.{key} is {now!r} but the run in {out} was started with {before!r}; "
                             "its checkpoint only fits the same supernet")


def resolve_arch(arch: Any) -> tuple[dict[str, Any], str]:
    """(arch dict, display name) from a dict, a path (JSON or genotype text), a run folder or a named arch."""
    from .arch import NAMED_ARCHS, load_arch, normalize_arch

    if isinstance(arch, dict):
        return normalize_arch(arch), "arch"
    text = os.fspath(arch)
    path = Path(text).expanduser()
    if path.is_dir() and (path / ARCH_FILE).is_file():
        path = path / ARCH_FILE
    if path.exists() or text not in NAMED_ARCHS:
        return load_arch(path), str(path)
    return dict(NAMED_ARCHS[text]), text


def _data_errors(build: Callable[[], Any]) -> Any:
    """``build()`` with missing or corrupt data turned into UsageError (as :func:`_dataset`)."""
    from .data import DatasetError

    try:
        return build()
    except FileNotFoundError as exc:
        raise UsageError(f"{exc} (set --data-dir)") from None
    except DatasetError as exc:
        raise UsageError(str(exc)) from None


def _dataset(recipe: Recipe, *, train: bool, cutout: Optional[int] = None) -> Any:
    """The recipe's dataset; missing or corrupt data becomes a UsageError naming the files."""
    from .data import DatasetError, get_dataset

    data_dir = recipe.dataset.data_dir
    try:
        dataset = get_dataset(
            recipe.dataset.name, train=train, root=data_dir, image_size=recipe.dataset.image_size, cutout=cutout
        )
    except FileNotFoundError as exc:
        raise UsageError(f"{exc} (set --data-dir)") from None
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    except TypeError as exc:  # e.g. cifar10 without a data_dir
        raise UsageError(f"dataset.data_dir: {exc}") from None
    limit = recipe.dataset.max_samples
    if limit is not None and len(dataset) > limit:
        import torch
        from torch.utils.data import Subset

        with _import_nni():
            import nni

        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(recipe.seed))
        dataset = nni.trace(Subset)(dataset=dataset, indices=sorted(order[:limit].tolist()))
    return dataset


def _trainer_settings(options: RunOptions, accelerator: str, devices: int, **kwargs: Any) -> dict[str, Any]:
    """Trainer keyword arguments: the common options, then ``kwargs``, then ``options.extra_trainer_kwargs``."""
    settings: dict[str, Any] = dict(
        accelerator=accelerator,
        devices=devices,
        enable_progress_bar=options.progress_bar,
        enable_model_summary=False,
    )
    if options.precision is not None:
        settings["precision"] = options.precision
    if options.strategy is not None:
        settings["strategy"] = options.strategy
    if options.num_nodes != 1:
        settings["num_nodes"] = options.num_nodes
    if options.sync_batchnorm:
        settings["sync_batchnorm"] = True
    settings["plugins"] = [_atomic_checkpoint_io()]
    settings.update(kwargs)
    settings.update(options.extra_trainer_kwargs)
    return settings


def _atomic_checkpoint_io() -> Any:
    """Checkpoints through a temporary file in their folder + rename, read with weights_only (see callbacks.py:
    Lightning's own writer moves a temporary file from $TMPDIR, which copies into the checkpoint across
    filesystems, so a kill can truncate last.ckpt)."""
    from .callbacks import AtomicCheckpointIO

    return AtomicCheckpointIO()


@contextlib.contextmanager
def _trainer_errors() -> Iterator[None]:
    """Lightning's refusals of trainer options (bad --precision, ...) as UsageError."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except (ValueError, MisconfigurationException) as exc:
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        flag = "--precision" if "recision" in first_line else "trainer options"
        raise UsageError(f"{flag}: {first_line}") from None


def _trainer(options: RunOptions, accelerator: str, devices: int, **kwargs: Any) -> Any:
    """NNI's traced Trainer (:func:`~nni_darts_ext.evaluator.darts_trainer`) with the common options."""
    from .evaluator import darts_trainer

    with _trainer_errors():
        return darts_trainer(**_trainer_settings(options, accelerator, devices, **kwargs))


def _reliability_callbacks(out: Path, stage: str, learning_rate: float, resume_from: Optional[Path]) -> list:
    """Stop at a non-finite loss (no checkpoint of it), save last.ckpt and stop on SIGINT/SIGTERM after the current
    step, and let a resumed run use this run's optimizer settings (``--resume --set ...``)."""
    from .callbacks import ApplySettingsOnResume, CheckpointOnSignal, CheckResumeCheckpoint, NonFiniteLossGuard

    hint = (f"rerun the command with --resume and changed settings, e.g. --set {stage}.learning_rate="
            f"{learning_rate / 2:g} or a smaller {stage}.gradient_clip")
    return [
        CheckResumeCheckpoint(resume_from),  # a checkpoint of another net: one line naming keys and shapes
        NonFiniteLossGuard(resume_hint=hint),  # before CheckpointOnSignal: a non-finite step is never saved
        CheckpointOnSignal(out / CHECKPOINT_DIR),
        ApplySettingsOnResume(),
    ]


def _common_callbacks(
    out: Path, stage: str, options: RunOptions, *, learning_rate: float, resume_from: Optional[Path] = None
) -> tuple[list, Any]:
    """Checkpoint every epoch (plus last.ckpt), TensorBoard logger, epoch log lines when there is no bar."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from ._run_callbacks import EpochLog

    callbacks: list = [
        *_reliability_callbacks(out, stage, learning_rate, resume_from),
        # save_top_k=1 with no monitor keeps the latest epoch file; save_last adds last.ckpt for --resume, always
        # under that name (no last-v1.ckpt when a run folder was copied or moved before resuming).
        ModelCheckpoint(dirpath=out / CHECKPOINT_DIR, every_n_epochs=1, save_top_k=1, save_last=True,
                        enable_version_counter=False),
    ]
    if not options.progress_bar:
        callbacks.append(EpochLog(stage))
    logger = TensorBoardLogger(save_dir=str(out), name=TENSORBOARD_DIR, version=stage, default_hp_metric=False)
    return callbacks, logger


def _log_every(n_batches: int) -> int:
    return max(1, min(_LIGHTNING_LOG_EVERY_N_STEPS, n_batches))


def _device_name(trainer: Any) -> str:
    import torch

    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _run_facts(recipe: Recipe) -> dict[str, Any]:
    import torch

    return {"seed": recipe.seed, "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__}


def _seed(seed: int) -> None:
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)


def _check_interrupted(trainer: Any, what: str, out: Path) -> None:
    from pytorch_lightning.trainer.states import TrainerStatus

    if trainer.state.status == TrainerStatus.INTERRUPTED or trainer.interrupted:
        raise RunInterrupted(f"{what} interrupted; continue it with --resume --out {out}")


@contextlib.contextmanager
def _interruptible(trainer: Any, what: str, out: Path) -> Iterator[None]:
    """Lightning answers Ctrl-C with a graceful stop and ``sys.exit(1)`` (pytorch_lightning/trainer/call.py), and
    ignores SIGINT from then on: turn that exit into :class:`RunInterrupted` and restore the SIGINT handler."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    from .callbacks import TrainingInterrupted

    try:
        yield
    except TrainingInterrupted:  # CheckpointOnSignal saved last.ckpt after the step: the CLI reports it (130/143)
        raise
    except SystemExit:
        if trainer.interrupted:
            raise RunInterrupted(f"{what} interrupted; continue it with --resume --out {out}") from None
        raise
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _write_config(out: Path, recipe: Recipe, what: str) -> None:
    from .io import atomic_write_text

    atomic_write_text(out / CONFIG_FILE, recipe.to_yaml(header=f"Resolved recipe of this {what} (nni-darts)."))


# ----------------------------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------------------------


def _strategy(recipe: Recipe) -> Any:
    """The recipe's strategy preset; options a preset does not take become RecipeError naming the key."""
    from .constants import ARC_BETAS, ARC_WEIGHT_DECAY
    from .strategies import darts_strategy

    s = recipe.search
    kwargs: dict[str, Any] = {
        "arc_learning_rate": s.arc_learning_rate,
        "gradient_clip_val": s.gradient_clip,
        "warmup_epochs": s.warmup_epochs,
    }
    keys = {"arc_learning_rate": "search.arc_learning_rate", "gradient_clip_val": "search.gradient_clip",
            "warmup_epochs": "search.warmup_epochs"}
    # NNI fixes the architecture Adam's betas and weight decay (differentiable.py); pass them only when changed.
    if tuple(s.arc_betas) != tuple(ARC_BETAS):
        kwargs["arc_betas"] = tuple(s.arc_betas)
        keys["arc_betas"] = "search.arc_betas"
    if s.arc_weight_decay != ARC_WEIGHT_DECAY:
        kwargs["arc_weight_decay"] = s.arc_weight_decay
        keys["arc_weight_decay"] = "search.arc_weight_decay"
    if s.partial_channels is not None:
        kwargs["partial_channels"] = s.partial_channels
        keys["partial_channels"] = "search.partial_channels"
    try:
        return darts_strategy(s.strategy, **kwargs)
    except TypeError as exc:
        named = next((key for arg, key in keys.items() if repr(arg) in str(exc) or f"'{arg}'" in str(exc)), None)
        key = named or "search.strategy"
        raise RecipeError(f"{key}: strategy {s.strategy!r} does not take it ({exc})") from None


@contextlib.contextmanager
def _nni_quiet() -> Iterator[None]:
    """NNI's console handler off (its log still goes to DIR/<experiment>/log/experiment.log)."""
    with contextlib.suppress(ImportError):
        from nni.runtime.log import silence_stdout

        silence_stdout()
    yield


def run_search(recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    """Search the recipe's DARTS space with NNI's ``NasExperiment``; write arch, genotype, plots and summary.

    Writes ``DIR/arch.json`` (NNI form), ``genotype.txt``, ``cells.png``, ``alphas.png`` (+ ``alphas.json``),
    ``config.yaml``, ``summary.json``, TensorBoard logs under ``DIR/tensorboard/search`` and checkpoints under
    ``DIR/checkpoints``; NNI's experiment folder (its log and state) is ``DIR/<experiment id>/``.

    Example::

        summary = run_search(load_recipe("demo"), RunOptions(out="runs/search"))
        summary["arch"]   # 'arch.json'
    """
    from .arch import build_model, count_parameters, format_genotype, save_arch, to_genotype
    from .data import search_dataloaders
    from .evaluator import darts_evaluator
    from .io import atomic_write_json, atomic_write_text
    from ._run_callbacks import AlphaHistory
    from .plotting import plot_alpha_history, plot_cells

    from .distributed import all_gather_max_abs_diff, launched_rank

    accelerator, devices = check_device(options.accelerator, options.devices, search=True)
    out, ckpt = _check_out_dir_on_rank(options)
    if ckpt:
        _check_search_resume(out, recipe)
    s = recipe.search

    _seed(recipe.seed)
    dataset = _dataset(recipe, train=True)
    train_loader, val_loader = search_dataloaders(
        dataset, batch_size=s.batch_size, train_fraction=s.train_fraction, seed=recipe.seed,
        num_workers=recipe.dataset.num_workers,
    )
    strategy = _strategy(recipe)

    with _import_nni():
        from nni.nas.experiment import NasExperiment
        from nni.nas.hub.pytorch import DARTS

    space = DARTS(width=s.width, num_cells=s.cells, dataset="cifar")
    history = AlphaHistory()
    callbacks, logger = _common_callbacks(out, "search", options, learning_rate=s.learning_rate, resume_from=ckpt)
    callbacks.append(history)
    with _trainer_errors():
        evaluator = darts_evaluator(
            train_loader,
            val_loader,
            fit_kwargs={"ckpt_path": str(ckpt)} if ckpt else None,
            learning_rate=s.learning_rate,
            weight_decay=s.weight_decay,
            momentum=s.momentum,
            eta_min=s.eta_min,
            max_epochs=s.epochs,
            auxiliary_loss_weight=0.0,  # the search space has no auxiliary head
            **_trainer_settings(
                options, accelerator, devices, callbacks=callbacks, logger=logger, default_root_dir=str(out),
                log_every_n_steps=_log_every(min(len(train_loader), len(val_loader))),
            ),
        )

    # Everything checked: from here on files are written (by rank 0 only; the other ranks' NNI experiment
    # folders go to a temporary folder, removed at the end).
    rank_zero = launched_rank() == 0
    if rank_zero:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, recipe, "search")
    experiment = NasExperiment(space, evaluator, strategy)
    scratch = None if rank_zero else tempfile.TemporaryDirectory(prefix="nni-darts-rank")
    experiment.config.experiment_working_directory = str(out.resolve()) if rank_zero else scratch.name
    trainer = evaluator.trainer
    start = time.perf_counter()
    with _nni_quiet(), _checkpoint_globals():
        completed = None
        try:
            with _interruptible(trainer, "search", out):
                completed = experiment.run()
        finally:
            # NNI's run() stops the experiment itself only on KeyboardInterrupt (then it returns None); otherwise
            # stop it here (updates NNI's manifest, closes its log file, unregisters its atexit hook).
            if completed is not None or sys.exc_info()[0] is not None:
                experiment.stop()
        _check_interrupted(trainer, "search", out)
        if not completed:
            raise RunInterrupted(f"search stopped early; continue it with --resume --out {out}")
        seconds = time.perf_counter() - start
        arch = experiment.export_top_models(formatter="dict")[0]

    oneshot = strategy.oneshot_module  # a property
    ranks = getattr(oneshot, "distributed_report", None)
    if ranks is None:  # a preset without DistributedArchSync: measure here (a collective, on every rank)
        arch_params = oneshot.arch_parameters()
        order = {id(p): i for i, p in enumerate(oneshot.parameters())}
        ranks = {"world_size": trainer.world_size,
                 "alpha_max_abs_diff_across_ranks": all_gather_max_abs_diff(sorted(arch_params, key=lambda p: order[id(p)]))}
    if scratch is not None:
        scratch.cleanup()
    if not rank_zero:
        return {"command": "search", "rank": trainer.global_rank, **ranks}
    if ranks["world_size"] > 1:
        _logger.info("search on %d processes: alpha max |difference| across ranks %.3g",
                     ranks["world_size"], ranks["alpha_max_abs_diff_across_ranks"])

    save_arch(arch, out / ARCH_FILE)
    genotype = format_genotype(to_genotype(arch))
    atomic_write_text(out / GENOTYPE_FILE, genotype + "\n")
    plot_cells(arch, out / CELLS_PLOT)
    if history.history:
        atomic_write_json(out / ALPHAS_FILE, history.history)
        plot_alpha_history(history.history, out / ALPHAS_PLOT)
    r = recipe.retrain
    net = build_model(arch, width=r.width, num_cells=r.cells, auxiliary_loss=False, image_size=recipe.image_size)
    summary = {
        "command": "search",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        "strategy": s.strategy,
        "params": count_parameters(net),
        "params_note": f"the searched cell in the retrain net ({r.cells} cells, width {r.width}, no auxiliary head)",
        "search_seconds": round(seconds, 2),
        "epochs": trainer.current_epoch,
        "resumed_from": str(ckpt) if ckpt else None,
        "arch": ARCH_FILE,
        "genotype": genotype,
        "device": _device_name(trainer),
        "precision": str(trainer.precision),
        **_run_facts(recipe),
        "nni_experiment": experiment.id,
        "world_size": ranks["world_size"],
        "alpha_max_abs_diff_across_ranks": ranks["alpha_max_abs_diff_across_ranks"],
    }
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


@contextlib.contextmanager
def _import_nni() -> Iterator[None]:
    from ._compat import import_nni_quietly

    with import_nni_quietly():
        yield


# ----------------------------------------------------------------------------------------------------------------
# Retrain
# ----------------------------------------------------------------------------------------------------------------


def _module(recipe_section: Any, num_epochs: int, *, auxiliary_weight: float, drop_path_prob: Optional[float]) -> Any:
    from .constants import NUM_CLASSES
    from .training_module import DartsClassificationModule

    return DartsClassificationModule(
        learning_rate=recipe_section.learning_rate,
        weight_decay=recipe_section.weight_decay,
        momentum=recipe_section.momentum,
        eta_min=recipe_section.eta_min,
        max_epochs=num_epochs,
        auxiliary_loss_weight=auxiliary_weight,
        drop_path_prob=drop_path_prob,
        num_classes=NUM_CLASSES,
    )


def _loader(dataset: Any, batch_size: int, *, shuffle: bool, seed: int, num_workers: int) -> Any:
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=generator)


def _test(trainer: Any, module: Any, loader: Any) -> dict[str, float]:
    results = trainer.test(module, dataloaders=loader, verbose=False)
    metrics = results[0] if results else {}
    return {"test_accuracy": round(float(metrics["test_acc"]), 6), "test_loss": round(float(metrics["test_loss"]), 6)}


def run_retrain(recipe: Recipe, arch: Any, options: RunOptions) -> dict[str, Any]:
    """Train the fixed net of ``arch`` from scratch with the recipe's retrain section, then test it.

    Writes ``DIR/model.pt`` (the net's state dict), ``arch.json``, ``config.yaml``, ``summary.json``, checkpoints
    and TensorBoard logs (``DIR/tensorboard/retrain``).

    Example::

        summary = run_retrain(load_recipe("demo"), "runs/search/arch.json", RunOptions(out="runs/retrain"))
        summary["test_accuracy"]
    """
    from .arch import build_model, count_parameters, save_arch
    from .io import atomic_torch_save, atomic_write_json

    from .distributed import launched_rank

    accelerator, devices = check_device(options.accelerator, options.devices)
    out, ckpt = _check_out_dir_on_rank(options)
    arch_dict, arch_name = resolve_arch(arch)
    r = recipe.retrain
    # The recipe's batch_size is the GLOBAL batch (the paper's, which its learning rate goes with); each of the
    # devices * num_nodes processes loads batch_size / world_size samples per step.
    world = devices * options.num_nodes
    if r.batch_size % world:
        raise UsageError(f"retrain.batch_size {r.batch_size} (the global batch) is not divisible by the world size "
                         f"{world} (--devices {devices} x --num-nodes {options.num_nodes})")
    per_device_batch = r.batch_size // world

    _seed(recipe.seed)
    train_set = _dataset(recipe, train=True, cutout=r.cutout)
    test_set = _dataset(recipe, train=False)
    model = build_model(
        arch_dict, width=r.width, num_cells=r.cells, auxiliary_loss=r.auxiliary_weight > 0,
        drop_path_prob=r.drop_path_prob, image_size=recipe.image_size,
    )
    module = _module(r, r.epochs, auxiliary_weight=r.auxiliary_weight, drop_path_prob=r.drop_path_prob)
    module.set_model(model)
    if ckpt:
        _check_resumable(ckpt, module)
    val_loader = None
    if options.nni:
        from .evaluator import recipe_dataloaders
        from .nni_trial import NniReportCallback

        train_loader, val_loader, test_loader = _data_errors(lambda: recipe_dataloaders(recipe, NNI_HOLD_OUT))
    else:
        train_loader = _loader(train_set, per_device_batch, shuffle=True, seed=recipe.seed,
                               num_workers=recipe.dataset.num_workers)
        test_loader = _loader(test_set, per_device_batch, shuffle=False, seed=recipe.seed,
                              num_workers=recipe.dataset.num_workers)
    _logger.info("retrain: global batch %d = %d per device x %d process(es); learning rate %g for the global batch",
                 r.batch_size, per_device_batch, world, r.learning_rate)
    callbacks, logger = _common_callbacks(out, "retrain", options, learning_rate=r.learning_rate,
                                          resume_from=ckpt)
    if options.nni:
        callbacks.append(NniReportCallback())
    trainer = _trainer(
        options, accelerator, devices, max_epochs=r.epochs, gradient_clip_val=r.gradient_clip,
        callbacks=callbacks, logger=logger, default_root_dir=str(out), log_every_n_steps=_log_every(len(train_loader)),
    )

    rank_zero = launched_rank() == 0
    if rank_zero:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, recipe, "retrain")
        save_arch(arch_dict, out / ARCH_FILE)
    start = time.perf_counter()
    with _nni_quiet(), _checkpoint_globals(), _interruptible(trainer, "retrain", out):
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader,
                    ckpt_path=str(ckpt) if ckpt else None)
        _check_interrupted(trainer, "retrain", out)
        seconds = time.perf_counter() - start
        if trainer.is_global_zero:
            atomic_torch_save(model.state_dict(), out / MODEL_FILE)
        tested = _test(trainer, module, test_loader)
        if options.nni:
            from .nni_trial import report_final_result

            report_final_result(tested["test_accuracy"])
    summary = {
        "command": "retrain",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        **tested,
        "params": count_parameters(model),
        "retrain_seconds": round(seconds, 2),
        "epochs": trainer.current_epoch,
        "resumed_from": str(ckpt) if ckpt else None,
        "arch": ARCH_FILE,
        "arch_source": arch_name,
        "weights": MODEL_FILE,
        "nni_trial": options.nni,
        "world_size": trainer.world_size,
        "global_batch_size": r.batch_size,
        "per_device_batch_size": per_device_batch,
        "sync_batchnorm": options.sync_batchnorm,
        "device": _device_name(trainer),
        "precision": str(trainer.precision),
        **_run_facts(recipe),
    }
    if trainer.is_global_zero:
        atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def _check_out_dir_on_rank(options: RunOptions) -> tuple[Path, Optional[Path]]:
    """check_out_dir on rank 0; ranks that Lightning (or torchrun/SLURM) started later find rank 0's folder."""
    from .distributed import launched_rank

    if launched_rank() == 0:
        return check_out_dir(options.out, options.resume)
    out = Path(options.out).expanduser()
    last = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    return out, (last if options.resume else None)


# ----------------------------------------------------------------------------------------------------------------
# Evaluate
# ----------------------------------------------------------------------------------------------------------------


def _safe_globals() -> list:
    import importlib

    found = []
    for dotted in _CHECKPOINT_SAFE_GLOBALS:
        module_name, _, name = dotted.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module_name), name))
    return found


def _checkpoint_globals() -> Any:
    """Lightning resumes with ``torch.load(weights_only=True)``; allow the classes our checkpoints name."""
    import torch

    return torch.serialization.safe_globals(_safe_globals())


def read_state_dict(path: PathLike) -> dict[str, Any]:
    """A state dict from ``path``: a raw ``torch.save(state_dict)`` or a Lightning checkpoint's ``state_dict``.

    Read with ``torch.load(weights_only=True)``; unreadable files raise UsageError naming the file.
    """
    import pickle

    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file")
    try:
        with _checkpoint_globals():
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--weights {path}: cannot be read as PyTorch weights ({first})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise UsageError(f"--weights {path}: not a state dict (expected a mapping of names to tensors)")
    return data


def _strip_prefix(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    best, best_hits = state, -1
    for prefix in _KEY_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(expected & stripped.keys())
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def _shape_of_weights(state: dict[str, Any]) -> tuple[Optional[int], Optional[int], bool]:
    """(width, num_cells, has auxiliary head) read from a DARTS state dict, None where it cannot tell."""
    stripped = _strip_prefix(state, {_STEM_WEIGHT})
    stem = stripped.get(_STEM_WEIGHT)
    width = int(stem.shape[0]) // _STEM_MULTIPLIER if stem is not None and stem.ndim == 4 else None
    cells = {tuple(k.split(".")[1:3]) for k in stripped if k.startswith("stages.") and len(k.split(".")) > 3}
    aux = any(k.startswith(_AUX_PREFIX) for k in stripped)
    return width, (len(cells) or None), aux


def load_weights(model: Any, state: dict[str, Any], source: str) -> None:
    """Load ``state`` (any prefix of :data:`_KEY_PREFIXES`) into ``model`` strictly; mismatches → UsageError."""
    expected = model.state_dict()
    state = _strip_prefix(state, set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
        )
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatch(es) ({k}: file {list(state[k].shape)} vs net {list(expected[k].shape)}"
            f"{', ...' if len(shapes) > 1 else ''})"
        )
    if problems:
        raise UsageError(f"{source}: weights do not fit the net: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _net_for_weights(arch: dict[str, Any], state: dict[str, Any], **kwargs: Any) -> Any:
    """The fixed net for ``state``: NNI wraps each op in a DropPath container when the net was built with
    ``drop_path_prob > 0``, which changes the key names, so build the variant whose keys match (eval: no drop)."""
    from .arch import build_model

    plain = build_model(arch, drop_path_prob=0.0, **kwargs)
    keys = set(_strip_prefix(state, set(plain.state_dict())))
    if keys == set(plain.state_dict()):
        return plain
    wrapped = build_model(arch, drop_path_prob=_STRUCTURAL_DROP_PATH, **kwargs)
    wrapped_keys = set(wrapped.state_dict())
    if len(keys & wrapped_keys) > len(keys & set(plain.state_dict())):
        wrapped.set_drop_path_prob(0.0)
        return wrapped
    return plain


def pretrained_weights_path(name: str) -> Path:
    """Where NNI keeps ``name``'s weights: ``$NNI_HOME/nashub/`` else ``$XDG_CACHE_HOME/nni/nashub/`` else
    ``~/.cache/nni/nashub/`` (nni/common/blob_utils.py nni_cache_home)."""
    with _import_nni():
        from nni.common.blob_utils import nni_cache_home

    return Path(nni_cache_home()) / "nashub" / PRETRAINED[name]["file"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_pretrained(name: str) -> Path:
    """The checked local file of NNI's pretrained ``name`` weights, downloaded into NNI's cache if missing.

    Raises:
        UsageError: unknown name; offline and no file (says where to put it); hash mismatch.
    """
    if name not in PRETRAINED:
        raise UsageError(f"--pretrained {name}: unknown; available: {', '.join(PRETRAINED)}")
    info = PRETRAINED[name]
    path = pretrained_weights_path(name)
    if not path.is_file():
        with _import_nni():
            from nni.nas.hub.pytorch.utils.pretrained import PRETRAINED_WEIGHT_URLS
        url = PRETRAINED_WEIGHT_URLS[name]
        _logger.debug("downloading %s to %s", url, path)
        try:
            from .io import atomic_open

            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, atomic_open(path) as handle:
                digest = hashlib.sha256()
                for chunk in iter(lambda: response.read(_HASH_CHUNK), b""):
                    digest.update(chunk)
                    handle.write(chunk)
                if not digest.hexdigest().startswith(info["sha256_prefix"]):
                    raise UsageError(f"--pretrained {name}: the download from {url} has sha256 "
                                     f"{digest.hexdigest()[:16]}..., expected {info['sha256_prefix']}...")
        except (OSError, ValueError) as exc:  # URLError, timeouts, DNS: offline
            reason = getattr(exc, "reason", None) or exc
            raise UsageError(
                f"--pretrained {name}: cannot download {url} ({reason}); offline, put {info['file']} "
                f"(sha256 {info['sha256_prefix']}...) in {path.parent}/ (NNI_HOME or XDG_CACHE_HOME move it)"
            ) from None
    actual = _sha256(path)
    if not actual.startswith(info["sha256_prefix"]):
        raise UsageError(
            f"--pretrained {name}: {path} has sha256 {actual[:16]}..., expected {info['sha256_prefix']}...: "
            "delete it and download it again"
        )
    return path


def run_evaluate(
    recipe: Recipe,
    options: RunOptions,
    *,
    arch: Any = None,
    weights: Optional[PathLike] = None,
    pretrained: Optional[str] = None,
) -> dict[str, Any]:
    """Test accuracy of ``arch`` with ``weights`` (or NNI's ``pretrained`` net) on the recipe's test set.

    The net's width, cell count and auxiliary head are read from the weights, so any retrain output fits; the
    recipe gives the dataset. Writes ``DIR/summary.json`` only when ``options.out`` is set.

    Example::

        run_evaluate(load_recipe("demo"), RunOptions(), arch="runs/r/arch.json", weights="runs/r/model.pt")
    """
    from .arch import build_model, count_parameters
    from .io import atomic_write_json

    if (pretrained is None) == (weights is None):
        raise UsageError("evaluate: give --arch with --weights, or --pretrained NAME")
    accelerator, devices = check_device(options.accelerator, options.devices)
    out = None
    if options.out is not None:
        out = Path(options.out).expanduser()
        if (out / SUMMARY_FILE).exists():
            raise UsageError(f"--out {out}: already holds {SUMMARY_FILE}; choose another folder")

    if pretrained is not None:
        if arch is not None:
            raise UsageError("--arch: not used with --pretrained (the net's cell is fixed)")
        if pretrained not in PRETRAINED:
            raise UsageError(f"--pretrained {pretrained}: unknown; available: {', '.join(PRETRAINED)}")
        if recipe.dataset.name != "cifar10":
            raise UsageError(f"--pretrained {pretrained}: a CIFAR-10 net; the recipe's dataset is {recipe.dataset.name}")
        arch_dict, arch_name = resolve_arch(pretrained)
        test_set = _dataset(recipe, train=False)  # data first: no download when the data are missing anyway
        weights_path = fetch_pretrained(pretrained)
        width, cells, aux = PRETRAINED[pretrained]["width"], PRETRAINED[pretrained]["num_cells"], False
        state = read_state_dict(weights_path)
    else:
        if arch is None:
            raise UsageError("--arch: required with --weights")
        arch_dict, arch_name = resolve_arch(arch)
        weights_path = Path(weights).expanduser()
        state = read_state_dict(weights_path)
        width, cells, aux = _shape_of_weights(state)
        width = width or recipe.retrain.width
        cells = cells or recipe.retrain.cells
        test_set = _dataset(recipe, train=False)

    model = _net_for_weights(arch_dict, state, width=width, num_cells=cells, auxiliary_loss=aux,
                             image_size=recipe.image_size)
    load_weights(model, state, f"--weights {weights_path}")
    module = _module(recipe.retrain, 1, auxiliary_weight=recipe.retrain.auxiliary_weight if aux else 0.0,
                     drop_path_prob=0.0)
    module.set_model(model)
    loader = _loader(test_set, recipe.retrain.batch_size, shuffle=False, seed=recipe.seed,
                     num_workers=recipe.dataset.num_workers)
    trainer = _trainer(options, accelerator, devices, logger=False, enable_checkpointing=False,
                       default_root_dir=str(out) if out else None)
    start = time.perf_counter()
    with _nni_quiet():
        tested = _test(trainer, module, loader)
    summary = {
        "command": "evaluate",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        **tested,
        "params": count_parameters(model),
        "evaluate_seconds": round(time.perf_counter() - start, 2),
        "arch": Path(arch_name).name if arch_name not in PRETRAINED else arch_name,
        "weights": str(weights_path),
        "width": width,
        "cells": cells,
        "device": _device_name(trainer),
        "precision": str(trainer.precision),
        **_run_facts(recipe),
    }
    if out is not None:
        atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Demo
# ----------------------------------------------------------------------------------------------------------------


def run_demo(recipe: Recipe, options: RunOptions, *, baseline: Optional[str] = None,
             report: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Search, plot and retrain with ``recipe`` in ``DIR/search`` and ``DIR/retrain``; ``baseline='random'`` also
    retrains a uniformly random cell (``arch.random_arch(seed)``) the same way in ``DIR/random``.

    With ``options.resume`` finished stages are kept and an interrupted one continues from its checkpoint.
    ``report(line)`` is called as each stage finishes. Writes ``DIR/summary.json``.

    Example::

        summary = run_demo(load_recipe("demo"), RunOptions(out="runs/demo"), baseline="random")
    """
    from .arch import random_arch, save_arch
    from .io import atomic_write_json

    if baseline not in (None, "random"):
        raise UsageError(f"--baseline {baseline}: expected 'random'")
    if options.out is None:
        raise UsageError("--out: required")
    out = Path(options.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if not options.resume and any((out / name).exists() for name in (SUMMARY_FILE, "search", "retrain", "random")):
        raise UsageError(f"--out {out}: already holds a demo; pass --resume to continue it or choose another folder")
    check_device(options.accelerator, options.devices, search=True)
    _dataset(recipe, train=True)
    say = report or (lambda line: None)
    start = time.perf_counter()

    def stage(name: str, run: Callable[[RunOptions], dict[str, Any]]) -> dict[str, Any]:
        folder = out / name
        done = folder / SUMMARY_FILE
        if options.resume and done.is_file():
            import json

            return json.loads(done.read_text(encoding="utf-8"))
        resume = options.resume and (folder / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
        return run(dataclasses.replace(options, out=folder, resume=resume))

    searched = stage("search", lambda o: run_search(recipe, o))
    say(f"search: {searched['search_seconds']:.1f} s, genotype {searched['genotype']}")
    retrained = stage("retrain", lambda o: run_retrain(recipe, out / "search" / ARCH_FILE, o))
    say(f"retrain: {retrained['retrain_seconds']:.1f} s, test accuracy {retrained['test_accuracy']:.4f}")
    summary: dict[str, Any] = {
        "command": "demo",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        "test_accuracy": retrained["test_accuracy"],
        "params": retrained["params"],
        "search_seconds": searched["search_seconds"],
        "retrain_seconds": retrained["retrain_seconds"],
        "arch": f"search/{ARCH_FILE}",
        "genotype": searched["genotype"],
        "cells_plot": f"search/{CELLS_PLOT}",
        "alphas_plot": f"search/{ALPHAS_PLOT}",
        "weights": f"retrain/{MODEL_FILE}",
        "device": retrained["device"],
        **_run_facts(recipe),
    }
    if baseline == "random":
        arch = random_arch(recipe.seed)
        random_run = stage("random", lambda o: run_retrain(recipe, arch, o))
        summary["random_arch_test_accuracy"] = random_run["test_accuracy"]
        summary["random_arch"] = f"random/{ARCH_FILE}"
        summary["random_arch_params"] = random_run["params"]
        summary["random_retrain_seconds"] = random_run["retrain_seconds"]
        say(f"random cell: {random_run['retrain_seconds']:.1f} s, test accuracy {random_run['test_accuracy']:.4f}")
    summary["total_seconds"] = round(time.perf_counter() - start, 2)
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary
