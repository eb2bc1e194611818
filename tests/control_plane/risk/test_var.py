"""VaR / ES against hand computations and the normal closed form; Kupiec against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2, norm

from control_plane.risk.var import (
    covariance_factor,
    figures_from_pnl,
    historical_pnl,
    kupiec_pof,
    monte_carlo_pnl,
)


def test_historical_var_matches_hand_computation() -> None:
    # losses 1..100 (shuffled): VaR95 = 95th smallest loss, ES = mean(95..100)
    pnl = -np.random.default_rng(3).permutation(np.arange(1.0, 101.0))
    f95, f99, f995 = figures_from_pnl(pnl)
    assert (f95.var_eur, f95.es_eur) == (95.0, 97.5)
    assert (f99.var_eur, f99.es_eur) == (99.0, 99.5)
    assert (f995.var_eur, f995.es_eur) == (100.0, 100.0)


def test_historical_scenarios_are_changes_times_position() -> None:
    changes = np.array([[1.0, -2.0], [-3.0, 0.5], [0.0, 4.0]])
    q = np.array([2.0, -1.0])
    assert historical_pnl(changes, q).tolist() == [4.0, -6.5, -4.0]
    [fig] = figures_from_pnl(historical_pnl(changes, q), [0.5])
    assert fig.var_eur == 4.0  # losses sorted: -4, 4, 6.5; rank ceil(1.5) = 2
    assert fig.es_eur == pytest.approx((4.0 + 6.5) / 2)


def test_gains_everywhere_have_no_value_at_risk() -> None:
    [fig] = figures_from_pnl(np.array([1.0, 2.0, 3.0]), [0.95])
    assert (fig.var_eur, fig.es_eur) == (0.0, 0.0)


def test_monte_carlo_matches_the_normal_closed_form() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(size=(96, 96))
    cov = a @ a.T / 96 * 25.0  # EUR/MWh^2
    q = rng.normal(size=96)
    sigma = math.sqrt(q @ cov @ q)
    paths = 200_000
    pnl = monte_carlo_pnl(cov, q, paths=paths, seed=11)
    for fig in figures_from_pnl(pnl):
        z = norm.ppf(fig.level)
        var = z * sigma
        es = sigma * norm.pdf(z) / (1 - fig.level)
        # standard error of a quantile: sqrt(p(1-p)/n) / pdf(z), in sigma units; 4 s.e.
        se = math.sqrt(fig.level * (1 - fig.level) / paths) / norm.pdf(z) * sigma
        assert fig.var_eur == pytest.approx(var, abs=4 * se)
        assert fig.es_eur == pytest.approx(es, rel=0.02)


def test_monte_carlo_is_seeded() -> None:
    cov = np.array([[4.0, 1.0], [1.0, 9.0]])
    q = np.array([1.0, -2.0])
    first = monte_carlo_pnl(cov, q, paths=30_000, seed=5)
    assert np.array_equal(first, monte_carlo_pnl(cov, q, paths=30_000, seed=5))
    assert not np.array_equal(first, monte_carlo_pnl(cov, q, paths=30_000, seed=6))


def test_semi_definite_covariance_is_factored() -> None:
    cov = np.ones((3, 3))  # rank one: Cholesky fails
    factor = covariance_factor(cov)
    assert np.allclose(factor @ factor.T, cov)


def test_kupiec_matches_the_formula_and_chi2() -> None:
    t, x, p = 250, 8, 0.01
    k = kupiec_pof(level=0.99, observations=t, exceptions=x)
    lr = -2 * (
        (t - x) * math.log(1 - p) + x * math.log(p)
        - (t - x) * math.log(1 - x / t) - x * math.log(x / t)
    )  # fmt: skip
    assert k.lr_statistic == pytest.approx(lr)
    assert k.p_value == pytest.approx(chi2.sf(lr, 1))
    assert not k.accepted()  # 8 exceptions where 2.5 are expected
    assert kupiec_pof(level=0.99, observations=250, exceptions=2).accepted()
    zero = kupiec_pof(level=0.99, observations=250, exceptions=0)
    assert zero.lr_statistic == pytest.approx(-2 * 250 * math.log(0.99))


def test_kupiec_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match=r"exceptions 5 must be within 0\.\.4"):
        kupiec_pof(level=0.99, observations=4, exceptions=5)
