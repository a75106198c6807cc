"""clipmini.stats and clipmini.claims: intervals with the coverage they promise, verdicts only as strong as them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipmini.claims import COLLECT_ENV, ClaimFailed, Claims, claims_table
from clipmini.stats import (
    Interval,
    accuracy_interval,
    bootstrap_mean,
    difference_over_seeds,
    independent_difference,
    mcnemar_p,
    over_seeds,
    paired_difference,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize("df, q, expected", [(1, 0.975, 12.706205), (2, 0.975, 4.302653), (4, 0.975, 2.776445),
                                             (9, 0.95, 1.833113), (30, 0.995, 2.749996), (1e6, 0.975, 1.959966)])
def test_t_quantiles_match_the_tables(df, q, expected):
    assert t_quantile(q, df) == pytest.approx(expected, abs=2e-6)
    assert t_cdf(t_quantile(q, df), df) == pytest.approx(q, abs=1e-9)
    assert t_quantile(1 - q, df) == pytest.approx(-expected, abs=2e-6)


def test_wilson_interval_known_values_and_edges():
    # 81/263 at 95%: the Wilson interval from Newcombe (1998), table I: 0.2553 to 0.3662
    interval = accuracy_interval(81, 263)
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.2553, 0.3662)
    full = accuracy_interval(1000, 1000)
    assert full.high == 1.0 and 0.995 < full.low < 1.0  # never past 1, never a zero-width interval
    none = accuracy_interval(0, 50)
    assert none.low == 0.0 and 0.05 < none.high < 0.1
    flags = accuracy_interval(np.array([True] * 30 + [False] * 10))
    assert flags.estimate == 0.75 and flags.n == 40


def test_wilson_interval_covers_at_its_confidence():
    rng = np.random.default_rng(0)
    p, n = 0.9, 200
    hits = sum(accuracy_interval(int(k), n).low <= p <= accuracy_interval(int(k), n).high for k in rng.binomial(n, p, 2000))
    assert 0.93 <= hits / 2000 <= 0.975


def test_paired_difference_is_tighter_than_independent_and_covers():
    rng = np.random.default_rng(1)
    hard = rng.random(1000) < 0.2  # images both classifiers tend to miss
    a = ~hard | (rng.random(1000) < 0.3)
    b = a.copy()
    flip = rng.choice(1000, 30, replace=False)
    b[flip] = ~b[flip]
    diff = paired_difference(a, b)
    assert diff.estimate == pytest.approx(a.mean() - b.mean())
    assert diff.low <= diff.estimate <= diff.high
    independent_half = 1.96 * math.sqrt(a.mean() * (1 - a.mean()) / 1000 + b.mean() * (1 - b.mean()) / 1000)
    assert diff.half_width < 0.5 * independent_half  # pairing removes the shared hard images' noise
    assert paired_difference(a, b) == diff  # a fixed generator: the same data give the same interval


def test_paired_difference_resolves_a_real_gap_and_covers_a_null_one():
    rng = np.random.default_rng(2)
    base = rng.random(1000) < 0.7
    better = base | (rng.random(1000) < 0.15)
    assert paired_difference(better, base).low > 0
    covered = 0
    for _ in range(200):  # two equally good classifiers that disagree on 10% of the images
        a = rng.random(300) < 0.8
        b = np.where(rng.random(300) < 0.1, rng.random(300) < 0.8, a)
        covered += not paired_difference(a, b, draws=1000).excludes(0.0)
    assert 0.90 <= covered / 200 <= 0.99


def test_bootstrap_mean_covers_the_true_mean_and_resolves_a_shift():
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(200):  # per-item gaps with true mean 0.1
        covered += not bootstrap_mean(rng.normal(0.1, 1.0, 200), draws=1000).excludes(0.1)
    assert 0.90 <= covered / 200 <= 0.99
    shifted = bootstrap_mean(rng.normal(0.3, 1.0, 400))
    assert shifted.low > 0 and shifted.low < 0.3 < shifted.high
    gaps = rng.normal(0.0, 1.0, 50)
    assert bootstrap_mean(gaps) == bootstrap_mean(gaps)  # a fixed generator: the same data, the same interval
    # the paired comparison: two scores per item that share most of their noise
    shared = rng.normal(0.0, 1.0, 300)
    a, b = shared + 0.05, shared + rng.normal(0.0, 0.05, 300)
    assert bootstrap_mean(a - b).low > 0  # resolved, though each score alone varies 20 times more


def test_an_interval_minus_a_value_moves_every_end():
    at_chance = accuracy_interval(52, 100).minus(0.5)
    wilson = accuracy_interval(52, 100)
    assert (at_chance.estimate, at_chance.low, at_chance.high) == pytest.approx(
        (wilson.estimate - 0.5, wilson.low - 0.5, wilson.high - 0.5))
    assert at_chance.n == 100 and "minus 0.5" in at_chance.method
    assert over_seeds([0.5, 0.6, 0.55]).minus(0.5).values == pytest.approx((0.0, 0.1, 0.05))


def test_independent_difference_matches_newcombe():
    # Newcombe (1998), table II, example (a): 56/70 vs 48/80, method 10 gives 0.0524 to 0.3339
    d = independent_difference(accuracy_interval(56, 70), accuracy_interval(48, 80))
    assert d.estimate == pytest.approx(0.2)
    assert (round(d.low, 4), round(d.high, 4)) == (0.0524, 0.3339)
    with pytest.raises(TypeError, match="Wilson"):
        independent_difference(over_seeds([0.1, 0.2]), accuracy_interval(1, 2))


def test_mcnemar_exact_values():
    a = np.array([True] * 10 + [False] * 2 + [True] * 5)
    b = np.array([False] * 10 + [True] * 2 + [True] * 5)
    # 10 vs 2 discordant pairs: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * 79 / 4096
    assert mcnemar_p(a, b) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_p(a, a) == 1.0


def test_over_seeds_t_interval():
    interval = over_seeds([0.5, 0.6, 0.55])
    assert interval.estimate == pytest.approx(0.55)
    assert interval.half_width == pytest.approx(4.302653 * 0.05 / math.sqrt(3), rel=1e-6)
    assert interval.values == (0.5, 0.6, 0.55) and interval.n == 3
    paired = difference_over_seeds([0.9, 0.8, 0.85], [0.5, 0.6, 0.55])
    assert paired.estimate == pytest.approx(0.3)


@pytest.mark.parametrize("call, message", [
    (lambda: accuracy_interval(5, 0), "at least one image"),
    (lambda: accuracy_interval(11, 10), "between 0 and n"),
    (lambda: accuracy_interval(2.5, 10), "whole count"),
    (lambda: accuracy_interval(np.zeros((2, 2))), "1-d"),
    (lambda: accuracy_interval([0, 2, 1]), "right/wrong flags"),
    (lambda: paired_difference([True, False], [True]), "same images"),
    (lambda: over_seeds([0.5]), "at least 2 seeds"),
    (lambda: over_seeds([0.5, float("nan")]), "finite"),
    (lambda: difference_over_seeds([1, 2], [1]), "one value of each per seed"),
    (lambda: accuracy_interval(5, 10, confidence=95), "confidence"),
    (lambda: Interval(0.5, 0.6, 0.7, 10, "x"), "hold its estimate"),
    (lambda: bootstrap_mean([1.0]), "at least 2 values"),
    (lambda: bootstrap_mean([1.0, float("inf")]), "finite"),
    (lambda: bootstrap_mean(np.ones((3, 2))), "1-D"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_claims_pass_and_fail_on_the_interval_not_the_estimate(monkeypatch):
    monkeypatch.delenv(COLLECT_ENV, raising=False)
    claims = Claims("99_test", seeds=[0, 1, 2])
    claims.greater("A beats B", Interval(0.05, 0.01, 0.09, 1000, "test"), paper="+1.3 points (Section 3.1.4)")
    claims.at_least("accuracy", Interval(0.9, 0.86, 0.94, 1000, "test"), 0.85)
    claims.at_most("at chance", Interval(0.11, 0.08, 0.14, 1000, "test"), 0.15)
    claims.equivalent("A is B", Interval(0.0, -0.01, 0.012, 1000, "test"), margin=0.02, why="a point is one image in 100")
    claims.unresolved("tiny effect", Interval(0.01, -0.02, 0.04, 3, "test"), why="three seeds cannot see a point")
    with pytest.raises(ClaimFailed) as failed:  # positive estimate, but the interval reaches below 0
        claims.greater("C beats D", Interval(0.02, -0.001, 0.04, 500, "paired bootstrap"), paper="+3.5 points (Figure 4)")
    message = str(failed.value)
    for part in ("99_test", "C beats D", "0.02", "-0.001", "0.04", "n=500", "[0, 1, 2]", "+3.5 points (Figure 4)"):
        assert part in message
    with pytest.raises(ClaimFailed):
        claims.equivalent("E is F", Interval(0.0, -0.03, 0.01, 100, "t"), margin=0.02, why="as above")
    with pytest.raises(ClaimFailed):
        claims.at_least("too low", Interval(0.9, 0.84, 0.94, 100, "t"), 0.85)
    verdicts = [r["verdict"] for r in claims.records()]
    assert verdicts == ["holds"] * 4 + ["not resolved at this scale", "FAILS", "FAILS", "FAILS"]
    assert set(claims.records()[0]) >= {"chapter", "name", "estimate", "low", "high", "n", "seeds", "paper", "passed"}
    table = claims_table(claims.claims)
    assert "| A beats B | 5.0% | [1.0%, 9.0%] | > 0.0% | holds | +1.3 points (Section 3.1.4) |" in table


def test_collect_mode_records_every_failure_then_raises_them_together(monkeypatch):
    monkeypatch.setenv(COLLECT_ENV, "collect")
    claims = Claims("99_test", seeds=[3])
    claims.greater("first", Interval(0.0, -0.1, 0.1, 10, "t"))
    claims.at_least("second", Interval(0.5, 0.4, 0.6, 10, "t"), 0.45)
    claims.at_most("third", Interval(0.5, 0.4, 0.6, 10, "t"), 0.55)
    assert [c.name for c in claims.failures()] == ["first", "second", "third"]
    with pytest.raises(ClaimFailed, match="3 of 3 claims failed"):
        claims.check()


def test_claims_refuse_what_cannot_be_judged(monkeypatch):
    monkeypatch.delenv(COLLECT_ENV, raising=False)
    claims = Claims("99_test", seeds=[0])
    with pytest.raises(TypeError, match="Interval"):
        claims.greater("raw number", 0.3)
    with pytest.raises(ValueError, match="why"):
        claims.equivalent("no reason", Interval(0, -0.01, 0.01, 10, "t"), margin=0.02, why=" ")
    with pytest.raises(ValueError, match="positive"):
        claims.equivalent("no margin", Interval(0, -0.01, 0.01, 10, "t"), margin=0, why="x")
    claims.greater("once", Interval(0.1, 0.05, 0.2, 10, "t"))
    with pytest.raises(ValueError, match="already states"):
        claims.greater("once", Interval(0.1, 0.05, 0.2, 10, "t"))
    with pytest.raises(ValueError, match="seeds"):
        Claims("99_test", seeds=[])
    monkeypatch.setenv(COLLECT_ENV, "sometimes")
    with pytest.raises(ValueError, match=COLLECT_ENV):
        claims.greater("mode", Interval(-0.1, -0.2, 0.0, 10, "t"))
