"""The risk service: positions, VaR / ES, limits with alerts, the pre-trade limit check and
the VaR back-test. No FastAPI here (api.py translates).

**VaR of a portfolio.** Its open positions (`positions.build_positions`) become a vector of net
MWh per risk factor (zone x quarter-hour of the day, `var` module doc); the zones' price
history from the price store (the last `window_days` days before now, plus the horizon) gives
the scenarios (historical) or the covariance (Monte Carlo). Lines in a market without a zone
carry no price risk we can measure and are counted in `positions` but not in the figures.
History is cached per zone for `history_ttl_s` (clock-driven), so the pre-trade check does not
read a year of prices per order.

**Limits.** Per portfolio a VaR limit (VaR at `limit_level` over `limit_horizon_days`,
historical, on `window_days`) and a PnL limit (the mark-to-market loss of the open trades),
each with a utilisation in %. `evaluate()` (on every limits read and from the plane's
periodic task) updates the metrics and raises an alert - a `risk.alert` event, a warning in
the log and `pho_risk_alerts_total` - when a utilisation crosses one of `alert_thresholds_pct`
upwards; it fires once per crossing and re-arms when the utilisation falls below again.

**Pre-trade check** (`RiskLimitCheck`, run by the exchange under its lock): the order's
worst-case fill is the whole quantity at its limit price. The check adds it to the
portfolio's committed trades as one more trade and recomputes the PnL and the historical VaR
exactly - cheap because the scenario matrix is cached: one store read of the portfolio's open
trades plus a (days x 96) @ (96) product. An order is rejected when a *hard* limit would be
exceeded and the order makes the figure worse (a risk-reducing order always passes).

**Back-test** (`backtest`): a fixed position profile (MWh per quarter-hour) is re-priced day
by day: each day's VaR forecast comes from the `window_days` days before it, the realised PnL
from that day's change, and Kupiec's POF test judges the exceptions per level.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from control_plane.exchange.models import Order, Side, Trade
from control_plane.market.service import zone_of_market

from .history import SLOTS_PER_DAY, DailyPrices, FactorHistory, slot_of
from .models import (
    EUR_CENT,
    InvalidRiskRequestError,
    LimitKind,
    LimitStatus,
    Method,
    NoHistoryError,
    PortfolioPositions,
    RiskLimit,
    VarFigure,
    VarRequest,
    VarResult,
)
from .positions import (
    Dispatch,
    NoDispatch,
    PriceSource,
    TradeSource,
    build_positions,
    load_inputs,
    positions_from,
)
from .store import LimitStore
from .var import (
    MIN_SCENARIOS,
    FloatArray,
    Kupiec,
    figures_from_pnl,
    historical_pnl,
    kupiec_pof,
    monte_carlo_pnl,
)

__all__ = [
    "MAX_PATHS",
    "RiskLimitCheck",
    "RiskMetrics",
    "RiskService",
    "RiskSettings",
    "backtest",
    "position_vector",
]

log = logging.getLogger(__name__)

MAX_PATHS: Final = 1_000_000
MAX_HORIZON_DAYS: Final = 30
_PCT: Final = Decimal("0.1")
_ZERO: Final = Decimal(0)

Publish = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskSettings:
    window_days: int = 250
    limit_level: float = 0.99
    limit_horizon_days: int = 1
    alert_thresholds_pct: tuple[float, ...] = (75.0, 90.0, 100.0)
    history_ttl_s: float = 300.0
    backtest_days: int = 1830
    """How far back the report's back-test reads the price store (days before today)."""
    default_zones: tuple[str, ...] = ()
    """Zones a report back-tests for a portfolio without a priced position (the market's)."""


class RiskMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.var_95 = Gauge(
            "pho_risk_var_95_eur", "1-day historical VaR 95 % per portfolio", ["portfolio"],
            registry=registry,
        )  # fmt: skip
        self.var_99 = Gauge(
            "pho_risk_var_99_eur", "1-day historical VaR 99 % per portfolio", ["portfolio"],
            registry=registry,
        )  # fmt: skip
        self.utilisation = Gauge(
            "pho_risk_limit_utilization_pct",
            "risk limit utilisation per portfolio and limit (var, pnl)",
            ["portfolio", "limit"],
            registry=registry,
        )
        self.alerts = Counter(
            "pho_risk_alerts_total", "risk limit threshold crossings", ["limit"], registry=registry
        )


def position_vector(positions: PortfolioPositions, zones: Sequence[str]) -> FloatArray:
    """Net MWh per factor (zone block x slot) of the lines in `zones`."""
    q = np.zeros(SLOTS_PER_DAY * len(zones))
    index = {z: i for i, z in enumerate(zones)}
    for line in positions.lines:
        if line.zone in index:
            q[index[line.zone] * SLOTS_PER_DAY + slot_of(line.delivery.start)] += float(
                line.net_mwh
            )
    return q


def _money(value: float) -> Decimal:
    return Decimal(repr(value)).quantize(EUR_CENT)


def _pct(value: Decimal, limit: Decimal) -> Decimal:
    if limit <= 0:
        return Decimal(100) if value > 0 else _ZERO
    return (max(value, _ZERO) / limit * 100).quantize(_PCT)


class RiskService:
    """Thread-safe: the API calls it from worker threads, the exchange under its lock."""

    def __init__(
        self,
        *,
        limits: LimitStore,
        trades: TradeSource,
        prices: PriceSource | None,
        dispatch: Dispatch | None = None,
        clock: Callable[[], datetime],
        settings: RiskSettings | None = None,
        metrics: RiskMetrics | None = None,
        publish: Publish | None = None,
    ) -> None:
        self.limits_store = limits
        self._trades = trades
        self.prices = prices
        self._dispatch = dispatch or NoDispatch()
        self.clock = clock
        self.settings = settings or RiskSettings()
        self._metrics = metrics
        self._publish = publish
        self._lock = threading.Lock()
        self._history: dict[str, tuple[datetime, DailyPrices]] = {}
        self._armed: dict[tuple[str, LimitKind], float] = {}
        """(portfolio, limit) -> the highest threshold crossed and alerted (0 = none)."""

    # -- positions -------------------------------------------------------------------------

    def positions(self, portfolio: str, *, extra: Sequence[Trade] = ()) -> PortfolioPositions:
        return build_positions(
            portfolio,
            now=self.clock(),
            trades=self._trades,
            dispatch=self._dispatch,
            prices=self.prices,
            extra_trades=extra,
        )

    def portfolios(self) -> list[str]:
        """Portfolios with open trades, scheduled sites or a limit."""
        since = self.clock() - timedelta(minutes=45)
        found = set(self._dispatch.portfolios())
        for trade in self._trades.list_trades(delivery_from=since):
            found.update((trade.buy_portfolio, trade.sell_portfolio))
        found.update(limit.portfolio for limit in self.limits_store.list())
        return sorted(found)

    # -- VaR -------------------------------------------------------------------------------

    def var(self, request: VarRequest) -> VarResult:
        self._validate(request)
        began = time.perf_counter()
        positions = self.positions(request.portfolio)
        return self._var_of(request, positions, began)

    def var_for(self, request: VarRequest, positions: PortfolioPositions) -> VarResult:
        """`var` on positions already built (a report uses one snapshot for every figure)."""
        self._validate(request)
        return self._var_of(request, positions, time.perf_counter())

    def _validate(self, request: VarRequest) -> None:
        problems = []
        if not 1 <= request.horizon_days <= MAX_HORIZON_DAYS:
            problems.append(f"horizon_days must be 1..{MAX_HORIZON_DAYS}")
        if request.window_days < MIN_SCENARIOS:
            problems.append(f"window_days must be at least {MIN_SCENARIOS}")
        if request.method is Method.MONTE_CARLO and not 1_000 <= request.paths <= MAX_PATHS:
            problems.append(f"paths must be 1000..{MAX_PATHS} for Monte Carlo")
        if not request.levels or any(not 0.5 <= lv < 1 for lv in request.levels):
            problems.append("levels must be confidence levels in [0.5, 1), e.g. 0.99")
        if problems:
            raise InvalidRiskRequestError("; ".join(problems))

    def _var_of(
        self, request: VarRequest, positions: PortfolioPositions, began: float
    ) -> VarResult:
        zones = tuple(sorted({line.zone for line in positions.lines if line.zone is not None}))
        if not zones:  # nothing priced: no risk to measure, figures 0
            figures = tuple(VarFigure(lv, _ZERO, _ZERO) for lv in request.levels)
            return VarResult(
                request=request,
                as_of=positions.as_of,
                zones=(),
                positions=len(positions.lines),
                net_mwh=positions.net_mwh,
                scenarios=0,
                history_from=None,
                history_to=None,
                figures=figures,
                seconds=time.perf_counter() - began,
            )
        q = position_vector(positions, zones)
        history = self._factors(
            zones, request.horizon_days if request.method is Method.HISTORICAL else 1
        )
        history = history.window(request.window_days)
        if len(history.days) < MIN_SCENARIOS:
            raise NoHistoryError(
                f"{len(history.days)} days of complete price history for {', '.join(zones)} "
                f"before {positions.as_of:%Y-%m-%d} (at least {MIN_SCENARIOS} needed): import "
                "prices (bess-plane prices import / fetch) or let the market feed run"
            )
        if request.method is Method.HISTORICAL:
            pnl = historical_pnl(history.changes, q)
        else:
            covariance = np.cov(history.changes, rowvar=False) * request.horizon_days
            pnl = monte_carlo_pnl(
                np.atleast_2d(covariance), q, paths=request.paths, seed=request.seed
            )
        figures = tuple(
            VarFigure(f.level, _money(f.var_eur), _money(f.es_eur))
            for f in figures_from_pnl(pnl, request.levels)
        )
        return VarResult(
            request=request,
            as_of=positions.as_of,
            zones=zones,
            positions=len(positions.lines),
            net_mwh=positions.net_mwh,
            scenarios=int(pnl.size),
            history_from=_midnight(history.days[0]),
            history_to=_midnight(history.days[-1]),
            figures=figures,
            seconds=time.perf_counter() - began,
        )

    def _factors(self, zones: Sequence[str], horizon_days: int) -> FactorHistory:
        return FactorHistory.join([self._daily(z) for z in zones], horizon_days)

    def _daily(self, zone: str) -> DailyPrices:
        """The zone's daily price grid before today, cached for `history_ttl_s`."""
        now = self.clock()
        with self._lock:
            cached = self._history.get(zone)
            if (
                cached is not None
                and (now - cached[0]).total_seconds() < self.settings.history_ttl_s
            ):
                return cached[1]
        if self.prices is None:
            raise NoHistoryError("the plane has no price store: risk needs price history")
        end = _midnight(now.astimezone(UTC).date())
        start = end - timedelta(days=self.settings.window_days + MAX_HORIZON_DAYS + 1)
        daily = DailyPrices.from_points(zone, self.prices.prices(zone, start, end))
        with self._lock:
            self._history[zone] = (now, daily)
        return daily

    def backtest_history(self, zone: str) -> DailyPrices:
        """The zone's complete days in the store over the last `backtest_days` before today
        (read afresh: the back-test is a report, not a per-order path)."""
        if self.prices is None:
            raise NoHistoryError("the plane has no price store: risk needs price history")
        end = _midnight(self.clock().astimezone(UTC).date())
        start = end - timedelta(days=self.settings.backtest_days)
        return DailyPrices.from_points(zone, self.prices.prices(zone, start, end))

    # -- limits ----------------------------------------------------------------------------

    def set_limit(
        self,
        portfolio: str,
        *,
        var_limit_eur: Decimal | None,
        pnl_limit_eur: Decimal | None,
        hard: bool,
        by: str,
    ) -> RiskLimit:
        for name, value in (("var_limit_eur", var_limit_eur), ("pnl_limit_eur", pnl_limit_eur)):
            if value is not None and not (value.is_finite() and value > 0):
                raise InvalidRiskRequestError(f"{name} must be a positive amount in EUR")
        if var_limit_eur is None and pnl_limit_eur is None:
            raise InvalidRiskRequestError(
                "set var_limit_eur, pnl_limit_eur or both (delete the limit to remove it)"
            )
        limit = RiskLimit(
            portfolio=portfolio,
            var_limit_eur=None if var_limit_eur is None else var_limit_eur.quantize(EUR_CENT),
            pnl_limit_eur=None if pnl_limit_eur is None else pnl_limit_eur.quantize(EUR_CENT),
            hard=hard,
            updated_at=self.clock(),
            updated_by=by,
        )
        return self.limits_store.put(limit)

    def delete_limit(self, portfolio: str) -> None:
        self.limits_store.delete(portfolio)
        with self._lock:
            for kind in LimitKind:
                self._armed.pop((portfolio, kind), None)

    def limit_request(self, portfolio: str) -> VarRequest:
        s = self.settings
        return VarRequest(
            portfolio=portfolio,
            horizon_days=s.limit_horizon_days,
            window_days=s.window_days,
            levels=tuple(sorted({0.95, 0.99, s.limit_level})),
        )

    def _limit_var(self, positions: PortfolioPositions) -> VarResult:
        return self._var_of(self.limit_request(positions.portfolio), positions, time.perf_counter())

    def _level_var(self, result: VarResult) -> Decimal:
        return next(f.var_eur for f in result.figures if f.level == self.settings.limit_level)

    def statuses(
        self, limit: RiskLimit, positions: PortfolioPositions, result: VarResult | None
    ) -> list[LimitStatus]:
        out = []
        if limit.var_limit_eur is not None and result is not None:
            value = self._level_var(result)
            out.append(
                LimitStatus(
                    portfolio=limit.portfolio,
                    kind=LimitKind.VAR,
                    limit_eur=limit.var_limit_eur,
                    value_eur=value,
                    utilisation_pct=_pct(value, limit.var_limit_eur),
                    hard=limit.hard,
                )
            )
        if limit.pnl_limit_eur is not None:
            loss = max(-positions.mtm_pnl_eur, _ZERO).quantize(EUR_CENT)
            out.append(
                LimitStatus(
                    portfolio=limit.portfolio,
                    kind=LimitKind.PNL,
                    limit_eur=limit.pnl_limit_eur,
                    value_eur=loss,
                    utilisation_pct=_pct(loss, limit.pnl_limit_eur),
                    hard=limit.hard,
                )
            )
        return out

    def evaluate(self) -> list[LimitStatus]:
        """Every limit's utilisation now; metrics and alerts updated (module doc)."""
        limits = {limit.portfolio: limit for limit in self.limits_store.list()}
        statuses: list[LimitStatus] = []
        for portfolio in self.portfolios():
            positions = self.positions(portfolio)
            try:
                result: VarResult | None = self._limit_var(positions)
            except NoHistoryError as exc:
                log.warning("risk: no VaR for portfolio %s: %s", portfolio, exc)
                result = None
            if result is not None and self._metrics is not None:
                levels = {f.level: f.var_eur for f in result.figures}
                self._metrics.var_95.labels(portfolio).set(float(levels.get(0.95, 0)))
                self._metrics.var_99.labels(portfolio).set(float(levels.get(0.99, 0)))
            limit = limits.get(portfolio)
            if limit is None:
                continue
            for status in self.statuses(limit, positions, result):
                self._observe(status)
                statuses.append(status)
        return statuses

    def limit_state(
        self, positions: PortfolioPositions
    ) -> tuple[RiskLimit | None, list[LimitStatus], dict[LimitKind, float], str | None]:
        """The portfolio's limit, its statuses now (observed: due alerts are raised as on
        every limits read), the highest threshold alerted per limit, and why the VaR limit
        could not be evaluated (None when it could or there is none)."""
        limit = self.limits_store.get(positions.portfolio)
        if limit is None:
            return None, [], {}, None
        reason = None
        result: VarResult | None = None
        if limit.var_limit_eur is not None:
            try:
                result = self._limit_var(positions)
            except NoHistoryError as exc:
                reason = str(exc)
        statuses = self.statuses(limit, positions, result)
        for status in statuses:
            self._observe(status)
        with self._lock:
            armed = {kind: self._armed.get((positions.portfolio, kind), 0.0) for kind in LimitKind}
        return limit, statuses, armed, reason

    def _observe(self, status: LimitStatus) -> None:
        if self._metrics is not None:
            self._metrics.utilisation.labels(status.portfolio, status.kind.value).set(
                float(status.utilisation_pct)
            )
        pct = float(status.utilisation_pct)
        crossed = max((t for t in self.settings.alert_thresholds_pct if pct >= t), default=0.0)
        key = (status.portfolio, status.kind)
        with self._lock:
            before = self._armed.get(key, 0.0)
            self._armed[key] = crossed
        if crossed <= before:
            return
        data = {
            "portfolio": status.portfolio,
            "limit": status.kind.value,
            "threshold_pct": crossed,
            "utilisation_pct": str(status.utilisation_pct),
            "value_eur": str(status.value_eur),
            "limit_eur": str(status.limit_eur),
            "hard": status.hard,
        }
        log.warning(
            "risk alert: portfolio %s %s limit at %s %% (%s of %s EUR), threshold %g %%",
            status.portfolio, status.kind.value, status.utilisation_pct, status.value_eur,
            status.limit_eur, crossed,
        )  # fmt: skip
        if self._metrics is not None:
            self._metrics.alerts.labels(status.kind.value).inc()
        if self._publish is not None:
            self._publish("risk.alert", data)

    # -- pre-trade -------------------------------------------------------------------------

    def pre_trade(self, order: Order) -> str | None:
        """Why the order's worst-case fill breaches a hard limit, or None (module doc)."""
        limit = self.limits_store.get(order.portfolio)
        if limit is None or not limit.hard:
            return None
        fill = _worst_case_fill(order)
        inputs = load_inputs(
            order.portfolio, now=self.clock(), trades=self._trades, dispatch=self._dispatch
        )  # one read of trades and schedules for both sides of the comparison
        before = positions_from(inputs, prices=self.prices)
        after = positions_from(inputs, prices=self.prices, extra_trades=(fill,))
        need_var = limit.var_limit_eur is not None and zone_of_market(order.market) is not None
        try:
            var_before = self._limit_var(before) if need_var else None
            var_after = self._limit_var(after) if need_var else None
        except NoHistoryError as exc:
            return f"risk_limit: portfolio {order.portfolio} has a hard VaR limit but {exc}"
        old = {s.kind: s for s in self.statuses(limit, before, var_before)}
        what = (
            f"{order.side.value} {order.quantity_mw} MW {order.delivery.product_id} at "
            f"{order.limit_price_eur_per_mwh} EUR/MWh"
        )
        for status in self.statuses(limit, after, var_after):
            prior = old.get(status.kind)
            worse = prior is None or status.value_eur > prior.value_eur
            if status.breached and worse:  # hypothetical: no gauge or alert (order.rejected)
                label = "VaR" if status.kind is LimitKind.VAR else "mark-to-market loss"
                level = f" {self.settings.limit_level:.1%}" if status.kind is LimitKind.VAR else ""
                was = prior.value_eur if prior is not None else _ZERO
                return (
                    f"risk_limit: {what} would take portfolio {order.portfolio}'s{level} "
                    f"{label} from {was} to {status.value_eur} EUR, over its hard limit of "
                    f"{status.limit_eur} EUR by {status.value_eur - status.limit_eur} EUR "
                    f"({status.utilisation_pct} %)"
                )
        return None


def _worst_case_fill(order: Order) -> Trade:
    """The whole order traded at its limit price, against an outside portfolio."""
    outside = "\x00risk-worst-case"
    mine, other = (order.portfolio, outside)
    buy, sell = (mine, other) if order.side is Side.BUY else (other, mine)
    return Trade(
        trade_id=0,
        market=order.market,
        delivery=order.delivery,
        buy_order_id=order.order_id,
        sell_order_id=order.order_id,
        buy_portfolio=buy,
        sell_portfolio=sell,
        buy_counterparty=order.counterparty,
        sell_counterparty=order.counterparty,
        quantity_mw=order.quantity_mw,
        price_eur_per_mwh=order.limit_price_eur_per_mwh,
        aggressor=order.side,
        executed_at=order.created_at,
    )


class RiskLimitCheck:
    """The exchange's pre-trade hook (`Order -> str | None`)."""

    name = "risk_limit"

    def __init__(self, service: RiskService) -> None:
        self._service = service

    def __call__(self, order: Order) -> str | None:
        return self._service.pre_trade(order)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# -- back-test ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backtest:
    zone: str
    first_day: date
    last_day: date
    window_days: int
    results: tuple[Kupiec, ...]


def backtest(
    daily: DailyPrices,
    profile_mwh: FloatArray,
    *,
    window_days: int = 250,
    levels: Sequence[float] = (0.95, 0.99, 0.995),
) -> Backtest:
    """Kupiec POF per level of the 1-day historical VaR of `profile_mwh` (96 MWh per slot)."""
    if profile_mwh.shape != (SLOTS_PER_DAY,):
        raise InvalidRiskRequestError(f"the profile needs {SLOTS_PER_DAY} quarter-hour values")
    if window_days < MIN_SCENARIOS:
        raise InvalidRiskRequestError(f"the window must be at least {MIN_SCENARIOS} days")
    days, changes = daily.changes(1)
    pnl = changes @ profile_mwh
    tests = pnl.size - window_days
    if tests < 1:
        raise NoHistoryError(
            f"{len(daily.days)} complete days of {daily.zone} prices are too few for a "
            f"{window_days}-day window and one test day: use a longer file or --window"
        )
    windows = np.lib.stride_tricks.sliding_window_view(pnl[:-1], window_days)[:tests]
    losses = np.sort(-windows, axis=1)
    realised_loss = -pnl[window_days:]
    results = []
    for level in levels:
        k = min(max(math.ceil(level * window_days - 1e-9), 1), window_days)
        var = np.maximum(losses[:, k - 1], 0.0)
        exceptions = int(np.count_nonzero(realised_loss > var))
        results.append(kupiec_pof(level=level, observations=tests, exceptions=exceptions))
    return Backtest(daily.zone, days[window_days], days[-1], window_days, tuple(results))
