"""The search engine: one two-phase module and the parts every DARTS-family preset is made of.

=================  ==========================================================================================
``parts``          the declared interface of each kind of part (what the module and the cell ask of it)
``module``         :class:`DartsSearchModule`: architecture step, weight step, schedules, DDP sync (written once)
``cells``          :class:`MixedCell` and its pieces: channels (full, partial), which ops run, edge hooks, masks
``gradients``      first order, second order (unrolled)
``mixing``         how weights come from the logits (softmax, Dirichlet, hard Gumbel, sigmoid)
``regularizers``   loss terms on the logits; ``perturbation``: SDARTS; ``schedules``, ``progressive``: P-DARTS
``cost``           search under a budget: per-op cost tables, the expected cost (a loss term), the export limit
``strategy``       :class:`DartsSearch`: NNI's ``DARTS`` strategy assembled from the parts; ``check_space``
``presets``        named combinations, registered one way: ``darts_strategy(name, **overrides)``
``selection``      the magnitude export rules; ``perturbation_selection``: DARTS-PT (what each op does)
=================  ==========================================================================================

Example::

    from nni_darts_ext.search import darts_strategy
    strategy = darts_strategy("pc-darts", order=2)
"""

from .presets import darts_strategy, get_preset, list_strategies, register_strategy
from .strategy import DartsSearch

__all__ = ["DartsSearch", "darts_strategy", "get_preset", "list_strategies", "register_strategy"]
