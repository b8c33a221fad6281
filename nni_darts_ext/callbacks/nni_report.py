"""Report the validation accuracy of each epoch of a tuned retrain to NNI, from rank 0 only.

Example::

    trainer = darts_trainer(max_epochs=600, callbacks=[NniReportCallback()])
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl

from .._compat import import_nni_quietly
from ..nni_trial import is_nni_trial, metric_value

with import_nni_quietly():
    import nni

__all__ = ["NniReportCallback"]

_logger = logging.getLogger(__name__)


class NniReportCallback(pl.Callback):
    """Report ``monitor`` (``val_acc``) to NNI after every validation epoch, from rank 0 only.

    While attached, it takes NNI reporting over from the module: a module with a ``report_to_nni`` attribute
    (:class:`~nni_darts_ext.training_module.DartsClassificationModule`) has it cleared from ``setup`` to
    ``teardown``, so NNI's own per-epoch and end-of-fit reports are not sent twice. Sanity-check validation is
    not reported. The final result is reported separately, with :func:`report_final_result`. Outside an NNI
    trial (:func:`is_nni_trial` false) the callback does nothing.

    Args:
        monitor: the logged metric to report (a key of ``trainer.callback_metrics``).

    Raises:
        TypeError: ``monitor`` is not a non-empty string.

    Example::

        trainer = darts_trainer(max_epochs=600, callbacks=[NniReportCallback()])
    """

    def __init__(self, monitor: str = "val_acc") -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be a non-empty str, got {monitor!r}")
        self.monitor = monitor
        self._saved_flags: dict[int, bool] = {}
        self._missing_warned = False
        self._reported_this_fit = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if hasattr(pl_module, "report_to_nni"):
            self._saved_flags.setdefault(id(pl_module), pl_module.report_to_nni)
            pl_module.report_to_nni = False
        elif is_nni_trial():
            _logger.warning(
                "%s reports to NNI by itself; with NniReportCallback NNI may receive each result twice",
                type(pl_module).__name__,
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reported_this_fit = 0

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._reported_this_fit == 0 and trainer.is_global_zero and is_nni_trial():
            _logger.warning("NniReportCallback: no %s reported to NNI during fit; does the fit have a validation "
                            "loader (val_dataloaders) and limit_val_batches > 0?", self.monitor)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        saved = self._saved_flags.pop(id(pl_module), None)
        if saved is not None:
            pl_module.report_to_nni = saved

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not is_nni_trial():
            return
        if trainer.state.fn != "fit":  # a stand-alone trainer.validate() is not an epoch of training
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._missing_warned:
                _logger.warning("NniReportCallback: %r was not logged; nothing reported to NNI", self.monitor)
                self._missing_warned = True
            return
        nni.report_intermediate_result(metric_value(value, self.monitor))
        self._reported_this_fit += 1

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.monitor = state_dict.get("monitor", self.monitor)
