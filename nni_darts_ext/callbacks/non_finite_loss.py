"""Stop a run at the first NaN/inf training loss, before any checkpoint of the bad state is written.

DARTS is known to diverge; a long run must then cost minutes, not the run: the error names the epoch and batch, the
last good checkpoint and how to resume with changed settings.

Example::

    trainer = Trainer(callbacks=[NonFiniteLossGuard(), ModelCheckpoint("ckpt", save_last=True)])
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from ..errors import NonFiniteLossError

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard", "batch_loss", "is_finite"]

_DEFAULT_RESUME_HINT = (
    "resume from it with changed settings (e.g. a lower learning rate or gradient clipping) by passing it as "
    "`ckpt_path` to `Trainer.fit`"
)


def batch_loss(outputs: Any) -> torch.Tensor | None:
    """The training loss in ``outputs`` of ``on_train_batch_end``.

    Automatic optimisation passes ``{"loss": loss, ...}``; manual optimisation (NNI's one-shot strategies) passes
    whatever ``training_step`` returned, wrapped as ``{"loss": tensor}`` when it was a tensor. NNI's DARTS
    ``training_step`` returns the evaluator module's output for the weight step (``differentiable.py`` ~L88); a
    non-finite architecture step makes the architecture weights, hence that loss, non-finite in the same batch.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        loss = outputs.get("loss")
        if isinstance(loss, torch.Tensor):
            return loss
    return None


def is_finite(loss: torch.Tensor) -> bool:
    """True when every value of ``loss`` is finite (one device synchronisation)."""
    return bool(torch.isfinite(loss.detach()).all())


def _loss_repr(loss: torch.Tensor) -> str:
    value = loss.detach().float()
    if value.numel() == 1:
        return str(value.item())
    return f"tensor with {int((~torch.isfinite(value)).sum())} non-finite of {value.numel()} values"


def _last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint a ``ModelCheckpoint`` of this trainer wrote, if any."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            path = callback.last_model_path or callback.best_model_path
            if path:
                return path
    return None


class NonFiniteLossGuard(Callback):
    """Stop training at the first NaN/inf training loss, before a checkpoint of the bad state is written.

    Checks the loss after every training batch (``on_train_batch_end``) and raises :class:`NonFiniteLossError`,
    whose message names the epoch and the batch and says which checkpoint is kept and how to resume. Lightning
    calls checkpoint callbacks last, and saves epoch-end checkpoints after the batch hooks, so raising here means
    neither ``ModelCheckpoint(every_n_train_steps=...)`` nor the epoch-end ``last.ckpt`` sees the bad state.
    Works under automatic optimisation and under NNI's one-shot strategies (manual optimisation).

    Each check reads the loss back to the host (one device synchronisation per batch); with several processes the
    decision is all-reduced, so every process stops at the same batch.

    Args:
        resume_hint: how to continue, appended to the error message ("... the last good checkpoint ... is kept;
            <resume_hint>"). The ``nni-darts`` command passes its ``--resume --set`` instructions.

    Raises:
        NonFiniteLossError: from ``trainer.fit`` when a training loss is NaN or infinite.

    Example::

        trainer = Trainer(callbacks=[NonFiniteLossGuard(), ModelCheckpoint("ckpt", save_last=True)])
        try:
            trainer.fit(module, loader)
        except NonFiniteLossError as error:
            # "non-finite training loss (nan) at epoch 3, batch 17 (global step 281); ..."
            logging.getLogger(__name__).error("%s", error)
    """

    def __init__(self, resume_hint: str = _DEFAULT_RESUME_HINT):
        self.resume_hint = _check_hint(resume_hint)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = batch_loss(outputs)
        finite = loss is None or is_finite(loss)
        # Several processes (DDP): stop all of them or none, else the others wait forever in the next all-reduce.
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        checkpoint = _last_good_checkpoint(trainer)
        kept = (
            f"the last good checkpoint ({checkpoint}) is kept"
            if checkpoint
            else "no checkpoint of an earlier state was written yet"
        )
        loss_text = "another process's" if finite else _loss_repr(loss)
        message = (
            f"non-finite training loss ({loss_text}) at epoch {trainer.current_epoch}, batch {batch_idx} "
            f"(global step {trainer.global_step}); training stopped without saving this state: {kept}; "
            f"{self.resume_hint}"
        )
        raise NonFiniteLossError(
            message,
            epoch=trainer.current_epoch,
            batch_idx=batch_idx,
            global_step=trainer.global_step,
            loss=loss_text,
            checkpoint=checkpoint,
        )


def _check_hint(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"resume_hint must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("resume_hint must not be empty")
    return value
