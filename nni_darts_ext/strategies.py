"""Deprecated location of the strategy presets: use :mod:`nni_darts_ext.search` (kept for old imports).

Example::

    from nni_darts_ext.search import darts_strategy   # was: from nni_darts_ext.strategies import darts_strategy
"""

from .search.presets import FIRST_ORDER_DEFAULTS, darts_strategy, list_strategies, register_strategy

__all__ = ["darts_strategy", "list_strategies", "register_strategy", "FIRST_ORDER_DEFAULTS"]
