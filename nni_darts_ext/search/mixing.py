"""How mixing weights come from architecture logits (the search engine's third axis).

A :class:`Mixing` is an ``nn.Module`` that NNI's differentiable supernet modules call exactly like
``nn.Softmax(-1)`` (the strategy's ``configure_softmax`` hook), so one object serves NNI's ``LayerChoice``,
``InputChoice``, ``Repeat`` and mixed operations as well as our DARTS cell.

Example::

    >>> SoftmaxMixing()(torch.zeros(4)).tolist()
    [0.25, 0.25, 0.25, 0.25]
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["Mixing", "SoftmaxMixing"]


class Mixing(nn.Module):
    """Maps architecture logits ``alpha`` (ops on the last dim) to mixing weights.

    Attributes:
        hard: ``forward`` returns one-hot (straight-through) weights; only ops with a non-zero weight are computed.
        normalized: weights sum to 1; ``False`` (sigmoid) means every op is weighed on its own.

    Example::

        class Scaled(Mixing):
            def forward(self, alpha):
                return torch.softmax(2 * alpha, -1)
    """

    hard: bool = False
    normalized: bool = True

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def probs(self, alpha: torch.Tensor) -> torch.Tensor:
        """Deterministic weights for export and logging (default: ``forward``)."""
        return self.forward(alpha)

    def set_progress(self, epoch: int, max_epochs: int) -> None:
        """Update epoch schedules (e.g. a temperature); the default has none."""


class SoftmaxMixing(Mixing):
    """DARTS: ``softmax(alpha)`` over the last dim (Liu et al., ICLR 2019, eq. 2)."""

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.softmax(alpha, -1)
