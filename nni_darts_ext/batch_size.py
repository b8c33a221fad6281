"""``batch_size: auto``: the largest batch whose step fits a memory limit, found by trial steps before the run.

A trial step is one real training step (the search's architecture step and weight step, or the retrain's step) of
the recipe's net, optimiser and precision, on random images of the recipe's size, run by Lightning in a child
process (``multiprocessing`` spawn). The child reports the step's peak: on CPU the process's peak resident memory
(``ru_maxrss``: it never decreases, so one child measures ascending batches only), on CUDA
``torch.cuda.max_memory_allocated``; a CUDA out-of-memory error counts as over the limit.

The search: batches 2, 4, 8, ... (from :data:`MIN_AUTO_BATCH`) in one child until one peaks over the limit (or
the cap: the training split, or :data:`MAX_AUTO_BATCH`), then a binary search between the last that fit and the
first that did not, one child per probe. The limit is ``--memory-limit`` (``4GiB``, ``800MB``, ...); without it
90% of the GPU's memory (CUDA) or of the memory available when the run starts (CPU, ``psutil``).

The learning rate is left as the recipe says; :func:`scaled_learning_rate` (``--scale-lr``) applies the linear
rule ``lr * batch / reference`` (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 2.1), the reference being
the DARTS paper's batch for that learning rate (:data:`~nni_darts_ext.constants.DARTS_SEARCH_BATCH_SIZE`,
:data:`~nni_darts_ext.constants.DARTS_RETRAIN_BATCH_SIZE`).

Example::

    found = find_batch_size(lambda sizes: measure(sizes), limit=parse_memory_size("4GiB"), cap=512)
    found.batch_size, found.trials
"""

from __future__ import annotations

import logging
import multiprocessing
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

__all__ = ["MAX_AUTO_BATCH", "MIN_AUTO_BATCH", "FoundBatch", "default_memory_limit", "find_batch_size",
           "measure_trial_steps", "parse_memory_size", "resolve_auto_batch", "scaled_learning_rate"]

_logger = logging.getLogger(__name__)

#: The largest batch ``auto`` tries.
MAX_AUTO_BATCH = 4096
#: The smallest: BatchNorm in training mode needs two samples where a map is 1x1 (the auxiliary head's).
MIN_AUTO_BATCH = 2
#: Share of the device's memory used when no ``--memory-limit`` is given.
DEFAULT_MEMORY_SHARE = 0.9

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

#: A trial: ascending batch sizes -> the peak bytes of each step, in order (``None``: ran out of memory); it may
#: stop early, after the first peak over ``limit``.
Trial = Callable[[Sequence[int], int], list[int | None]]


def parse_memory_size(text: str) -> int:
    """Bytes of a size such as ``4GiB``, ``800MB``, ``1.5G`` (K/M/G/T: binary, KB/MB/GB/TB: decimal).

    Raises:
        UsageError: not a size (one line naming ``--memory-limit``).

    Example::

        >>> parse_memory_size("4GiB"), parse_memory_size("800MB")
        (4294967296, 800000000)
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UsageError(f"--memory-limit: expected a size such as 4GiB or 800MB, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise UsageError(f"--memory-limit: must be more than 0 bytes, got {text!r}")
    return size


@dataclass
class FoundBatch:
    """The result of :func:`find_batch_size`: the batch, the limit, every trial ``(batch, peak bytes or None)``."""

    batch_size: int
    limit: int
    peak: int
    trials: list[tuple[int, int | None]] = field(default_factory=list)

    def report(self, device: str) -> dict[str, Any]:
        """The summary's ``batch_size_found_by`` entry."""
        return {"rule": "auto: the largest batch whose trial step peaked under the limit (doubling, then "
                        "binary search)", "device": device, "limit_bytes": self.limit, "peak_bytes": self.peak,
                "trials": [[b, p] for b, p in self.trials]}


def find_batch_size(trial: Trial, *, limit: int, cap: int = MAX_AUTO_BATCH, smallest: int = MIN_AUTO_BATCH
                    ) -> FoundBatch:
    """The largest batch in ``[smallest, cap]`` whose trial peak is ``<= limit``.

    Raises:
        UsageError: even the smallest batch does not fit (one line: the limit and its peak).

    Example::

        >>> fake = lambda sizes, limit: [1000 + 100 * b for b in sizes]
        >>> find_batch_size(fake, limit=2000, cap=64).batch_size
        10
    """
    trials: list[tuple[int, int | None]] = []

    def fits(peak: int | None) -> bool:
        return peak is not None and peak <= limit

    smallest = min(smallest, cap)
    doubling = [smallest]
    while doubling[-1] < cap:
        doubling.append(min(2 * doubling[-1], cap))
    measured = trial(doubling, limit)
    trials += list(zip(doubling, measured, strict=False))
    good = [(b, p) for b, p in trials if fits(p)]
    if not good or not fits(trials[0][1]):
        peak = trials[0][1] if trials else None
        raise UsageError(f"--memory-limit {_format_bytes(limit)}: even batch {smallest} does not fit (its step "
                         f"{'ran out of memory' if peak is None else 'peaks at ' + _format_bytes(peak)}); raise the "
                         "limit, or try checkpointing, partial_channels or a smaller net")
    low, low_peak = good[-1]
    high = next((b for b, p in trials if not fits(p)), None)
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        peak = trial([middle], limit)[0]
        trials.append((middle, peak))
        if fits(peak):
            low, low_peak = middle, peak
        else:
            high = middle
    assert low_peak is not None
    return FoundBatch(low, limit, low_peak, trials)


def _format_bytes(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def default_memory_limit(accelerator: str) -> int:
    """90% of the first GPU's memory (``cuda``), else 90% of the memory available now (``psutil``)."""
    if accelerator == "cuda":
        import torch

        return int(DEFAULT_MEMORY_SHARE * torch.cuda.get_device_properties(0).total_memory)
    import psutil

    return int(DEFAULT_MEMORY_SHARE * psutil.virtual_memory().available)


def scaled_learning_rate(learning_rate: float, batch_size: int, reference: int) -> float:
    """The linear rule: ``learning_rate * batch_size / reference``.

    Example::

        >>> scaled_learning_rate(0.025, 128, 64)
        0.05
    """
    return learning_rate * batch_size / reference


# ------------------------------------------------------------------------------------------------ trial steps
def measure_trial_steps(command: str, recipe: Any, sizes: Sequence[int], limit: int, *, accelerator: str,
                        precision: str | None, arch: dict[str, Any] | None = None, info: Any = None,
                        stem: str | None = None) -> list[int | None]:
    """Peaks of one training step at each of ``sizes`` (ascending), in one spawned child process.

    ``command``: ``"search"`` or ``"retrain"`` (then ``arch`` is the architecture); ``recipe``: the
    :class:`~nni_darts_ext.recipes.Recipe` (its batch size is replaced by each size). Stops after the first peak over
    ``limit``. A child that dies (the system killed it for memory) counts as out of memory.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_trial_child, args=(sender, command, recipe, list(sizes), limit,
                                                         accelerator, precision, arch, info, stem), daemon=True)
    process.start()
    sender.close()
    peaks: list[int | None] = []
    try:
        while True:
            try:
                message = receiver.recv()
            except EOFError:  # the child ended: done, or killed mid-step
                break
            if isinstance(message, str):  # an error that is not about memory: the run would fail the same way
                raise RuntimeError(f"batch_size auto: the trial step failed: {message}")
            peaks.append(message)
            if message is None or message > limit:
                break
    finally:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
    if len(peaks) < len(sizes) and (not peaks or (peaks[-1] is not None and peaks[-1] <= limit)):
        peaks.append(None)  # killed during the next step
    return peaks


def _trial_child(sender: Any, command: str, recipe: Any, sizes: list[int], limit: int, accelerator: str,
                 precision: str | None, arch: dict[str, Any] | None, info: Any, stem: str | None) -> None:
    import resource
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        for size in sizes:
            if accelerator == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                _one_step(command, recipe, size, accelerator, precision, arch, info, stem)
            except torch.OutOfMemoryError:
                sender.send(None)
                return
            if accelerator == "cuda":
                peak = int(torch.cuda.max_memory_allocated())
                torch.cuda.empty_cache()
            else:
                peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
            sender.send(peak)
            if peak > limit:
                return
    except Exception as exc:  # reported to the parent, which raises it
        sender.send(f"{type(exc).__name__}: {exc}")
    finally:
        sender.close()


def _one_step(command: str, recipe: Any, size: int, accelerator: str, precision: str | None,
              arch: dict[str, Any] | None, info: Any, stem: str | None) -> None:
    """One training step of the recipe's search (architecture + weight step) or retrain at batch ``size``, on
    random images of the data's shape (``info``: channels, size, classes)."""
    import torch

    from ._compat import import_nni_quietly
    from .arch import build_model
    from .pipeline.assemble import search_space, search_strategy
    from .recipes import apply_overrides
    from .training_module import DartsClassificationModule

    with import_nni_quietly():
        from nni.nas.evaluator.pytorch import DataLoader, Lightning, Trainer
        from nni.nas.execution import SequentialExecutionEngine
        from nni.nas.space import RawFormatModelSpace

    recipe = apply_overrides(recipe, {f"{command}.batch_size": size, "search.warmup_epochs": 0})
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(size, info.in_channels, info.image_size, info.image_size, generator=gen)
    data = torch.utils.data.TensorDataset(images, torch.randint(0, info.num_classes, (size,), generator=gen))
    precision_kwargs = {} if precision is None else {"precision": precision}
    trainer = Trainer(max_epochs=1, accelerator="gpu" if accelerator == "cuda" else accelerator, devices=1,
                      logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      num_sanity_val_steps=0, limit_val_batches=0, **precision_kwargs)
    section = recipe.search if command == "search" else recipe.retrain
    module = DartsClassificationModule(learning_rate=section.learning_rate, momentum=section.momentum,
                                       weight_decay=section.weight_decay, max_epochs=1, num_classes=info.num_classes,
                                       auxiliary_loss_weight=0.0 if command == "search" else
                                       recipe.retrain.auxiliary_weight)
    if command == "search":
        evaluator = Lightning(module, trainer, train_dataloaders=DataLoader(data, batch_size=size),
                              val_dataloaders=DataLoader(data, batch_size=size))
        space = search_space(recipe, info, stem)
        search_strategy(recipe, space)(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine())
    else:
        r = recipe.retrain
        model = build_model(arch, width=r.width, num_cells=r.cells, auxiliary_loss=r.auxiliary_weight > 0,
                            drop_path_prob=r.drop_path_prob, image_size=info.image_size,
                            num_classes=info.num_classes, in_channels=info.in_channels, stem=stem,
                            checkpointing=r.checkpointing)
        module.set_model(model)
        trainer.fit(module, DataLoader(data, batch_size=size))


# ------------------------------------------------------------------------------------------------ in the pipeline
def resolve_auto_batch(recipe: Any, command: str, *, accelerator: str, precision: str | None, memory_limit: int | None,
                       scale_lr: bool, train_images: int, world_size: int = 1, arch: dict[str, Any] | None = None,
                       info: Any = None, stem: str | None = None, resumed_batch: int | None = None
                       ) -> tuple[Any, dict[str, Any] | None]:
    """``recipe`` with ``COMMAND.batch_size: auto`` replaced by the batch found, and the summary entries.

    ``train_images``: the training images the loaders draw from (caps the batch: the search's training split,
    the retrain's training set per process). ``resumed_batch``: the batch the interrupted run found (``--resume``
    keeps it). The retrain's batch is global: the per-process batch found times ``world_size``. Returns
    ``(recipe, None)`` when the batch is not ``auto``.

    Raises:
        UsageError: even batch 1 does not fit the limit.
    """
    from .constants import DARTS_RETRAIN_BATCH_SIZE, DARTS_SEARCH_BATCH_SIZE
    from .recipes import AUTO_BATCH_SIZE, apply_overrides

    section = getattr(recipe, command)
    if section.batch_size != AUTO_BATCH_SIZE:
        return recipe, None
    device = "cuda" if accelerator == "cuda" or (accelerator == "auto" and _cuda_available()) else "cpu"
    if resumed_batch is not None:
        batch, found = resumed_batch, {"rule": "auto: kept from the run resumed (its config.yaml)"}
    else:
        limit = memory_limit if memory_limit is not None else default_memory_limit(device)
        cap = max(1, min(MAX_AUTO_BATCH, train_images))

        def trial(sizes: Sequence[int], limit: int) -> list[int | None]:
            return measure_trial_steps(command, recipe, sizes, limit, accelerator=device, precision=precision,
                                       arch=arch, info=info, stem=stem)

        result = find_batch_size(trial, limit=limit, cap=cap)
        batch = result.batch_size * (world_size if command == "retrain" else 1)
        found = result.report(device)
        _logger.info("%s.batch_size auto: %d (step peak %s under the limit %s; %d trial steps)", command, batch,
                     _format_bytes(result.peak), _format_bytes(limit), len(result.trials))
    overrides: dict[str, Any] = {f"{command}.batch_size": batch}
    learning_rate = section.learning_rate
    if scale_lr:
        reference = DARTS_SEARCH_BATCH_SIZE if command == "search" else DARTS_RETRAIN_BATCH_SIZE
        learning_rate = scaled_learning_rate(section.learning_rate, batch, reference)
        overrides[f"{command}.learning_rate"] = learning_rate
        if section.eta_min > learning_rate:
            overrides[f"{command}.eta_min"] = learning_rate
        found["learning_rate_rule"] = f"linear: {section.learning_rate:g} x {batch} / {reference}"
        _logger.info("%s.learning_rate scaled linearly: %g x %d / %d = %g (--scale-lr)", command,
                     section.learning_rate, batch, reference, learning_rate)
    else:
        found["learning_rate_rule"] = "unchanged (no --scale-lr)"
    return apply_overrides(recipe, overrides), {"batch_size": batch, "batch_size_found_by": found}


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
