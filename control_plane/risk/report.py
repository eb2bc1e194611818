"""The risk report of one portfolio: positions, VaR / ES, limits and the VaR back-test.

One document for the desk, built from one snapshot of the portfolio's positions (same `as_of`
for every figure):

- **positions**: MWh long / short / net over the open delivery quarters, net cash of the trades,
  mark-to-market PnL, how many quarters have no mark;
- **VaR and ES** at 95 / 99 / 99.5 %, 1 day, by historical simulation and by Monte Carlo
  (seeded, `paths` paths); a method without enough history says why instead of failing;
- **limits** with utilisation, the highest alert threshold reached and the alert state (the
  evaluation is the same as `GET /api/risk/limits`: a due alert is raised);
- **back-test** per zone of the portfolio (or the plane's market zones when it has no priced
  position): `backtest_section` - Kupiec's POF test of the 1-day historical VaR of a position
  profile over the zone's price history in the store. The profile is the portfolio's current
  position shape per quarter-hour of the UTC day (net MWh per slot, all delivery days summed:
  the loading of the VaR's risk factors), else 1 MW baseload (0.25 MWh in every quarter); the
  section says which. Too little history is a section that says how much is needed.

`backtest_section` is the one back-test path: `bess-plane risk backtest` (risk/cli.py) prints
the same section from a price file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final

import numpy as np

from .history import SLOTS_PER_DAY, DailyPrices
from .models import (
    EUR_CENT,
    InvalidRiskRequestError,
    LimitStatus,
    Method,
    NoHistoryError,
    PortfolioPositions,
    RiskLimit,
    VarRequest,
    VarResult,
)
from .service import RiskService, backtest, position_vector
from .var import LEVELS, MIN_SCENARIOS, FloatArray, Kupiec

__all__ = [
    "DEFAULT_PATHS",
    "METHOD_NOTES",
    "SIGNIFICANCE",
    "AlertState",
    "BacktestSection",
    "LimitLine",
    "PositionSummary",
    "ProfileKind",
    "RiskReport",
    "VarSection",
    "backtest_section",
    "baseload_profile",
    "build_report",
    "summarise",
    "verdict",
]

DEFAULT_PATHS: Final = 20_000
SIGNIFICANCE: Final = 0.05
"""Kupiec's test rejects the VaR model when its p-value is below this."""
_ZERO: Final = Decimal(0)

METHOD_NOTES: Final = (
    "Positions: the exchange's trades delivering from the running quarter on plus the "
    "portfolio's scheduled dispatch (+ discharge = long), per market and delivery quarter.",
    "Marks: the zone's stored price of the delivery quarter, else the newest price of the same "
    "quarter of the day (7-day lookback); unmarked quarters count 0 in the PnL.",
    "Risk factors: one per bidding zone and quarter-hour of the UTC day; every delivery day of "
    "a quarter moves with its factor (no diversification across days).",
    "VaR_a: the ceil(a N)-th smallest of N scenario losses; ES_a: the mean of the losses from "
    "there on; both floored at 0.",
    "Historical: the 1-day price changes of the last window_days complete days before today.",
    "Monte Carlo: seeded normal price changes with the covariance of those 1-day changes, zero "
    "drift; the same seed gives the same figures.",
    "Back-test: each test day's 1-day historical VaR comes from the window_days days before it; "
    "an exception is a realised loss above it; Kupiec's proportion-of-failures LR test "
    "(chi-squared, 1 dof) rejects the model at p < 0.05.",
)


# -- back-test section --------------------------------------------------------------------------


class ProfileKind(StrEnum):
    POSITION = "position"
    """The portfolio's current net MWh per quarter-hour of the day."""
    BASELOAD = "baseload"
    """1 MW long in every quarter (the portfolio has no position shape in the zone)."""
    NAMED = "named"
    """A profile chosen on the command line."""


def baseload_profile(mw: float = 1.0) -> FloatArray:
    """`mw` long in every quarter-hour: MWh per slot."""
    return np.full(SLOTS_PER_DAY, mw * 0.25)


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestSection:
    """Kupiec's POF test of one zone's 1-day historical VaR, or why it could not run."""

    zone: str
    profile: ProfileKind
    profile_note: str
    profile_mwh: tuple[float, ...]
    """MWh per quarter-hour of the UTC day (96), > 0 long."""
    window_days: int
    history_days: int
    """Complete UTC days of prices available."""
    history_from: date | None
    history_to: date | None
    changes: int
    """Day-on-day price changes (consecutive complete days) the test can use."""
    needed_changes: int
    """window_days + 1: a full window and one test day."""
    first_test_day: date | None
    last_test_day: date | None
    results: tuple[Kupiec, ...]
    significance: float
    shortfall: str | None
    """Why there is no test (too little history), None when `results` hold it."""

    @property
    def test_days(self) -> int:
        return self.results[0].observations if self.results else 0


def backtest_section(
    daily: DailyPrices,
    profile_mwh: FloatArray,
    *,
    window_days: int,
    profile: ProfileKind,
    profile_note: str,
    levels: tuple[float, ...] = LEVELS,
) -> BacktestSection:
    """The back-test of `profile_mwh` over `daily`; too little history gives a section whose
    `shortfall` says how much is needed instead of an error."""
    changes = len(daily.changes(1)[0])
    needed = window_days + 1
    shortfall = None
    if window_days < MIN_SCENARIOS:
        shortfall = f"the window must be at least {MIN_SCENARIOS} days"
    elif changes < needed:
        shortfall = (
            f"{len(daily.days)} complete days of {daily.zone} prices give {changes} "
            f"day-on-day changes; the back-test needs {needed} ({window_days}-day window "
            f"+ 1 test day), i.e. at least {needed + 1} consecutive complete days: import "
            f"{needed - changes} more days of prices (bess-plane prices import) or use a "
            "shorter window"
        )
    section = BacktestSection(
        zone=daily.zone,
        profile=profile,
        profile_note=profile_note,
        profile_mwh=tuple(float(v) for v in profile_mwh),
        window_days=window_days,
        history_days=len(daily.days),
        history_from=daily.days[0] if daily.days else None,
        history_to=daily.days[-1] if daily.days else None,
        changes=changes,
        needed_changes=needed,
        first_test_day=None,
        last_test_day=None,
        results=(),
        significance=SIGNIFICANCE,
        shortfall=shortfall,
    )
    if shortfall is not None:
        return section
    result = backtest(daily, profile_mwh, window_days=window_days, levels=levels)
    return replace(
        section,
        first_test_day=result.first_day,
        last_test_day=result.last_day,
        results=result.results,
    )


def verdict(k: Kupiec, significance: float = SIGNIFICANCE) -> str:
    """`accepted`, or `rejected at 5%` when Kupiec's p-value is below `significance`."""
    return "accepted" if k.accepted(significance) else f"rejected at {significance:.0%}"


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionSummary:
    as_of: datetime
    quarters: int
    """Open (market, delivery quarter) lines."""
    zones: tuple[str, ...]
    long_mwh: Decimal
    short_mwh: Decimal
    """Sum of the short quarters, as a negative number."""
    net_mwh: Decimal
    net_cash_eur: Decimal
    mtm_pnl_eur: Decimal
    unmarked: int
    first_delivery: datetime | None
    last_delivery: datetime | None


def summarise(positions: PortfolioPositions) -> PositionSummary:
    lines = positions.lines
    return PositionSummary(
        as_of=positions.as_of,
        quarters=len(lines),
        zones=tuple(sorted({line.zone for line in lines if line.zone is not None})),
        long_mwh=sum((line.net_mwh for line in lines if line.net_mwh > 0), _ZERO),
        short_mwh=sum((line.net_mwh for line in lines if line.net_mwh < 0), _ZERO),
        net_mwh=positions.net_mwh,
        net_cash_eur=sum((line.net_cash_eur for line in lines), _ZERO).quantize(EUR_CENT),
        mtm_pnl_eur=positions.mtm_pnl_eur.quantize(EUR_CENT),
        unmarked=positions.unmarked,
        first_delivery=min((line.delivery.start for line in lines), default=None),
        last_delivery=max((line.delivery.start for line in lines), default=None),
    )


@dataclass(frozen=True, slots=True)
class VarSection:
    method: Method
    result: VarResult | None
    unavailable: str | None
    """Why there are no figures (too little history), None when `result` holds them."""


class AlertState(StrEnum):
    OK = "ok"
    """Below every alert threshold."""
    ALERT = "alert"
    """At or above an alert threshold, within the limit."""
    BREACHED = "breached"
    """Over the limit."""


@dataclass(frozen=True, slots=True)
class LimitLine:
    status: LimitStatus
    state: AlertState
    threshold_pct: float
    """The highest alert threshold reached (and alerted); 0 = none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskReport:
    portfolio: str
    generated_at: datetime
    window_days: int
    paths: int
    seed: int
    positions: PositionSummary
    var: tuple[VarSection, ...]
    limit: RiskLimit | None
    limit_lines: tuple[LimitLine, ...]
    limit_unavailable: str | None
    backtests: tuple[BacktestSection, ...]
    backtest_zones_from: str
    """`positions` (the portfolio's zones) or `market_zones` (it has no priced position)."""
    notes: tuple[str, ...]


def _var_section(
    service: RiskService, request: VarRequest, positions: PortfolioPositions
) -> VarSection:
    try:
        result = service.var_for(request, positions)
    except NoHistoryError as exc:
        return VarSection(request.method, None, str(exc))
    return VarSection(request.method, result, None)


def _state(status: LimitStatus, thresholds: tuple[float, ...]) -> AlertState:
    if status.breached:
        return AlertState.BREACHED
    if any(float(status.utilisation_pct) >= t for t in thresholds):
        return AlertState.ALERT
    return AlertState.OK


def build_report(
    *,
    service: RiskService,
    portfolio: str,
    window_days: int | None = None,
    paths: int = DEFAULT_PATHS,
    seed: int = 0,
) -> RiskReport:
    """The portfolio's report now (module doc); raises InvalidRiskRequestError on bad inputs
    only - missing history shows in the sections."""
    window = service.settings.window_days if window_days is None else window_days
    if window < MIN_SCENARIOS:
        raise InvalidRiskRequestError(f"window_days must be at least {MIN_SCENARIOS}")
    generated_at = service.clock()
    positions = service.positions(portfolio)
    summary = summarise(positions)
    historical = VarRequest(portfolio=portfolio, window_days=window)
    monte_carlo = VarRequest(
        portfolio=portfolio,
        method=Method.MONTE_CARLO,
        window_days=window,
        paths=paths,
        seed=seed,
    )
    var = (
        _var_section(service, historical, positions),
        _var_section(service, monte_carlo, positions),
    )
    limit, statuses, armed, limit_unavailable = service.limit_state(positions)
    thresholds = service.settings.alert_thresholds_pct
    lines = tuple(LimitLine(s, _state(s, thresholds), armed.get(s.kind, 0.0)) for s in statuses)
    zones = summary.zones or service.settings.default_zones
    sections = []
    for zone in zones:
        shape = position_vector(positions, (zone,))
        if np.any(shape != 0):
            profile, note = (
                ProfileKind.POSITION,
                f"the portfolio's current net position in {zone} per quarter-hour of the UTC "
                f"day ({summary.quarters} open quarters summed per slot)",
            )
        else:
            shape = baseload_profile()
            profile, note = (
                ProfileKind.BASELOAD,
                f"1 MW baseload: the portfolio has no position shape in {zone}",
            )
        try:
            daily = service.backtest_history(zone)
        except NoHistoryError:
            daily = DailyPrices.from_points(zone, ())
        sections.append(
            backtest_section(daily, shape, window_days=window, profile=profile, profile_note=note)
        )
    return RiskReport(
        portfolio=portfolio,
        generated_at=generated_at,
        window_days=window,
        paths=paths,
        seed=seed,
        positions=summary,
        var=var,
        limit=limit,
        limit_lines=lines,
        limit_unavailable=limit_unavailable,
        backtests=tuple(sections),
        backtest_zones_from="positions" if summary.zones else "market_zones",
        notes=METHOD_NOTES,
    )
