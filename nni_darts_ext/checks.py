"""Argument checks of the package's components, in one place: each raises a typed error naming the argument.

A component checks its own arguments when it is built (as torchvision's transforms and Lightning's callbacks do)
and raises :class:`~nni_darts_ext.errors.ArgumentTypeError` or :class:`~nni_darts_ext.errors.ArgumentValueError`;
both carry ``argument``, so a caller that knows the argument under another name (a recipe key, a command-line
flag) can say so without reading the message. This module imports nothing heavy.

Example::

    >>> check_int("width", 16, minimum=1)
    16
    >>> check_int("width", 0, minimum=1)
    Traceback (most recent call last):
    ...
    nni_darts_ext.errors.ArgumentValueError: width must be >= 1, got 0
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any, TypeVar, Union

from .errors import ArgumentTypeError, ArgumentValueError

__all__ = [
    "PathLike",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_optional",
    "check_positive",
]

#: What the package accepts as a file or folder name.
PathLike = Union[str, "os.PathLike[str]"]

_T = TypeVar("_T")


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (``bool`` and floats refused) within ``[minimum, maximum]``.

    Example::

        >>> check_int("num_cells", 8, minimum=3)
        8
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(name, f"must be an int, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise ArgumentValueError(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ArgumentValueError(name, f"must be <= {maximum}, got {value}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (``0``/``1`` refused).

    Example::

        >>> check_bool("edge_normalization", True)
        True
    """
    if not isinstance(value, bool):
        raise ArgumentTypeError(name, f"must be a bool, got {type(value).__name__} ({value!r})")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` (ints accepted, ``bool`` refused) within the interval given.

    ``low_open`` / ``high_open`` exclude the bound itself.

    Example::

        >>> check_float("train_fraction", 0.5, low=0.0, high=1.0, low_open=True, high_open=True)
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(name, f"must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentValueError(name, f"must be finite, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "-inf" if low is None else low
        right = "inf" if high is None else high
        interval = ("(" if low_open or low is None else "[") + f"{left}, {right}" + (
            ")" if high_open or high is None else "]")
        raise ArgumentValueError(name, f"must be in {interval}, got {value}")
    return value


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` > 0.

    Example::

        >>> check_positive("arc_learning_rate", 3e-4)
        0.0003
    """
    return check_float(name, value, low=0.0, low_open=True)


def check_choice(name: str, value: Any, choices: Sequence[_T]) -> _T:
    """``value`` if it is one of ``choices``.

    Example::

        >>> check_choice("metric", "macs", ("macs", "params"))
        'macs'
    """
    if value not in choices:
        raise ArgumentValueError(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_optional(check: Any, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
    """``None``, or ``check(name, value, ...)``: for arguments where ``None`` means "off" or "the default".

    Example::

        >>> check_optional(check_int, "max_skip_connects", None, minimum=0) is None
        True
    """
    return None if value is None else check(name, value, *args, **kwargs)
