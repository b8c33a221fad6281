"""Lightning callbacks of the ``nni-darts`` pipeline: the alpha history of a search and one log line per epoch.

Kept apart from :mod:`nni_darts_ext.pipeline` so that importing the pipeline (and the CLI) does not import Lightning.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl

__all__ = ["AlphaHistory", "EpochLog"]

# Log lines go to the pipeline's logger (the CLI shows its INFO lines).
_logger = logging.getLogger("nni_darts_ext.pipeline")


class AlphaHistory(pl.Callback):
    """Record the one-shot module's ``export_probs()`` at each epoch end (saved in checkpoints, so resumable).

    ``history`` is a list per epoch of ``{edge_label: {op: probability}}``, what
    :func:`~nni_darts_ext.plotting.plot_alpha_history` draws.

    Example::

        history = AlphaHistory()
        Trainer(callbacks=[history])  # then plot_alpha_history(history.history, "alphas.png")
    """

    def __init__(self) -> None:
        self.history: list[dict[str, dict[str, float]]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        export = getattr(pl_module, "export_probs", None)
        if export is None:
            return
        self.history.append(
            {str(label): {str(op): float(p) for op, p in dist.items()} for label, dist in export().items()}
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class EpochLog(pl.Callback):
    """One INFO line per epoch (losses, accuracy, seconds): the concise log used when there is no progress bar.

    Example::

        Trainer(callbacks=[EpochLog("retrain")], enable_progress_bar=False)
    """

    _KEYS = ("train_loss", "train_acc")

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = trainer.callback_metrics
        parts = [f"{key} {float(metrics[key]):.4f}" for key in self._KEYS if key in metrics]
        _logger.info(
            "%s epoch %d/%d: %s (%.1f s)", self.stage, trainer.current_epoch + 1, trainer.max_epochs,
            ", ".join(parts) or "no metrics", time.perf_counter() - self._start,
        )
