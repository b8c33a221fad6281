"""parse_duration: the forms users type, checked against hand-computed seconds."""

import pytest

from nni_darts_ext.durations import parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [("10m", 600.0), ("90s", 90.0), ("1h30m", 5400.0), ("2h", 7200.0), ("1d", 86400.0), ("1.5h", 5400.0),
     (" 1h 5s ", 3605.0), ("1H", 3600.0)],
)
def test_parses(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "1m1h", "1h1h", "-5m", "0s", "1h30", "ten minutes"])
def test_rejects_with_a_clear_message(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_rejects_non_str():
    with pytest.raises(TypeError, match="duration must be a str"):
        parse_duration(600)
