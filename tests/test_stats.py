"""Statistics of a comparison: hand-computed Welch and Mann-Whitney values, the verdict's words, Cohen's power table."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from nni_darts_ext.errors import ArgumentValueError
from nni_darts_ext.stats import compare_groups, describe, pooled_std, runs_needed, t_test_power, verdict


def test_welch_statistic_and_degrees_of_freedom_by_hand():
    # a: mean 2, variance 1 (n 3); b: mean 5.5, variance 5/3 (n 4)
    result = compare_groups([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0])
    se2_a, se2_b = 1.0 / 3, (5.0 / 3) / 4
    t = (2.0 - 5.5) / math.sqrt(se2_a + se2_b)
    df = (se2_a + se2_b) ** 2 / (se2_a ** 2 / 2 + se2_b ** 2 / 3)  # Welch-Satterthwaite
    assert result.difference == pytest.approx(-3.5)
    assert result.welch_t == pytest.approx(t) and result.welch_df == pytest.approx(df)
    # one-sided p-values: the t distribution's tails at t with df degrees of freedom
    assert result.welch_p == pytest.approx(scipy_stats.t.sf(t, df))
    assert result.welch_p_less == pytest.approx(scipy_stats.t.cdf(t, df))
    assert (result.n_searched, result.n_random) == (3, 4)


def test_mann_whitney_exact_p_by_hand():
    # every searched value above every random one: U = 2 * 3 = 6, and that ordering is 1 of C(5, 2) = 10 equally
    # likely rank sets under the null hypothesis: p = 0.1
    result = compare_groups([0.98, 0.99], [0.97, 0.96, 0.95])
    assert result.mannwhitney_u == 6.0
    assert result.mannwhitney_p == pytest.approx(1 / math.comb(5, 2))


def test_verdict_when_the_search_helped():
    result = compare_groups([0.95, 0.96, 0.97], [0.90, 0.91, 0.92, 0.89])
    assert result.difference == pytest.approx(0.96 - 0.905)
    assert result.welch_p < 0.05
    assert result.verdict == f"searched cells beat random cells by +0.0550, p = {result.welch_p:.2g} (Welch, one-sided)"


def test_verdict_when_random_cells_are_better():
    result = compare_groups([0.90, 0.91, 0.92, 0.89], [0.95, 0.96, 0.97])
    assert result.welch_p > 0.95 and result.welch_p_less < 0.05
    assert result.verdict == ("no evidence that the search helped: random cells beat searched cells by +0.0550, "
                              f"p = {result.welch_p_less:.2g} (Welch, one-sided)")


def test_verdict_when_the_groups_are_alike():
    # the same values: t = 0, so the one-sided p is exactly 1/2
    result = compare_groups([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert result.welch_t == 0.0 and result.welch_p == pytest.approx(0.5)
    assert result.verdict == "no evidence that the search helped (difference +0.0000, p = 0.5)"


def test_verdict_without_a_test():
    one = compare_groups([0.99], [0.95, 0.96])
    assert one.welch_p is None and one.welch_t is None and one.mannwhitney_p is not None
    assert one.verdict.startswith("no evidence that the search helped: too few runs to test (1 searched, 2 random")
    flat = compare_groups([0.98, 0.98], [0.97, 0.97, 0.97])  # no spread on either side: no t statistic
    assert flat.welch_p is None
    assert flat.verdict.startswith("no evidence that the search helped: no spread in either group")
    assert verdict(0.01, 0.2, 0.8) == "no evidence that the search helped (difference +0.0100, p = 0.2)"


def test_compare_groups_checks_its_input():
    with pytest.raises(ValueError, match="searched: expected at least one value"):
        compare_groups([], [0.5])
    with pytest.raises(TypeError, match=r"random\[1\]"):
        compare_groups([0.5], [0.5, "0.6"])
    with pytest.raises(ValueError, match="alpha"):
        compare_groups([0.5, 0.6], [0.5, 0.6], alpha=1.0)


def test_describe_and_pooled_seed_noise():
    d = describe([0.9, 0.8, 1.0])
    assert d == {"n": 3, "mean": pytest.approx(0.9), "std": pytest.approx(0.1), "min": 0.8, "max": 1.0}
    assert describe([0.7])["std"] is None
    # (1 * 2 + 2 * 0) / (1 + 2): the variances weighted by their degrees of freedom
    assert pooled_std([[1.0, 3.0], [5.0, 5.0, 5.0], [4.0]]) == pytest.approx(math.sqrt(2 / 3))
    assert pooled_std([[1.0], [2.0]]) is None


@pytest.mark.parametrize("effect, runs", [(0.5, 64), (0.8, 26)])
def test_runs_needed_matches_cohens_table(effect, runs):
    # J. Cohen, Statistical Power Analysis for the Behavioral Sciences (1988), Table 2.4.1: two-tailed alpha .05,
    # power .80: n = 64 per group for d = .50, 26 for d = .80
    assert runs_needed(effect, alternative="two-sided") == runs
    assert t_test_power(runs, effect, alternative="two-sided") >= 0.8 > t_test_power(runs - 1, effect,
                                                                                     alternative="two-sided")


def test_one_sided_runs_needed_against_the_normal_approximation():
    # n = 2 (z_0.95 + z_0.80)^2 / d^2 = 49.5 for d = 0.5; the t-test needs slightly more (51)
    z = scipy_stats.norm.ppf(0.95) + scipy_stats.norm.ppf(0.8)
    approximate = 2 * z ** 2 / 0.5 ** 2
    assert approximate == pytest.approx(49.46, abs=0.01)
    assert math.ceil(approximate) <= runs_needed(0.5) <= math.ceil(approximate) + 2
    assert runs_needed(10.0) == 2  # any two runs show a huge difference
    with pytest.raises(ArgumentValueError, match="effect_size"):
        runs_needed(0.001)
