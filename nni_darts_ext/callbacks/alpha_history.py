"""Record the architecture probabilities of a one-shot search at each epoch end (resumable with the checkpoint).

Example::

    history = AlphaHistory()
    Trainer(callbacks=[history])  # then plot_alpha_history(history.history, "alphas.png")
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from .._compat import import_nni_quietly

with import_nni_quietly():
    from nni.nas.oneshot.pytorch.base_lightning import BaseOneShotLightningModule

__all__ = ["AlphaHistory"]


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
        if not isinstance(pl_module, BaseOneShotLightningModule):  # a retrain: no architecture to record
            return
        self.history.append(
            {str(label): {str(op): float(p) for op, p in dist.items()}
             for label, dist in pl_module.export_probs().items()}
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
