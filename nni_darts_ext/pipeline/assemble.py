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
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from .._compat import cpu_has_native_bf16, import_nni_quietly
from ..arch import NAMED_ARCHS, build_model, load_arch, normalize_arch
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
from ..constants import ARC_BETAS, ARC_WEIGHT_DECAY, NUM_CLASSES
from ..data import search_dataloaders
from ..distributed import launched_rank
from ..errors import CheckpointError, DatasetError, UsageError
from ..evaluator import darts_evaluator, darts_trainer
from ..nni_trial import TRIAL_VALIDATION_FRACTION
from ..recipe_data import RecipeData, retrain_loaders, test_loader
from ..recipes import Recipe, RecipeError
from ..resumable_data import ExactResume
from ..search import darts_strategy
from ..training_module import DartsClassificationModule
from .budget import Budget, timing_device
from .options import RunOptions
from .run_folder import (
    ARCH_FILE,
    CHECKPOINT_DIR,
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
    "data_errors",
    "per_device_batch",
    "resolve_arch",
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
    except TypeError as exc:  # e.g. cifar10 without a data_dir
        raise UsageError(f"dataset.data_dir: {exc}") from None


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


@contextlib.contextmanager
def _trainer_errors() -> Iterator[None]:
    """Lightning's refusals of trainer options (bad --precision, ...) as UsageError."""
    try:
        yield
    except (ValueError, MisconfigurationException) as exc:
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        flag = "--precision" if "recision" in first_line else "trainer options"
        raise UsageError(f"{flag}: {first_line}") from None


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


def _module(section: Any, num_epochs: int, *, auxiliary_weight: float, drop_path_prob: float | None) -> Any:
    return DartsClassificationModule(
        learning_rate=section.learning_rate,
        weight_decay=section.weight_decay,
        momentum=section.momentum,
        eta_min=section.eta_min,
        max_epochs=num_epochs,
        auxiliary_loss_weight=auxiliary_weight,
        drop_path_prob=drop_path_prob,
        num_classes=NUM_CLASSES,
    )


# ---------------------------------------------------------------------------------------------------------- search
def _strategy(recipe: Recipe, budget: Budget | None = None) -> Any:
    """The recipe's strategy preset; options a preset does not take become RecipeError naming the key."""
    s = recipe.search
    kwargs: dict[str, Any] = {
        "arc_learning_rate": s.arc_learning_rate,
        "gradient_clip_val": s.gradient_clip,
        "warmup_epochs": s.warmup_epochs,
    }
    keys = {"arc_learning_rate": "search.arc_learning_rate", "gradient_clip_val": "search.gradient_clip",
            "warmup_epochs": "search.warmup_epochs"}
    # The architecture Adam's betas and weight decay: passed only when they differ from DARTS' (NNI's, the paper's),
    # so that a preset with its own (fair-darts' betas, drnas' regulariser in place of weight decay) keeps them.
    if tuple(s.arc_betas) != tuple(ARC_BETAS):
        kwargs["arc_betas"] = tuple(s.arc_betas)
        keys["arc_betas"] = "search.arc_betas"
    if s.arc_weight_decay != ARC_WEIGHT_DECAY:
        kwargs["arc_weight_decay"] = s.arc_weight_decay
        keys["arc_weight_decay"] = "search.arc_weight_decay"
    if s.partial_channels is not None:
        kwargs["partial_channels"] = s.partial_channels
        keys["partial_channels"] = "search.partial_channels"
    order = s.order
    if order is not None:
        kwargs["order"] = order
        keys["order"] = "search.order"
    max_skip_connects = recipe.export.max_skip_connects
    if max_skip_connects is not None:
        kwargs["max_skip_connects"] = max_skip_connects
        keys["max_skip_connects"] = "export.max_skip_connects"
    if budget is not None and budget.cost is not None:
        kwargs["cost"] = budget.cost
        keys["cost"] = "search.cost"
    for name, value in dict(s.strategy_options or {}).items():
        kwargs[name] = value
        keys[name] = f"search.strategy_options.{name}"
    try:
        return darts_strategy(s.strategy, **kwargs)
    except TypeError as exc:
        named = next((key for arg, key in keys.items() if repr(arg) in str(exc) or f"'{arg}'" in str(exc)), None)
        key = named or "search.strategy"
        raise RecipeError(f"{key}: strategy {s.strategy!r} does not take it ({exc})") from None


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
    s = recipe.search
    data = data or RecipeData(recipe)

    seed_everything(recipe.seed)
    dataset = data_errors(lambda: data.split(train=True))
    train_loader, val_loader = search_dataloaders(
        dataset, batch_size=s.batch_size, train_fraction=s.train_fraction, seed=recipe.seed,
        num_workers=recipe.dataset.num_workers,
    )
    # Cost tables of the retrain net (latency: read back from the run folder on resume); impossible limits refused.
    budget = Budget.from_recipe(recipe, device=timing_device(accelerator), batch_size=s.batch_size,
                                out=out if resume_from is not None else None)
    strategy = _strategy(recipe, budget)
    with import_nni_quietly():
        from nni.nas.hub.pytorch import DARTS

    space = DARTS(width=s.width, num_cells=s.cells, dataset="cifar")
    history = AlphaHistory()
    callbacks, epoch_log, logger = _run_callbacks(out, "search", options, learning_rate=s.learning_rate,
                                                  resume_from=resume_from)
    # Per-epoch health records, TensorBoard scalars, health.png; the Hessian eigenvalue and DARTS-ES when asked.
    health = SearchHealthMonitor(out, hessian_every=s.hessian_every, early_stop=s.early_stop)
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
        alpha_history=history, health=health, budget=budget,
    )


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
    r = recipe.retrain
    world = devices * options.num_nodes
    batch_size = per_device_batch(r.batch_size, world, key="retrain.batch_size", devices=devices,
                                  num_nodes=options.num_nodes)
    data = data or RecipeData(recipe)

    seed_everything(recipe.seed)
    # Datasets first: missing data is reported before the net is built.
    data_errors(lambda: data.split(train=True, cutout=r.cutout))
    if held_out is None:
        data_errors(lambda: data.split(train=False))
    model = build_model(
        arch_dict, width=r.width, num_cells=r.cells, auxiliary_loss=r.auxiliary_weight > 0,
        drop_path_prob=r.drop_path_prob, image_size=recipe.image_size,
    )
    module = _module(r, r.epochs, auxiliary_weight=r.auxiliary_weight, drop_path_prob=r.drop_path_prob)
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
                                with_test=held_out is None))
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
    module = _module(r, 1, auxiliary_weight=r.auxiliary_weight if auxiliary else 0.0, drop_path_prob=0.0)
    module.set_model(model)
    loader = data_errors(lambda: test_loader(data, batch_size=r.batch_size))
    with _trainer_errors():
        trainer = darts_trainer(**_trainer_settings(
            options, accelerator, devices, logger=False, enable_checkpointing=False,
            default_root_dir=str(out) if out else None,
            callbacks=[CompileModel(enabled=True)] if options.compile else [],
        ))
    return Assembly(
        command="evaluate", recipe=recipe, options=options, accelerator=accelerator, devices=devices,
        world_size=devices * options.num_nodes, rank=launched_rank(), data=data, batch_size=r.batch_size, out=out,
        test_loader=loader, model=model, module=module, trainer=trainer,
    )
