"""VaR and expected shortfall, historical and Monte Carlo, and the Kupiec POF test. Pure NumPy.

**Risk factors.** A portfolio's price risk is carried by one factor per (zone, quarter-hour of
the UTC day): 96 per zone. Every delivery quarter a portfolio holds in a zone loads on the
factor of its slot (all delivery days of a slot move together: a conservative choice, no
diversification across days is assumed). The position vector `q` holds the net energy (MWh,
> 0 long: the portfolio gains when the price rises) per factor; a scenario of price changes
`dp` (EUR/MWh per factor) gives the PnL ``dp @ q``.

**Definitions**, with losses ``L = -PnL`` over N scenarios, at level a (0.95, 0.99, 0.995):

- VaR_a = the smallest loss l with at least a x N scenarios losing l or less (the
  "inverted CDF" quantile: the ceil(a N)-th smallest loss, no interpolation), floored at 0
  (a portfolio that gains in every scenario has no value at risk);
- ES_a = the mean of the losses at or beyond VaR_a (the tail including VaR_a), floored at 0.

On a fixed sample the figures are therefore a hand computation: losses 1..100 at 95 % give
VaR 95 and ES mean(95..100) = 97.5.

**Historical simulation**: the scenarios are the history's H-day price changes per factor,
``P[d] - P[d-H]`` for every day d of the window (overlapping for H > 1).

**Monte Carlo**: ``dp ~ N(0, H x S)`` with S the covariance of the history's 1-day changes
(square-root-of-time, zero drift). Paths are drawn with a seeded `numpy.random.Generator`
(PCG64), in chunks of `CHUNK_PATHS` to bound memory. ``dp = z @ C.T`` for a factor `C` of
H x S, so the PnL ``dp @ q = z @ (C.T @ q)``: each path is a full correlated 96-interval price
path, but the matrix product is taken in the cheap order (paths x factors, not
paths x factors x factors). Same draws, same numbers, so a seed reproduces a result.

**Kupiec proportion-of-failures**: with T days, x exceptions (loss > VaR forecast) and the
expected rate p = 1 - a, ``LR = -2 ln[(1-p)^(T-x) p^x / ((1-x/T)^(T-x) (x/T)^x)]`` is
chi-squared with one degree of freedom under a correct model; p-value = erfc(sqrt(LR / 2)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHUNK_PATHS",
    "LEVELS",
    "MIN_SCENARIOS",
    "Kupiec",
    "RiskFigure",
    "covariance_factor",
    "figures_from_pnl",
    "historical_pnl",
    "kupiec_pof",
    "monte_carlo_pnl",
]

FloatArray = npt.NDArray[np.float64]

LEVELS: Final = (0.95, 0.99, 0.995)
"""The confidence levels every result carries."""
MIN_SCENARIOS: Final = 20
"""Fewer scenario days than this give no meaningful 95 % quantile: refused."""
CHUNK_PATHS: Final = 25_000
"""Monte Carlo paths drawn at once: 25 000 x 96 doubles = 19 MB."""


@dataclass(frozen=True, slots=True)
class RiskFigure:
    """VaR and expected shortfall at one level, EUR, as positive losses."""

    level: float
    var_eur: float
    es_eur: float


def figures_from_pnl(pnl: FloatArray, levels: Sequence[float] = LEVELS) -> list[RiskFigure]:
    """VaR and ES at each level from scenario PnLs (see the module doc for the definitions)."""
    if pnl.ndim != 1 or pnl.size == 0:
        raise ValueError("VaR needs at least one scenario PnL")
    losses = np.sort(-pnl)
    n = losses.size
    result = []
    for level in levels:
        if not 0 < level < 1:
            raise ValueError(f"confidence level {level} must be between 0 and 1")
        k = min(max(math.ceil(level * n - 1e-9), 1), n)  # 1-based rank of the VaR loss
        var = float(losses[k - 1])
        es = float(losses[k - 1 :].mean())
        result.append(RiskFigure(level, max(var, 0.0), max(es, 0.0)))
    return result


def historical_pnl(changes: FloatArray, position: FloatArray) -> FloatArray:
    """Scenario PnLs: one per row of `changes` (scenarios x factors, EUR/MWh) for `position`."""
    _check_shapes(changes, position)
    return changes @ position


def covariance_factor(covariance: FloatArray) -> FloatArray:
    """C with C @ C.T == covariance: Cholesky, or from the eigen-decomposition when the
    covariance is only positive semi-definite (fewer days than factors, constant prices)."""
    try:
        factor: FloatArray = np.linalg.cholesky(covariance).astype(np.float64)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(covariance)
        factor = (vectors * np.sqrt(np.clip(values, 0.0, None))).astype(np.float64)
    return factor


def monte_carlo_pnl(
    covariance: FloatArray, position: FloatArray, *, paths: int, seed: int
) -> FloatArray:
    """`paths` PnLs of `position` under price changes N(0, covariance), seeded."""
    if paths < 1:
        raise ValueError("Monte Carlo needs at least one path")
    _check_shapes(covariance, position)
    if covariance.shape[0] != covariance.shape[1]:
        raise ValueError("the covariance must be square")
    loading = covariance_factor(covariance).T @ position  # PnL = z @ loading
    rng = np.random.default_rng(seed)
    out = np.empty(paths)
    for begin in range(0, paths, CHUNK_PATHS):
        end = min(begin + CHUNK_PATHS, paths)
        z = rng.standard_normal((end - begin, loading.size))
        out[begin:end] = z @ loading
    return out


def _check_shapes(matrix: FloatArray, position: FloatArray) -> None:
    if matrix.ndim != 2 or position.ndim != 1 or matrix.shape[1] != position.size:
        raise ValueError(
            f"{matrix.shape} scenarios/covariance do not fit a position of {position.shape}"
        )


@dataclass(frozen=True, slots=True)
class Kupiec:
    """The proportion-of-failures test of one VaR level over a back-test."""

    level: float
    observations: int
    exceptions: int
    expected_exceptions: float
    lr_statistic: float
    p_value: float

    @property
    def exception_rate(self) -> float:
        return self.exceptions / self.observations if self.observations else 0.0

    def accepted(self, significance: float = 0.05) -> bool:
        """True when the model is not rejected at `significance`."""
        return self.p_value >= significance


def kupiec_pof(*, level: float, observations: int, exceptions: int) -> Kupiec:
    """Kupiec's likelihood-ratio test of an exception count (module doc)."""
    if observations < 1:
        raise ValueError("the Kupiec test needs at least one observation")
    if not 0 <= exceptions <= observations:
        raise ValueError(f"exceptions {exceptions} must be within 0..{observations}")
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} must be between 0 and 1")
    p = 1.0 - level
    t, x = observations, exceptions
    rate = x / t

    def loglik(prob: float) -> float:
        # 0 x ln(0) = 0: a term with a zero count contributes nothing
        hits = x * math.log(prob) if x else 0.0
        misses = (t - x) * math.log(1.0 - prob) if t - x else 0.0
        return hits + misses

    lr = max(-2.0 * (loglik(p) - loglik(rate)), 0.0)
    return Kupiec(
        level=level,
        observations=t,
        exceptions=x,
        expected_exceptions=p * t,
        lr_statistic=lr,
        p_value=math.erfc(math.sqrt(lr / 2.0)),
    )
