"""Is one group of accuracies higher than another? The tests, the verdict in words, and how many runs it takes.

``nni-darts compare`` retrains a searched cell and random cells of the same space several times each; this module
turns those accuracies into evidence. The tests are scipy's (:func:`scipy.stats.ttest_ind` with
``equal_var=False``, Welch's t-test; :func:`scipy.stats.mannwhitneyu`), both one-sided: the hypothesis is that
the searched group scores *higher*. :func:`verdict` says the result in one line, and :func:`runs_needed` answers
the planning question: how many runs per group a difference needs to be seen, from the power of the two-sample
t-test (the noncentral t distribution, :data:`scipy.stats.nct`).

Example::

    >>> result = compare_groups([0.91, 0.93, 0.92], [0.88, 0.87, 0.89, 0.86])
    >>> round(result.difference, 4), result.welch_p < 0.05
    (0.045, True)
    >>> result.verdict.startswith("searched cells beat random cells by +0.0450")
    True
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .checks import check_choice, check_float, check_int
from .constants import SIGNIFICANCE_LEVEL, STATISTICAL_POWER
from .errors import ArgumentValueError

__all__ = [
    "ALTERNATIVES",
    "GroupComparison",
    "compare_groups",
    "describe",
    "pooled_std",
    "runs_needed",
    "t_test_power",
    "verdict",
]

#: ``alternative`` of :func:`t_test_power` / :func:`runs_needed`: scipy's names.
ALTERNATIVES = ("greater", "two-sided")
# Decimals of an accuracy difference in the verdict (a test set of 10,000 images resolves 0.0001).
_DIFFERENCE_DECIMALS = 4
# Significant digits of a p-value in the verdict.
_P_DIGITS = 2
# Largest number of runs per group runs_needed looks at (an effect of 0.05 standard deviations needs ~5,000).
_MAX_RUNS = 100_000


@dataclass(frozen=True)
class GroupComparison:
    """The searched group against the random group (see :func:`compare_groups`).

    Attributes:
        searched_mean, random_mean: the groups' means; ``difference``: searched minus random.
        n_searched, n_random: the groups' sizes.
        welch_t, welch_df: Welch's t statistic and its degrees of freedom (``None`` when undefined: fewer than 2
            values in a group, or no spread in either group).
        welch_p: one-sided p-value of Welch's t-test for "searched > random"; ``welch_p_less`` for the opposite.
        mannwhitney_u, mannwhitney_p: the Mann-Whitney U statistic of the searched group and its one-sided p-value
            for "searched > random" (``None`` with an empty group).
        alpha: the significance level of the verdict.
        verdict: one line in words (:func:`verdict`).
    """

    searched_mean: float
    random_mean: float
    difference: float
    n_searched: int
    n_random: int
    welch_t: float | None
    welch_df: float | None
    welch_p: float | None
    welch_p_less: float | None
    mannwhitney_u: float | None
    mannwhitney_p: float | None
    alpha: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _values(name: str, values: Sequence[float]) -> list[float]:
    out = [check_float(f"{name}[{i}]", v) for i, v in enumerate(values)]
    if not out:
        raise ValueError(f"{name}: expected at least one value, got none")
    return out


def describe(values: Sequence[float]) -> dict[str, Any]:
    """``n``, ``mean``, ``std`` (sample standard deviation, ``None`` for one value), ``min``, ``max`` of ``values``.

    Example::

        >>> describe([0.9, 0.8])["std"] == statistics.stdev([0.9, 0.8])
        True
    """
    values = _values("values", values)
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def pooled_std(groups: Sequence[Sequence[float]]) -> float | None:
    """The pooled within-group standard deviation: ``sqrt(sum((n_i - 1) s_i^2) / sum(n_i - 1))``.

    With each group the retrains of one cell under different seeds, this is the seed noise of one retrain.
    Groups of one value add nothing; ``None`` when no group has two.

    Example::

        >>> round(pooled_std([[1.0, 3.0], [5.0, 5.0, 5.0]]), 4)   # sqrt((1 * 2 + 2 * 0) / 3)
        0.8165
    """
    squares, dof = 0.0, 0
    for group in groups:
        values = list(group)
        if len(values) > 1:
            squares += statistics.variance(values) * (len(values) - 1)
            dof += len(values) - 1
    return math.sqrt(squares / dof) if dof else None


def compare_groups(searched: Sequence[float], random: Sequence[float], *,
                   alpha: float = SIGNIFICANCE_LEVEL) -> GroupComparison:
    """Test whether ``searched`` is higher than ``random``: Welch's t-test and Mann-Whitney U, both one-sided.

    Welch's test does not assume equal variances, which matters here: the retrains of one searched cell vary by
    seed noise only, the random cells also by how good each cell is. It needs two values in each group and some
    spread; otherwise its fields are ``None``. The verdict is Welch's; Mann-Whitney (no normality assumed) is
    reported beside it as a check.

    Args:
        searched, random: accuracies (at least one each).
        alpha: significance level of the verdict, in (0, 1).

    Example::

        >>> compare_groups([0.5, 0.6], [0.5, 0.6]).verdict
        'no evidence that the search helped (difference +0.0000, p = 0.5)'
    """
    from scipy import stats

    a, b = _values("searched", searched), _values("random", random)
    alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    difference = statistics.fmean(a) - statistics.fmean(b)
    welch_t = welch_df = welch_p = welch_p_less = None
    # Both groups constant: the t statistic would be a difference over a rounding error (scipy's catastrophic
    # cancellation), not a test.
    if len(a) > 1 and len(b) > 1 and (len(set(a)) > 1 or len(set(b)) > 1):
        with warnings.catch_warnings():
            # One constant group (equal accuracies, common on a small test set) has variance 0; scipy computes it
            # as a rounding error and warns, but the test is right: only the other group's variance counts.
            warnings.filterwarnings("ignore", message=".*catastrophic cancellation", category=RuntimeWarning)
            greater = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
            less = stats.ttest_ind(a, b, equal_var=False, alternative="less")
        welch_t, welch_df = float(greater.statistic), float(greater.df)
        welch_p, welch_p_less = float(greater.pvalue), float(less.pvalue)
    mann = stats.mannwhitneyu(a, b, alternative="greater")
    line = verdict(difference, welch_p, welch_p_less, alpha=alpha, n_searched=len(a), n_random=len(b))
    return GroupComparison(
        searched_mean=statistics.fmean(a), random_mean=statistics.fmean(b), difference=difference,
        n_searched=len(a), n_random=len(b), welch_t=welch_t, welch_df=welch_df, welch_p=welch_p,
        welch_p_less=welch_p_less, mannwhitney_u=float(mann.statistic), mannwhitney_p=float(mann.pvalue),
        alpha=alpha, verdict=line,
    )


def _p(value: float) -> str:
    return f"{value:.{_P_DIGITS}g}"


def verdict(difference: float, p_greater: float | None, p_less: float | None, *, alpha: float = SIGNIFICANCE_LEVEL,
            n_searched: int | None = None, n_random: int | None = None) -> str:
    """The comparison in one line of words.

    * ``p_greater < alpha``: "searched cells beat random cells by +X, p = Y";
    * ``p_less < alpha``: "no evidence that the search helped: random cells beat searched cells by +X, p = Y";
    * otherwise "no evidence that the search helped (difference ±X, p = Y)", or why no test was possible.

    Example::

        >>> verdict(0.0123, 0.004, 0.996)
        'searched cells beat random cells by +0.0123, p = 0.004 (Welch, one-sided)'
    """
    x = f"{difference:+.{_DIFFERENCE_DECIMALS}f}"
    if p_greater is None or p_less is None:
        if n_searched is not None and n_random is not None and (n_searched < 2 or n_random < 2):
            why = (f"too few runs to test ({n_searched} searched, {n_random} random; at least 2 each: more retrain "
                   "seeds or random cells)")
        else:
            why = "no spread in either group to test with (more retrain seeds, or a harder task)"
        return f"no evidence that the search helped: {why}; difference {x}"
    if p_greater < alpha:
        return f"searched cells beat random cells by {x}, p = {_p(p_greater)} (Welch, one-sided)"
    if p_less < alpha:
        return (f"no evidence that the search helped: random cells beat searched cells by "
                f"{-difference:+.{_DIFFERENCE_DECIMALS}f}, p = {_p(p_less)} (Welch, one-sided)")
    return f"no evidence that the search helped (difference {x}, p = {_p(p_greater)})"


def t_test_power(runs: float, effect_size: float, *, alpha: float = SIGNIFICANCE_LEVEL,
                 alternative: str = "greater") -> float:
    """Power of the two-sample t-test with ``runs`` values per group and a true difference of ``effect_size``
    standard deviations (Cohen's d).

    Under the difference the t statistic follows a noncentral t with ``2 * runs - 2`` degrees of freedom and
    noncentrality ``effect_size * sqrt(runs / 2)``; the power is its probability beyond the critical value.

    Example::

        >>> round(t_test_power(64, 0.5, alternative="two-sided"), 3)   # Cohen (1988), Table 2.4.1: 0.80
        0.801
    """
    from scipy import stats

    runs = check_float("runs", runs, low=2.0)
    effect_size = check_float("effect_size", effect_size, low=0.0, low_open=True)
    alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    check_choice("alternative", alternative, ALTERNATIVES)
    df = 2 * runs - 2
    noncentrality = effect_size * math.sqrt(runs / 2)
    if alternative == "greater":
        return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, noncentrality))
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def runs_needed(effect_size: float, *, alpha: float = SIGNIFICANCE_LEVEL, power: float = STATISTICAL_POWER,
                alternative: str = "greater") -> int:
    """Runs per group for the two-sample t-test to detect ``effect_size`` (difference / seed noise) with ``power``.

    The smallest ``n >= 2`` with :func:`t_test_power` ``>= power``, found by root finding on the (increasing)
    power curve. The normal approximation is ``n = 2 (z_{1-alpha} + z_{power})^2 / effect_size^2``.

    Raises:
        ArgumentValueError: more than 100,000 runs would be needed.

    Example::

        >>> runs_needed(0.5, alternative="two-sided")   # Cohen (1988), Table 2.4.1: n = 64
        64
        >>> runs_needed(2.0)   # a difference of two seed-noise standard deviations: 4 runs of each
        4
    """
    from scipy import optimize

    power = check_float("power", power, low=0.0, high=1.0, low_open=True, high_open=True)

    def shortfall(n: float) -> float:
        return t_test_power(n, effect_size, alpha=alpha, alternative=alternative) - power

    if shortfall(2) >= 0:
        return 2
    low, high = 2, 4  # doubled until it brackets the root (scipy's nct is unreliable far beyond it)
    while shortfall(high) < 0:
        if high >= _MAX_RUNS:
            raise ArgumentValueError("effect_size", f"{effect_size} needs more than {_MAX_RUNS} runs per group")
        low, high = high, min(2 * high, _MAX_RUNS)
    runs = math.ceil(optimize.brentq(shortfall, low, high))
    # brentq stops within its tolerance of the root: make sure the rounded-up count really reaches the power.
    while shortfall(runs) < 0:
        runs += 1
    return check_int("runs", runs, minimum=2)
