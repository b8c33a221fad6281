"""Wall-clock durations written the way people type them: ``"10m"``, ``"90s"``, ``"1h30m"``, ``"2h"``.

Example::

    parse_duration("1h30m")  # 5400.0
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ArgumentTypeError, ArgumentValueError

__all__ = ["SECONDS_PER_UNIT", "parse_duration"]

#: Seconds in one of each accepted unit.
SECONDS_PER_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}

_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+")
_ORDER = "dhms"


def parse_duration(text: Any) -> float:
    """Seconds in a duration such as ``"10m"``, ``"90s"``, ``"1h30m"``, ``"2h"``, ``"1d"``, ``"1.5h"``.

    Units ``d``, ``h``, ``m``, ``s``, largest first, each at most once; a bare number is refused (minutes or
    seconds?). The result must be positive.

    Raises:
        ArgumentTypeError: ``text`` is not a str (``argument``: ``"duration"``).
        ArgumentValueError: malformed, a unit repeated or out of order, or zero; the message shows valid examples.

    Example::

        parse_duration("10m")   # 600.0
        parse_duration("90s")   # 90.0
    """
    if not isinstance(text, str):
        raise ArgumentTypeError("duration", f"must be a str such as '10m', got {type(text).__name__}")
    compact = text.strip().lower().replace(" ", "")
    hint = "use a number and a unit, largest first, e.g. '90s', '10m', '1h30m', '2h' or '1d'"
    if not compact or not _WHOLE.fullmatch(compact):
        raise ArgumentValueError("duration", f"{text!r} is not understood: {hint}")
    parts = _PART.findall(compact)
    units = [unit for _, unit in parts]
    if units != sorted(set(units), key=_ORDER.index):
        raise ArgumentValueError("duration", f"{text!r} repeats a unit or is out of order: {hint}")
    seconds = sum(float(number) * SECONDS_PER_UNIT[unit] for number, unit in parts)
    if seconds <= 0:
        raise ArgumentValueError("duration", f"{text!r} must be longer than zero")
    return seconds
