"""One INFO line per epoch with the epoch means of the training loss and accuracy and the validation accuracy.

The training values are the means over the epoch's batches (what the module logs with ``on_epoch=True``, keys
``train_loss_epoch`` / ``train_acc_epoch``), not the last batch's. The validation values are those of the
validation run at the end of the epoch, on whatever split the run validates on (``validation`` names it).
The per-epoch values are also kept in :attr:`EpochLog.curve` (saved in checkpoints, so a resumed run keeps the
earlier epochs), which the retrain summary reports.

Example::

    Trainer(callbacks=[EpochLog("retrain", validation="test set")], enable_progress_bar=False)
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl

__all__ = ["EpochLog"]

# Log lines go to the pipeline's logger (the CLI shows its INFO lines).
_logger = logging.getLogger("nni_darts_ext.pipeline")

# (name in the line and the curve, keys of trainer.callback_metrics to read it from, first found wins)
_COLUMNS = (
    ("train_loss", ("train_loss_epoch",)),
    ("train_acc", ("train_acc_epoch",)),
    ("val_loss", ("val_loss",)),
    ("val_acc", ("val_acc",)),
)
_DIGITS = 6  # decimals kept in the curve


class EpochLog(pl.Callback):
    """Log one line per training epoch (epoch-mean loss and accuracy, validation accuracy, seconds).

    Args:
        stage: the word starting each line (``"search"``, ``"retrain"``).
        validation: what the validation split is (e.g. ``"test set"``, ``"held-out 10% of the training split"``),
            shown with the validation values; ``None`` shows them unnamed.
        log_lines: log the lines (``False`` with a progress bar: the curve is still recorded).

    Example::

        log = EpochLog("retrain", validation="test set")
        Trainer(callbacks=[log]).fit(module, train_loader, test_loader)
        log.curve  # [{"epoch": 1, "train_loss": ..., "train_acc": ..., "val_loss": ..., "val_acc": ...}, ...]
    """

    def __init__(self, stage: str, *, validation: str | None = None, log_lines: bool = True) -> None:
        if not isinstance(stage, str) or not stage:
            raise TypeError(f"stage must be a non-empty str, got {stage!r}")
        if validation is not None and not isinstance(validation, str):
            raise TypeError(f"validation must be a str or None, got {type(validation).__name__}")
        self.stage = stage
        self.validation = validation
        self.log_lines = bool(log_lines)
        #: One dict per finished epoch: ``epoch`` (1-based) and the values of :data:`_COLUMNS` that were logged.
        self.curve: list[dict[str, float]] = []
        self._start = 0.0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()  # a run resumed inside an epoch starts without on_train_epoch_start

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = trainer.callback_metrics
        values: dict[str, float] = {}
        for name, keys in _COLUMNS:
            key = next((k for k in keys if k in metrics), None)
            if key is not None:
                value = float(metrics[key])
                if math.isfinite(value):
                    values[name] = value
        epoch = trainer.current_epoch + 1
        self.curve = [row for row in self.curve if row["epoch"] < epoch]
        self.curve.append({"epoch": epoch, **{k: round(v, _DIGITS) for k, v in values.items()}})
        if not self.log_lines:
            return
        train = [f"{k} {v:.4f}" for k, v in values.items() if k.startswith("train_")]
        val = [f"{k} {v:.4f}" for k, v in values.items() if k.startswith("val_")]
        text = ", ".join(train) or "no metrics"
        if val:
            where = f" on the {self.validation}" if self.validation else ""
            text += f"; validation{where}: {', '.join(val)}"
        _logger.info("%s epoch %d/%d: %s (%.1f s)", self.stage, epoch, trainer.max_epochs, text,
                     time.perf_counter() - self._start)

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = list(state_dict.get("curve", []))
