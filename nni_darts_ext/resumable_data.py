"""Exact mid-epoch resume: a run resumed from a mid-epoch checkpoint continues at the next batch, in the same order.

Lightning 2.6 saves its loop progress in every checkpoint (epoch, batches done in the epoch) and, when it resumes
mid-epoch, loads the ``state_dict`` of every training data loader that has one
(``FitLoop._load_combined_loader_states``)
right before it creates the data iterator. It does not skip batches itself, and a plain ``DataLoader(shuffle=True)``
draws its permutation from the global RNG at each epoch start, so a resumed run sees other batches than the
uninterrupted one. Three pieces make the resume exact (bit-identical on CPU with ``num_workers=0``):

* :class:`ResumableSampler`: the permutation depends only on ``(seed, epoch)``.
* :class:`ResumableDataLoader`: a ``DataLoader`` with ``state_dict``/``load_state_dict`` (epoch, batches consumed)
  that starts its next iteration at that batch without loading the skipped ones; data-side randomness (random
  augmentation in the dataset's transforms) is drawn from generators seeded by ``(seed, epoch, batch)``, so it
  never consumes the training step's global RNG and is the same on resume.
* :class:`ExactResume`: a callback that stores the global RNG states (torch, CUDA, numpy, ``random``; per rank
  under DDP) in each checkpoint and restores them when training resumes, records in the checkpoint how many
  batches the *training step* consumed (Lightning's fetcher has already fetched one batch ahead when a checkpoint
  is written at a batch end), and lists every optimizer's parameters in module order, so that restored optimizer
  states land on the right parameters (NNI's architecture optimizer gets its alphas from a set, in another order
  in every process).

Works with a ``CombinedLoader`` of several loaders (NNI's one-shot ``{'train': ..., 'val': ...}``): each stateful
loader is put back at the batch the combined iteration reached. Under DDP Lightning replaces the sampler with its
``DistributedSampler`` (also a function of seed and epoch); the resume must use the same world size.

Limits: with ``num_workers > 0`` the order is exact, but augmentation drawn inside worker processes comes from the
workers' own generators and differs after a resume. GPU kernels that are not deterministic make any two runs differ.

Example::

    loader = ResumableDataLoader(train_set, batch_size=96, shuffle=True, seed=0)
    trainer = Trainer(callbacks=[ExactResume(), TimedCheckpoint(600, "runs/x/checkpoints")])
    trainer.fit(module, loader, ckpt_path="runs/x/checkpoints/last.ckpt")
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from .checks import check_int

__all__ = ["ExactResume", "ResumableDataLoader", "ResumableSampler", "data_seed"]

_logger = logging.getLogger(__name__)

_SEED_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant (splitmix64): spreads (seed, epoch, batch) apart
_SEED_MASK = (1 << 63) - 1
_NUMPY_SEED_MASK = (1 << 32) - 1


def data_seed(seed: int, epoch: int, batch: int) -> int:
    """The seed of the data-side random draws of ``batch`` in ``epoch`` (a non-negative 63-bit int)."""
    value = seed & _SEED_MASK
    for part in (epoch, batch):
        value = ((value ^ (part & _SEED_MASK)) * _SEED_MIX + part + 1) & _SEED_MASK
    return value


@contextlib.contextmanager
def _isolated_rng(seed: int) -> Iterator[None]:
    """Run the block with torch (CPU), numpy and ``random`` seeded by ``seed``; restore their states after."""
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    torch.default_generator.manual_seed(seed)  # CPU only: the CUDA generators of the training are left alone
    np.random.seed(seed & _NUMPY_SEED_MASK)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _collect_rng_states() -> dict[str, Any]:
    """The global RNG states of torch (CPU, CUDA), numpy and ``random``, as tensors, ints and tuples only, so that
    checkpoints stay loadable with ``torch.load(weights_only=True)``."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableSampler(Sampler[int]):
    """Indices of a dataset in an order that depends only on ``(seed, epoch)``; Lightning sets the epoch.

    Args:
        data_source: the dataset (only its length is used).
        seed: seed of the permutations.
        shuffle: ``False`` yields ``0..n-1`` every epoch.

    Example::

        sampler = ResumableSampler(train_set, seed=0)
        sampler.set_epoch(3)
        order = list(sampler)
    """

    def __init__(self, data_source: Sized, *, seed: int = 0, shuffle: bool = True):
        if not hasattr(data_source, "__len__"):
            raise TypeError(f"data_source must have a length, got {type(data_source).__name__}")
        self.num_samples = len(data_source)
        self.seed = check_int("seed", seed, minimum=0)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator()
        generator.manual_seed(data_seed(self.seed, self.epoch, -1))
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class _SkipFirst:
    """An index sampler whose next iteration starts ``skip`` batches in (the skipped ones are never loaded)."""

    def __init__(self, base: Any, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.base)
        for _ in range(self.skip):
            next(iterator, None)
        return iterator

    def __len__(self) -> int:
        return len(self.base)


def _sampler_with_epoch(loader: DataLoader) -> Any | None:
    for candidate in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if candidate is not None and hasattr(candidate, "set_epoch"):
            return candidate
    return None


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that Lightning can resume mid-epoch at the next batch with the uninterrupted order.

    Args:
        dataset: a map-style dataset.
        batch_size, shuffle, drop_last, num_workers, ...: as for ``DataLoader``; ``shuffle=True`` uses a
            :class:`ResumableSampler` (order a function of ``seed`` and the epoch), unless ``sampler`` is given.
        seed: seed of the order and of the data-side random draws.

    ``state_dict()`` is ``{"epoch", "batches"}``: the epoch and how many batches of it were consumed.
    :class:`ExactResume` corrects ``batches`` to what the training step consumed (the loader itself counts one
    batch too many: Lightning fetches ahead); without it a resume skips one batch more than it should.

    Example::

        loader = ResumableDataLoader(train_set, batch_size=64, shuffle=True, seed=0)
    """

    def __init__(self, dataset: Any, batch_size: int | None = 1, shuffle: bool | None = None, *,
                 seed: int = 0, sampler: Any = None, **kwargs: Any):
        self.seed = check_int("seed", seed, minimum=0)
        if sampler is None and kwargs.get("batch_sampler") is None:
            sampler = ResumableSampler(dataset, seed=seed, shuffle=bool(shuffle))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.shuffle = shuffle  # read back by Lightning when it rebuilds the loader with a DistributedSampler
        self._skip_batches = 0
        self._batches_yielded = 0

    @property
    def epoch(self) -> int:
        sampler = _sampler_with_epoch(self)
        return int(getattr(sampler, "epoch", 0)) if sampler is not None else 0

    @property
    def _index_sampler(self) -> Any:  # what the DataLoader iterators draw their batch indices from
        base = DataLoader._index_sampler.fget(self)  # type: ignore[attr-defined]
        return _SkipFirst(base, self._skip_batches) if self._skip_batches else base

    def __iter__(self) -> Iterator[Any]:
        start = self._skip_batches
        epoch = self.epoch
        with _isolated_rng(data_seed(self.seed, epoch, -2)):  # the iterator draws worker seeds: not from training
            iterator = super().__iter__()
        self._skip_batches = 0
        return self._batches(iterator, start)

    def _batches(self, iterator: Iterator[Any], start: int) -> Iterator[Any]:
        # The epoch is read at the first batch, not when the iterator is made: on a resume Lightning makes the
        # iterator before it sets the sampler's epoch (the sampler itself also draws its order at the first batch).
        epoch = self.epoch
        self._batches_yielded = start
        position = start
        while True:
            with _isolated_rng(data_seed(self.seed, epoch, position)):
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
            position += 1
            self._batches_yielded = position
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self._batches_yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        sampler = _sampler_with_epoch(self)
        if sampler is not None:
            sampler.set_epoch(epoch)
        self._skip_batches = batches
        self._batches_yielded = batches
        _logger.debug("data loader resumes at batch %d of epoch %d", batches, epoch)


def _combined_loader_state(checkpoint: dict[str, Any]) -> list | None:
    try:
        return checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    except (KeyError, TypeError):
        return None


class ExactResume(pl.Callback):
    """Save the RNG states and the exact data position in checkpoints; restore them when training resumes.

    Use with :class:`ResumableDataLoader` (alone or in a dict of loaders). Under DDP each rank's RNG states are
    gathered into the checkpoint (checkpoints are written collectively, so every rank calls ``state_dict``) and each
    rank gets its own back on a resume with the same world size.

    Example::

        Trainer(callbacks=[ExactResume(), ModelCheckpoint(dirpath, save_last=True)])
    """

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            return {"rng_states": gathered}
        return {"rng_states": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = list(state_dict.get("rng_states", [])) or None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = _combined_loader_state(checkpoint)
        combined = trainer.fit_loop._combined_loader
        if not states or combined is None:
            return
        consumed = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        stateful = [loader for loader in combined.flattened if hasattr(loader, "state_dict")
                    and hasattr(loader, "load_state_dict")]
        for index, loader in enumerate(stateful):
            if isinstance(loader, ResumableDataLoader) and index < len(states):
                length = len(loader)
                # A shorter loader cycled by CombinedLoader("max_size_cycle") restarts after `length` batches.
                cycled = 0 < length <= consumed and length < _longest(combined)
                position = consumed % length if cycled else consumed
                if length and position >= length:  # saved at the epoch's end: the resume starts the next epoch
                    states[index] = {"epoch": loader.epoch + 1, "batches": 0}
                else:
                    states[index] = {"epoch": loader.epoch, "batches": position}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning restores optimizer states by parameter position. NNI's arch_parameters() goes through a set, so
        # its architecture optimizer lists the alphas in another order in every process: restored moments would
        # land on the wrong alphas. Put every optimizer's parameters in module order (before the restore, while the
        # optimizers hold no state; elementwise optimizers do not depend on the order otherwise).
        position = {id(param): index for index, param in enumerate(pl_module.parameters())}
        for optimizer in trainer.optimizers:
            if optimizer.state:
                continue
            for group in optimizer.param_groups:
                group["params"] = sorted(group["params"], key=lambda param: position.get(id(param), len(position)))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if not pending or trainer.ckpt_path is None:
            return
        rank = trainer.global_rank
        if len(pending) != trainer.world_size:
            _logger.warning("checkpoint holds RNG states of %d process(es), this run has %d: using the first",
                            len(pending), trainer.world_size)
        _set_rng_states(pending[rank] if len(pending) == trainer.world_size else pending[0])


def _longest(combined: Any) -> int:
    lengths = [len(loader) for loader in combined.flattened if hasattr(loader, "__len__")]
    return max(lengths) if lengths else 0
