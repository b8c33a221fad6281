"""The search engine: one two-phase module and the parts every DARTS-family preset is made of.

=================  ==========================================================================================
``module``         :class:`DartsSearchModule`: architecture step, weight step, schedules, DDP sync (written once)
``cells``          :class:`MixedCell`: full, partial channels, edge normalisation, op masks, auxiliary skip
``gradients``      first order, second order (unrolled)
``mixing``         how weights come from the logits (softmax, Dirichlet, hard Gumbel, sigmoid)
``regularizers``   loss terms on the logits; ``perturbation``: SDARTS; ``schedules``, ``progressive``: P-DARTS
``strategy``       :class:`DartsSearch`: NNI's ``DARTS`` strategy assembled from the parts
``presets``        named combinations: ``darts_strategy(name, **overrides)``
=================  ==========================================================================================

Example::

    from nni_darts_ext.search import darts_strategy
    strategy = darts_strategy("pc-darts", order=2)
"""

from .presets import darts_strategy, list_strategies, register_strategy
from .strategy import DartsSearch

__all__ = ["DartsSearch", "darts_strategy", "list_strategies", "register_strategy"]
