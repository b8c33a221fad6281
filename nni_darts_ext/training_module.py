"""The DARTS training recipe as an NNI evaluator module.

:class:`DartsClassificationModule` is NNI's ``ClassificationModule`` with the tricks of the DARTS paper's
retrain (quark0/darts ``cnn/train.py``): SGD with momentum and cosine annealing, the auxiliary-head loss and
the linear drop-path ramp. The same module serves as the evaluator module of a DARTS search, where NNI's
one-shot wrapper calls its ``training_step`` under manual optimisation, and of a fixed-architecture retrain.
"""

from __future__ import annotations

import logging
from typing import Any

import nni
import torch
import torch.nn as nn
import torchmetrics

from ._compat import import_nni_quietly
from .constants import AUXILIARY_LOSS_WEIGHT, NUM_CLASSES

with import_nni_quietly():
    from nni.nas.evaluator.pytorch import ClassificationModule

__all__ = ["DartsClassificationModule", "RETRAIN_DEFAULTS"]

_logger = logging.getLogger(__name__)

# quark0/darts cnn/train.py: --learning_rate 0.025 --momentum 0.9 --weight_decay 3e-4 --epochs 600,
# cosine annealing to --learning_rate_min (0 in the paper's retrain, 1e-3 in NNI's tutorial).
RETRAIN_DEFAULTS = {
    "learning_rate": 0.025,
    "weight_decay": 3e-4,
    "momentum": 0.9,
    "max_epochs": 600,
    "eta_min": 0.0,
}


def _check_non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@nni.trace
class DartsClassificationModule(ClassificationModule):
    """Classification with SGD + cosine LR, auxiliary loss and a linear drop-path ramp.

    Args:
        learning_rate: initial SGD learning rate.
        weight_decay: SGD weight decay.
        auxiliary_loss_weight: weight of the auxiliary head's loss when the net returns ``(logits, aux_logits)``
            (a DARTS net built with ``auxiliary_loss=True``, in train mode); plain logits are also accepted.
        max_epochs: length of the cosine schedule and of the drop-path ramp.
        momentum: SGD momentum.
        eta_min: final learning rate of the cosine schedule.
        drop_path_prob: final drop-path probability ``p0``. ``None`` takes the net's own ``drop_path_prob``
            attribute. At the start of epoch ``e`` the net's probability is set to ``p0 * e / max_epochs``; ``p0``
            is captured once, so the ramp is linear (not the compounding ``current * e / max`` pattern).
        num_classes: number of classes (torchmetrics >= 0.11 needs it).

    Logs ``train_loss`` and ``train_acc`` per step and as epoch means (``train_loss_epoch``, ``train_acc_epoch``),
    ``train_loss_main``, ``train_loss_aux`` (with an auxiliary head), ``lr``,
    ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``.

    Example::

        from nni.nas.evaluator.pytorch import Lightning, Trainer
        module = DartsClassificationModule(max_epochs=600, auxiliary_loss_weight=0.4)
        evaluator = Lightning(module, Trainer(max_epochs=600, gradient_clip_val=5.0), train_loader, val_loader)
    """

    def __init__(
        self,
        learning_rate: float = RETRAIN_DEFAULTS["learning_rate"],
        weight_decay: float = RETRAIN_DEFAULTS["weight_decay"],
        auxiliary_loss_weight: float = AUXILIARY_LOSS_WEIGHT,
        max_epochs: int = RETRAIN_DEFAULTS["max_epochs"],
        momentum: float = RETRAIN_DEFAULTS["momentum"],
        eta_min: float = RETRAIN_DEFAULTS["eta_min"],
        drop_path_prob: float | None = None,
        num_classes: int = NUM_CLASSES,
    ):
        for name, value in [
            ("learning_rate", learning_rate),
            ("weight_decay", weight_decay),
            ("auxiliary_loss_weight", auxiliary_loss_weight),
            ("momentum", momentum),
            ("eta_min", eta_min),
        ]:
            _check_non_negative(name, value)
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}")
        if drop_path_prob is not None:
            _check_non_negative("drop_path_prob", drop_path_prob)
            if drop_path_prob >= 1:
                raise ValueError(f"drop_path_prob must be in [0, 1), got {drop_path_prob}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")

        super().__init__(
            criterion=nn.CrossEntropyLoss,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            optimizer=torch.optim.SGD,
            export_onnx=False,
            num_classes=num_classes,
        )
        self.save_hyperparameters(
            "auxiliary_loss_weight", "max_epochs", "momentum", "eta_min", "drop_path_prob", "num_classes"
        )
        self.auxiliary_loss_weight = auxiliary_loss_weight
        self.max_epochs = max_epochs
        self.momentum = momentum
        self.eta_min = eta_min
        self.drop_path_prob = drop_path_prob
        # Epoch-level accuracy for evaluation, one metric object per stage (the training one is NNI's 'acc').
        self.val_accuracy = torchmetrics.Accuracy("multiclass", num_classes=num_classes)
        self.test_accuracy = torchmetrics.Accuracy("multiclass", num_classes=num_classes)
        self._final_drop_path_prob: float | None = None
        self._warned_no_drop_path = False

    # ----------------------------------------------------------------------------------------------- steps
    def _split_output(self, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(output, (tuple, list)):
            logits, aux_logits = output
            return logits, aux_logits
        return output, None

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits, aux_logits = self._split_output(self(x))
        loss_main = self.criterion(logits, y)
        loss = loss_main
        if aux_logits is not None:
            loss_aux = self.criterion(aux_logits, y)
            loss = loss_main + self.auxiliary_loss_weight * loss_aux
            self.log("train_loss_aux", loss_aux)
        # on_epoch: Lightning also keeps the epoch mean (weighted by batch size), logged as `*_epoch`; the mean of
        # per-batch accuracies weighted by batch size is the epoch's accuracy.
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train_loss_main", loss_main)
        self.log("train_acc", self.metrics["acc"](logits, y), prog_bar=True, on_step=True, on_epoch=True)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def _evaluate(self, batch, stage: str, accuracy: torchmetrics.Metric) -> None:
        x, y = batch
        logits, _ = self._split_output(self(x))
        self.log(f"{stage}_loss", self.criterion(logits, y), prog_bar=True)
        accuracy(logits, y)
        self.log(f"{stage}_acc", accuracy, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", self.val_accuracy)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", self.test_accuracy)

    # ------------------------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        """SGD with momentum, cosine-annealed per epoch from ``learning_rate`` to ``eta_min`` over ``max_epochs``."""
        optimizer = torch.optim.SGD(
            self.parameters(),
            lr=self.hparams.learning_rate,
            momentum=self.momentum,
            weight_decay=self.hparams.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.max_epochs, eta_min=self.eta_min)
        return [optimizer], [scheduler]

    # ------------------------------------------------------------------------------------------ NNI reports
    # NNI's SupervisedLearningModule reports to NNI whenever ``nni.get_current_parameter()`` is not None: the
    # validation metric after each validation epoch and once more at the end of ``fit`` (lightning.py ~L281-299).
    # Multi-trial NAS relies on that (its final metric is the last val_acc). A retrain tuned by nnictl reports the
    # *test* accuracy as its final result instead: nni_darts_ext.callbacks.NniReportCallback then sets
    # ``report_to_nni = False`` and reports itself (rank 0 only), so exactly one report per epoch and one final
    # report reach NNI.

    #: Report to NNI the way NNI's SupervisedLearningModule does; cleared by ``NniReportCallback`` for its fit.
    report_to_nni: bool = True

    def on_validation_epoch_end(self) -> None:
        if self.report_to_nni:
            super().on_validation_epoch_end()

    def on_fit_end(self) -> None:
        # A fit that stopped before its first validation (max_steps inside epoch 0) has no metric to report;
        # NNI's base class would raise KeyError reading it.
        stage = "val" if self.trainer.val_dataloaders else "train"
        if self.report_to_nni and f"{stage}_acc" in self.trainer.callback_metrics:
            super().on_fit_end()

    def on_validation_end(self) -> None:
        if self.report_to_nni:
            super().on_validation_end()

    # ------------------------------------------------------------------------------------------- drop path
    def final_drop_path_prob(self) -> float:
        """``p0``: the explicit ``drop_path_prob``, else the net's own attribute, captured on first use."""
        if self._final_drop_path_prob is None:
            if self.drop_path_prob is not None:
                self._final_drop_path_prob = float(self.drop_path_prob)
            else:
                self._final_drop_path_prob = float(getattr(self.model, "drop_path_prob", 0.0) or 0.0)
        return self._final_drop_path_prob

    def drop_path_prob_at(self, epoch: int) -> float:
        """The linear ramp ``p0 * epoch / max_epochs``."""
        return self.final_drop_path_prob() * min(epoch, self.max_epochs) / self.max_epochs

    def on_train_start(self) -> None:
        # A run resumed mid-epoch starts without on_train_epoch_start: set this epoch's probability here too.
        self._apply_drop_path_prob()

    def on_train_epoch_start(self) -> None:
        probability = self._apply_drop_path_prob()
        if probability is not None:
            self.log("drop_path_prob", probability)

    def _apply_drop_path_prob(self) -> float | None:
        """Set the net's drop-path probability for the current epoch; ``None`` when the net has no setter."""
        p0 = self.final_drop_path_prob()
        setter = getattr(self.model, "set_drop_path_prob", None)
        if setter is None:
            if p0 > 0 and not self._warned_no_drop_path:
                self._warned_no_drop_path = True
                _logger.warning("drop_path_prob=%s ignored: %s has no set_drop_path_prob()", p0,
                                type(self.model).__name__)
            return None
        probability = self.drop_path_prob_at(self.trainer.current_epoch)
        setter(probability)
        return probability
