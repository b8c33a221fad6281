"""One assembly step: a recipe and :class:`RunOptions` become loaders, space, strategy, module and trainer, once.

Every command runs on what :func:`assemble_search`, :func:`assemble_retrain` or :func:`assemble_evaluate` built
(``nni-darts search``, ``retrain`` with or without ``--nni``, ``evaluate``, ``demo``, one process or DDP):

* the device check (:func:`check_device`) and the world size ``devices * num_nodes``;
* the run folder and the checkpoint to resume from (checked against the assembled net before anything is written);
* the datasets, built once per recipe (:class:`~nni_darts_ext.recipe_data.RecipeData`, shared by the stages of a
  demo), and the loaders; a retrain's per-device batch is computed here only (:func:`per_device_batch`) and is the
  ``batch_size`` of every loader it builds, with or without ``--nni``;
* for a search the DARTS space and the strategy preset (``darts_strategy(name, **overrides)``); for a retrain the
  fixed net; the :class:`~nni_darts_ext.training_module.DartsClassificationModule`;
* the Lightning trainer with the reliability callbacks, the per-epoch log, checkpoints and TensorBoard.

Known bad input raises :class:`~nni_darts_ext.errors.UsageError` (or ``RecipeError`` / ``ArchError``) before
anything is written.

Example::

    built = assemble_retrain(load_recipe("demo"), "darts-v2", RunOptions(out="runs/r", devices=2, strategy="ddp"))
    built.batch_size, built.train_loader.batch_size   # (32, 32): half the recipe's global 64 on each process
    built.trainer.fit(built.module, built.train_loader, built.val_loader)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from .._compat import cpu_has_native_bf16
from ..arch import NAMED_ARCHS, build_model, load_arch, normalize_arch
from ..batch_size import resolve_auto_batch
from ..callbacks import (
    AlphaHistory,
    ApplySettingsOnResume,
    CheckpointOnSignal,
    CheckResumeCheckpoint,
    DistributedSignalStop,
    EpochLog,
    NniReportCallback,
    NonFiniteLossGuard,
    SearchHealthMonitor,
    TimedCheckpoint,
)
from ..checkpoint import AtomicCheckpointIO, read_checkpoint, state_dict_mismatch
from ..compile import CompileModel
from ..constants import CIFAR10_IMAGE_SIZE, NUM_CLASSES
from ..data import search_dataloaders
from ..distributed import launched_rank
from ..errors import ArgumentError, ArgumentValueError, CheckpointError, DatasetError, UsageError
from ..evaluator import darts_evaluator, darts_trainer
from ..io import atomic_write_json
from ..nni_trial import TRIAL_VALIDATION_FRACTION
from ..recipe_data import RecipeData, retrain_loaders, test_loader
from ..recipes import AUTO_BATCH_SIZE, Recipe, RecipeError, load_recipe
from ..resumable_data import ExactResume
from ..search import darts_strategy
from ..space import check_image_size, darts_space, default_stem, min_image_size
from ..training_module import DartsClassificationModule
from .budget import Budget, timing_device
from .options import RunOptions
from .run_folder import (
    ARCH_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DATASET_FILE,
    TENSORBOARD_DIR,
    check_out_dir_on_rank,
    check_search_resume,
)
from .runtime import seed_everything

_logger = logging.getLogger("nni_darts_ext.pipeline")

__all__ = [
    "VALIDATION_ON_TEST",
    "Assembly",
    "assemble_evaluate",
    "assemble_retrain",
    "assemble_search",
    "check_device",
    "check_search",
    "lightning_precisions",
    "data_errors",
    "data_shape",
    "per_device_batch",
    "read_dataset_info",
    "run_statistics",
    "resolve_arch",
    "search_space",
    "search_strategy",
    "strategy_overrides",
    "write_dataset_info",
]

# Lightning's default logging interval (Trainer(log_every_n_steps=50)); lowered to the epoch length on tiny data
# so that every epoch logs (and Lightning does not warn about it).
_LIGHTNING_LOG_EVERY_N_STEPS = 50

#: How a retrain that validates on the test split names its validation (logs and summary).
VALIDATION_ON_TEST = "test set"
#: Said in the summary of such a retrain: the paper (quark0/darts cnn/train.py) and NNI's DARTS tutorial report
#: this per-epoch test curve, but it is not a validation set in the model-selection sense.
TEST_VALIDATION_NOTE = ("validated on the test set each epoch, as the DARTS paper and NNI's tutorial do: picking the "
                        "best epoch (or any setting) by this curve is not a fair result; report the final test "
                        "accuracy, or retrain with --nni to validate on a held-out part of the training split")


@dataclass
class Assembly:
    """What a command runs on, built once from a recipe and options by an ``assemble_*`` function.

    Attributes:
        command: ``"search"``, ``"retrain"`` or ``"evaluate"``.
        recipe, options: what it was built from.
        accelerator, devices: Lightning's, checked against this machine.
        world_size: ``devices * options.num_nodes``, the processes of the run.
        rank: this process's rank as launched (0 in a single process).
        out: the run folder (``None``: an evaluation that writes nothing).
        resume_from: the checkpoint the run resumes from, or ``None``.
        data: the recipe's datasets, each built once.
        batch_size: samples per step of every loader on each process.
        train_loader, val_loader, test_loader: the loaders (``test_loader`` ``None`` for a search).
        validation: what ``val_loader`` holds, for logs and summary (retrain: :data:`VALIDATION_ON_TEST` or the
            held-out part of the training split).
        model: the net (retrain, evaluate); module: the LightningModule; trainer: the Lightning trainer.
        evaluator, space, strategy: NNI's evaluator, model space and one-shot strategy (search).
        epoch_log, alpha_history, health: the recording callbacks (the last two for a search only).
        arch, arch_name: the fixed architecture and where it came from (retrain).
        batch_facts: ``{"batch_size", "batch_size_found_by"}`` for the summary when the recipe's batch was
            ``auto`` (``recipe`` then holds the batch found), else ``None``.
        info, stem: the data's :class:`~nni_darts_ext.datasets.DataInfo` and the net's stem.
        budget: the search cost and export limits (search).
    """

    command: str
    recipe: Recipe
    options: RunOptions
    accelerator: str
    devices: int
    world_size: int
    rank: int
    data: RecipeData
    batch_size: int
    out: Path | None = None
    resume_from: Path | None = None
    train_loader: Any = None
    val_loader: Any = None
    test_loader: Any = None
    validation: str | None = None
    model: Any = None
    module: Any = None
    trainer: Any = None
    evaluator: Any = None
    space: Any = None
    strategy: Any = None
    epoch_log: EpochLog | None = None
    alpha_history: AlphaHistory | None = None
    health: SearchHealthMonitor | None = None
    arch: dict | None = None
    arch_name: str | None = None
    batch_facts: dict | None = None
    info: Any = None
    stem: str | None = None
    budget: Budget | None = None


# ---------------------------------------------------------------------------------------------------------- checks
def check_device(accelerator: str, devices: int | None, *, search: bool = False) -> tuple[str, int]:
    """Validate ``--accelerator`` / ``--devices`` against this machine; returns Lightning's (accelerator, devices).

    Several devices for a search are fine: the presets average architecture gradients across ranks
    (:mod:`nni_darts_ext.distributed`), which fixes microsoft/nni#5013 (every DDP rank ending with another arch).

    Raises:
        UsageError: GPU asked for but none present, more devices than available.

    Example::

        check_device("cpu", 2)   # ('cpu', 2) on a machine with 2 or more CPUs
    """
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
    return accelerator, devices


def per_device_batch(global_batch: int, world_size: int, *, key: str, devices: int, num_nodes: int) -> int:
    """The batch each of ``world_size`` processes loads per step: ``global_batch / world_size``.

    The recipe's ``retrain.batch_size`` is the GLOBAL batch (the paper's, which its learning rate goes with).
    This is the one place the split is computed; every retrain loader is built with the result.

    Raises:
        UsageError: ``global_batch`` not divisible by ``world_size`` (names ``key`` and the flags).

    Example::

        >>> per_device_batch(96, 4, key="retrain.batch_size", devices=4, num_nodes=1)
        24
    """
    if global_batch % world_size:
        raise UsageError(f"{key} {global_batch} (the global batch) is not divisible by the world size "
                         f"{world_size} (--devices {devices} x --num-nodes {num_nodes})")
    return global_batch // world_size


#: The dataset arguments a recipe sets (nni_darts_ext.data.get_dataset's), with their recipe keys.
_DATA_RECIPE_KEYS = {"root": "dataset.data_dir", "image_size": "dataset.image_size", "cutout": "retrain.cutout",
                     "in_channels": "dataset.in_channels", "test_fraction": "dataset.test_fraction",
                     "cache": "dataset.cache", "skip_bad_images": "dataset.skip_bad_images", "flip": "dataset.flip"}


def data_errors(build: Callable[[], Any]) -> Any:
    """``build()`` with missing or corrupt data turned into UsageError naming the files.

    Example::

        test_set = data_errors(lambda: data.split(train=False))
    """
    try:
        return build()
    except FileNotFoundError as exc:
        raise UsageError(f"{exc} (set --data-dir)") from None
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    except ArgumentError as exc:  # e.g. cifar10 without a data_dir
        key = _DATA_RECIPE_KEYS.get(exc.argument)
        if key is None:
            raise
        raise UsageError(f"{key}: {exc.problem}") from None


def data_shape(data: RecipeData, stem: str | None, *, key: str, test: bool = True) -> tuple[Any, str]:
    """The run's :class:`~nni_darts_ext.datasets.DataInfo` and the stem (``stem``, or the default for the images'
    size), with images too small for that stem's net refused as UsageError stating the minimum.

    Example::

        info, stem = data_shape(data, recipe.search.stem, key="search.stem")
    """
    info = data_errors(lambda: data.info(test=test))
    stem = stem or default_stem(info.image_size)
    try:
        check_image_size(info.image_size, stem)
    except ArgumentValueError:
        where = "dataset.image_size" if data.recipe.dataset.image_size is not None else "the images' size"
        raise UsageError(f"{where}: {info.image_size} px is too small for the DARTS net with the {stem} stem "
                         f"({key}): the minimum is {min_image_size(stem)} px; set dataset.image_size to "
                         f"{min_image_size(stem)} or more") from None
    return info, stem


def write_dataset_info(out: Path, info: Any) -> None:
    """``out/dataset.json``: the run's :class:`~nni_darts_ext.datasets.DataInfo` (read by evaluate and deploy).

    Example::

        write_dataset_info(Path("runs/r"), data.info())
    """
    atomic_write_json(out / DATASET_FILE, info.to_dict())


def read_dataset_info(folder: Path) -> Any:
    """``folder/dataset.json`` as a :class:`~nni_darts_ext.datasets.DataInfo`, or None when there is none.

    Raises:
        UsageError: the file exists but is not a dataset description.

    Example::

        saved = read_dataset_info(Path("runs/r"))
    """
    from ..datasets import DataInfo

    path = folder / DATASET_FILE
    if not path.is_file():
        return None
    try:
        return DataInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not a dataset description ({exc})") from None


def run_statistics(recipe: Recipe, folders: list[Path]) -> tuple[list[float], list[float]] | None:
    """The mean / std a previous run of the same dataset wrote (the first of ``folders`` with a ``dataset.json``),
    for a run whose recipe leaves them to be computed; else None.

    Example::

        RecipeData(recipe, statistics=run_statistics(recipe, [Path("runs/s")]))
    """
    if recipe.dataset.mean is not None:
        return None
    for folder in folders:
        saved = read_dataset_info(folder)
        if saved is not None:
            return (saved.mean, saved.std) if saved.name == recipe.dataset.name else None
    return None


def check_resumable(path: Path, module: Any = None) -> None:
    """A corrupt or weights-only checkpoint, or (given ``module``) one of another net, as UsageError naming the
    file and the keys or shapes that differ; called before anything is written.

    Example::

        check_resumable(Path("runs/r/checkpoints/last.ckpt"), module)
    """
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(f"--resume: {exc}") from None
    if module is not None:
        problem = state_dict_mismatch(module.state_dict(), checkpoint["state_dict"])
        if problem is not None:
            raise UsageError(f"--resume: {path} does not fit this run's net: {problem}; resume with the settings "
                             "and --arch the run was started with")


def resolve_arch(arch: Any) -> tuple[dict[str, Any], str]:
    """(arch dict, display name) from a dict, a path (JSON or genotype text), a run folder or a named arch.

    Example::

        resolve_arch("darts-v2")          # (NNI-form dict, 'darts-v2')
        resolve_arch("runs/s")            # runs/s/arch.json
    """
    if isinstance(arch, dict):
        return normalize_arch(arch), "arch"
    text = os.fspath(arch)
    path = Path(text).expanduser()
    if path.is_dir() and (path / ARCH_FILE).is_file():
        path = path / ARCH_FILE
    if path.exists() or text not in NAMED_ARCHS:
        return load_arch(path), str(path)
    return dict(NAMED_ARCHS[text]), text


# --------------------------------------------------------------------------------------------------------- trainer
def _trainer_settings(options: RunOptions, accelerator: str, devices: int, **kwargs: Any) -> dict[str, Any]:
    """Trainer keyword arguments: the common options, then ``kwargs``, then ``options.extra_trainer_kwargs``."""
    settings: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "enable_progress_bar": options.progress_bar,
        "enable_model_summary": False,
    }
    if options.precision is not None:
        if options.precision not in lightning_precisions():
            raise UsageError(f"--precision {options.precision}: expected one of "
                             f"{', '.join(map(str, lightning_precisions()))}")
        settings["precision"] = options.precision
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        if options.precision.startswith("bf16") and on_cpu and not cpu_has_native_bf16():
            _logger.warning("--precision %s: this CPU has no native bf16 (no AVX-512 BF16 or AMX), torch emulates it "
                            "and steps run several times slower than with 32-true", options.precision)
    if options.strategy is not None:
        settings["strategy"] = options.strategy
    if options.num_nodes != 1:
        settings["num_nodes"] = options.num_nodes
    if options.sync_batchnorm:
        settings["sync_batchnorm"] = True
    # Checkpoints through a temporary file in their folder + rename, read with weights_only (nni_darts_ext.checkpoint).
    settings["plugins"] = [AtomicCheckpointIO()]
    settings.update(kwargs)
    settings.update(options.extra_trainer_kwargs)
    return settings


def lightning_precisions() -> tuple[str | int, ...]:
    """The ``precision`` values Lightning's trainer takes (its ``_PRECISION_INPUT`` type: ``"32-true"``,
    ``"bf16-mixed"``, ``16``, ...); ``--precision`` is checked against them before a trainer is built.

    Example::

        >>> "bf16-mixed" in lightning_precisions()
        True
    """
    def flat(tp: Any) -> tuple:
        return tuple(value for arg in typing.get_args(tp) for value in (flat(arg) if typing.get_args(arg) else (arg,)))

    return flat(_PRECISION_INPUT)


@contextlib.contextmanager
def _trainer_errors() -> Iterator[None]:
    """Lightning's refusals of trainer options (``--strategy``, ``--num-nodes`` with an accelerator, ...) as
    UsageError; ``--precision`` is checked before (:func:`lightning_precisions`)."""
    try:
        yield
    except (ValueError, MisconfigurationException) as exc:
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise UsageError(f"trainer options: {first_line}") from None


def _log_every(n_batches: int) -> int:
    return max(1, min(_LIGHTNING_LOG_EVERY_N_STEPS, n_batches))


def _run_callbacks(
    out: Path, stage: str, options: RunOptions, *, learning_rate: float, resume_from: Path | None,
    validation: str | None = None,
) -> tuple[list, EpochLog, Any]:
    """The callbacks of every training run and its TensorBoard logger.

    Stop at a non-finite loss (no checkpoint of it), save last.ckpt and stop on SIGINT/SIGTERM after the current
    step, let a resumed run use this run's optimizer settings (``--resume --set ...``), checkpoint every epoch
    (plus last.ckpt) and log one line per epoch when there is no progress bar.
    """
    hint = (f"rerun the command with --resume and changed settings, e.g. --set {stage}.learning_rate="
            f"{learning_rate / 2:g} or a smaller {stage}.gradient_clip")
    epoch_log = EpochLog(stage, validation=validation, log_lines=not options.progress_bar)
    world_size = (options.devices or 1) * options.num_nodes
    # SIGINT/SIGTERM: finish the step, save last.ckpt, stop; under DDP every rank stops at the same step.
    signal_callback = DistributedSignalStop if world_size > 1 else CheckpointOnSignal
    on_signal = signal_callback(out / CHECKPOINT_DIR)
    callbacks: list = [
        CheckResumeCheckpoint(resume_from),  # a checkpoint of another net: one line naming keys and shapes
        NonFiniteLossGuard(resume_hint=hint),  # first: a non-finite step is never saved (by any callback below)
        on_signal,
        ExactResume(),  # random states and the data position in every checkpoint: a resume continues exactly
        ApplySettingsOnResume(),
        epoch_log,
        # save_top_k=1 with no monitor keeps the latest epoch file; save_last adds last.ckpt for --resume, always
        # under that name (no last-v1.ckpt when a run folder was copied or moved before resuming). Saved at the end
        # of the training epoch, after the epoch's validation and the recording callbacks.
        ModelCheckpoint(dirpath=out / CHECKPOINT_DIR, every_n_epochs=1, save_top_k=1, save_last=True,
                        enable_version_counter=False, save_on_train_epoch_end=True),
    ]
    if options.checkpoint_every is not None:  # last.ckpt mid-epoch too: a SIGKILL loses at most that long
        callbacks.append(TimedCheckpoint(options.checkpoint_every, out / CHECKPOINT_DIR))
    if options.compile:  # the search compiles the supernet's cells (its wrapper stays eager), the retrain its net
        callbacks.append(CompileModel(enabled=True, cells_only=stage == "search"))
    logger = TensorBoardLogger(save_dir=str(out), name=TENSORBOARD_DIR, version=stage, default_hp_metric=False)
    return callbacks, epoch_log, logger


def _module(section: Any, num_epochs: int, *, auxiliary_weight: float, drop_path_prob: float | None,
            num_classes: int = NUM_CLASSES) -> Any:
    return DartsClassificationModule(
        learning_rate=section.learning_rate,
        weight_decay=section.weight_decay,
        momentum=section.momentum,
        eta_min=section.eta_min,
        max_epochs=num_epochs,
        auxiliary_loss_weight=auxiliary_weight,
        drop_path_prob=drop_path_prob,
        num_classes=num_classes,
    )


# ---------------------------------------------------------------------------------------------------------- search
#: The strategy arguments a recipe sets, with their recipe keys. A key whose value is null leaves the preset's own
#: value; any value given is passed and wins, also when it equals DARTS' default.
STRATEGY_RECIPE_KEYS: dict[str, str] = {
    "arc_learning_rate": "search.arc_learning_rate",
    "arc_betas": "search.arc_betas",
    "arc_weight_decay": "search.arc_weight_decay",
    "warmup_epochs": "search.warmup_epochs",
    "gradient_clip_val": "search.gradient_clip",
    "partial_channels": "search.partial_channels",
    "order": "search.order",
    "max_skip_connects": "export.max_skip_connects",
    "checkpointing": "search.checkpointing",
    "cost": "search.cost",
}


def strategy_overrides(recipe: Recipe) -> dict[str, Any]:
    """The keyword arguments the recipe gives its strategy preset: every non-null value of
    :data:`STRATEGY_RECIPE_KEYS`, then ``search.strategy_options``.

    Example::

        >>> strategy_overrides(load_recipe("fair-darts"))["arc_betas"]
        (0.9, 0.999)
    """
    s = recipe.search
    values = {
        "arc_learning_rate": s.arc_learning_rate,
        "arc_betas": None if s.arc_betas is None else tuple(s.arc_betas),
        "arc_weight_decay": s.arc_weight_decay,
        "warmup_epochs": s.warmup_epochs,
        "gradient_clip_val": s.gradient_clip,
        "partial_channels": s.partial_channels,
        "order": s.order,
        "max_skip_connects": recipe.export.max_skip_connects,
        "checkpointing": s.checkpointing,
    }
    overrides = {name: value for name, value in values.items() if value is not None}
    overrides.update(dict(s.strategy_options or {}))
    return overrides


def search_strategy(recipe: Recipe, space: Any = None, budget: Budget | None = None) -> Any:
    """The recipe's strategy preset with :func:`strategy_overrides` applied and, given ``space``, checked against it
    (:meth:`~nni_darts_ext.search.DartsSearch.check_space`); given ``budget``, with its cost term (``search.cost``).

    Raises:
        RecipeError: an argument the preset refuses (its type, its value, an argument it does not take, an option
            the space cannot take), naming the recipe key it came from; a preset's own warm-up that leaves no epoch.

    Example::

        strategy = search_strategy(load_recipe("drnas", ["search.partial_channels=4"]), DARTS(width=16, num_cells=8))
    """
    s = recipe.search
    options = dict(s.strategy_options or {})
    try:
        overrides = strategy_overrides(recipe)
        if budget is not None and budget.cost is not None:
            overrides["cost"] = budget.cost
        strategy = darts_strategy(s.strategy, **overrides)
        if space is not None:
            strategy.check_space(space)
    except ArgumentError as exc:
        if exc.argument in options:
            key = f"search.strategy_options.{exc.argument}"
        else:
            key = STRATEGY_RECIPE_KEYS.get(exc.argument)
        if key is None:
            raise RecipeError(f"search.strategy: {s.strategy!r}: {exc}", key="search.strategy") from None
        raise RecipeError(f"{key}: {exc.problem} (strategy {s.strategy!r})", key=key) from None
    if s.warmup_epochs is None and strategy.warmup_epochs >= s.epochs:
        raise RecipeError(f"search.warmup_epochs: null gives the {s.strategy!r} preset's own {strategy.warmup_epochs}, "
                          f"which leaves no epoch for the architecture (search.epochs is {s.epochs}); set it or "
                          "raise search.epochs", key="search.warmup_epochs")
    return strategy


def search_space(recipe: Recipe, info: Any = None, stem: str | None = None) -> Any:
    """The recipe's DARTS model space (:func:`~nni_darts_ext.space.darts_space` of ``search.width`` x
    ``search.cells``) for the data described by ``info`` (a :class:`~nni_darts_ext.datasets.DataInfo`; ``None``:
    10 classes of 3-channel images of the recipe's size, enough to check a strategy against the space).

    Example::

        space = search_space(load_recipe("demo"))
    """
    s = recipe.search
    if info is None:  # only the strategy is checked against it: a size the stem takes (the data's is checked later)
        stem = stem or s.stem
        size = recipe.image_size or CIFAR10_IMAGE_SIZE
        size = max(size, min_image_size(stem or default_stem(size)))
        return darts_space(image_size=size, width=s.width, num_cells=s.cells, stem=stem)
    return darts_space(num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size,
                       width=s.width, num_cells=s.cells, stem=stem)


def check_search(recipe: Recipe) -> None:
    """Build the recipe's strategy and check it against its space (:func:`search_strategy`), for commands that check
    a whole recipe before they write anything (a multi-seed search, a demo).

    Raises:
        RecipeError: as :func:`search_strategy`.
    """
    search_strategy(recipe, search_space(recipe))


def assemble_search(recipe: Recipe, options: RunOptions, *, data: RecipeData | None = None) -> Assembly:
    """Check the options and build a search: loaders, DARTS space, strategy, evaluator (module and trainer).

    Each process loads ``search.batch_size`` samples per step (the search batch is per process, as the
    presets' DDP support averages the architecture gradients of the processes' batches).

    Raises:
        UsageError, RecipeError: bad options, data, recipe values or a resume that does not fit; nothing written.

    Example::

        built = assemble_search(load_recipe("demo"), RunOptions(out="runs/s"))
        NasExperiment(built.space, built.evaluator, built.strategy).run()
    """
    accelerator, devices = check_device(options.accelerator, options.devices, search=True)
    rank = launched_rank()
    out, resume_from = check_out_dir_on_rank(options.out, options.resume, rank)
    if resume_from is not None:
        if rank == 0:
            check_resumable(resume_from)
        check_search_resume(out, recipe)
    data = data or RecipeData(recipe)
    info, stem = data_shape(data, recipe.search.stem, key="search.stem")
    recipe, batch_facts = auto_batch(recipe, "search", options, data, out=out, info=info, stem=stem,
                                     world_size=devices * options.num_nodes)
    s = recipe.search

    seed_everything(recipe.seed)
    dataset = data_errors(lambda: data.split(train=True))
    train_loader, val_loader = search_dataloaders(
        dataset, batch_size=s.batch_size, train_fraction=s.train_fraction, seed=recipe.seed,
        num_workers=recipe.dataset.num_workers,
    )
    _, retrain_stem = data_shape(data, recipe.retrain.stem, key="retrain.stem")  # the summary counts its costs
    # Cost tables of the retrain net (latency: read back from the run folder on resume); impossible limits refused.
    budget = Budget.from_recipe(recipe, info=info, stem=retrain_stem, device=timing_device(accelerator),
                                batch_size=s.batch_size, out=out if resume_from is not None else None)
    space = search_space(recipe, info, stem)
    strategy = search_strategy(recipe, space, budget)
    history = AlphaHistory()
    callbacks, epoch_log, logger = _run_callbacks(out, "search", options, learning_rate=s.learning_rate,
                                                  resume_from=resume_from)
    # Per-epoch health records, TensorBoard scalars, health.png; the Hessian eigenvalue and DARTS-ES when asked.
    health = SearchHealthMonitor(out, hessian_every=s.hessian_every, early_stop=s.early_stop,
                                 hessian_batch_size=s.hessian_batch_size)
    callbacks += [history, health]
    with _trainer_errors():
        evaluator = darts_evaluator(
            train_loader,
            val_loader,
            fit_kwargs={"ckpt_path": str(resume_from)} if resume_from else None,
            learning_rate=s.learning_rate,
            weight_decay=s.weight_decay,
            momentum=s.momentum,
            eta_min=s.eta_min,
            max_epochs=s.epochs,
            auxiliary_loss_weight=0.0,  # the search space has no auxiliary head
            num_classes=info.num_classes,
            **_trainer_settings(
                options, accelerator, devices, callbacks=callbacks, logger=logger, default_root_dir=str(out),
                log_every_n_steps=_log_every(min(len(train_loader), len(val_loader))),
            ),
        )
    return Assembly(
        command="search", recipe=recipe, options=options, accelerator=accelerator, devices=devices,
        world_size=devices * options.num_nodes, rank=rank, data=data, batch_size=s.batch_size, out=out,
        resume_from=resume_from, train_loader=train_loader, val_loader=val_loader, module=evaluator.module,
        trainer=evaluator.trainer, evaluator=evaluator, space=space, strategy=strategy, epoch_log=epoch_log,
        alpha_history=history, health=health, info=info, stem=stem, batch_facts=batch_facts, budget=budget,
    )


def auto_batch(recipe: Recipe, command: str, options: RunOptions, data: RecipeData, *, out: Path | None,
               info: Any, stem: str, world_size: int = 1, arch: dict | None = None) -> tuple[Recipe, dict | None]:
    """``COMMAND.batch_size: auto`` resolved by trial steps (:func:`~nni_darts_ext.batch_size.resolve_auto_batch`);
    ``--resume`` keeps the batch the run found (its ``config.yaml``). ``(recipe, None)`` for a fixed batch.

    Raises:
        UsageError: even the smallest batch does not fit ``--memory-limit``, or several processes (each would find
            its own batch: give the batch); DatasetError as a UsageError: no data.
    """
    if getattr(recipe, command).batch_size != AUTO_BATCH_SIZE:
        return recipe, None
    if world_size > 1:
        raise UsageError(f"{command}.batch_size: auto finds the batch of one process; with {world_size} processes "
                         "give the batch (find it with a single-process run: its summary.json has it)")
    resumed = None
    if options.resume and out is not None and (out / CONFIG_FILE).is_file():
        try:
            resumed = getattr(load_recipe(str(out / CONFIG_FILE)), command).batch_size
        except RecipeError:
            resumed = None
        resumed = resumed if isinstance(resumed, int) else None
    images = len(data_errors(lambda: data.split(train=True)))
    if command == "search":
        images = int(images * recipe.search.train_fraction)
    return resolve_auto_batch(recipe, command, accelerator=options.accelerator, precision=options.precision,
                              memory_limit=options.memory_limit, scale_lr=options.scale_lr,
                              train_images=images // world_size, world_size=world_size, arch=arch,
                              info=info, stem=stem, resumed_batch=resumed)


# --------------------------------------------------------------------------------------------------------- retrain
def assemble_retrain(recipe: Recipe, arch: Any, options: RunOptions, *, data: RecipeData | None = None,
                     held_out: float | None = None) -> Assembly:
    """Check the options and build a retrain: the fixed net of ``arch``, its module, loaders and trainer.

    Each of the ``devices * num_nodes`` processes loads ``retrain.batch_size / world_size`` samples per step
    (:func:`per_device_batch`). The run validates every epoch: on a held-out
    :data:`~nni_darts_ext.nni_trial.TRIAL_VALIDATION_FRACTION` of the training split with ``options.nni``, else on
    the test set (:data:`VALIDATION_ON_TEST`), as the paper does. ``held_out``: validate on this held-out fraction
    of the training split instead and build no test split at all (``test_loader`` is ``None``): a retrain that
    chooses between cells must never read the test labels.

    Raises:
        UsageError, ArchError, RecipeError: bad options, data, architecture or resume; nothing written.

    Example::

        built = assemble_retrain(load_recipe("demo"), "runs/s/arch.json", RunOptions(out="runs/r"))
        built.trainer.fit(built.module, built.train_loader, built.val_loader)
    """
    accelerator, devices = check_device(options.accelerator, options.devices)
    rank = launched_rank()
    out, resume_from = check_out_dir_on_rank(options.out, options.resume, rank)
    if resume_from is not None and rank == 0:
        check_resumable(resume_from)
    arch_dict, arch_name = resolve_arch(arch)
    world = devices * options.num_nodes
    if data is None:  # the statistics of the search that found the arch, when it is a run's
        source = Path(arch) if isinstance(arch, (str, os.PathLike)) else None
        folders = [source if source.is_dir() else source.parent] if source is not None and source.exists() else []
        data = RecipeData(recipe, statistics=run_statistics(recipe, folders))

    seed_everything(recipe.seed)
    # Datasets first: missing data is reported before the net is built.
    data_errors(lambda: data.split(train=True, cutout=recipe.retrain.cutout))
    if held_out is None:
        data_errors(lambda: data.split(train=False))
    info, stem = data_shape(data, recipe.retrain.stem, key="retrain.stem", test=held_out is None)
    recipe, batch_facts = auto_batch(recipe, "retrain", options, data, out=out, info=info, stem=stem,
                                     world_size=world, arch=arch_dict)
    r = recipe.retrain
    batch_size = per_device_batch(r.batch_size, world, key="retrain.batch_size", devices=devices,
                                  num_nodes=options.num_nodes)
    model = build_model(
        arch_dict, width=r.width, num_cells=r.cells, auxiliary_loss=r.auxiliary_weight > 0,
        drop_path_prob=r.drop_path_prob, image_size=info.image_size, num_classes=info.num_classes,
        in_channels=info.in_channels, stem=stem, checkpointing=r.checkpointing,
    )
    module = _module(r, r.epochs, auxiliary_weight=r.auxiliary_weight, drop_path_prob=r.drop_path_prob,
                     num_classes=info.num_classes)
    module.set_model(model)
    if resume_from is not None:
        check_resumable(resume_from, module)
    if held_out is not None or options.nni:
        fraction = TRIAL_VALIDATION_FRACTION if held_out is None else held_out
        validation = f"held-out {fraction:.0%} of the training split"
    else:
        fraction, validation = "test", VALIDATION_ON_TEST
    train_loader, val_loader, test_loader = data_errors(
        lambda: retrain_loaders(data, batch_size=batch_size, validation=fraction, shuffle_seed=recipe.seed,
                                with_test=held_out is None, world_size=world))
    callbacks, epoch_log, logger = _run_callbacks(out, "retrain", options, learning_rate=r.learning_rate,
                                                  resume_from=resume_from, validation=validation)
    if options.nni:
        callbacks.append(NniReportCallback())
    with _trainer_errors():
        trainer = darts_trainer(**_trainer_settings(
            options, accelerator, devices, max_epochs=r.epochs, gradient_clip_val=r.gradient_clip,
            callbacks=callbacks, logger=logger, default_root_dir=str(out),
            log_every_n_steps=_log_every(len(train_loader)),
        ))
    return Assembly(
        command="retrain", recipe=recipe, options=options, accelerator=accelerator, devices=devices,
        world_size=world, rank=rank, data=data, batch_size=batch_size, out=out, resume_from=resume_from,
        train_loader=train_loader, val_loader=val_loader, test_loader=test_loader, validation=validation,
        model=model, module=module, trainer=trainer, epoch_log=epoch_log, arch=arch_dict, arch_name=arch_name,
        info=info, stem=stem, batch_facts=batch_facts,
    )


# -------------------------------------------------------------------------------------------------------- evaluate
def assemble_evaluate(
    recipe: Recipe,
    options: RunOptions,
    *,
    model: Any,
    auxiliary: bool,
    data: RecipeData | None = None,
    out: Path | None = None,
) -> Assembly:
    """Build the test of a net with loaded weights: test loader, module and a trainer that writes nothing.

    The test loader yields ``retrain.batch_size`` samples per step; only the test split is built.
    ``options.accelerator`` / ``devices`` are checked again (cheap) so that this function can be used on its own.

    Example::

        built = assemble_evaluate(recipe, RunOptions(), model=net, auxiliary=False)
        built.trainer.test(built.module, built.test_loader)
    """
    accelerator, devices = check_device(options.accelerator, options.devices)
    data = data or RecipeData(recipe)
    r = recipe.retrain
    loader = data_errors(lambda: test_loader(data, batch_size=r.batch_size))
    info = data_errors(lambda: data.info())
    module = _module(r, 1, auxiliary_weight=r.auxiliary_weight if auxiliary else 0.0, drop_path_prob=0.0,
                     num_classes=info.num_classes)
    module.set_model(model)
    with _trainer_errors():
        trainer = darts_trainer(**_trainer_settings(
            options, accelerator, devices, logger=False, enable_checkpointing=False,
            default_root_dir=str(out) if out else None,
            callbacks=[CompileModel(enabled=True)] if options.compile else [],
        ))
    return Assembly(
        command="evaluate", recipe=recipe, options=options, accelerator=accelerator, devices=devices,
        world_size=devices * options.num_nodes, rank=launched_rank(), data=data, batch_size=r.batch_size, out=out,
        test_loader=loader, model=model, module=module, trainer=trainer, info=info,
    )
