"""Lightning callback that records the health of a one-shot DARTS search each epoch (see :mod:`nni_darts_ext.health`).

:class:`SearchHealthMonitor` works on the one-shot module NNI's strategies (and ours) train, the ``pl_module``
with ``arch_parameters()``, ``export()``, ``export_probs()`` and the wrapped ``training_module``. Each training
epoch it appends a record to ``DIR/search_health.json`` (atomically), redraws ``DIR/health.png``, logs scalars
under ``search/`` and the cell drawing to TensorBoard, logs warnings, and, with ``early_stop='hessian'``, applies
DARTS-ES: it stops the trainer and remembers the architecture of the epoch to go back to.

Example::

    monitor = SearchHealthMonitor("runs/search", hessian_every=2, early_stop="hessian")
    evaluator = darts_evaluator(train_loader, val_loader, max_epochs=50, callbacks=[monitor])
    NasExperiment(space, evaluator, strategy).run()
    arch = monitor.go_back_arch if monitor.stopped_early else experiment.export_top_models(formatter="dict")[0]
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from nni_darts_ext.constants import (
    ARCH_STALL_EPOCHS,
    HESSIAN_POWER_ITERATIONS,
    HESSIAN_POWER_TOL,
    MAX_NORMAL_SKIP_CONNECTS,
)
from nni_darts_ext.errors import OutOfMemoryInStage
from nni_darts_ext.health import (
    HEALTH_FILE,
    HEALTH_PLOT,
    DartsEarlyStopping,
    chunked_hessian_power_iteration,
    health_record,
    health_warnings,
    hessian_power_iteration,
    plot_health,
    write_health_records,
)
from nni_darts_ext.search.module import DartsSearchModule

from .._compat import import_nni_quietly
from ..checks import check_int, check_optional

with import_nni_quietly():
    from nni.nas.evaluator.pytorch.lightning import SupervisedLearningModule
    from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule

__all__ = ["EARLY_STOP_RULES", "SearchHealthMonitor"]

_logger = logging.getLogger(__name__)

#: Values of ``early_stop`` (recipe key ``search.early_stop``); ``None`` is off.
EARLY_STOP_RULES = ("hessian",)
_SCALAR_PREFIX = "search/"
# NNI's differentiable cell logs its sorted weights at INFO on every export (supermodule/differentiable.py).
_NNI_EXPORT_LOGGER = "nni.nas.oneshot.pytorch.supermodule.differentiable"
_IMAGE_TAG = "search/cells"
_SCALAR_KEYS = ("changed_edges", "skip_connects_normal", "skip_connects_reduce", "mean_entropy", "max_weight",
                "hessian_eigenvalue")


def _to_plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_plain(v) for v in value)
    return value


def _sorted_arch_parameters(module: Any) -> list[torch.Tensor]:
    """``module.arch_parameters()`` (a set in NNI) in the order of ``module.named_parameters()``."""
    arch = {id(p) for p in module.arch_parameters()}
    ordered = [p for _, p in module.named_parameters() if id(p) in arch]
    seen = {id(p) for p in ordered}
    return ordered + [p for p in module.arch_parameters() if id(p) not in seen]


def _default_loss(pl_module: Any, batch: Any) -> torch.Tensor:
    """Validation loss of the wrapped training module on ``batch``: ``criterion(forward(x), y)``.

    Falls back to ``training_step(batch, 0)`` (loss tensor or dict with ``'loss'``) when the module is not an NNI
    ``SupervisedLearningModule`` (which holds a ``criterion``); its ``self.log`` calls are discarded.
    """
    training_module = pl_module.training_module if isinstance(pl_module, BaseOneShotLightningModule) else pl_module
    criterion = training_module.criterion if isinstance(training_module, SupervisedLearningModule) else None
    if criterion is not None and isinstance(batch, (list, tuple)) and len(batch) == 2:
        x, y = batch
        output = training_module(x)
        if isinstance(output, (list, tuple)):
            output = output[0]
        return criterion(output, y)
    log = training_module.log
    training_module.log = lambda *args, **kwargs: None
    try:
        output = training_module.training_step(batch, 0)
    finally:
        training_module.log = log
    return output["loss"] if isinstance(output, dict) else output


@contextlib.contextmanager
def _state_preserved(module: torch.nn.Module) -> Iterator[None]:
    """Restore buffers (BatchNorm running statistics), torchmetrics states and the random state afterwards."""
    buffers = {name: buf.detach().clone() for name, buf in module.named_buffers()}
    metrics = []
    with contextlib.suppress(ImportError):
        import torchmetrics

        for sub in module.modules():
            if isinstance(sub, torchmetrics.Metric):
                saved = {name: copy.deepcopy(getattr(sub, name)) for name in sub._defaults}
                metrics.append((sub, saved, copy.deepcopy(sub.__dict__.get("_update_count")),
                                copy.deepcopy(sub.__dict__.get("_computed"))))
    devices = sorted({buf.device.index or 0 for buf in module.parameters() if buf.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for name, buf in module.named_buffers():
                if name in buffers:
                    buf.copy_(buffers[name])
        for sub, saved, count, computed in metrics:
            for name, value in saved.items():
                setattr(sub, name, value)
            sub._update_count = count
            sub._computed = computed


def _quiet_export(pl_module: Any) -> dict[str, Any]:
    """``pl_module.export()`` without NNI's INFO lines listing every edge's sorted weights (one per node)."""
    nni_logger = logging.getLogger(_NNI_EXPORT_LOGGER)
    level = nni_logger.level
    nni_logger.setLevel(max(level, logging.WARNING))
    try:
        return pl_module.export()
    finally:
        nni_logger.setLevel(level)


def _figure_to_array(fig: Any) -> Any:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class SearchHealthMonitor(pl.Callback):
    """Record the health of a one-shot DARTS search at every training epoch end.

    Args:
        out_dir: the search's output folder (``search_health.json`` and ``health.png`` go there).
        hessian_every: compute the dominant Hessian eigenvalue every this many epochs (epochs 0, n, 2n, ... and
            the last one, as RobustDARTS does); 0 = never (recipe key ``search.hessian_every``).
        early_stop: ``None`` (off) or ``'hessian'``: DARTS-ES (recipe key ``search.early_stop``); needs
            ``hessian_every >= 1``.
        rule: the DARTS-ES rule to apply (default :class:`DartsEarlyStopping` with the official settings).
        power_iterations, power_tol: power-iteration budget and tolerance.
        max_normal_skips, stall_epochs: warning thresholds (:func:`health_warnings`).
        loss_fn: ``loss_fn(pl_module, val_batch) -> loss``; default ``criterion(forward(x), y)`` of the wrapped
            training module.
        hessian_batch_size: Hessian-vector products on chunks of this many samples of the fixed validation batch,
            accumulated (:func:`~nni_darts_ext.health.chunked_hessian_power_iteration`: one chunk's
            double-backward graph in memory at a time; recipe key ``search.hessian_batch_size``); ``None``: the
            whole batch at once.
        log_images: draw both cells into TensorBoard's image tab each epoch.
        plot: redraw ``health.png`` each epoch.

    The eigenvalue is computed on a fixed validation batch (the first ``batch['val']`` of the run) in the module's
    current mode, and leaves the model as it was: buffers (BatchNorm statistics), metric states, ``.grad`` and the
    random state are unchanged. Every rank computes; rank 0 writes files and logs, and its early-stop decision is
    broadcast. After an early stop, :attr:`stopped_early`, :attr:`go_back_epoch` and :attr:`go_back_arch` say which
    architecture DARTS-ES returns.

    Example::

        monitor = SearchHealthMonitor("runs/search", hessian_every=1)
        trainer = Trainer(callbacks=[monitor])
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        hessian_every: int = 0,
        early_stop: str | None = None,
        rule: DartsEarlyStopping | None = None,
        power_iterations: int = HESSIAN_POWER_ITERATIONS,
        power_tol: float = HESSIAN_POWER_TOL,
        max_normal_skips: int = MAX_NORMAL_SKIP_CONNECTS,
        stall_epochs: int = ARCH_STALL_EPOCHS,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        hessian_batch_size: int | None = None,
        log_images: bool = True,
        plot: bool = True,
    ) -> None:
        if not isinstance(out_dir, (str, Path)):
            raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
        self.out_dir = Path(out_dir)
        self.hessian_every = check_int("hessian_every", hessian_every, minimum=0)
        if early_stop is not None and early_stop not in EARLY_STOP_RULES:
            raise ValueError(f"early_stop must be None or one of {list(EARLY_STOP_RULES)}, got {early_stop!r}")
        if early_stop is not None and self.hessian_every == 0:
            raise ValueError("early_stop='hessian' needs hessian_every >= 1 (the rule reads the eigenvalues)")
        if rule is not None and not isinstance(rule, DartsEarlyStopping):
            raise TypeError(f"rule must be a DartsEarlyStopping, got {type(rule).__name__}")
        self.early_stop = early_stop
        self._rule_template = rule
        self.rule = copy.deepcopy(rule) if rule is not None else DartsEarlyStopping()
        self.power_iterations = check_int("power_iterations", power_iterations, minimum=1)
        self.power_tol = float(power_tol)
        self.max_normal_skips = check_int("max_normal_skips", max_normal_skips, minimum=0)
        self.stall_epochs = check_int("stall_epochs", stall_epochs, minimum=1)
        self.loss_fn = loss_fn or _default_loss
        self.hessian_batch_size = check_optional(check_int, "hessian_batch_size", hessian_batch_size, minimum=1)
        self.log_images = bool(log_images)
        self.plot = bool(plot)
        self.records: list[dict[str, Any]] = []
        self.val_batch: Any = None
        self._warned_no_batch = False
        self.stopped_early = False
        self.go_back_epoch: int | None = None
        self.stop_epoch: int | None = None
        self.go_back_arch: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------ paths
    @property
    def health_file(self) -> Path:
        return self.out_dir / HEALTH_FILE

    @property
    def health_plot(self) -> Path:
        return self.out_dir / HEALTH_PLOT

    # ------------------------------------------------------------------------------------------------ hooks
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.val_batch is None and isinstance(batch, dict) and "val" in batch:
            self.val_batch = _to_plain(batch["val"])

    def _due(self, epoch: int, max_epochs: int | None) -> bool:
        if self.hessian_every == 0:
            return False
        return epoch % self.hessian_every == 0 or (max_epochs is not None and epoch == max_epochs - 1)

    def compute_eigenvalue(self, pl_module: Any) -> tuple[float, int, float]:
        """(eigenvalue, Hessian-vector products, seconds) on the fixed validation batch; the model is left as it was."""
        if self.val_batch is None:
            raise RuntimeError("no validation batch seen yet (the batches must be dicts with a 'val' entry)")
        params = _sorted_arch_parameters(pl_module)
        start = time.perf_counter()
        chunks = self._chunks()
        with _state_preserved(pl_module):
            if len(chunks) == 1:
                estimate = hessian_power_iteration(lambda: self.loss_fn(pl_module, self.val_batch), params,
                                                   iterations=self.power_iterations, tol=self.power_tol)
            else:
                total = sum(size for size, _ in chunks)
                estimate = chunked_hessian_power_iteration(
                    [functools.partial(self.loss_fn, pl_module, chunk) for _, chunk in chunks],
                    [size / total for size, _ in chunks], params, iterations=self.power_iterations,
                    tol=self.power_tol)
        return estimate.value, estimate.iterations, time.perf_counter() - start

    def _chunks(self) -> list[tuple[int, Any]]:
        """``(samples, batch)`` chunks of the validation batch of at most ``hessian_batch_size`` samples."""
        batch = self.val_batch
        if self.hessian_batch_size is None or not isinstance(batch, (list, tuple)) or not batch:
            return [(0, batch)]
        size = len(batch[0])
        step = self.hessian_batch_size
        return [(min(step, size - i), type(batch)(part[i:i + step] for part in batch)) for i in range(0, size, step)]

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        eigenvalue = iterations = seconds = None
        if self._due(epoch, max_epochs):
            if self.val_batch is not None:
                try:
                    eigenvalue, iterations, seconds = self.compute_eigenvalue(pl_module)
                except torch.OutOfMemoryError:
                    chunks = self._chunks()
                    last = self.out_dir / "checkpoints" / "last.ckpt"
                    raise OutOfMemoryInStage(
                        "eigenvalue", max(size for size, _ in chunks) or None, last if last.is_file() else None,
                        "search.hessian_batch_size (Hessian-vector products on chunks of the validation batch), "
                        "search.checkpointing: cells, or search.hessian_every: 0") from None
            elif not self._warned_no_batch:
                self._warned_no_batch = True
                _logger.warning("search health: no validation batch seen (batches without a 'val' entry); "
                                "the Hessian eigenvalue is not computed")
        arch = _quiet_export(pl_module)
        previous = self.records[-1]["arch"] if self.records else None
        cost = pl_module.cost if isinstance(pl_module, DartsSearchModule) else None
        record = health_record(epoch, arch, previous, pl_module.export_probs(), hessian_eigenvalue=eigenvalue,
                               expected_cost=None if cost is None else cost.state(pl_module))
        record["hessian_iterations"] = iterations
        record["hessian_seconds"] = None if seconds is None else round(seconds, 3)
        record["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()  # per-op probs are in arch
                             if "/" not in k and isinstance(v, (torch.Tensor, float, int))
                             and torch.as_tensor(v).numel() == 1}
        self.records = [r for r in self.records if r["epoch"] < epoch] + [record]

        fire = False
        if self.early_stop is not None and eigenvalue is not None and not self.stopped_early:
            final = max_epochs is not None and epoch == max_epochs - 1
            fire = self.rule.update(epoch, eigenvalue, final=final)
        fire = bool(trainer.strategy.broadcast(fire, src=0))
        if fire:
            self._stop(trainer, epoch)
        if trainer.is_global_zero:
            self._report(trainer, record)

    def _stop(self, trainer: Any, epoch: int) -> None:
        go_back = self.rule.go_back_epoch
        go_back = trainer.strategy.broadcast(go_back, src=0)
        self.stopped_early, self.go_back_epoch, self.stop_epoch = True, go_back, epoch
        self.go_back_arch = next((r["arch"] for r in self.records if r["epoch"] == go_back), None)
        for record in self.records:
            if record["epoch"] == epoch:
                record["early_stop"] = self.early_stop_summary()
        trainer.should_stop = True
        _logger.warning("DARTS-ES: the Hessian's dominant eigenvalue rose by more than %.2fx at epoch %d; "
                        "stopping the search and returning the architecture of epoch %d",
                        self.rule.factor, epoch, go_back)

    def early_stop_summary(self) -> dict[str, Any] | None:
        """What a search's ``summary.json`` records under ``early_stop`` (``None`` when the rule did not fire)."""
        if not self.stopped_early:
            return None
        return {"rule": self.early_stop, "stop_epoch": self.stop_epoch, "go_back_epoch": self.go_back_epoch,
                "window": self.rule.window, "delta": self.rule.delta, "factor": self.rule.factor,
                "start_epoch": self.rule.start_epoch}

    def _report(self, trainer: Any, record: dict[str, Any]) -> None:
        write_health_records(self.health_file, self.records)
        for line in health_warnings(self.records, max_normal_skips=self.max_normal_skips,
                                    stall_epochs=self.stall_epochs):
            _logger.warning("search health: %s", line)
        if self.plot:
            plot_health(self.records, self.health_plot)
        experiment = self._tensorboard(trainer)
        if experiment is None:
            return
        epoch = record["epoch"]
        for key in _SCALAR_KEYS:
            if record.get(key) is not None:
                experiment.add_scalar(_SCALAR_PREFIX + key, record[key], epoch)
        if self.log_images and self._is_darts(record):
            from nni_darts_ext.plotting import plot_cells

            fig = plot_cells(record["arch"])
            experiment.add_image(_IMAGE_TAG, _figure_to_array(fig), epoch, dataformats="HWC")

    @staticmethod
    def _is_darts(record: dict[str, Any]) -> bool:
        return record["genotype"].startswith("Genotype(")

    @staticmethod
    def _tensorboard(trainer: Any) -> Any:
        for logger in getattr(trainer, "loggers", []) or []:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_scalar") and hasattr(experiment, "add_image"):
                return experiment
        return None

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and self.records:
            write_health_records(self.health_file, self.records)
            if self.plot:
                plot_health(self.records, self.health_plot)

    # ------------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "stopped_early": self.stopped_early, "go_back_epoch": self.go_back_epoch,
                "stop_epoch": self.stop_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))
        self.rule = copy.deepcopy(self._rule_template) if self._rule_template is not None else DartsEarlyStopping()
        for record in self.records:
            if record.get("hessian_eigenvalue") is not None:
                self.rule.update(record["epoch"], record["hessian_eigenvalue"])
        self.stopped_early = bool(state_dict.get("stopped_early", False))
        self.go_back_epoch = state_dict.get("go_back_epoch")
        self.stop_epoch = state_dict.get("stop_epoch")
        if self.go_back_epoch is not None:
            self.go_back_arch = next((r["arch"] for r in self.records if r["epoch"] == self.go_back_epoch), None)
